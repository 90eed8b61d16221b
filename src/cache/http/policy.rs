//! Reading `Cache-Control`, `Pragma` and `Vary`, and the hop-by-hop header list.
//!
//! Every parser here is strict: anything that does not follow the grammar of RFC 9110/9111
//! is reported as malformed, and the callers treat a malformed header as "do not store"
//! (responses) or "do not use the cache" (requests). Nothing here fails a request.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};

/// A header that does not follow its grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// The `Cache-Control` directives this cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// RFC 5861: how long after it expires the response may answer an error.
    pub(crate) stale_if_error: Option<u64>,
    /// RFC 5861: how long after it expires the response may be served while one
    /// revalidation runs in the background.
    pub(crate) stale_while_revalidate: Option<u64>,
}

impl CacheControl {
    /// Reads every `Cache-Control` header of `headers` (they form one list).
    ///
    /// Unknown directives are ignored, as RFC 9111 asks. A bad list, a non-numeric or
    /// negative `max-age`/`s-maxage`, or two different values for one of them, is malformed.
    pub(crate) fn parse(headers: &HeaderMap) -> Result<Self, Malformed> {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for (name, arg) in Directives::new(value.as_bytes()) {
                let name = name?;
                if name.eq_ignore_ascii_case(b"no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case(b"no-cache") {
                    // `no-cache="field"` included: never served without revalidation.
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case(b"private") {
                    cc.private = true;
                } else if name.eq_ignore_ascii_case(b"max-age") {
                    set_seconds(&mut cc.max_age, arg)?;
                } else if name.eq_ignore_ascii_case(b"s-maxage") {
                    set_seconds(&mut cc.s_maxage, arg)?;
                } else if name.eq_ignore_ascii_case(b"stale-if-error") {
                    set_seconds(&mut cc.stale_if_error, arg)?;
                } else if name.eq_ignore_ascii_case(b"stale-while-revalidate") {
                    set_seconds(&mut cc.stale_while_revalidate, arg)?;
                }
            }
        }
        Ok(cc)
    }

    /// The freshness lifetime a shared cache uses: `s-maxage`, else `max-age`.
    pub(crate) fn shared_max_age(&self) -> Option<u64> {
        self.s_maxage.or(self.max_age)
    }
}

/// `delta-seconds` (RFC 9111 §1.2.2): digits only; larger values saturate.
fn set_seconds(slot: &mut Option<u64>, arg: Option<Arg<'_>>) -> Result<(), Malformed> {
    let digits = match arg {
        Some(Arg::Token(t)) | Some(Arg::Quoted(t)) => t,
        None => return Err(Malformed),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    let seconds = digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    match *slot {
        Some(previous) if previous != seconds => Err(Malformed),
        _ => {
            *slot = Some(seconds);
            Ok(())
        }
    }
}

/// What a request asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestDirective {
    /// Use the cache.
    Normal,
    /// `no-cache`, `max-age=0` or `Pragma: no-cache`: call the service and store its answer.
    Refresh,
    /// `no-store`, or a malformed `Cache-Control`: leave the cache alone.
    Bypass,
}

pub(crate) fn request_directive(headers: &HeaderMap) -> RequestDirective {
    let Ok(cc) = CacheControl::parse(headers) else {
        return RequestDirective::Bypass;
    };
    if cc.no_store {
        return RequestDirective::Bypass;
    }
    if cc.no_cache || cc.max_age == Some(0) {
        return RequestDirective::Refresh;
    }
    // HTTP/1.0 `Pragma: no-cache` counts only without a `Cache-Control` (RFC 9111 §5.4).
    if !headers.contains_key(header::CACHE_CONTROL)
        && headers.get_all(header::PRAGMA).iter().any(|v| {
            Directives::new(v.as_bytes())
                .any(|(name, _)| name.is_ok_and(|n| n.eq_ignore_ascii_case(b"no-cache")))
        })
    {
        return RequestDirective::Refresh;
    }
    RequestDirective::Normal
}

/// The request header names a response varies on: sorted, without duplicates, lowercase.
pub(crate) type VaryList = Arc<[HeaderName]>;

/// A response's `Vary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No `Vary` header (or only empty ones).
    None,
    /// `Vary: *`: the response cannot be matched to any later request.
    Any,
    /// The named request headers select the response.
    Names(VaryList),
}

pub(crate) fn parse_vary(headers: &HeaderMap) -> Result<Vary, Malformed> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::VARY) {
        for element in value.as_bytes().split(|b| *b == b',') {
            let element = trim_ows(element);
            if element.is_empty() {
                continue; // empty list elements are allowed
            }
            if element == b"*" {
                return Ok(Vary::Any);
            }
            // `from_bytes` accepts only tokens and lowercases them.
            names.push(HeaderName::from_bytes(element).map_err(|_| Malformed)?);
        }
    }
    if names.is_empty() {
        return Ok(Vary::None);
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Ok(Vary::Names(names.into()))
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1), including those a `Connection`
/// header names, which describe one connection and must not be replayed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(trim_ows(t)).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A directive's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg<'a> {
    Token(&'a [u8]),
    /// The inside of a quoted-string, escapes left in (we only compare digits).
    Quoted(&'a [u8]),
}

/// One directive: its name (or `Err` at the first bad element) and its argument.
type Directive<'a> = (Result<&'a [u8], Malformed>, Option<Arg<'a>>);

/// Iterates `token [ "=" ( token / quoted-string ) ]` elements of a comma-separated list.
/// Yields `Err` once, then stops, at the first thing that does not fit the grammar.
struct Directives<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Directives<'a> {
    fn new(value: &'a [u8]) -> Self {
        Self {
            rest: value,
            failed: false,
        }
    }

    fn fail(&mut self) -> Option<Directive<'a>> {
        self.failed = true;
        Some((Err(Malformed), None))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn take_token(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|b| is_tchar(**b)).count();
    s.split_at(n)
}

impl<'a> Iterator for Directives<'a> {
    type Item = Directive<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // Skip empty list elements and whitespace.
        loop {
            self.rest = trim_ows(self.rest);
            match self.rest {
                [] => return None,
                [b',', rest @ ..] => self.rest = rest,
                _ => break,
            }
        }
        let (name, rest) = take_token(self.rest);
        if name.is_empty() {
            return self.fail();
        }
        let mut rest = trim_ows(rest);
        let mut arg = None;
        if let [b'=', after @ ..] = rest {
            let after = trim_ows(after);
            if let [b'"', quoted @ ..] = after {
                let mut i = 0;
                let end = loop {
                    match quoted.get(i) {
                        None => return self.fail(), // unterminated
                        Some(b'"') => break i,
                        Some(b'\\') => i += 2,
                        Some(b) if *b == b'\t' || (0x20..0x7f).contains(b) || *b >= 0x80 => i += 1,
                        Some(_) => return self.fail(),
                    }
                };
                arg = Some(Arg::Quoted(&quoted[..end]));
                rest = &quoted[end + 1..];
            } else {
                let (token, after) = take_token(after);
                if token.is_empty() {
                    return self.fail();
                }
                arg = Some(Arg::Token(token));
                rest = after;
            }
        }
        rest = trim_ows(rest);
        match rest {
            [] => self.rest = rest,
            [b',', after @ ..] => self.rest = after,
            _ => return self.fail(),
        }
        Some((Ok(name), arg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn cc(value: &str) -> Result<CacheControl, Malformed> {
        CacheControl::parse(&headers(&[("cache-control", value.as_bytes())]))
    }

    #[test]
    fn cache_control_directives() {
        let c = cc("public, max-age=60, s-maxage=\"30\"").unwrap();
        assert_eq!((c.max_age, c.s_maxage), (Some(60), Some(30)));
        assert_eq!(c.shared_max_age(), Some(30));
        assert!(cc("No-Store").unwrap().no_store);
        assert!(cc("private=\"set-cookie, x-a\"").unwrap().private);
        assert!(cc("no-cache=\"a\", must-revalidate").unwrap().no_cache);
        assert_eq!(cc(" , max-age=5 ,, ").unwrap().max_age, Some(5));
        assert_eq!(
            cc("max-age=99999999999999999999999").unwrap().max_age,
            Some(u64::MAX)
        );
        assert_eq!(cc("max-age=5, max-age=5").unwrap().max_age, Some(5));
        assert_eq!(cc("ext=\"a\\\"b\", max-age=1").unwrap().max_age, Some(1));
    }

    #[test]
    fn malformed_cache_control() {
        for bad in [
            "max-age=abc",
            "max-age=-1",
            "max-age",
            "max-age=",
            "max-age=1 2",
            "max-age=1, max-age=2",
            "no-store;",
            "=5",
            "private=\"unterminated",
            "a b",
        ] {
            assert_eq!(cc(bad), Err(Malformed), "{bad:?}");
        }
        let non_utf8 = headers(&[("cache-control", b"max-age=\xff")]);
        assert_eq!(CacheControl::parse(&non_utf8), Err(Malformed));
    }

    #[test]
    fn request_directives() {
        let d = |pairs: &[(&str, &[u8])]| request_directive(&headers(pairs));
        assert_eq!(d(&[]), RequestDirective::Normal);
        assert_eq!(
            d(&[("cache-control", b"no-cache")]),
            RequestDirective::Refresh
        );
        assert_eq!(
            d(&[("cache-control", b"max-age=0")]),
            RequestDirective::Refresh
        );
        assert_eq!(d(&[("pragma", b"no-cache")]), RequestDirective::Refresh);
        assert_eq!(
            d(&[("pragma", b"no-cache"), ("cache-control", b"max-age=10")]),
            RequestDirective::Normal
        );
        assert_eq!(
            d(&[("cache-control", b"no-store")]),
            RequestDirective::Bypass
        );
        assert_eq!(
            d(&[("cache-control", b"max-age=x")]),
            RequestDirective::Bypass
        );
    }

    #[test]
    fn vary() {
        let v = |value: &[u8]| parse_vary(&headers(&[("vary", value)]));
        assert_eq!(parse_vary(&HeaderMap::new()), Ok(Vary::None));
        assert_eq!(v(b" , "), Ok(Vary::None));
        assert_eq!(v(b"Accept-Encoding, *"), Ok(Vary::Any));
        let Ok(Vary::Names(names)) = v(b"X-B, accept-language ,x-b") else {
            panic!("names expected")
        };
        assert_eq!(
            names.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept-language", "x-b"]
        );
        assert_eq!(v(b"bad header"), Err(Malformed));
        assert_eq!(v(b"x-\xff"), Err(Malformed));
    }

    #[test]
    fn hop_by_hop() {
        let mut h = headers(&[
            ("connection", b"close, x-private-hop"),
            ("x-private-hop", b"1"),
            ("keep-alive", b"timeout=5"),
            ("transfer-encoding", b"chunked"),
            ("content-type", b"text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}

#[cfg(test)]
#[path = "policy_props.rs"]
mod props;
