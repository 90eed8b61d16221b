use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::CacheBody;
use super::stored::{Source, X_CACHE};

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

pin_project! {
    /// The response future of [`HttpCacheService`](super::HttpCacheService) and
    /// [`GrpcCacheService`](super::GrpcCacheService).
    ///
    /// An L1 hit is ready at once; a bypassed request is the inner future itself (its
    /// response's body wrapped in a [`CacheBody`]); only a miss is boxed.
    ///
    /// # Panics
    /// Polling it again after it returned `Ready` panics, as most futures do.
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Inner { #[pin] future: F, x_cache: bool },
        Boxed { future: BoxFuture<Response<CacheBody<B>>, E> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    /// The inner service's future; `x_cache` adds `x-cache: MISS`.
    pub(crate) fn inner(future: F, x_cache: bool) -> Self {
        Self {
            kind: Kind::Inner { future, x_cache },
        }
    }

    pub(crate) fn boxed(future: BoxFuture<Response<CacheBody<B>>, E>) -> Self {
        Self {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Inner { future, x_cache } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(passthrough(res, *x_cache)))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

/// The inner service's response, its body untouched.
pub(crate) fn passthrough<B: Body>(res: Response<B>, x_cache: bool) -> Response<CacheBody<B>> {
    let mut res = res.map(CacheBody::inner);
    if x_cache {
        res.headers_mut()
            .insert(X_CACHE, Source::Miss.header_value());
    }
    res
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "Ready",
            Kind::Inner { .. } => "Inner",
            Kind::Boxed { .. } => "Boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
