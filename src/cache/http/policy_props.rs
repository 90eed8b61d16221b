//! Properties of the `Cache-Control`, `Pragma` and `Vary` parsers: any header value (obs-text
//! included) is parsed or rejected without panicking, and well-formed lists give what a
//! simple model of the grammar says.

use std::collections::BTreeSet;

use http::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, PRAGMA, VARY};
use proptest::prelude::*;

use super::*;

/// Bytes that a header value can hold, weighted towards the ones the grammar cares about.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => proptest::sample::select(b" \t,=\"\\*-09azAZ".to_vec()),
        1 => any::<u8>(),
    ];
    proptest::collection::vec(byte, 0..40)
}

/// A map with each value that `HeaderValue` accepts, under `name`.
fn map_of(name: &HeaderName, values: &[Vec<u8>]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            map.append(name.clone(), v);
        }
    }
    map
}

/// One generated directive.
#[derive(Debug, Clone)]
struct Directive {
    /// As written: its case is any.
    name: String,
    arg: Option<Arg>,
}

#[derive(Debug, Clone)]
enum Arg {
    Token(String),
    /// The raw inside of a quoted-string (escapes included), and what it stands for when
    /// it is a number.
    Quoted(Vec<u8>),
}

fn any_case(name: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// `delta-seconds`: leading zeros and values past `u64::MAX` included.
fn seconds() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..100_000u64).prop_map(|n| n.to_string()),
        "0{1,3}[0-9]{1,4}",
        "[0-9]{19,25}",
    ]
}

fn seconds_arg() -> impl Strategy<Value = Arg> {
    seconds().prop_flat_map(|s| {
        prop_oneof![
            Just(Arg::Token(s.clone())),
            Just(Arg::Quoted(s.into_bytes())),
        ]
    })
}

/// The inside of a quoted-string: qdtext (obs-text included) and quoted-pairs.
fn quoted_inside() -> impl Strategy<Value = Vec<u8>> {
    let qdtext = prop_oneof![
        Just(vec![b'\t']),
        (0x20..0x7fu8)
            .prop_filter("not a quote or backslash", |b| *b != b'"' && *b != b'\\')
            .prop_map(|b| vec![b]),
        (0x80..=0xffu8).prop_map(|b| vec![b]),
        prop_oneof![
            Just(b'"'),
            Just(b'\\'),
            Just(b'a'),
            Just(b' '),
            0x80..=0xffu8
        ]
        .prop_map(|b| vec![b'\\', b]),
    ];
    proptest::collection::vec(qdtext, 0..8).prop_map(|parts| parts.concat())
}

fn other_arg() -> impl Strategy<Value = Option<Arg>> {
    prop_oneof![
        Just(None),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,8}".prop_map(|t| Some(Arg::Token(t))),
        quoted_inside().prop_map(|q| Some(Arg::Quoted(q))),
    ]
}

fn directive() -> impl Strategy<Value = Directive> {
    let flag = prop_oneof![
        any_case("no-store"),
        any_case("no-cache"),
        any_case("private"),
        any_case("public"),
        any_case("must-revalidate"),
        // Extensions, which are ignored: not the two that take seconds.
        "[a-z][a-z0-9-]{0,8}".prop_filter("an extension", |n| n != "max-age" && n != "s-maxage"),
    ];
    let seconds = prop_oneof![any_case("max-age"), any_case("s-maxage")];
    prop_oneof![
        (flag, other_arg()).prop_map(|(name, arg)| Directive { name, arg }),
        (seconds, seconds_arg()).prop_map(|(name, arg)| Directive {
            name,
            arg: Some(arg),
        }),
    ]
}

/// Optional whitespace.
fn ows() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["", "", " ", "\t", "  "])
}

/// How the list is written: the whitespace around each part, empty elements, and where
/// it is split into several header lines.
#[derive(Debug, Clone)]
struct Layout {
    pads: Vec<[&'static str; 4]>,
    empties: Vec<bool>,
    breaks: Vec<bool>,
}

fn layout(n: usize) -> impl Strategy<Value = Layout> {
    (
        proptest::collection::vec([ows(), ows(), ows(), ows()], n),
        proptest::collection::vec(proptest::bool::weighted(0.1), n),
        proptest::collection::vec(proptest::bool::weighted(0.2), n),
    )
        .prop_map(|(pads, empties, breaks)| Layout {
            pads,
            empties,
            breaks,
        })
}

fn directives() -> impl Strategy<Value = (Vec<Directive>, Layout)> {
    proptest::collection::vec(directive(), 0..6).prop_flat_map(|ds| {
        let n = ds.len();
        (Just(ds), layout(n))
    })
}

/// Writes `elements` as header lines in `layout`: each line one comma-separated list.
fn write_lines(elements: &[Vec<u8>], layout: &Layout) -> Vec<Vec<u8>> {
    let mut lines = vec![Vec::new()];
    for (i, element) in elements.iter().enumerate() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() {
            line.push(b',');
        }
        if layout.empties[i] {
            line.extend_from_slice(b" ,");
        }
        line.extend_from_slice(layout.pads[i][0].as_bytes());
        line.extend_from_slice(element);
        line.extend_from_slice(layout.pads[i][1].as_bytes());
        if layout.breaks[i] {
            lines.push(Vec::new());
        }
    }
    lines
}

fn write_directive(d: &Directive, pad: [&str; 4]) -> Vec<u8> {
    let mut out = d.name.clone().into_bytes();
    match &d.arg {
        None => {}
        Some(arg) => {
            out.extend_from_slice(pad[2].as_bytes());
            out.push(b'=');
            out.extend_from_slice(pad[3].as_bytes());
            match arg {
                Arg::Token(t) => out.extend_from_slice(t.as_bytes()),
                Arg::Quoted(q) => {
                    out.push(b'"');
                    out.extend_from_slice(q);
                    out.push(b'"');
                }
            }
        }
    }
    out
}

fn cache_control_lines(ds: &[Directive], layout: &Layout) -> Vec<Vec<u8>> {
    let elements: Vec<Vec<u8>> = ds
        .iter()
        .zip(&layout.pads)
        .map(|(d, pad)| write_directive(d, *pad))
        .collect();
    write_lines(&elements, layout)
}

/// The model: flags are set by their name in any case; `max-age` and `s-maxage` take
/// their value, saturating at `u64::MAX`; two different values of one are malformed.
fn model(ds: &[Directive]) -> Result<CacheControl, Malformed> {
    let mut cc = CacheControl::default();
    let mut max_ages = BTreeSet::new();
    let mut s_maxages = BTreeSet::new();
    for d in ds {
        let seconds = || match &d.arg {
            Some(Arg::Token(t)) => t
                .parse::<u128>()
                .map_or(u64::MAX, |n| u64::try_from(n).unwrap_or(u64::MAX)),
            Some(Arg::Quoted(q)) => std::str::from_utf8(q)
                .ok()
                .and_then(|s| s.parse::<u128>().ok())
                .map_or(u64::MAX, |n| u64::try_from(n).unwrap_or(u64::MAX)),
            None => unreachable!("generated with an argument"),
        };
        match d.name.to_ascii_lowercase().as_str() {
            "no-store" => cc.no_store = true,
            "no-cache" => cc.no_cache = true,
            "private" => cc.private = true,
            "max-age" => {
                max_ages.insert(seconds());
            }
            "s-maxage" => {
                s_maxages.insert(seconds());
            }
            _ => {}
        }
    }
    if max_ages.len() > 1 || s_maxages.len() > 1 {
        return Err(Malformed);
    }
    cc.max_age = max_ages.first().copied();
    cc.s_maxage = s_maxages.first().copied();
    Ok(cc)
}

fn vary_element() -> impl Strategy<Value = String> {
    prop_oneof![
        any_case("accept-encoding"),
        any_case("accept-language"),
        any_case("x-a"),
        "[A-Za-z0-9!#$%&'+.^_`|~-]{1,10}",
    ]
}

fn vary_names() -> impl Strategy<Value = (Vec<String>, Layout)> {
    proptest::collection::vec(vary_element(), 0..6).prop_flat_map(|names| {
        let n = names.len();
        (Just(names), layout(n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_values_never_panic(
        lines in proptest::collection::vec(value_bytes(), 0..4),
        pragma in proptest::collection::vec(value_bytes(), 0..2),
    ) {
        let mut headers = map_of(&CACHE_CONTROL, &lines);
        for (name, value) in map_of(&PRAGMA, &pragma).iter() {
            headers.append(name, value.clone());
        }
        let parsed = CacheControl::parse(&headers);
        let directive = request_directive(&headers);
        match parsed {
            Err(Malformed) => prop_assert_eq!(directive, RequestDirective::Bypass),
            Ok(cc) if cc.no_store => prop_assert_eq!(directive, RequestDirective::Bypass),
            Ok(_) => prop_assert_ne!(directive, RequestDirective::Bypass),
        }

        let vary = map_of(&VARY, &lines);
        match parse_vary(&vary) {
            Ok(Vary::Names(names)) => {
                prop_assert!(!names.is_empty());
                prop_assert!(names.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
            }
            Ok(Vary::None) => prop_assert!(vary
                .get_all(VARY)
                .iter()
                .all(|v| v.as_bytes().iter().all(|b| matches!(b, b' ' | b'\t' | b',')))),
            Ok(Vary::Any) | Err(Malformed) => {}
        }

        let mut all = map_of(&http::header::CONNECTION, &lines);
        all.append("keep-alive", HeaderValue::from_static("timeout=5"));
        all.append("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut all);
        prop_assert!(!all.contains_key(http::header::CONNECTION));
        prop_assert!(!all.contains_key("keep-alive"));
    }

    #[test]
    fn cache_control_agrees_with_the_model((ds, layout) in directives()) {
        let lines = cache_control_lines(&ds, &layout);
        let headers = map_of(&CACHE_CONTROL, &lines);
        prop_assert_eq!(headers.get_all(CACHE_CONTROL).iter().count(), lines.len());
        prop_assert_eq!(CacheControl::parse(&headers), model(&ds));
    }

    #[test]
    fn max_age_is_read_as_written(n in any::<u64>(), quoted in any::<bool>(), zeros in 0..3usize) {
        let digits = format!("{}{n}", "0".repeat(zeros));
        let value = if quoted { format!("max-age=\"{digits}\"") } else { format!("max-age={digits}") };
        let headers = map_of(&CACHE_CONTROL, &[value.into_bytes()]);
        let cc = CacheControl::parse(&headers);
        prop_assert_eq!(cc.map(|c| (c.max_age, c.shared_max_age())), Ok((Some(n), Some(n))));
    }

    #[test]
    fn duplicated_max_age_is_malformed_only_when_the_values_differ(
        a in any::<u64>(),
        b in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        split in any::<bool>(),
    ) {
        let b = b.unwrap_or(a);
        let lines = if split {
            vec![format!("max-age={a}").into_bytes(), format!("max-age={b}").into_bytes()]
        } else {
            vec![format!("max-age={a}, max-age={b}").into_bytes()]
        };
        let headers = map_of(&CACHE_CONTROL, &lines);
        let expected = if a == b { Ok(Some(a)) } else { Err(Malformed) };
        prop_assert_eq!(CacheControl::parse(&headers).map(|c| c.max_age), expected);
    }

    #[test]
    fn request_directive_agrees_with_the_model(
        (ds, layout) in directives(),
        with_cc in any::<bool>(),
        pragma in prop_oneof![Just(None), any_case("no-cache").prop_map(Some), Just(Some("x, no-cache".to_owned()))],
    ) {
        let mut headers = if with_cc {
            map_of(&CACHE_CONTROL, &cache_control_lines(&ds, &layout))
        } else {
            HeaderMap::new()
        };
        if let Some(p) = &pragma {
            headers.append(PRAGMA, HeaderValue::from_str(p).expect("ascii"));
        }
        let cc = if with_cc { model(&ds) } else { Ok(CacheControl::default()) };
        let expected = match cc {
            Err(Malformed) => RequestDirective::Bypass,
            Ok(cc) if cc.no_store => RequestDirective::Bypass,
            Ok(cc) if cc.no_cache || cc.max_age == Some(0) => RequestDirective::Refresh,
            Ok(_) if !with_cc && pragma.is_some() => RequestDirective::Refresh,
            Ok(_) => RequestDirective::Normal,
        };
        prop_assert_eq!(request_directive(&headers), expected);
    }

    #[test]
    fn vary_agrees_with_the_model((names, layout) in vary_names(), star in proptest::option::of(any::<prop::sample::Index>())) {
        let mut elements: Vec<Vec<u8>> = names.iter().map(|n| n.clone().into_bytes()).collect();
        if let Some(at) = star {
            let at = at.index(elements.len() + 1);
            elements.insert(at, b"*".to_vec());
        }
        // The `*` gets a layout of its own.
        let mut layout = layout;
        layout.pads.push(["", " ", "", ""]);
        layout.empties.push(false);
        layout.breaks.push(false);
        let lines = write_lines(&elements, &layout);
        let headers = map_of(&VARY, &lines);
        let normal: BTreeSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let expected = if star.is_some() {
            Vary::Any
        } else if normal.is_empty() {
            Vary::None
        } else {
            Vary::Names(
                normal
                    .iter()
                    .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token"))
                    .collect::<Vec<_>>()
                    .into(),
            )
        };
        prop_assert_eq!(parse_vary(&headers), Ok(expected));
    }
}
