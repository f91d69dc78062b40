//! Tests of the call state machine through its public API, with virtual time.
//!
//! One test binary (modules below) keeps link time down.

// Helper functions are not `#[test]`s, so clippy's test exemption misses them; in tests a
// panic is exactly the failure report we want.
#![allow(clippy::unwrap_used)]

mod agent;
mod audio;
mod checkpoint;
mod inputs;
mod ivr;
mod props;
mod support;
