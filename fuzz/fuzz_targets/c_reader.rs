//! `weaver::fuzzing::c_reader`: see src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weaver::fuzzing::c_reader(data));
