//! libFuzzer entry for `wspush::fuzz::auth`. The body lives in the library (src/fuzz.rs), so the
//! stable smoke test runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wspush::fuzz::auth(data));
