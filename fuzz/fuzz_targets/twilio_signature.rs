//! Twilio request signatures; the check is `callworker_protocol::fuzzing::twilio_signature`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callworker_protocol::fuzzing::twilio_signature(data));
