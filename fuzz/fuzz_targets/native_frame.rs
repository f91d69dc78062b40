//! Native protocol control and audio frames; the check is `callworker_protocol::fuzzing::native_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callworker_protocol::fuzzing::native_frame(data));
