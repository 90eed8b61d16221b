//! Entry points for the `cargo fuzz` targets in `fuzz/`, built only with `--cfg fuzzing`
//! (which `cargo fuzz` sets): each one hands bytes from outside to one of the crate-private
//! decoders, and panics only when a decoder panics or breaks an invariant its callers rely on.
//! Not part of the API.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::codec;

/// Any MessagePack value, read through `deserialize_any` as a dynamically typed value
/// (`serde_json::Value`, say) would be: nesting, maps and every scalar kind.
#[derive(Debug)]
enum Dynamic {
    Unit,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    Bin(Vec<u8>),
    List(Vec<Dynamic>),
    Map(Vec<(Dynamic, Dynamic)>),
}

impl<'de> Deserialize<'de> for Dynamic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DynamicVisitor)
    }
}

impl serde::Serialize for Dynamic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Dynamic::Unit => s.serialize_unit(),
            Dynamic::Bool(v) => s.serialize_bool(*v),
            // Read from an `i64` or a `u64`, so one of them holds it.
            Dynamic::Int(v) => match i64::try_from(*v) {
                Ok(v) => s.serialize_i64(v),
                Err(_) => s.serialize_u64(u64::try_from(*v).map_err(serde::ser::Error::custom)?),
            },
            Dynamic::Float(v) => s.serialize_f64(*v),
            Dynamic::Text(v) => s.serialize_str(v),
            Dynamic::Bin(v) => s.serialize_bytes(v),
            Dynamic::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Dynamic::Map(items) => {
                let mut map = s.serialize_map(Some(items.len()))?;
                for (k, v) in items {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct DynamicVisitor;

impl<'de> Visitor<'de> for DynamicVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::Unit)
    }
    fn visit_none<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::Unit)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Dynamic, D::Error> {
        Dynamic::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Dynamic, E> {
        Ok(Dynamic::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::Text(v.to_owned()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Dynamic, E> {
        Ok(Dynamic::Bin(v.to_vec()))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Dynamic, D::Error> {
        Dynamic::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Dynamic::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dynamic, A::Error> {
        let mut items = Vec::new();
        while let Some(entry) = map.next_entry()? {
            items.push(entry);
        }
        Ok(Dynamic::Map(items))
    }
}

/// A typed value with the shapes applications cache and enqueue.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Typed {
    name: String,
    tags: Vec<String>,
    score: Option<f32>,
    kind: Kind,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Kind {
    Unit,
    Newtype(u64),
    Tuple(i8, String),
    Struct { flag: bool, list: Vec<u16> },
    Nested(Box<Kind>),
}

/// The value envelope (`crate::codec`) as the cache reads it from Redis.
pub fn envelope(data: &[u8]) {
    match codec::decode_header(data) {
        Ok((header, payload)) => {
            assert!(data.len() >= header.len);
            assert_eq!(payload, &data[header.len..]);
            assert!(header.stale_until_ms >= header.expires_at_ms);
            let left = header.remaining(header.written_at_ms);
            assert_eq!(left.is_some(), header.expires_at_ms > header.written_at_ms);
        }
        Err(e) => assert_eq!(e, codec::DecodeError::Format),
    }
    let _ = codec::decode::<String>(data);
    let _ = codec::decode::<Vec<Option<u64>>>(data);
    if let Ok((header, value)) = codec::decode::<Dynamic>(data) {
        envelope_again(&value, header);
    }
    if let Ok((header, value)) = codec::decode::<Typed>(data) {
        envelope_again(&value, header);
    }
}

/// What was read can be written again, and reads back as the same bytes.
fn envelope_again<V>(value: &V, header: codec::Header)
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    let ttl = Duration::from_millis(header.expires_at_ms.saturating_sub(header.written_at_ms));
    let again = codec::encode(value, header.written_at_ms, ttl).expect("encodes");
    let (_, back) = codec::decode::<V>(&again).expect("decodes what it wrote");
    let third = codec::encode(&back, header.written_at_ms, ttl).expect("encodes");
    assert_eq!(again, third, "a second round trip changed the value");
}

/// The stored HTTP entry as the cache reads it from Redis: an envelope around a MessagePack
/// entry, or (so the fuzzer need not find the header first) the MessagePack alone. A decoded
/// response is rendered and written back.
#[cfg(feature = "http")]
pub fn http_entry(data: &[u8]) {
    crate::cache::http::fuzzing::entry(data);
}

/// `Cache-Control`, `Pragma`, `Vary` and `Connection` as a request or response carries
/// them: each line of `data` is one header, its first byte choosing which.
#[cfg(feature = "http")]
pub fn http_headers(data: &[u8]) {
    crate::cache::http::fuzzing::headers(data);
}

/// A job payload (or a stored result) as a worker reads it back from the store.
pub fn job_payload(data: &[u8]) {
    let _ = crate::queue::decode_payload::<String>(data);
    let _ = crate::queue::decode_payload::<(u64, Option<String>)>(data);
    if let Ok(value) = crate::queue::decode_payload::<Dynamic>(data) {
        payload_again(&value);
    }
    if let Ok(value) = crate::queue::decode_payload::<Typed>(data) {
        payload_again(&value);
    }
}

fn payload_again<V>(value: &V)
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    let again = crate::queue::encode_payload(value).expect("encodes");
    let back = crate::queue::decode_payload::<V>(&again).expect("decodes what it wrote");
    let third = crate::queue::encode_payload(&back).expect("encodes");
    assert_eq!(again, third, "a second round trip changed the value");
}
