//! How requests and responses become bytes for the store: the crate's versioned envelope
//! (see [`crate::codec`] and the README's "Stored values") around MessagePack with named
//! fields.
//!
//! The header (magic, format version, codec id, written-at) lets a reader tell a job written
//! by another build, or damaged bytes, from a payload it can decode: jobs can outlive the
//! process that enqueued them (a persistent store), for days. Named fields tolerate fields
//! added between deploys. The envelope's expires-at is `NO_EXPIRY`: a job's record, not its
//! payload, carries the result TTL. A payload without the header (bare MessagePack) does
//! not decode, so its job is quarantined.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use crate::codec as envelope;

use serde::de::DeserializeOwned;
use serde::Serialize;

thread_local! {
    /// Each thread encodes into one reused buffer and copies the bytes out once, into the
    /// shared slice the store keeps: one allocation per value instead of a growing `Vec`
    /// and its conversion.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

/// The scratch buffer is given up after encoding a value larger than this, so that one big
/// job does not pin its size in every thread.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Encodes a request or a response, in the envelope, written now.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Arc<[u8]>, rmp_serde::encode::Error> {
    let now = crate::clock::to_unix_ms(SystemTime::now());
    SCRATCH.with(|scratch| {
        // Encoding runs the value's `Serialize`, which could encode another value (and
        // find the buffer taken): that one gets a buffer of its own.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            let mut buf = Vec::new();
            envelope::encode_into(&mut buf, value, now, envelope::NO_EXPIRY)?;
            return Ok(Arc::from(buf));
        };
        buf.clear();
        let encoded = envelope::encode_into(&mut buf, value, now, envelope::NO_EXPIRY)
            .map(|()| Arc::from(&buf[..]));
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::with_capacity(256);
        }
        encoded
    })
}

/// Decodes a request or a response from its envelope.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let (_, payload) = envelope::decode_header(bytes).map_err(|_| {
        rmp_serde::decode::Error::Syntax(
            "not a layercake envelope (bare MessagePack, another format, or damaged)".into(),
        )
    })?;
    // With the envelope's nesting limit: a payload can be as deep as the store lets anyone write.
    envelope::decode_payload(payload)
}

#[cfg(test)]
#[path = "codec_props.rs"]
mod props;
