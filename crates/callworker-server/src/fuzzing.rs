//! Fuzz check for resume tokens and Twilio stream signatures ([`crate::token::Tokens`]),
//! shared by the cargo-fuzz target `resume_token_verify` in `fuzz/` and by the stable corpus
//! replay (`tests/fuzz_corpus.rs`).
//!
//! The check panics on a broken property: a panic *is* the finding. Compiled only with the
//! `fuzzing` feature.

use std::time::Duration;

use callworker_call::{CallId, Epoch, TenantId, UnixMillis};

use crate::token::Tokens;

/// The fixed key the check issues with, so seeds can hold real tokens for the fuzzer to mutate.
pub const FUZZ_SECRET: &[u8] = b"callworker-fuzz-secret-0123456789";
/// The fixed "now" the check issues and verifies at (2023-11-14T22:13:20Z).
pub const FUZZ_NOW: UnixMillis = UnixMillis(1_700_000_000_000);
/// The token lifetime the check issues with.
pub const FUZZ_TTL: Duration = Duration::from_secs(60);
/// Defaults for the fields an input leaves out.
pub const DEFAULT_CALL_ID: &str = "c1";
pub const DEFAULT_TENANT: &str = "acme";
pub const DEFAULT_EPOCH: u64 = 3;

/// Input: NUL-separated fields `presented, call id, tenant, epoch (decimal)`; missing fields
/// take the defaults above, and an invalid id ends the check (ids are validated before any
/// token is looked at).
///
/// Properties, with one token issued for the call, tenant and epoch at [`FUZZ_NOW`]:
/// - [`Tokens::verify`] and [`Tokens::verify_stream_signature`] never panic;
/// - the issued token and stream signature verify;
/// - a presented token that verifies *is* the issued token, byte for byte (no other spelling
///   of it is accepted), and it verifies neither for another epoch nor after its expiry;
/// - a presented stream signature that verifies is the issued one.
pub fn resume_token_verify(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let presented = fields.next().unwrap_or_default();
    let Ok(call_id) = CallId::parse(fields.next().unwrap_or(DEFAULT_CALL_ID)) else { return };
    let Ok(tenant) = TenantId::parse(fields.next().unwrap_or(DEFAULT_TENANT)) else { return };
    let epoch = Epoch(fields.next().and_then(|e| e.parse().ok()).unwrap_or(DEFAULT_EPOCH));
    let other_epoch = Epoch(epoch.get() ^ 1);

    let tokens = Tokens::new(FUZZ_SECRET.to_vec(), FUZZ_TTL);
    let issued = tokens.issue(&call_id, &tenant, epoch, FUZZ_NOW);
    assert_eq!(tokens.verify(&issued, &call_id, &tenant, epoch, FUZZ_NOW), Ok(()));
    let after_expiry = FUZZ_NOW + FUZZ_TTL + Duration::from_millis(1);

    if tokens.verify(presented, &call_id, &tenant, epoch, FUZZ_NOW).is_ok() {
        assert_eq!(presented, issued, "accepted a token that was not issued");
    }
    assert!(tokens.verify(presented, &call_id, &tenant, other_epoch, FUZZ_NOW).is_err());
    assert!(tokens.verify(presented, &call_id, &tenant, epoch, after_expiry).is_err());

    let signature = tokens.stream_signature(&call_id, epoch);
    assert_eq!(tokens.verify_stream_signature(&signature, &call_id, epoch), Ok(()));
    if tokens.verify_stream_signature(presented, &call_id, epoch).is_ok() {
        assert_eq!(presented, signature, "accepted a stream signature that was not issued");
    }
    assert!(tokens.verify_stream_signature(presented, &call_id, other_epoch).is_err());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issued_token_passes_the_check() {
        let tokens = Tokens::new(FUZZ_SECRET.to_vec(), FUZZ_TTL);
        let call = CallId::parse(DEFAULT_CALL_ID).expect("valid id");
        let tenant = TenantId::parse(DEFAULT_TENANT).expect("valid tenant");
        let issued = tokens.issue(&call, &tenant, Epoch(DEFAULT_EPOCH), FUZZ_NOW);
        resume_token_verify(issued.as_bytes());
        resume_token_verify(tokens.stream_signature(&call, Epoch(DEFAULT_EPOCH)).as_bytes());
        resume_token_verify(b"v1.1.abc\0c2\0acme\x007");
    }
}
