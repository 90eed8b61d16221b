//! The settings of an [`HttpCacheLayer`](super::HttpCacheLayer).

use http::header::HeaderName;
use http::StatusCode;

use super::QueryKey;

/// The settings of an [`HttpCacheLayer`], shared by its services.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_body_size: usize,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) query: QueryKey,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) host: bool,
    pub(crate) x_cache: bool,
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
        }
    }
}
