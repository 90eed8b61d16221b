//! How requests and responses become bytes for the store.
//!
//! MessagePack with named fields (`rmp_serde::to_vec_named`): compact, self-describing,
//! and tolerant of fields added between deploys, which matters once jobs outlive the process
//! that enqueued them (a persistent store).

use std::cell::RefCell;
use std::sync::Arc;

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

pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Arc<[u8]>, rmp_serde::encode::Error> {
    SCRATCH.with(|scratch| {
        // Encoding runs the value's `Serialize`, which could encode another value (and
        // find the buffer taken): that one gets a buffer of its own.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            let mut buf = Vec::new();
            rmp_serde::encode::write_named(&mut buf, value)?;
            return Ok(Arc::from(buf));
        };
        buf.clear();
        let encoded =
            rmp_serde::encode::write_named(&mut *buf, value).map(|()| Arc::from(&buf[..]));
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::with_capacity(256);
        }
        encoded
    })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    // With the envelope's nesting limit: a payload can be as deep as the store lets anyone write.
    crate::codec::decode_payload(bytes)
}

#[cfg(test)]
#[path = "codec_props.rs"]
mod props;
