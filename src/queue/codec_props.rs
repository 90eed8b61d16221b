//! Properties of the job payload codec: what a queue encodes, a worker decodes; bytes in the
//! store that are not a payload of the job's type are errors, never panics or aborts.

use super::*;

/// `depth` nested one-element arrays around a nil.
fn nested(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth];
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
