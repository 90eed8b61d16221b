//! Properties of the stored HTTP entry as the cache reads it back from Redis: inside the
//! envelope (`crate::codec`), as MessagePack.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, CONTENT_LENGTH};
use http::StatusCode;
use proptest::prelude::*;
use serde::Serialize;

use super::*;
use crate::codec;

/// Names a response carries, with a few fixed ones so that repeated names are common.
fn name_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("set-cookie".to_owned()),
        Just("content-type".to_owned()),
        Just("x-a".to_owned()),
        "[a-z0-9!#$%&'*+.^_`|~-]{1,12}",
    ]
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    name_string().prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token"))
}

/// A `Vary` list as the service builds it: sorted, without duplicates.
fn vary_list(max: usize) -> impl Strategy<Value = VaryList> {
    proptest::collection::btree_set(name_string(), 0..max).prop_map(|names| {
        names
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token"))
            .collect::<Vec<_>>()
            .into()
    })
}

/// Any value a `HeaderValue` can hold: visible ASCII, space, tab and obs-text (non-UTF-8).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![Just(b'\t'), 0x20..0x7fu8, 0x80..=0xffu8];
    proptest::collection::vec(byte, 0..24)
        .prop_map(|v| HeaderValue::from_bytes(&v).expect("valid header bytes"))
}

fn header_map(max: usize) -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((header_name(), header_value()), 0..max).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(n, v);
        }
        map
    })
}

/// The parts of a stored response (`Stored` itself has no `Debug` for proptest to print).
#[derive(Debug, Clone)]
struct Parts {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    stored_at_ms: u64,
    age: u64,
    vary: VaryList,
}

impl Parts {
    fn build(&self) -> Stored {
        let p = self.clone();
        Stored::new(
            p.status,
            p.headers,
            p.body,
            p.trailers,
            p.stored_at_ms,
            p.age,
            p.vary,
            (Ttl::After(Duration::from_secs(60)), None, Tags::none()),
        )
    }
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        100..1000u16,
        header_map(8),
        proptest::collection::vec(any::<u8>(), 0..128),
        any::<bool>(),
        proptest::option::of(header_map(4)),
        any::<u64>(),
        any::<u64>(),
        vary_list(4),
    )
        .prop_map(
            |(status, mut headers, body, with_length, trailers, stored_at_ms, age, vary)| {
                if with_length {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                }
                Parts {
                    status: StatusCode::from_u16(status).expect("100..1000"),
                    headers,
                    body: Bytes::from(body),
                    trailers,
                    stored_at_ms,
                    age,
                    vary,
                }
            },
        )
}

fn same(a: &Stored, b: &Stored) -> Result<(), TestCaseError> {
    let (a, b) = (&*a.0, &*b.0);
    prop_assert_eq!(a.status, b.status);
    prop_assert_eq!(&a.headers, &b.headers);
    prop_assert_eq!(&a.body, &b.body);
    prop_assert_eq!(&a.trailers, &b.trailers);
    prop_assert_eq!((a.stored_at_ms, a.age), (b.stored_at_ms, b.age));
    prop_assert_eq!(&a.vary, &b.vary);
    Ok(())
}

/// Renders a decoded response at `now_ms` and checks what any client would rely on.
fn render_checks(s: &Stored, now_ms: u64) -> Result<(), TestCaseError> {
    let how = Render {
        head: false,
        age: true,
        x_cache: true,
    };
    let res = s.render::<http_body_util::Empty<Bytes>>(how, Source::Hit, now_ms);
    prop_assert_eq!(res.status(), s.0.status);
    let expected =
        s.0.age
            .saturating_add(now_ms.saturating_sub(s.0.stored_at_ms) / 1000);
    let expected = expected.to_string();
    prop_assert_eq!(res.headers()[AGE].as_bytes(), expected.as_bytes());
    Ok(())
}

/// What anyone who can write to Redis could put there: the wire form, with any name, value,
/// status and `content-length`.
/// (Also used by `stored.rs`' own tests.)
#[derive(Debug, Serialize)]
pub(super) enum Forged {
    Response(ForgedWire),
    Vary(Vec<String>),
}

#[derive(Debug, Serialize)]
pub(super) struct ForgedWire {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, ForgedBytes)>,
    pub(super) body: ForgedBytes,
    pub(super) trailers: Option<Vec<(String, ForgedBytes)>>,
    pub(super) stored_at_ms: u64,
    pub(super) age: u64,
    pub(super) vary: Vec<String>,
}

/// Bytes that serialize as a MessagePack `bin`, as stored bodies and header values do.
#[derive(Debug, Clone)]
pub(super) struct ForgedBytes(pub(super) Vec<u8>);

impl Serialize for ForgedBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), any::<u64>()]
}

fn forged_bytes() -> impl Strategy<Value = ForgedBytes> {
    proptest::collection::vec(any::<u8>(), 0..16).prop_map(ForgedBytes)
}

/// Mostly valid parts, so that many forged entries decode and go on to be rendered.
fn forged_headers() -> impl Strategy<Value = Vec<(String, ForgedBytes)>> {
    let name = prop_oneof![
        2 => name_string(),
        1 => Just("content-length".to_owned()),
        1 => any::<String>(),
    ];
    let value = prop_oneof![
        3 => header_value().prop_map(|v| ForgedBytes(v.as_bytes().to_vec())),
        1 => Just(ForgedBytes(b"3".to_vec())),
        1 => forged_bytes(),
    ];
    proptest::collection::vec((name, value), 0..4)
}

fn forged() -> impl Strategy<Value = Forged> {
    let status = prop_oneof![3 => 100..1000u16, 1 => any::<u16>()];
    let vary = prop_oneof![name_string(), any::<String>()];
    let wire = (
        status,
        forged_headers(),
        forged_bytes(),
        proptest::option::of(forged_headers()),
        edge_u64(),
        edge_u64(),
        proptest::collection::vec(vary, 0..3),
    )
        .prop_map(
            |(status, headers, body, trailers, stored_at_ms, age, vary)| {
                Forged::Response(ForgedWire {
                    status,
                    headers,
                    body,
                    trailers,
                    stored_at_ms,
                    age,
                    vary,
                })
            },
        );
    prop_oneof![
        4 => wire,
        1 => proptest::collection::vec(any::<String>(), 0..4).prop_map(Forged::Vary),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn responses_round_trip_through_the_envelope(p in parts(), now in any::<u64>()) {
        let s = p.build();
        let bytes = codec::encode(&Entry::Response(s.clone()), now, Duration::from_secs(60)).expect("encodes");
        let (header, back) = codec::decode::<Entry>(&bytes).expect("decodes");
        prop_assert_eq!(header.written_at_ms, now);
        let Entry::Response(back) = back else {
            return Err(TestCaseError::fail("a response expected"));
        };
        same(&back, &s)?;
    }

    #[test]
    fn vary_markers_round_trip(list in vary_list(6)) {
        let bytes = codec::encode(&Entry::Vary(list.clone()), 0, Duration::MAX).expect("encodes");
        let (_, back) = codec::decode::<Entry>(&bytes).expect("decodes");
        let Entry::Vary(back) = back else {
            return Err(TestCaseError::fail("a vary marker expected"));
        };
        prop_assert_eq!(back, list);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), now in any::<u64>()) {
        if let Ok(Entry::Response(s)) = rmp_serde::from_slice::<Entry>(&bytes) {
            render_checks(&s, now)?;
        }
        if let Ok((_, Entry::Response(s))) = codec::decode::<Entry>(&bytes) {
            render_checks(&s, now)?;
        }
    }

    #[test]
    fn forged_entries_decode_only_when_valid(f in forged(), now in edge_u64()) {
        let bytes = rmp_serde::to_vec_named(&f).expect("encodes");
        let decoded = rmp_serde::from_slice::<Entry>(&bytes);
        match (&f, decoded) {
            (Forged::Response(w), Ok(Entry::Response(s))) => {
                let i = &*s.0;
                prop_assert_eq!(i.status.as_u16(), w.status);
                prop_assert_eq!(i.headers.len(), w.headers.len());
                prop_assert_eq!(i.body.as_ref(), &w.body.0[..]);
                if let Some(length) = i.headers.get(CONTENT_LENGTH) {
                    let expected = w.body.0.len().to_string();
                    prop_assert_eq!(length.as_bytes(), expected.as_bytes());
                }
                // Vary names come back normalised: lowercase, sorted, without duplicates.
                let normal: BTreeSet<String> = w.vary.iter().map(|n| n.to_ascii_lowercase()).collect();
                let read: Vec<&str> = i.vary.iter().map(HeaderName::as_str).collect();
                prop_assert_eq!(read, normal.iter().map(String::as_str).collect::<Vec<_>>());
                render_checks(&s, now)?;
            }
            (Forged::Vary(names), Ok(Entry::Vary(list))) => {
                prop_assert!(list.len() <= names.len());
                prop_assert!(list.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
            }
            (_, Ok(_)) => return Err(TestCaseError::fail("decoded as another variant")),
            (Forged::Response(w), Err(_)) => {
                // Rejected: so something in it is not a valid response.
                let bad_header = |(n, v): &(String, ForgedBytes)| {
                    HeaderName::from_bytes(n.as_bytes()).is_err()
                        || HeaderValue::from_bytes(&v.0).is_err()
                };
                let first_length = w
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"));
                prop_assert!(
                    StatusCode::from_u16(w.status).is_err()
                        || w.headers.iter().any(bad_header)
                        || w.trailers.iter().flatten().any(bad_header)
                        || w.vary.iter().any(|n| HeaderName::from_bytes(n.as_bytes()).is_err())
                        || first_length.is_some_and(|(_, v)| v.0 != w.body.0.len().to_string().as_bytes()),
                    "a valid entry was rejected: {:?}", w
                );
            }
            (Forged::Vary(names), Err(_)) => {
                prop_assert!(names.iter().any(|n| HeaderName::from_bytes(n.as_bytes()).is_err()));
            }
        }
    }

    #[test]
    fn truncated_entries_are_errors(p in parts(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&Entry::Response(p.build()), 0, Duration::from_secs(1)).expect("encodes");
        let cut = cut.index(bytes.len());
        prop_assert!(codec::decode::<Entry>(&bytes[..cut]).is_err());
    }
}
