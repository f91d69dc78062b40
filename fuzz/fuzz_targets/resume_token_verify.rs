//! Resume tokens and stream signatures; the check is `callworker_server::fuzzing::resume_token_verify`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callworker_server::fuzzing::resume_token_verify(data));
