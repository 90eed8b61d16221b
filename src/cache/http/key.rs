//! Cache keys of the HTTP and gRPC layers.
//!
//! A key is the 32-byte BLAKE3 hash of its parts, each written as its length (8 bytes,
//! little-endian) and its raw bytes, after a domain tag (`layercake/http/1`,
//! `layercake/grpc/1`). Length prefixes make the encoding unambiguous (no choice of path
//! and query can produce another request's parts), header values are hashed as raw bytes
//! (so a value that is not UTF-8 still has a key), and no secret (a per-user part built
//! from a token, say) is kept in memory or sent to Redis in the clear. Hashing also keeps
//! L1 keys at 32 bytes whatever the URL's length.

use blake3::Hasher;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;

use super::policy::VaryList;
use super::QueryKey;

pub(crate) type Key = [u8; 32];

/// Where key bytes go: a buffer on the stack hashed at the end (HTTP keys: small, and one
/// `blake3::hash` of a short buffer costs half of what feeding a `Hasher` does), or a
/// `Hasher` (gRPC keys, which include a message of up to `max_request_size` bytes). Both
/// hash the same byte sequence, so they give the same key.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Hasher {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// The bytes of an HTTP key, gathered on the stack (a heap buffer was one allocation per
/// request); a key that outgrows it moves on into a `Hasher`, which gives the same hash.
struct KeyBuf {
    bytes: [u8; KeyBuf::CAPACITY],
    len: usize,
    spilled: Option<Box<Hasher>>,
}

impl KeyBuf {
    /// Room for a host, a path and a query of usual lengths.
    const CAPACITY: usize = 256;

    fn new() -> Self {
        Self {
            bytes: [0; Self::CAPACITY],
            len: 0,
            spilled: None,
        }
    }

    fn finish(&self) -> Key {
        match &self.spilled {
            None => *blake3::hash(&self.bytes[..self.len]).as_bytes(),
            Some(hasher) => *hasher.finalize().as_bytes(),
        }
    }
}

impl Sink for KeyBuf {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.bytes.get_mut(self.len..end) {
            Some(room) if self.spilled.is_none() => {
                room.copy_from_slice(bytes);
                self.len = end;
            }
            _ => self.spill(bytes),
        }
    }
}

impl KeyBuf {
    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        let hasher = self.spilled.get_or_insert_with(|| {
            let mut hasher = Box::new(Hasher::new());
            hasher.update(&self.bytes[..self.len]);
            hasher
        });
        hasher.update(bytes);
    }
}

fn part(h: &mut impl Sink, bytes: &[u8]) {
    h.put(&(bytes.len() as u64).to_le_bytes());
    h.put(bytes);
}

/// All values of `name`, in order, then a count (so no values and one empty value differ).
fn header_values(h: &mut impl Sink, headers: &HeaderMap, name: &HeaderName) {
    let mut n = 0u64;
    for value in headers.get_all(name) {
        part(h, value.as_bytes());
        n += 1;
    }
    h.put(&n.to_le_bytes());
}

fn optional(h: &mut impl Sink, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            h.put(&[1]);
            part(h, bytes);
        }
        None => h.put(&[0]),
    }
}

/// What the key of an HTTP request is made of (see [`super`] for the documented list).
pub(crate) struct HttpKey<'a> {
    pub(crate) query: &'a QueryKey,
    pub(crate) key_headers: &'a [HeaderName],
    pub(crate) host: bool,
}

impl HttpKey<'_> {
    /// The base key: host, path, query, configured headers and the per-user part. `GET`
    /// and `HEAD` share it (a `HEAD` is answered from the stored `GET` response).
    pub(crate) fn base(&self, req: &Parts, user: Option<&[u8]>) -> Key {
        let mut h = KeyBuf::new();
        h.put(b"layercake/http/1\0");
        let host = self.host.then(|| {
            req.uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(|| req.headers.get(header::HOST).map(|v| v.as_bytes()))
        });
        optional(&mut h, host.flatten());
        part(&mut h, req.uri.path().as_bytes());
        self.hash_query(&mut h, req.uri.query());
        h.put(&(self.key_headers.len() as u64).to_le_bytes());
        for name in self.key_headers {
            part(&mut h, name.as_str().as_bytes());
            header_values(&mut h, &req.headers, name);
        }
        optional(&mut h, user);
        h.finish()
    }

    fn hash_query(&self, h: &mut KeyBuf, query: Option<&str>) {
        match self.query {
            QueryKey::Full => optional(h, query.map(str::as_bytes)),
            QueryKey::Ignore => h.put(&[2]),
            QueryKey::Sorted | QueryKey::Only(_) => {
                let mut pairs: Vec<&str> = query
                    .unwrap_or("")
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter(|p| match self.query {
                        QueryKey::Only(names) => names.iter().any(|n| n == param_name(p)),
                        _ => true,
                    })
                    .collect();
                // A stable sort keeps repeated parameters (`a=2&a=1`) in their order.
                pairs.sort_by(|a, b| param_name(a).cmp(param_name(b)));
                h.put(&[3]);
                h.put(&(pairs.len() as u64).to_le_bytes());
                for p in pairs {
                    part(h, p.as_bytes());
                }
            }
        }
    }
}

/// The name of a `name=value` query parameter, as written (not percent-decoded).
fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// The key of one variant of a response that has `Vary`: the base key and, for each
/// varied header name, all of the request's values for it.
pub(crate) fn variant(base: &Key, vary: &VaryList, headers: &HeaderMap) -> Key {
    let mut h = KeyBuf::new();
    h.put(b"layercake/vary/1\0");
    h.put(base);
    h.put(&(vary.len() as u64).to_le_bytes());
    for name in vary.iter() {
        part(&mut h, name.as_str().as_bytes());
        header_values(&mut h, headers, name);
    }
    h.finish()
}

/// The key of a unary gRPC call: method path, the headers that change the encoding of the
/// response, the per-user part, and the request message bytes.
pub(crate) fn grpc(req: &Parts, user: Option<&[u8]>, message: &[u8]) -> Key {
    let mut h = Hasher::new();
    h.put(b"layercake/grpc/1\0");
    part(&mut h, req.uri.path().as_bytes());
    for name in ["content-type", "grpc-encoding", "grpc-accept-encoding"] {
        header_values(&mut h, &req.headers, &HeaderName::from_static(name));
    }
    optional(&mut h, user);
    part(&mut h, message);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn parts(uri: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut req = Request::get(uri).body(()).unwrap();
        for (n, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        req.into_parts().0
    }

    fn key(query: QueryKey, uri: &str) -> Key {
        let k = HttpKey {
            query: &query,
            key_headers: &[],
            host: true,
        };
        k.base(&parts(uri, &[]), None)
    }

    #[test]
    fn query_modes() {
        assert_ne!(
            key(QueryKey::Full, "/a?x=1&y=2"),
            key(QueryKey::Full, "/a?y=2&x=1")
        );
        assert_eq!(
            key(QueryKey::Sorted, "/a?x=1&y=2"),
            key(QueryKey::Sorted, "/a?y=2&x=1")
        );
        assert_ne!(
            key(QueryKey::Sorted, "/a?x=1&x=2"),
            key(QueryKey::Sorted, "/a?x=2&x=1")
        );
        let only = || QueryKey::only(["q"]);
        assert_eq!(key(only(), "/a?q=1&utm=2"), key(only(), "/a?utm=3&q=1"));
        assert_ne!(key(only(), "/a?q=1"), key(only(), "/a?q=2"));
        assert_eq!(key(QueryKey::Ignore, "/a?q=1"), key(QueryKey::Ignore, "/a"));
        assert_ne!(key(QueryKey::Full, "/a?"), key(QueryKey::Full, "/a"));
        assert_ne!(key(QueryKey::Full, "/a"), key(QueryKey::Full, "/b"));
        assert_ne!(
            key(QueryKey::Full, "http://x/a"),
            key(QueryKey::Full, "http://y/a")
        );
    }

    #[test]
    fn headers_and_users() {
        let names = [HeaderName::from_static("x-tenant")];
        let k = HttpKey {
            query: &QueryKey::Full,
            key_headers: &names,
            host: false,
        };
        let none = k.base(&parts("/", &[]), None);
        let empty = k.base(&parts("/", &[("x-tenant", b"")]), None);
        let raw = k.base(&parts("/", &[("x-tenant", b"\xff\xfe")]), None);
        let raw2 = k.base(&parts("/", &[("x-tenant", b"\xff\xfd")]), None);
        assert!(none != empty && empty != raw && raw != raw2);
        assert_ne!(
            k.base(&parts("/", &[]), Some(b"u1")),
            k.base(&parts("/", &[]), Some(b"u2"))
        );
        assert_ne!(k.base(&parts("/", &[]), Some(b"")), none);
        // Hosts are ignored when configured so.
        assert_eq!(
            k.base(&parts("http://a/", &[]), None),
            k.base(&parts("http://b/", &[]), None)
        );
    }

    #[test]
    fn long_keys_hash_the_same_bytes() {
        // Past the stack buffer, the bytes go on into a `Hasher`: same bytes, same hash.
        for len in [
            0,
            1,
            KeyBuf::CAPACITY - 1,
            KeyBuf::CAPACITY,
            KeyBuf::CAPACITY + 1,
            5000,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = KeyBuf::new();
            let mut all = Vec::new();
            for piece in bytes.chunks(7) {
                buf.put(piece);
                all.extend_from_slice(piece);
            }
            assert_eq!(buf.finish(), *blake3::hash(&all).as_bytes(), "{len} bytes");
        }
        let path = format!("/{}", "a".repeat(1000));
        assert_ne!(
            key(QueryKey::Full, &path),
            key(QueryKey::Full, &format!("{path}b"))
        );
    }

    #[test]
    fn variants() {
        let base = [7; 32];
        let vary: VaryList = vec![HeaderName::from_static("accept-language")].into();
        let p = |v: &[u8]| parts("/", &[("accept-language", v)]).headers;
        assert_eq!(
            variant(&base, &vary, &p(b"en")),
            variant(&base, &vary, &p(b"en"))
        );
        assert_ne!(
            variant(&base, &vary, &p(b"en")),
            variant(&base, &vary, &p(b"de"))
        );
        assert_ne!(
            variant(&base, &vary, &p(b"en")),
            variant(&[8; 32], &vary, &p(b"en"))
        );
        assert_ne!(
            variant(&base, &vary, &HeaderMap::new()),
            variant(&base, &vary, &p(b""))
        );
    }
}
