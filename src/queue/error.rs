//! Errors of the queue: what enqueueing and reading jobs can fail with, and the marker an
//! inner service uses to say "do not retry this".

use std::error::Error as StdError;
use std::fmt;

use crate::BoxError;

/// Enqueueing a job or reading the queue failed.
///
/// This is the error type of [`QueueService`](super::QueueService) and of the
/// [`Queue`](super::Queue) handle's methods. It never carries the inner service's errors:
/// the inner service runs later, on a worker, and its errors end up in
/// [`JobInfo::error`](super::JobInfo::error). Ask what went wrong with the predicates;
/// the kinds may grow.
///
/// ```
/// use layercake::queue::QueueError;
///
/// fn describe(err: &QueueError) -> &'static str {
///     if err.is_overloaded() {
///         "queue full, try again later"
///     } else if err.is_closed() {
///         "shutting down"
///     } else {
///         "internal error"
///     }
/// }
/// # let _ = describe;
/// ```
pub struct QueueError {
    kind: Kind,
}

enum Kind {
    Overloaded,
    Closed,
    Encode(BoxError),
    Decode(BoxError),
    Store(StoreError),
}

impl QueueError {
    pub(crate) fn overloaded() -> Self {
        Self {
            kind: Kind::Overloaded,
        }
    }

    pub(crate) fn closed() -> Self {
        Self { kind: Kind::Closed }
    }

    pub(crate) fn encode(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Encode(source.into()),
        }
    }

    pub(crate) fn decode(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Decode(source.into()),
        }
    }

    /// The queue was at capacity and the service sheds load
    /// ([`QueueBuilder::load_shed`](super::QueueBuilder::load_shed)).
    pub fn is_overloaded(&self) -> bool {
        matches!(self.kind, Kind::Overloaded)
    }

    /// The queue was shut down and accepts no more jobs.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// The request could not be encoded for the store.
    pub fn is_encode(&self) -> bool {
        matches!(self.kind, Kind::Encode(_))
    }

    /// A stored result could not be decoded as the queue's response type (for example,
    /// the type changed between deploys).
    pub fn is_decode(&self) -> bool {
        matches!(self.kind, Kind::Decode(_))
    }

    /// The store failed (for a persistent store: unreachable, timed out, ...).
    pub fn is_store(&self) -> bool {
        matches!(self.kind, Kind::Store(_))
    }
}

impl From<StoreError> for QueueError {
    fn from(err: StoreError) -> Self {
        Self {
            kind: Kind::Store(err),
        }
    }
}

impl fmt::Debug for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Overloaded => f.write_str("QueueError(Overloaded)"),
            Kind::Closed => f.write_str("QueueError(Closed)"),
            Kind::Encode(e) => f.debug_tuple("QueueError::Encode").field(e).finish(),
            Kind::Decode(e) => f.debug_tuple("QueueError::Decode").field(e).finish(),
            Kind::Store(e) => f.debug_tuple("QueueError::Store").field(e).finish(),
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Overloaded => f.pad("queue is at capacity"),
            Kind::Closed => f.pad("queue is shut down"),
            Kind::Encode(_) => f.pad("request could not be encoded"),
            Kind::Decode(_) => f.pad("stored result could not be decoded"),
            Kind::Store(_) => f.pad("queue store failed"),
        }
    }
}

impl StdError for QueueError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Overloaded | Kind::Closed => None,
            Kind::Encode(e) | Kind::Decode(e) => Some(&**e),
            Kind::Store(e) => Some(e),
        }
    }
}

/// A [`Store`](super::store::Store) operation failed.
///
/// Store implementations wrap their backend's errors in it, so backend types stay out of the
/// public API.
///
/// ```
/// use layercake::queue::store::StoreError;
///
/// let err = StoreError::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert!(err.to_string().contains("store"));
/// ```
pub struct StoreError {
    source: BoxError,
}

impl StoreError {
    /// Wraps a backend error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreError").field(&self.source).finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue store error: {}", self.source)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// Marks an inner service's error as permanent: the job fails at once, without retries.
///
/// Return it from the inner service (its error type must convert into [`BoxError`], as
/// `BoxError` itself does), or put it anywhere in your error's
/// [`source`](std::error::Error::source) chain: the worker looks for it along the chain.
///
/// ```
/// use layercake::queue::Permanent;
/// use layercake::BoxError;
///
/// fn check(input: &str) -> Result<(), BoxError> {
///     if input.is_empty() {
///         // Retrying cannot help: the input itself is wrong.
///         return Err(Permanent::new("empty input").into());
///     }
///     Ok(())
/// }
/// let err = check("").unwrap_err();
/// assert!(err.is::<Permanent>());
/// assert_eq!(err.to_string(), "empty input");
/// ```
pub struct Permanent {
    source: BoxError,
}

impl Permanent {
    /// Wraps an error that retrying cannot fix.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// Unwraps the error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }

    /// Whether `err` or any error in its source chain is a [`Permanent`].
    pub(crate) fn is_in_chain(err: &(dyn StdError + 'static)) -> bool {
        let mut next = Some(err);
        while let Some(err) = next {
            if err.is::<Permanent>() {
                return true;
            }
            next = err.source();
        }
        false
    }
}

impl fmt::Debug for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Permanent").field(&self.source).finish()
    }
}

// Transparent: the job's recorded error reads as the wrapped one.
impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl StdError for Permanent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.source()
    }
}

/// The error message recorded for a job: the error and its sources, joined by `": "`.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    use std::fmt::Write;

    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        let _ = write!(out, ": {source}");
        next = source.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Permanent);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }

    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn permanent_is_found_along_the_source_chain() {
        let direct: BoxError = Permanent::new("bad").into();
        assert!(Permanent::is_in_chain(&*direct));

        let wrapped: BoxError = Box::new(Outer(Permanent::new("bad")));
        assert!(Permanent::is_in_chain(&*wrapped));

        let plain: BoxError = "transient".into();
        assert!(!Permanent::is_in_chain(&*plain));
    }

    #[test]
    fn error_chain_joins_sources() {
        let err: BoxError = Box::new(Outer(Permanent::new("bad input")));
        // Permanent is transparent, so the chain reads outer: bad input.
        assert_eq!(error_chain(&*err), "outer: bad input");
    }

    #[test]
    fn queue_error_predicates() {
        assert!(QueueError::overloaded().is_overloaded());
        assert!(QueueError::closed().is_closed());
        assert!(QueueError::from(StoreError::new("down")).is_store());
        assert!(!QueueError::closed().is_overloaded());
        assert_eq!(QueueError::closed().to_string(), "queue is shut down");
    }
}
