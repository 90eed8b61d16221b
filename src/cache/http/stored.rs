//! What the HTTP and gRPC layers keep in a [`Cache`](crate::Cache): a stored response,
//! or the `Vary` marker of a resource whose responses vary.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, CONTENT_LENGTH};
use http::{Response, StatusCode};
use http_body::Body;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::body::CacheBody;
use super::policy::VaryList;
use crate::cache::{Cache, Tags, Ttl};

/// What the HTTP and gRPC layers store in a [`Cache`]: a response (status, headers, body,
/// trailers), or the marker of a resource whose responses vary. Opaque: build a
/// `Cache<CachedResponse>` and hand it to [`HttpCacheLayer`](super::HttpCacheLayer) or
/// [`GrpcCacheLayer`](super::GrpcCacheLayer), which infer the type.
///
/// ```
/// use layercake::{cache::http::CachedResponse, Cache, CacheLayer};
///
/// let pages: Cache<CachedResponse> = Cache::builder("pages").build()?;
/// let layer = CacheLayer::http(pages.clone());
/// # let _ = layer;
/// # Ok::<(), layercake::ConfigError>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CachedResponse(pub(crate) Entry);

impl std::fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Entry::Response(s) => f
                .debug_struct("CachedResponse")
                .field("status", &s.0.status)
                .field("body_len", &s.0.body.len())
                .finish_non_exhaustive(),
            Entry::Vary(names) => f.debug_tuple("CachedResponse::Vary").field(names).finish(),
            Entry::Uncacheable => f.pad("CachedResponse::Uncacheable"),
        }
    }
}

/// Now by the cache's clock, in Unix milliseconds (for `Age`).
pub(crate) fn now_ms(cache: &Cache<CachedResponse>) -> u64 {
    crate::clock::to_unix_ms(cache.now())
}

/// One cache entry.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// A response.
    Response(Stored),
    /// Stored under a resource's base key when its responses carry `Vary`: the request
    /// headers whose values, added to the base key, give the key of each variant.
    Vary(#[serde(with = "vary_list")] VaryList),
    /// A response that is not to be stored; never stored (so never read back, and never
    /// shared with single-flight waiters).
    #[serde(skip)]
    Uncacheable,
}

/// A stored response. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Stored(Arc<Inner>);

struct Inner {
    status: StatusCode,
    /// Without hop-by-hop headers and `Age`.
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    stored_at_ms: u64,
    /// The response's own `Age` when it was stored (it may come from an upstream cache).
    age: u64,
    /// The `Vary` names it was stored under; empty without `Vary`.
    vary: VaryList,
    /// How long to keep it (not stored: only read when it is first stored).
    ttl: Ttl,
    /// With `stale-while-revalidate`: until when (Unix ms, by the cache's clock), once
    /// expired, it is served at once while one load revalidates it in the background.
    revalidate_until_ms: Option<u64>,
    /// The tags to store it with (not stored: only read when it is first stored).
    tags: Tags,
}

/// Whether a response given to a client came from the cache (the `x-cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Hit,
    Miss,
    /// An expired entry served because the load failed or timed out (fail-safe).
    Stale,
}

impl Source {
    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Source::Hit => "HIT",
            Source::Miss => "MISS",
            Source::Stale => "STALE",
        })
    }
}

pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How to turn a stored response into a response for a client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Render {
    /// Answering a `HEAD`: headers only.
    pub(crate) head: bool,
    /// Set `Age` (HTTP; not gRPC).
    pub(crate) age: bool,
    /// Set `x-cache`.
    pub(crate) x_cache: bool,
}

impl Stored {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
        stored_at_ms: u64,
        age: u64,
        vary: VaryList,
        (ttl, revalidate_until_ms, tags): (Ttl, Option<u64>, Tags),
    ) -> Self {
        Self(Arc::new(Inner {
            status,
            headers,
            body,
            trailers,
            stored_at_ms,
            age,
            vary,
            ttl,
            revalidate_until_ms,
            tags,
        }))
    }

    pub(crate) fn vary(&self) -> &VaryList {
        &self.0.vary
    }

    pub(crate) fn ttl(&self) -> Ttl {
        self.0.ttl
    }

    /// The tags it is stored with.
    pub(crate) fn tags(&self) -> &Tags {
        &self.0.tags
    }

    /// Whether, expired, it may be served while a background load revalidates it:
    /// `now_ms` is within its `stale-while-revalidate` window.
    pub(crate) fn may_revalidate(&self, now_ms: u64) -> bool {
        self.0
            .revalidate_until_ms
            .is_some_and(|until| now_ms < until)
    }

    /// A response for a client, at `now_ms` by the cache's clock.
    pub(crate) fn render<B: Body>(
        &self,
        how: Render,
        source: Source,
        now_ms: u64,
    ) -> Response<CacheBody<B>> {
        let s = &*self.0;
        let body = if how.head {
            CacheBody::empty()
        } else {
            CacheBody::full(s.body.clone(), s.trailers.clone())
        };
        let mut res = Response::new(body);
        *res.status_mut() = s.status;
        // Sized for the two headers added below: a clone of the stored map has no room
        // left, and growing it was a reallocation per response.
        let headers = res.headers_mut();
        headers.reserve(s.headers.len() + 2);
        for (name, value) in &s.headers {
            headers.append(name.clone(), value.clone());
        }
        if how.age && source != Source::Miss {
            // Saturating: `age` and `stored_at_ms` are read back from Redis.
            let age = s
                .age
                .saturating_add(now_ms.saturating_sub(s.stored_at_ms) / 1000);
            res.headers_mut().insert(AGE, HeaderValue::from(age));
        }
        if how.x_cache {
            res.headers_mut().insert(X_CACHE, source.header_value());
        }
        res
    }
}

/// `Vary` lists serialize as a list of names.
mod vary_list {
    use super::*;

    pub(super) fn serialize<S: Serializer>(list: &VaryList, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(HeaderName::as_str))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VaryList, D::Error> {
        from_names(Vec::<String>::deserialize(d)?)
    }

    /// Checks and normalises names read back from storage.
    pub(super) fn from_names<E: serde::de::Error>(names: Vec<String>) -> Result<VaryList, E> {
        let mut list = names
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(E::custom))
            .collect::<Result<Vec<_>, _>>()?;
        list.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        list.dedup();
        Ok(list.into())
    }
}

/// Raw bytes that serialize as a MessagePack `bin`, not as an array of integers.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

fn header_list(map: &HeaderMap) -> Vec<(&str, Raw<'_>)> {
    map.iter()
        .map(|(n, v)| (n.as_str(), Raw(v.as_bytes())))
        .collect()
}

/// The stored form of [`Stored`] (field names are part of the stored format).
#[derive(Serialize)]
struct WireOut<'a> {
    status: u16,
    headers: Vec<(&'a str, Raw<'a>)>,
    body: &'a Bytes,
    trailers: Option<Vec<(&'a str, Raw<'a>)>>,
    stored_at_ms: u64,
    age: u64,
    vary: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revalidate_until_ms: Option<u64>,
}

#[derive(Deserialize)]
struct WireIn {
    status: u16,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    trailers: Option<Vec<(String, Bytes)>>,
    stored_at_ms: u64,
    age: u64,
    vary: Vec<String>,
    /// Absent from entries written before `stale-while-revalidate` was read.
    #[serde(default)]
    revalidate_until_ms: Option<u64>,
}

impl Serialize for Stored {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let i = &*self.0;
        WireOut {
            status: i.status.as_u16(),
            headers: header_list(&i.headers),
            body: &i.body,
            trailers: i.trailers.as_ref().map(header_list),
            stored_at_ms: i.stored_at_ms,
            age: i.age,
            vary: i.vary.iter().map(HeaderName::as_str).collect(),
            revalidate_until_ms: i.revalidate_until_ms,
        }
        .serialize(s)
    }
}

fn header_map<E: serde::de::Error>(list: Vec<(String, Bytes)>) -> Result<HeaderMap, E> {
    let mut map = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(E::custom)?;
        let value = HeaderValue::from_maybe_shared(value).map_err(E::custom)?;
        map.append(name, value);
    }
    Ok(map)
}

impl<'de> Deserialize<'de> for Stored {
    /// Checks everything a replica (or anyone who can write to Redis) could have put
    /// there: an entry that is not a valid response fails to decode, and the cache then
    /// treats it as a miss and removes it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = WireIn::deserialize(d)?;
        let status = StatusCode::from_u16(w.status).map_err(D::Error::custom)?;
        let headers = header_map(w.headers)?;
        if headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != w.body.len().to_string().as_bytes())
        {
            return Err(D::Error::custom(
                "content-length does not match the stored body",
            ));
        }
        let trailers = w.trailers.map(header_map).transpose()?;
        let vary = vary_list::from_names(w.vary)?;
        Ok(Stored::new(
            status,
            headers,
            w.body,
            trailers,
            w.stored_at_ms,
            w.age,
            vary,
            (
                Ttl::After(Duration::ZERO),
                w.revalidate_until_ms,
                Tags::none(),
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stored {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-raw", HeaderValue::from_bytes(b"\xff\x80").unwrap());
        headers.insert(CONTENT_LENGTH, HeaderValue::from(3));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Stored::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"\x00\xffz"),
            Some(trailers),
            1_000,
            7,
            vec![HeaderName::from_static("accept-language")].into(),
            (Ttl::After(Duration::from_secs(5)), Some(99), Tags::none()),
        )
    }

    #[test]
    fn round_trips_through_messagepack() {
        let bytes = rmp_serde::to_vec_named(&Entry::Response(sample())).unwrap();
        // The body is a `bin`, not an array of integers.
        assert!(bytes.windows(3).any(|w| w == b"\x00\xffz"));
        let Entry::Response(back) = rmp_serde::from_slice::<Entry>(&bytes).unwrap() else {
            panic!("a response expected")
        };
        let (a, b) = (&*back.0, &*sample().0);
        assert_eq!(
            (a.status, &a.headers, &a.body, &a.trailers),
            (b.status, &b.headers, &b.body, &b.trailers)
        );
        assert_eq!(
            (a.stored_at_ms, a.age, &a.vary, a.revalidate_until_ms),
            (b.stored_at_ms, b.age, &b.vary, b.revalidate_until_ms)
        );

        let marker = Entry::Vary(vec![HeaderName::from_static("x-a")].into());
        let bytes = rmp_serde::to_vec_named(&marker).unwrap();
        assert!(
            matches!(rmp_serde::from_slice::<Entry>(&bytes).unwrap(), Entry::Vary(v) if v.len() == 1)
        );
    }

    #[test]
    fn age_from_storage_saturates() {
        // `age` and `stored_at_ms` come from Redis: a forged or corrupt entry must not make
        // rendering overflow (a panic in debug builds, a wrong `Age` in release builds).
        let forged = Stored::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            None,
            0,
            u64::MAX,
            VaryList::from([]),
            (Ttl::Default, None, Tags::none()),
        );
        let bytes = rmp_serde::to_vec_named(&Entry::Response(forged)).unwrap();
        let Entry::Response(read) = rmp_serde::from_slice::<Entry>(&bytes).unwrap() else {
            panic!("a response expected")
        };
        let how = Render {
            head: false,
            age: true,
            x_cache: false,
        };
        let res = read.render::<http_body_util::Empty<Bytes>>(how, Source::Hit, 5_000);
        assert_eq!(res.headers()[AGE], u64::MAX.to_string().as_str());
    }

    #[test]
    fn uncacheable_never_serializes() {
        assert!(rmp_serde::to_vec_named(&Entry::Uncacheable).is_err());
    }

    #[test]
    fn invalid_entries_do_not_decode() {
        use super::props::{Forged, ForgedBytes, ForgedWire};
        let forge = |status: u16, name: &str, value: &'static [u8]| {
            rmp_serde::to_vec_named(&Forged::Response(ForgedWire {
                status,
                headers: vec![(name.to_owned(), ForgedBytes(value.to_vec()))],
                body: ForgedBytes(b"abc".to_vec()),
                trailers: None,
                stored_at_ms: 0,
                age: 0,
                vary: vec![],
            }))
            .unwrap()
        };
        assert!(rmp_serde::from_slice::<Entry>(&forge(200, "x-ok", b"1")).is_ok());
        assert!(rmp_serde::from_slice::<Entry>(&forge(1000, "x-ok", b"1")).is_err());
        assert!(rmp_serde::from_slice::<Entry>(&forge(200, "bad name", b"1")).is_err());
        assert!(rmp_serde::from_slice::<Entry>(&forge(200, "x-a", b"a\nb")).is_err());
        assert!(rmp_serde::from_slice::<Entry>(&forge(200, "content-length", b"4")).is_err());
    }
}

#[cfg(test)]
#[path = "stored_props.rs"]
mod props;
