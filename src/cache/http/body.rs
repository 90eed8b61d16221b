//! [`CacheBody`]: the body of every response (and of every request the gRPC layer
//! forwards), and the bounded collection of a body.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that went through an
    /// [`HttpCacheLayer`](super::HttpCacheLayer) or a [`GrpcCacheLayer`](super::GrpcCacheLayer).
    ///
    /// It is one of:
    /// - a body from the cache (or one that was read in full), with its trailers;
    /// - the inner service's body, untouched (bypassed requests, responses that are not
    ///   stored);
    /// - the frames that were read before the body turned out to be larger than the
    ///   limit, followed by the rest of the inner body: nothing is lost or reordered.
    ///
    /// Its data are [`Bytes`] and its error is the inner body's, so it fits Axum
    /// (`IntoResponse`), Tonic and hyper wherever the inner body does.
    pub struct CacheBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Full {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Inner {
            #[pin]
            body: B,
        },
        Replay {
            frames: VecDeque<Frame<Bytes>>,
            // An error met while reading ahead, delivered after the frames read before it.
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> CacheBody<B> {
    /// A complete body: `data` (if not empty), then `trailers`.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new(), None)
    }

    /// The inner body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    fn replay(
        frames: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        Self {
            kind: Kind::Replay {
                frames,
                error,
                rest,
            },
        }
    }
}

impl<B: Body> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B: Body> Body for CacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Inner { body } => body.poll_frame(cx).map(|f| f.map(|f| f.map(to_bytes))),
            KindProj::Replay {
                frames,
                error,
                rest,
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    *rest = None;
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(body) => {
                        let polled = body.as_mut().poll_frame(cx);
                        if let Poll::Ready(None) = polled {
                            *rest = None;
                        }
                        polled.map(|f| f.map(|f| f.map(to_bytes)))
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay {
                frames,
                error,
                rest,
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay { frames, rest, .. } => {
                let read: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint.set_lower(rest.lower().saturating_add(read));
                hint
            }
        }
    }
}

/// A body read as far as the limit allowed.
pub(crate) enum Collected<B: Body> {
    /// The whole body: its data and trailers.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Larger than the limit, or it failed: what was read, then the rest (or the error).
    Partial(CacheBody<B>),
}

/// Reads `body` frame by frame until it ends or its data pass `limit` bytes.
///
/// A body whose size hint already says it is larger is not read at all.
pub(crate) async fn collect<B>(body: B, limit: usize) -> Collected<B>
where
    B: Body,
    B::Data: Buf,
{
    let limit = limit as u64;
    if body.size_hint().lower() > limit {
        return Collected::Partial(CacheBody::inner(body));
    }
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len: u64 = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Collected::Partial(CacheBody::replay(frames, Some(e), None)),
            Some(Ok(frame)) => {
                let frame = to_bytes(frame);
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                }
                frames.push_back(frame);
                if len > limit {
                    return Collected::Partial(CacheBody::replay(frames, None, Some(body)));
                }
            }
        }
    }
    let mut trailers: Option<HeaderMap> = None;
    let mut data = BytesMut::new();
    let mut single: Option<Bytes> = None;
    for frame in frames {
        match frame.into_data() {
            Ok(chunk) => {
                // One chunk (the common case) is kept as is, without a copy.
                if single.is_none() && data.is_empty() {
                    single = Some(chunk);
                } else {
                    if let Some(first) = single.take() {
                        data.extend_from_slice(&first);
                    }
                    data.extend_from_slice(&chunk);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    let data = match single {
        Some(chunk) => chunk,
        None => data.freeze(),
    };
    Collected::Complete { data, trailers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    fn chunks(
        parts: &[&'static str],
    ) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn small_body_is_collected() {
        let Collected::Complete { data, trailers } =
            collect(Full::new(Bytes::from("hello")), 5).await
        else {
            panic!("complete expected")
        };
        assert_eq!((&data[..], trailers), (&b"hello"[..], None));
        let Collected::Complete { data, .. } = collect(chunks(&["ab", "cd"]), 10).await else {
            panic!("complete expected")
        };
        assert_eq!(&data[..], b"abcd");
    }

    #[tokio::test]
    async fn over_limit_body_is_replayed_intact() {
        for limit in [0, 1, 2, 3, 5] {
            let Collected::Partial(body) = collect(chunks(&["ab", "cd", "ef"]), limit).await else {
                panic!("partial expected at {limit}")
            };
            let all = body.collect().await.unwrap().to_bytes();
            assert_eq!(&all[..], b"abcdef", "limit {limit}");
        }
        // Known to be too large: not read at all.
        let Collected::Partial(body) = collect(Full::new(Bytes::from("hello")), 4).await else {
            panic!("partial expected")
        };
        assert_eq!(body.size_hint().exact(), Some(5));
    }
}
