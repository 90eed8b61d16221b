//! layercake — Tower middleware for a two-tier cache and a tracked job queue.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod error;

pub use error::{BoxError, ConfigError};
