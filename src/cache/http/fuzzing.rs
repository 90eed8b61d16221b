//! The HTTP adapter's decoders, for the `cargo fuzz` targets (see `crate::fuzzing`).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, CONTENT_LENGTH};

use super::policy::{parse_vary, request_directive, strip_hop_by_hop, CacheControl};
use super::policy::{RequestDirective, Vary};
use super::stored::{Entry, Render, Source};

/// An envelope around an entry, then the same bytes as the entry's MessagePack alone.
pub(crate) fn entry(data: &[u8]) {
    if let Ok((header, entry)) = crate::codec::decode::<Entry>(data) {
        check_entry(&entry, header.written_at_ms);
    }
    if let Ok(entry) = rmp_serde::from_slice::<Entry>(data) {
        check_entry(&entry, u64::MAX);
    }
}

/// Renders a decoded entry and writes it back: what is read must be a valid response that
/// writes and reads back as the same bytes.
fn check_entry(entry: &Entry, now_ms: u64) {
    match entry {
        Entry::Response(stored) => {
            for (how, source) in [
                (
                    Render {
                        head: false,
                        age: true,
                        x_cache: true,
                    },
                    Source::Hit,
                ),
                (
                    Render {
                        head: true,
                        age: false,
                        x_cache: false,
                    },
                    Source::Miss,
                ),
            ] {
                let res = stored.render::<http_body_util::Empty<Bytes>>(how, source, now_ms);
                assert_eq!(res.headers().contains_key(AGE), how.age);
                if let Some(length) = res.headers().get(CONTENT_LENGTH) {
                    assert!(length.to_str().is_ok_and(|l| l.parse::<usize>().is_ok()));
                }
            }
            let vary = stored.vary();
            assert!(vary.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        }
        Entry::Vary(vary) => assert!(vary.windows(2).all(|w| w[0].as_str() < w[1].as_str())),
        Entry::Uncacheable => panic!("never stored, so never read back"),
    }
    let bytes = crate::codec::encode(entry, 0, Duration::from_secs(1)).expect("encodes");
    let (_, again) = crate::codec::decode::<Entry>(&bytes).expect("decodes what it wrote");
    let bytes_again = crate::codec::encode(&again, 0, Duration::from_secs(1)).expect("encodes");
    assert_eq!(bytes, bytes_again, "a second round trip changed the entry");
}

/// Each line of `data` is one header: its first byte chooses the name, the rest is the
/// value (lines that are not valid header values are left out, as `http` would).
pub(crate) fn headers(data: &[u8]) {
    const NAMES: [&str; 4] = ["cache-control", "pragma", "vary", "connection"];
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((first, value)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(*first) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let cc = CacheControl::parse(&headers);
    let directive = request_directive(&headers);
    match cc {
        Err(_) => assert_eq!(directive, RequestDirective::Bypass),
        Ok(cc) => {
            assert_eq!(directive == RequestDirective::Bypass, cc.no_store);
            if let Some(seconds) = cc.shared_max_age() {
                assert!(cc.s_maxage == Some(seconds) || cc.max_age == Some(seconds));
            }
        }
    }
    match parse_vary(&headers) {
        Ok(Vary::Names(names)) => {
            assert!(!names.is_empty());
            assert!(names.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        }
        Ok(Vary::None | Vary::Any) | Err(_) => {}
    }
    strip_hop_by_hop(&mut headers);
    assert!(!headers.contains_key(http::header::CONNECTION));
}
