//! The settings of an [`HttpCacheLayer`](super::HttpCacheLayer).

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};
use http::{request, response, StatusCode};

use super::QueryKey;
use crate::cache::Tags;

/// The tags a stored response gets ([`HttpCacheLayer::tags`](super::HttpCacheLayer::tags)).
type TagFn = dyn Fn(&request::Parts, &response::Parts) -> Tags + Send + Sync;

/// A layer's tag rule.
#[derive(Clone)]
pub(crate) struct TagRule(Arc<TagFn>);

impl TagRule {
    pub(crate) fn new(
        f: impl Fn(&request::Parts, &response::Parts) -> Tags + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    /// Every value of the response header `name`, split at commas and white space (as
    /// `Cache-Tag` and `Surrogate-Key` are written).
    pub(crate) fn header(name: HeaderName) -> Self {
        Self::new(move |_, res| header_tags(&res.headers, &name))
    }

    pub(crate) fn tags(&self, req: &request::Parts, res: &response::Parts) -> Tags {
        (self.0)(req, res)
    }
}

/// Every value of the header `name`, split at commas and white space.
pub(crate) fn header_tags(headers: &HeaderMap, name: &HeaderName) -> Tags {
    Tags::new(
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| matches!(b, b',' | b' ' | b'\t')))
            .filter(|t| !t.is_empty()),
    )
}

impl fmt::Debug for TagRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("TagRule")
    }
}

/// The settings of an [`HttpCacheLayer`], shared by its services.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_body_size: usize,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) query: QueryKey,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) host: bool,
    pub(crate) x_cache: bool,
    pub(crate) tags: Option<TagRule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_body_size: super::DEFAULT_MAX_BODY_SIZE,
            statuses: vec![StatusCode::OK],
            query: QueryKey::Full,
            key_headers: Vec::new(),
            host: true,
            x_cache: false,
            tags: None,
        }
    }
}
