//! Properties of the envelope: what `encode` writes, `decode` reads back; bytes from Redis
//! that are not an envelope are errors, never panics.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;

/// A value with the shapes applications cache: strings, bytes, options, maps, an enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Value {
    name: String,
    #[serde(with = "serde_bytes_compat")]
    raw: Vec<u8>,
    score: Option<i64>,
    ratio: f64,
    tags: BTreeMap<String, u32>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Newtype(u64),
    Tuple(i8, String),
    Struct { flag: bool, list: Vec<u16> },
}

/// `Vec<u8>` as a MessagePack `bin` (as `Bytes` with its `serde` feature does).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bin;
        impl serde::de::Visitor<'_> for Bin {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(Bin)
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Unit),
        any::<u64>().prop_map(Kind::Newtype),
        (any::<i8>(), any::<String>()).prop_map(|(a, b)| Kind::Tuple(a, b)),
        (any::<bool>(), proptest::collection::vec(any::<u16>(), 0..8))
            .prop_map(|(flag, list)| Kind::Struct { flag, list }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    (
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<Option<i64>>(),
        // NaN is not equal to itself; every other float must come back bit for bit.
        any::<f64>().prop_filter("not NaN", |f| !f.is_nan()),
        proptest::collection::btree_map(any::<String>(), any::<u32>(), 0..4),
        kind(),
    )
        .prop_map(|(name, raw, score, ratio, tags, kind)| Value {
            name,
            raw,
            score,
            ratio,
            tags,
            kind,
        })
}

/// Times around the edges as well as anywhere: 0, the largest, and TTLs that saturate.
fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

fn ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_millis),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// One level of nesting: how a container is written, and an optional sibling written before
/// it inside a two-element array (which then counts as a level of its own).
fn level() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>)> {
    let open = proptest::sample::select(vec![
        b"\x91".to_vec(),
        b"\x81\xc0".to_vec(),
        b"\x81\xa4Node".to_vec(),
        b"\xdc\x00\x01".to_vec(),
        b"\xdd\x00\x00\x00\x01".to_vec(),
        b"\xde\x00\x01\x01".to_vec(),
        b"\xdf\x00\x00\x00\x01\xc3".to_vec(),
    ]);
    let sibling = proptest::sample::select(vec![
        b"\x05".to_vec(),
        b"\xa2ab".to_vec(),
        b"\xd9\x01a".to_vec(),
        b"\xc4\x01\xff".to_vec(),
        b"\xc7\x01\x07a".to_vec(),
        b"\xd6\x01abcd".to_vec(),
        b"\xcf\x00\x00\x00\x00\x00\x00\x00\x01".to_vec(),
        b"\x90".to_vec(),
        b"\x80".to_vec(),
    ]);
    (open, proptest::option::weighted(0.3, sibling))
}

/// A value nested through `levels`, and how many containers deep it goes.
fn nested(levels: &[(Vec<u8>, Option<Vec<u8>>)]) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut containers = 0;
    for (open, sibling) in levels {
        if let Some(sibling) = sibling {
            bytes.push(0x92);
            bytes.extend_from_slice(sibling);
            containers += 1;
        }
        bytes.extend_from_slice(open);
        containers += 1;
    }
    bytes.push(0xc0);
    (bytes, containers)
}

/// rmp-serde alone, with the same limit.
fn rmp_depth_error(bytes: &[u8]) -> bool {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    matches!(
        serde::de::IgnoredAny::deserialize(&mut de),
        Err(rmp_serde::decode::Error::DepthLimitExceeded)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trips_any_value_and_header(v in value(), now in millis(), ttl in ttl()) {
        let bytes = encode(&v, now, ttl).expect("encodes");
        let (header, back): (Header, Value) = decode(&bytes).expect("decodes");
        prop_assert_eq!(back, v);
        prop_assert_eq!(header.written_at_ms, now);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        prop_assert_eq!(header.expires_at_ms, now.saturating_add(ttl_ms));
        // The header alone reads the same, and the payload is what follows it.
        let (alone, payload) = decode_header(&bytes).expect("header decodes");
        prop_assert_eq!(alone, header);
        prop_assert_eq!(payload, &bytes[HEADER_LEN..]);
    }

    #[test]
    fn remaining_is_the_time_left(expires in millis(), now in millis()) {
        let header = Header::v1(0, expires);
        let expected = (expires > now).then(|| Duration::from_millis(expires - now));
        prop_assert_eq!(header.remaining(now), expected);
    }

    #[test]
    fn arbitrary_bytes_are_an_error_or_a_header(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let v1 = bytes.len() >= HEADER_LEN && bytes[..4] == [b'l', b'c', 1, 1];
        let v2 = bytes.len() >= HEADER_LEN_STALE && bytes[..4] == [b'l', b'c', 2, 1];
        let looks_like_one = v1 || v2;
        match decode_header(&bytes) {
            Ok((header, payload)) => {
                prop_assert!(looks_like_one);
                let len = if v1 { HEADER_LEN } else { HEADER_LEN_STALE };
                prop_assert_eq!(header.len, len);
                prop_assert!(header.stale_until_ms >= header.expires_at_ms);
                prop_assert_eq!(payload.len(), bytes.len() - len);
            }
            Err(e) => {
                prop_assert!(!looks_like_one);
                prop_assert_eq!(e, DecodeError::Format);
            }
        }
        // Never a panic, whatever the type asked for.
        let _ = decode::<Value>(&bytes);
        let _ = decode::<String>(&bytes);
        let _ = decode::<Vec<Option<u64>>>(&bytes);
    }

    #[test]
    fn arbitrary_payload_after_a_good_header_never_panics(
        now in millis(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = encode(&(), now, Duration::from_secs(1)).expect("encodes");
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&payload);
        match decode::<Value>(&bytes) {
            Ok((header, _)) => prop_assert_eq!(header.written_at_ms, now),
            Err(e) => prop_assert_eq!(e, DecodeError::Payload),
        }
    }

    #[test]
    fn truncated_headers_are_format_errors(v in value(), now in millis(), cut in 0..HEADER_LEN) {
        let bytes = encode(&v, now, Duration::from_secs(60)).expect("encodes");
        prop_assert_eq!(decode_header(&bytes[..cut]).err(), Some(DecodeError::Format));
        prop_assert_eq!(decode::<Value>(&bytes[..cut]).err(), Some(DecodeError::Format));
    }

    #[test]
    fn mutated_magic_version_or_codec_is_a_format_error(
        v in value(),
        at in 0..4usize,
        flip in 1..=255u8,
    ) {
        let mut bytes = encode(&v, 1, Duration::from_secs(60)).expect("encodes");
        bytes[at] ^= flip;
        // Version 1 turned into 2 is another valid header (stale-until taken from the payload).
        prop_assume!(!(at == 2 && bytes[2] == 2));
        prop_assert_eq!(decode_header(&bytes).err(), Some(DecodeError::Format));
        prop_assert_eq!(decode::<Value>(&bytes).err(), Some(DecodeError::Format));
    }

    #[test]
    fn mutated_timestamps_are_read_as_written(v in value(), at in 4..HEADER_LEN, flip in 1..=255u8) {
        // The timestamps carry no check: a flipped bit there is a different time, not an error.
        let mut bytes = encode(&v, 1_000, Duration::from_secs(60)).expect("encodes");
        bytes[at] ^= flip;
        let (header, back): (Header, Value) = decode(&bytes).expect("decodes");
        prop_assert_eq!(back, v);
        prop_assert_ne!((header.written_at_ms, header.expires_at_ms), (1_000, 61_000));
    }

    #[test]
    fn mutated_payloads_never_panic(v in value(), at in any::<prop::sample::Index>(), flip in 1..=255u8) {
        let mut bytes = encode(&v, 1, Duration::from_secs(60)).expect("encodes");
        let at = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
        bytes[at] ^= flip;
        if let Err(e) = decode::<Value>(&bytes) {
            prop_assert_eq!(e, DecodeError::Payload);
        }
    }

    #[test]
    fn nesting_is_measured_as_the_decoder_counts_it(
        levels in proptest::collection::vec(level(), 100..140),
    ) {
        let (bytes, containers) = nested(&levels);
        prop_assert_eq!(nests_too_deep(&bytes), containers >= MAX_DEPTH);
        prop_assert_eq!(decode_payload::<serde::de::IgnoredAny>(&bytes).is_ok(), containers < MAX_DEPTH);
    }

    #[test]
    fn the_nesting_scan_agrees_with_rmp_serde(
        bytes in proptest::collection::vec(
            prop_oneof![
                6 => proptest::sample::select(vec![0x91u8, 0x92, 0x81, 0xdc, 0x00, 0x01, 0xc0]),
                1 => any::<u8>(),
            ],
            0..400,
        ),
    ) {
        // Where the scan finds too deep a value, rmp-serde (which reads the bytes in the same
        // order) finds it too; the other way round, unless an extension (which rmp-serde
        // counts as a level, and the scan as a leaf) sits at the limit.
        let scan = nests_too_deep(&bytes);
        if scan {
            prop_assert!(rmp_depth_error(&bytes));
        }
        let has_ext = bytes.iter().any(|b| matches!(b, 0xc7..=0xc9 | 0xd4..=0xd8));
        if !has_ext {
            prop_assert_eq!(scan, rmp_depth_error(&bytes));
        }
    }
}
