//! What the HTTP and gRPC services share: a response just read from the inner service, and
//! whether a request carries credentials.

use http::header::{self, HeaderMap};
use http::Response;
use http_body::Body;

use super::body::CacheBody;
use super::stored::{CachedResponse, Entry, Stored};
use crate::cache::Loaded;

/// Whether a request carries credentials that make its response private by default.
pub(crate) fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE)
}

/// A response just received from the inner service.
// Lives for one step of one miss and is moved once: not worth boxing the large variant.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admitted<B: Body> {
    /// Read in full and storable.
    Store(Stored),
    /// Not to be stored: give it to the client as it is.
    Pass(Response<CacheBody<B>>),
}

/// What the loader did, told to the code after `Cache::load`.
#[allow(clippy::large_enum_variant)] // as `Admitted`
pub(crate) enum Fresh<B: Body> {
    /// It called the service and got a storable response.
    Loaded,
    /// It called the service and got a response that is not stored.
    Pass(Response<CacheBody<B>>),
}

impl<B: Body> Admitted<B> {
    /// What `Cache::load` may do with this response, noting in `fresh` what happened: a
    /// storable response is stored for its TTL when `here` says it belongs under the key
    /// being loaded; anything else is for this request alone.
    pub(crate) fn into_loaded(
        self,
        fresh: &mut Option<Fresh<B>>,
        here: impl FnOnce(&Stored) -> bool,
    ) -> Loaded<CachedResponse> {
        match self {
            Admitted::Store(stored) => {
                *fresh = Some(Fresh::Loaded);
                if here(&stored) {
                    let (ttl, tags) = (stored.ttl(), stored.tags().clone());
                    let response = CachedResponse(Entry::Response(stored));
                    match tags.is_empty() {
                        true => Loaded::Store(response, ttl),
                        false => Loaded::StoreTagged(response, ttl, tags),
                    }
                } else {
                    Loaded::Private(CachedResponse(Entry::Response(stored)))
                }
            }
            Admitted::Pass(res) => {
                // RFC 5861's errors: an expired response may answer them (fail-safe,
                // `stale-if-error`).
                let error = matches!(res.status().as_u16(), 500 | 502 | 503 | 504);
                *fresh = Some(Fresh::Pass(res));
                let placeholder = CachedResponse(Entry::Uncacheable);
                if error {
                    Loaded::Failed(placeholder)
                } else {
                    Loaded::Private(placeholder)
                }
            }
        }
    }
}
