//! How requests and responses become bytes for the store.
//!
//! MessagePack with named fields (`rmp_serde::to_vec_named`): compact, self-describing,
//! and tolerant of fields added between deploys, which matters once jobs outlive the process
//! that enqueued them (a persistent store).

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    // Sized for a small request or response, so that encoding one does not grow the
    // buffer several times.
    let mut buf = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut buf, value)?;
    Ok(buf)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}
