//! Twilio Media Streams messages; the check is `callworker_protocol::fuzzing::twilio_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callworker_protocol::fuzzing::twilio_message(data));
