//! The stored value: a versioned envelope around a MessagePack payload.
//!
//! ```text
//! offset  size  field
//! 0       2     magic b"lc"
//! 2       1     envelope format version (1; 2 with stale-until; 3 with stale-until and tags)
//! 3       1     codec id (1 = MessagePack via rmp-serde, structs as maps)
//! 4       8     written-at, Unix milliseconds, big-endian u64
//! 12      8     expires-at, Unix milliseconds, big-endian u64
//! 20      8     versions 2, 3: stale-until, Unix milliseconds, big-endian u64
//!                (version 3 without a fallback: equal to expires-at)
//! 28      2     version 3 only: tag count n (1 or more), big-endian u16
//! 30      16n   version 3 only: the tags' digests (BLAKE3, first 16 bytes each)
//! 20 / 28 / 30+16n  payload
//! ```
//!
//! Version 3 is written for tagged entries only (`Cache::insert_tagged`,
//! `Loaded::StoreTagged`); a build that does not know it reads such an entry as a miss
//! (and removes it), as it would a version it does not know.
//!
//! Version 2 is written only by caches with fail-safe on: an entry past expires-at may
//! still be served as a fallback until stale-until (DESIGN.md 2.3, 2.5). Everything else
//! (caches without fail-safe, the queue's payloads) writes version 1, which every build
//! reads, so turning fail-safe on is the only change older readers can see (they take a
//! version 2 entry for a miss).
//!
//! A reader that meets another magic, an unknown version or codec, a truncated header or a
//! payload it cannot decode treats the entry as a miss and removes it.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::key::DIGEST_BYTES;

const MAGIC: [u8; 2] = *b"lc";
const VERSION: u8 = 1;
/// Version 1 and a stale-until after expires-at.
const VERSION_STALE: u8 = 2;
/// Version 2 and the entry's tags.
const VERSION_TAGS: u8 = 3;
const CODEC_MSGPACK: u8 = 1;
/// Where version 3's tag count is; its digests follow.
const TAGS_AT: usize = HEADER_LEN_STALE;
/// The header of version 1; version 2's is [`HEADER_LEN_STALE`] long.
pub(crate) const HEADER_LEN: usize = 20;
pub(crate) const HEADER_LEN_STALE: usize = HEADER_LEN + 8;

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
    /// Until when an expired entry may still be served as a fallback (fail-safe); equal to
    /// `expires_at_ms` in a version 1 envelope.
    pub(crate) stale_until_ms: u64,
    /// How many tag digests follow the fixed header (version 3).
    pub(crate) tag_count: usize,
    /// The header's length: where the payload starts.
    pub(crate) len: usize,
}

impl Header {
    /// A version 1 header (tests build them by hand).
    #[cfg(test)]
    pub(crate) fn v1(written_at_ms: u64, expires_at_ms: u64) -> Self {
        Self {
            written_at_ms,
            expires_at_ms,
            stale_until_ms: expires_at_ms,
            tag_count: 0,
            len: HEADER_LEN,
        }
    }

    /// The tag digests of an envelope whose header this is.
    pub(crate) fn tags(&self, bytes: &[u8]) -> Vec<[u8; DIGEST_BYTES]> {
        let at = TAGS_AT + 2;
        bytes
            .get(at..at + self.tag_count * DIGEST_BYTES)
            .unwrap_or_default()
            .chunks_exact(DIGEST_BYTES)
            .filter_map(|c| c.try_into().ok())
            .collect()
    }

    /// Time left before `stale_until`, as seen at `now_ms`; `None` once it has passed.
    pub(crate) fn stale_remaining(&self, now_ms: u64) -> Option<Duration> {
        self.stale_until_ms
            .checked_sub(now_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    /// Time left before `expires_at`, as seen at `now_ms`; `None` when already expired.
    pub(crate) fn remaining(&self, now_ms: u64) -> Option<Duration> {
        self.expires_at_ms
            .checked_sub(now_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }
}

/// Encodes `value` into a version 1 envelope. Fails only if the value's `Serialize` impl
/// fails.
#[cfg(any(test, fuzzing))]
pub(crate) fn encode<V: Serialize>(
    value: &V,
    now_ms: u64,
    ttl: Duration,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    encode_entry(value, now_ms, ttl, None, &[])
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Encodes a cache entry: fresh for `ttl`, and with `stale_for` (fail-safe) usable as a
/// fallback until that long after `now_ms` (a version 2 envelope); without, version 1.
/// With `tags`, version 3. Fails if the value's `Serialize` fails, or with more than
/// 65,535 tags.
pub(crate) fn encode_entry<V: Serialize>(
    value: &V,
    now_ms: u64,
    ttl: Duration,
    stale_for: Option<Duration>,
    tags: &[[u8; DIGEST_BYTES]],
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let tag_count = u16::try_from(tags.len()).map_err(|_| {
        rmp_serde::encode::Error::Syntax("more than 65,535 tags on one entry".to_owned())
    })?;
    let mut out = Vec::with_capacity(TAGS_AT + 2 + tags.len() * DIGEST_BYTES + 64);
    out.extend_from_slice(&MAGIC);
    out.push(match (tags.is_empty(), stale_for.is_some()) {
        (false, _) => VERSION_TAGS,
        (true, true) => VERSION_STALE,
        (true, false) => VERSION,
    });
    out.push(CODEC_MSGPACK);
    out.extend_from_slice(&now_ms.to_be_bytes());
    let expires = now_ms.saturating_add(ms(ttl));
    out.extend_from_slice(&expires.to_be_bytes());
    if stale_for.is_some() || !tags.is_empty() {
        // Never before expires-at, whatever the caller asked.
        let stale_until = stale_for.map_or(expires, |s| now_ms.saturating_add(ms(s)).max(expires));
        out.extend_from_slice(&stale_until.to_be_bytes());
    }
    if !tags.is_empty() {
        out.extend_from_slice(&tag_count.to_be_bytes());
        for tag in tags {
            out.extend_from_slice(tag);
        }
    }
    rmp_serde::encode::write_named(&mut out, value)?;
    Ok(out)
}

/// Reads the header of an envelope.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC || bytes[3] != CODEC_MSGPACK {
        return Err(DecodeError::Format);
    }
    let (len, tag_count) = match bytes[2] {
        VERSION => (HEADER_LEN, 0),
        VERSION_STALE if bytes.len() >= HEADER_LEN_STALE => (HEADER_LEN_STALE, 0),
        VERSION_TAGS if bytes.len() >= TAGS_AT + 2 => {
            let n = usize::from(u16::from_be_bytes([bytes[TAGS_AT], bytes[TAGS_AT + 1]]));
            let len = TAGS_AT + 2 + n * DIGEST_BYTES;
            if n == 0 || bytes.len() < len {
                return Err(DecodeError::Format);
            }
            (len, n)
        }
        _ => return Err(DecodeError::Format),
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let expires_at_ms = u64_at(12);
    let header = Header {
        written_at_ms: u64_at(4),
        expires_at_ms,
        // A stale-until before expires-at (a writer's bug) is read as no fallback at all.
        stale_until_ms: if len == HEADER_LEN {
            expires_at_ms
        } else {
            u64_at(20).max(expires_at_ms)
        },
        tag_count,
        len,
    };
    Ok((header, &bytes[len..]))
}

/// Decodes an envelope into its header and value (the cache reads the header and the
/// payload apart: the header in the L2 tier, the payload as the cache's value type).
#[cfg(any(test, fuzzing))]
pub(crate) fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<(Header, V), DecodeError> {
    let (header, payload) = decode_header(bytes)?;
    let value = decode_payload(payload).map_err(|_| DecodeError::Payload)?;
    Ok((header, value))
}

/// Expires-at of an envelope whose life the envelope does not bound (a job's request or
/// result: its record's result TTL governs it).
pub(crate) const NO_EXPIRY: u64 = u64::MAX;

/// Writes an envelope of `value` into `out` (after what it holds), stamped with written-at
/// and expires-at (Unix milliseconds): the format above, for any payload this crate keeps,
/// such as the queue's job requests and results. Fails only if the value's `Serialize` does.
pub(crate) fn encode_into<V: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &V,
    written_at_ms: u64,
    expires_at_ms: u64,
) -> Result<(), rmp_serde::encode::Error> {
    out.reserve(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(CODEC_MSGPACK);
    out.extend_from_slice(&written_at_ms.to_be_bytes());
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    rmp_serde::encode::write_named(out, value)
}

/// How deeply the arrays and maps of a payload may nest (fewer than this many levels).
/// rmp-serde allows 1,024, and a dynamically typed value (`serde_json::Value`) 1,000 levels
/// deep overflows a 2 MiB stack (a tokio worker's) in a debug build: a kilobyte from Redis
/// would abort the process. 128 is serde_json's own limit. A deeper value still encodes,
/// but reads back as a payload error (a miss).
const MAX_DEPTH: usize = 128;

/// Decodes a MessagePack payload, nested fewer than [`MAX_DEPTH`] levels deep.
pub(crate) fn decode_payload<V: DeserializeOwned>(
    payload: &[u8],
) -> Result<V, rmp_serde::decode::Error> {
    // rmp-serde counts the depth of arrays and maps, but not of enum variants (a recursive
    // enum, 10,000 variants deep, still overflowed the stack): so the bytes are checked first.
    if nests_too_deep(payload) {
        return Err(rmp_serde::decode::Error::DepthLimitExceeded);
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    de.set_max_depth(MAX_DEPTH);
    serde::Deserialize::deserialize(&mut de)
}

/// Whether the first MessagePack value in `bytes` has arrays or maps [`MAX_DEPTH`] levels
/// deep. A loop over the bytes, without recursion or allocation; it stops (`false`) at
/// anything malformed, which the decoder then reports.
fn nests_too_deep(mut bytes: &[u8]) -> bool {
    #[derive(Clone, Copy)]
    enum Kind {
        /// A scalar, string, binary or extension: `n` bytes of data follow.
        Data,
        /// `n` values follow.
        Array,
        /// `n` key-value pairs follow.
        Map,
    }
    use Kind::{Array, Data, Map};
    // The values still to read in each open array or map.
    let mut left = [0u64; MAX_DEPTH];
    let mut depth = 0;
    loop {
        let Some((&marker, rest)) = bytes.split_first() else {
            return false;
        };
        bytes = rest;
        // The size of the length field that follows, what `n` is without it, and the kind.
        let (len_bytes, base, kind) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0, Data),
            0x80..=0x8f => (0, marker & 0x0f, Map),
            0x90..=0x9f => (0, marker & 0x0f, Array),
            0xa0..=0xbf => (0, marker & 0x1f, Data),
            0xc4 | 0xd9 => (1, 0, Data), // bin 8, str 8
            0xc5 | 0xda => (2, 0, Data),
            0xc6 | 0xdb => (4, 0, Data),
            0xc7 => (1, 1, Data), // ext 8: the type byte, then the data
            0xc8 => (2, 1, Data),
            0xc9 => (4, 1, Data),
            0xcc | 0xd0 => (0, 1, Data),
            0xcd | 0xd1 => (0, 2, Data),
            0xca | 0xce | 0xd2 => (0, 4, Data),
            0xcb | 0xcf | 0xd3 => (0, 8, Data),
            0xd4 => (0, 2, Data), // fixext 1
            0xd5 => (0, 3, Data),
            0xd6 => (0, 5, Data),
            0xd7 => (0, 9, Data),
            0xd8 => (0, 17, Data),
            0xdc => (2, 0, Array),
            0xdd => (4, 0, Array),
            0xde => (2, 0, Map),
            0xdf => (4, 0, Map),
            0xc1 => return false, // never used
        };
        let Some((len, rest)) = bytes.split_at_checked(len_bytes) else {
            return false;
        };
        bytes = rest;
        let n = len.iter().fold(0, |n, b| n << 8 | u64::from(*b)) + u64::from(base);
        let items = match kind {
            Data => {
                let Some(rest) = usize::try_from(n).ok().and_then(|n| bytes.get(n..)) else {
                    return false;
                };
                bytes = rest;
                0
            }
            Array | Map if depth + 1 >= MAX_DEPTH => return true,
            Array => n,
            Map => 2 * n,
        };
        if items > 0 {
            left[depth] = items;
            depth += 1;
            continue;
        }
        // A value is complete: count it off its container, and each container it completes.
        loop {
            if depth == 0 {
                return false;
            }
            left[depth - 1] -= 1;
            if left[depth - 1] > 0 {
                break;
            }
            depth -= 1;
        }
    }
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
        future_version[2] = 3;
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

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only ever decoded
    enum Tree {
        Leaf,
        Node(Box<Tree>),
    }

    #[test]
    fn version_2_carries_stale_until() {
        let bytes = encode_entry(
            &hit(),
            1_000,
            Duration::from_secs(2),
            Some(Duration::from_secs(10)),
            &[],
        )
        .unwrap();
        assert_eq!(bytes[2], 2);
        let (header, back): (Header, Hit) = decode(&bytes).unwrap();
        assert_eq!(back, hit());
        assert_eq!(
            (header.expires_at_ms, header.stale_until_ms, header.len),
            (3_000, 11_000, HEADER_LEN_STALE)
        );
        assert_eq!(header.remaining(5_000), None);
        assert_eq!(header.stale_remaining(5_000), Some(Duration::from_secs(6)));
        // Without a fallback: version 1, stale-until is expires-at.
        let v1 = encode_entry(&hit(), 1_000, Duration::from_secs(2), None, &[]).unwrap();
        assert_eq!(v1, encode(&hit(), 1_000, Duration::from_secs(2)).unwrap());
        let (header, _) = decode_header(&v1).unwrap();
        assert_eq!(header, Header::v1(1_000, 3_000));
        // A version 2 header cut short is not a version 1 header with a payload.
        assert_eq!(
            decode_header(&bytes[..HEADER_LEN + 4]).unwrap_err(),
            DecodeError::Format
        );
    }

    #[test]
    fn version_3_carries_tags() {
        let tags = [[1u8; DIGEST_BYTES], [2u8; DIGEST_BYTES]];
        let bytes = encode_entry(&hit(), 1_000, Duration::from_secs(2), None, &tags).unwrap();
        assert_eq!(bytes[2], 3);
        let (header, back): (Header, Hit) = decode(&bytes).unwrap();
        assert_eq!(back, hit());
        assert_eq!(header.tags(&bytes), tags.to_vec());
        assert_eq!(
            (
                header.written_at_ms,
                header.expires_at_ms,
                header.stale_until_ms
            ),
            (1_000, 3_000, 3_000),
            "no fallback: stale-until is expires-at"
        );
        assert_eq!(header.len, HEADER_LEN_STALE + 2 + 32);
        let stale = encode_entry(
            &hit(),
            1_000,
            Duration::from_secs(2),
            Some(Duration::from_secs(10)),
            &tags,
        )
        .unwrap();
        let (header, _) = decode_header(&stale).unwrap();
        assert_eq!(header.stale_until_ms, 11_000);
        // Cut inside the digests, or a count of zero: not an envelope.
        assert_eq!(
            decode_header(&bytes[..header.len - 1]).unwrap_err(),
            DecodeError::Format
        );
        let mut zero = bytes.clone();
        zero[HEADER_LEN_STALE + 1] = 0;
        assert_eq!(
            decode_header(&zero[..HEADER_LEN_STALE + 2]).unwrap_err(),
            DecodeError::Format
        );
    }

    #[test]
    fn encode_into_writes_the_same_envelope() {
        let mut out = vec![7];
        encode_into(&mut out, &hit(), 1_000, NO_EXPIRY).unwrap();
        assert_eq!(out[0], 7, "appended after what the buffer held");
        let (header, back): (Header, Hit) = decode(&out[1..]).unwrap();
        assert_eq!(back, hit());
        assert_eq!(
            (header.written_at_ms, header.expires_at_ms),
            (1_000, NO_EXPIRY)
        );
        let bare = rmp_serde::to_vec_named(&hit()).unwrap();
        assert_eq!(
            &out[1 + HEADER_LEN..],
            &bare[..],
            "the payload follows the header"
        );
    }

    #[test]
    fn deep_enums_are_a_payload_error_not_a_stack_overflow() {
        // rmp-serde does not count enum variants against its depth limit.
        let tree = |depth: usize| {
            let mut bytes = encode(&(), 1, Duration::from_secs(1)).unwrap();
            bytes.truncate(HEADER_LEN);
            for _ in 0..depth {
                bytes.extend_from_slice(b"\x81\xa4Node");
            }
            bytes.extend_from_slice(b"\xa4Leaf");
            bytes
        };
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                (
                    decode::<Tree>(&tree(10_000)).map(|_| ()),
                    decode::<Tree>(&tree(MAX_DEPTH - 1)).map(|_| ()),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(decoded, (Err(DecodeError::Payload), Ok(())));
    }

    #[test]
    fn nesting_is_measured_on_every_marker() {
        // Each container kind, with a sibling of each length-prefixed kind before it.
        let open: [&[u8]; 6] = [
            b"\x91",
            b"\xdc\x00\x01",
            b"\xdd\x00\x00\x00\x01",
            b"\x81\xc0",
            b"\xde\x00\x01\xa1k",
            b"\xdf\x00\x00\x00\x01\xd9\x01k",
        ];
        let siblings: [&[u8]; 6] = [
            b"\xc4\x02ab",
            b"\xc5\x00\x01a",
            b"\xc6\x00\x00\x00\x01a",
            b"\xc7\x01\x05a",
            b"\xd8\x05aaaaaaaaaaaaaaaa",
            b"\xcb\x00\x00\x00\x00\x00\x00\x00\x00",
        ];
        // Two containers per level (an array holding a sibling and the container), and one
        // more array inside when `extra`.
        for (levels, extra) in [(63, false), (63, true), (64, false)] {
            let mut bytes = Vec::new();
            for level in 0..levels {
                bytes.push(0x92);
                bytes.extend_from_slice(siblings[level % siblings.len()]);
                bytes.extend_from_slice(open[level % open.len()]);
            }
            if extra {
                bytes.push(0x91);
            }
            bytes.push(0xc0);
            let containers = 2 * levels + usize::from(extra);
            assert_eq!(
                nests_too_deep(&bytes),
                containers >= MAX_DEPTH,
                "{containers}"
            );
            // And the decoder agrees.
            let decoded = decode_payload::<serde::de::IgnoredAny>(&bytes);
            assert_eq!(decoded.is_ok(), containers < MAX_DEPTH, "{containers}");
        }
        let mut flat = vec![0xdc, 0xff, 0xff];
        flat.extend(std::iter::repeat_n(0x90, 0xffff));
        assert!(!nests_too_deep(&flat));
        assert!(!nests_too_deep(b""));
        assert!(!nests_too_deep(b"\xc1"));
        assert!(!nests_too_deep(b"\xdb\xff\xff\xff\xff"));
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
