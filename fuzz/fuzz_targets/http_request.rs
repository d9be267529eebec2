//! `weaver::fuzzing::http_request`: see src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weaver::fuzzing::http_request(data));
