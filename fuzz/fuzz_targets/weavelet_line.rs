//! `weaver::fuzzing::weavelet_line`: see src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weaver::fuzzing::weavelet_line(data));
