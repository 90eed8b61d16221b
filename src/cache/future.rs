use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

pin_project! {
    /// The response future of [`CacheService`](super::CacheService).
    ///
    /// An L1 hit is ready at once and allocates nothing; a bypass is the inner future
    /// itself; only a miss (L2 lookup, single flight, inner call) is boxed.
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        kind: Kind<F, T, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T, E> {
        Ready { result: Option<Result<T, E>> },
        Inner { #[pin] future: F },
        Load { future: BoxFuture<T, E> },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    pub(crate) fn ready(result: Result<T, E>) -> Self {
        Self {
            kind: Kind::Ready {
                result: Some(result),
            },
        }
    }

    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn load(future: BoxFuture<T, E>) -> Self {
        Self {
            kind: Kind::Load { future },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { result } => match result.take() {
                Some(result) => Poll::Ready(result),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Load { future } => Poll::Ready(ready!(future.as_mut().poll(cx))),
        }
    }
}

impl<F, T, E> fmt::Debug for ResponseFuture<F, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "Ready",
            Kind::Inner { .. } => "Inner",
            Kind::Load { .. } => "Load",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
