//! Properties of the job payload codec: what a queue encodes, a worker decodes; bytes in the
//! store that are not a payload of the job's type are errors, never panics or aborts.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;

/// A request with the shapes jobs carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    url: String,
    retries: Option<u8>,
    headers: BTreeMap<String, String>,
    step: Step,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Step {
    Fetch,
    Resize { width: u32, height: u32 },
    Notify(Vec<String>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Fetch),
        (any::<u32>(), any::<u32>()).prop_map(|(width, height)| Step::Resize { width, height }),
        proptest::collection::vec(any::<String>(), 0..4).prop_map(Step::Notify),
    ]
}

fn job() -> impl Strategy<Value = Job> {
    (
        any::<u64>(),
        any::<String>(),
        any::<Option<u8>>(),
        proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
        step(),
    )
        .prop_map(|(id, url, retries, headers, step)| Job {
            id,
            url,
            retries,
            headers,
            step,
        })
}

/// `depth` nested one-element arrays around a nil.
fn nested(depth: usize) -> Vec<u8> {
    // In the envelope, as the queue stores payloads.
    let mut bytes = Vec::new();
    crate::codec::encode_into(&mut bytes, &(), 0, crate::codec::NO_EXPIRY).expect("encodes");
    bytes.truncate(crate::codec::HEADER_LEN);
    bytes.extend(std::iter::repeat_n(0x91, depth));
    bytes.push(0xc0);
    bytes
}

#[test]
fn deeply_nested_payloads_fail_to_decode_without_overflowing_the_stack() {
    // A worker decodes on a tokio worker thread (2 MiB of stack): 1,000 levels used to
    // overflow it in a debug build, an abort that the worker's `catch_unwind` cannot stop.
    let decoded = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            (
                decode::<serde_json::Value>(&nested(1_000)).is_err(),
                decode::<serde_json::Value>(&nested(100)).is_ok(),
            )
        })
        .expect("spawns")
        .join()
        .expect("no panic");
    assert_eq!(decoded, (true, true));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn payloads_round_trip(j in job()) {
        let bytes = encode(&j).expect("encodes");
        prop_assert_eq!(decode::<Job>(&bytes).expect("decodes"), j);
    }

    #[test]
    fn nested_encodes_do_not_mix_buffers(a in job(), b in job()) {
        /// Encodes another value from inside its own `Serialize`, as a request whose
        /// serializer calls into the queue would (the scratch buffer is then taken).
        struct Reentrant<'a>(&'a Job, &'a Job);
        impl Serialize for Reentrant<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = encode(self.1).map_err(serde::ser::Error::custom)?;
                (self.0, inner.to_vec()).serialize(s)
            }
        }
        let bytes = encode(&Reentrant(&a, &b)).expect("encodes");
        let (outer, inner): (Job, Vec<u8>) = decode(&bytes).expect("decodes");
        prop_assert_eq!(outer, a);
        prop_assert_eq!(decode::<Job>(&inner).expect("decodes"), b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<Job>(&bytes);
        let _ = decode::<String>(&bytes);
        let _ = decode::<serde_json::Value>(&bytes);
        let _ = decode::<(u64, Option<Vec<bool>>)>(&bytes);
    }

    #[test]
    fn truncated_payloads_are_errors(j in job(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&j).expect("encodes");
        let cut = cut.index(bytes.len());
        prop_assert!(decode::<Job>(&bytes[..cut]).is_err());
    }

    #[test]
    fn mutated_payloads_never_panic(j in job(), at in any::<prop::sample::Index>(), flip in 1..=255u8) {
        let mut bytes = encode(&j).expect("encodes").to_vec();
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        let _ = decode::<Job>(&bytes);
    }
}
