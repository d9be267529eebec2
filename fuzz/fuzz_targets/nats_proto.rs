//! `weaver::fuzzing::nats_proto`: see src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weaver::fuzzing::nats_proto(data));
