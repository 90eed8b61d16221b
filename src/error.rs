//! Errors shared by the cache and the queue builders.

use std::fmt;

/// A builder was given a setting it cannot honour.
///
/// Builders never "fix" bad input (a capacity of 0 does not silently become 100); they
/// return this error instead, naming the setting and the reason.
///
/// ```
/// let err = layercake::Cache::<String>::builder("search").max_capacity(0).build().unwrap_err();
/// assert_eq!(err.setting(), "max_capacity");
/// assert!(err.to_string().contains("max_capacity"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the builder setting that was rejected (for example `"max_capacity"`).
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why the setting was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A boxed error, as used where middleware stacks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
