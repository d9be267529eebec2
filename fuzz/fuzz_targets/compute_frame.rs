//! `weaver::fuzzing::compute_frame`: see src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weaver::fuzzing::compute_frame(data));
