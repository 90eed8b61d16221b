//! What went wrong with a Redis command, sorted into the few kinds callers act on.
//!
//! The base only classifies; what a failure means is the caller's rule: the cache counts it
//! and answers a miss, the queue's store returns it as an error.

use std::fmt;
use std::time::Duration;

use redis::{ErrorKind, RedisError};

/// The kind of a failed Redis operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No answer within the caller's budget (or redis-rs' own response timeout).
    Timeout,
    /// The connection failed, was refused or was dropped; TLS handshake failures too.
    Io,
    /// Redis answered with an error (OOM, READONLY, NOAUTH, LOADING, ...).
    Server,
    /// The key holds another Redis type (`WRONGTYPE`).
    WrongType,
    /// The reply was not of the type asked for.
    Decode,
    /// No connection to use: never connected yet, or given up and being replaced.
    NotConnected,
}

/// A failed Redis operation: its kind, the generation of the connection it ran on (to tell a
/// stale report from a current one), whether that connection is dead, and a one-line
/// description that never holds the URL or its credentials.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) fault: Fault,
    pub(crate) gen: Option<u64>,
    pub(crate) dead: bool,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn from_redis(e: &RedisError, gen: Option<u64>) -> Self {
        Self {
            fault: classify(e),
            gen,
            dead: is_dead(e),
            detail: describe(e),
        }
    }

    pub(crate) fn timeout(budget: Duration, gen: Option<u64>) -> Self {
        Self {
            fault: Fault::Timeout,
            gen,
            dead: false,
            detail: format!("no answer within {budget:?}"),
        }
    }

    pub(crate) fn not_connected(detail: impl Into<String>) -> Self {
        Self {
            fault: Fault::NotConnected,
            gen: None,
            dead: false,
            detail: detail.into(),
        }
    }

    /// Whether this says something about Redis' health (a breaker counts these).
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(self.fault, Fault::Timeout | Fault::Io)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.detail)
    }
}

pub(crate) fn classify(e: &RedisError) -> Fault {
    if e.is_timeout() {
        return Fault::Timeout;
    }
    if e.code() == Some("WRONGTYPE") {
        return Fault::WrongType;
    }
    match e.kind() {
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => Fault::Decode,
        ErrorKind::Server(_) | ErrorKind::AuthenticationFailed | ErrorKind::Extension => {
            Fault::Server
        }
        _ => Fault::Io,
    }
}

/// Whether the connection that returned `e` can be used again.
pub(crate) fn is_dead(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_connection_refusal()
}

/// A one-line description of a Redis error. redis-rs does not put URLs in its errors, but
/// this is the one place to mend should that change.
pub(crate) fn describe(e: &RedisError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_errors_into_faults() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), Fault::Io);
        assert!(is_dead(&refused));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(classify(&timeout), Fault::Timeout);
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not an integer"));
        assert_eq!(classify(&parse), Fault::Decode);
        assert!(!is_dead(&parse));
        let f = Failure::from_redis(&parse, Some(3));
        assert_eq!(
            (f.fault, f.gen, f.is_connection_failure()),
            (Fault::Decode, Some(3), false)
        );
        assert!(Failure::timeout(Duration::from_millis(5), None).is_connection_failure());
    }
}
