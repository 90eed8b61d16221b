//! The stored value: a versioned envelope around a MessagePack payload.
//!
//! ```text
//! offset  size  field
//! 0       2     magic b"lc"
//! 2       1     envelope format version (1)
//! 3       1     codec id (1 = MessagePack via rmp-serde, structs as maps)
//! 4       8     written-at, Unix milliseconds, big-endian u64
//! 12      8     expires-at, Unix milliseconds, big-endian u64
//! 20      ..    payload
//! ```
//!
//! A reader that meets another magic, an unknown version or codec, a truncated header or a
//! payload it cannot decode treats the entry as a miss and removes it.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

const MAGIC: [u8; 2] = *b"lc";
const VERSION: u8 = 1;
const CODEC_MSGPACK: u8 = 1;
pub(crate) const HEADER_LEN: usize = 20;

/// Why bytes read from L2 could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not an envelope, or a version/codec this build does not know.
    Format,
    /// The envelope is fine but the payload does not decode into the response type.
    Payload,
}

/// A decoded envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) written_at_ms: u64,
    pub(crate) expires_at_ms: u64,
}

impl Header {
    /// Time left before `expires_at`, as seen at `now_ms`; `None` when already expired.
    pub(crate) fn remaining(&self, now_ms: u64) -> Option<Duration> {
        self.expires_at_ms
            .checked_sub(now_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }
}

/// Encodes `value` into an envelope. Fails only if the value's `Serialize` impl fails.
pub(crate) fn encode<V: Serialize>(
    value: &V,
    now_ms: u64,
    ttl: Duration,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(CODEC_MSGPACK);
    out.extend_from_slice(&now_ms.to_be_bytes());
    let expires = now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    out.extend_from_slice(&expires.to_be_bytes());
    rmp_serde::encode::write_named(&mut out, value)?;
    Ok(out)
}

/// Reads the header of an envelope.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(DecodeError::Format);
    }
    if bytes[2] != VERSION || bytes[3] != CODEC_MSGPACK {
        return Err(DecodeError::Format);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let header = Header {
        written_at_ms: u64_at(4),
        expires_at_ms: u64_at(12),
    };
    Ok((header, &bytes[HEADER_LEN..]))
}

/// Decodes an envelope into its header and value.
pub(crate) fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<(Header, V), DecodeError> {
    let (header, payload) = decode_header(bytes)?;
    let value = decode_payload(payload).map_err(|_| DecodeError::Payload)?;
    Ok((header, value))
}

/// How deeply the arrays and maps of a payload may nest (fewer than this many levels).
/// rmp-serde allows 1,024, and a dynamically typed value (`serde_json::Value`) 1,000 levels
/// deep overflows a 2 MiB stack (a tokio worker's) in a debug build: a kilobyte from Redis
/// would abort the process. 128 is serde_json's own limit. A deeper value still encodes,
/// but reads back as a payload error (a miss).
const MAX_DEPTH: usize = 128;

/// Decodes a MessagePack payload, nested at most [`MAX_DEPTH`] levels deep.
pub(crate) fn decode_payload<V: DeserializeOwned>(
    payload: &[u8],
) -> Result<V, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    de.set_max_depth(MAX_DEPTH);
    serde::Deserialize::deserialize(&mut de)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Hit {
        title: String,
        score: f32,
        tags: Vec<String>,
    }

    fn hit() -> Hit {
        Hit {
            title: "rust".into(),
            score: 0.5,
            tags: vec!["a".into()],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&hit(), 1_000, Duration::from_secs(2)).unwrap();
        let (header, back): (Header, Hit) = decode(&bytes).unwrap();
        assert_eq!(back, hit());
        assert_eq!(header.written_at_ms, 1_000);
        assert_eq!(header.expires_at_ms, 3_000);
        assert_eq!(header.remaining(2_500), Some(Duration::from_millis(500)));
        assert_eq!(header.remaining(3_000), None);
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        let good = encode(&hit(), 1, Duration::from_secs(1)).unwrap();
        assert_eq!(decode::<Hit>(b"garbage").unwrap_err(), DecodeError::Format);
        assert_eq!(decode::<Hit>(&good[..10]).unwrap_err(), DecodeError::Format);
        let mut future_version = good.clone();
        future_version[2] = 2;
        assert_eq!(
            decode::<Hit>(&future_version).unwrap_err(),
            DecodeError::Format
        );
        let mut other_codec = good.clone();
        other_codec[3] = 9;
        assert_eq!(
            decode::<Hit>(&other_codec).unwrap_err(),
            DecodeError::Format
        );
        let mut bad_payload = good[..HEADER_LEN].to_vec();
        bad_payload.extend_from_slice(&[0xc1, 0xff]);
        assert_eq!(
            decode::<Hit>(&bad_payload).unwrap_err(),
            DecodeError::Payload
        );
        // A valid payload of another type is a payload error, not a panic.
        let other = encode(&42u32, 1, Duration::from_secs(1)).unwrap();
        assert_eq!(decode::<Hit>(&other).unwrap_err(), DecodeError::Payload);
    }

    /// `depth` nested one-element arrays around a nil, in an envelope.
    fn nested(depth: usize) -> Vec<u8> {
        let mut bytes = encode(&(), 1, Duration::from_secs(1)).unwrap();
        bytes.truncate(HEADER_LEN);
        bytes.extend(std::iter::repeat_n(0x91, depth));
        bytes.push(0xc0);
        bytes
    }

    #[test]
    fn deep_nesting_is_a_payload_error_not_a_stack_overflow() {
        // On a 2 MiB stack, a tokio worker's: 1,000 levels used to overflow it (an abort,
        // which no `catch_unwind` stops) in a debug build.
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let deep = decode::<serde_json::Value>(&nested(1_000)).map(|_| ());
                let at_limit = decode::<serde_json::Value>(&nested(MAX_DEPTH - 1)).map(|_| ());
                let past_limit = decode::<serde_json::Value>(&nested(MAX_DEPTH)).map(|_| ());
                (deep, at_limit, past_limit)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            decoded,
            (Err(DecodeError::Payload), Ok(()), Err(DecodeError::Payload))
        );
    }
}

#[cfg(test)]
#[path = "codec_props.rs"]
mod props;
