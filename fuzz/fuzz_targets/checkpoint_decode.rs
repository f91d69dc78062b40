//! Checkpoint envelopes of every format; the check is `callworker_call::fuzzing::checkpoint_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callworker_call::fuzzing::checkpoint_decode(data));
