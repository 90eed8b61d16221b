#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| layercake::fuzzing::http_headers(data));
