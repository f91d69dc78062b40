//! Resume tokens and Twilio stream-parameter signatures (HMAC-SHA256).
//!
//! A resume token is `v1.<expiry unix ms>.<base64url MAC>` where the MAC covers the call id,
//! tenant, epoch and expiry. It therefore grants nothing for another call, another tenant
//! or another epoch (every takeover bumps the epoch, so a token dies with the session it was
//! issued to), and verification is constant-time (`Mac::verify_slice`). Tokens are never
//! logged.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callworker_call::{CallId, Epoch, TenantId, UnixMillis};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted before any parsing.
pub const TOKEN_BYTES_MAX: usize = 128;

/// Why a token or signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token signature does not match")]
    BadSignature,
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct Tokens {
    secret: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(secret: Vec<u8>, ttl: Duration) -> Tokens {
        Tokens { secret, ttl }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        for part in parts {
            // Length-prefix every part so ("ab","c") and ("a","bc") never collide.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn resume_mac(&self, call_id: &CallId, tenant: &TenantId, epoch: Epoch, expiry_ms: u64) -> HmacSha256 {
        self.mac(&[
            b"resume-v1",
            call_id.as_str().as_bytes(),
            tenant.as_str().as_bytes(),
            &epoch.get().to_be_bytes(),
            &expiry_ms.to_be_bytes(),
        ])
    }

    fn stream_mac(&self, call_id: &CallId, epoch: Epoch) -> HmacSha256 {
        self.mac(&[b"twilio-stream-v1", call_id.as_str().as_bytes(), &epoch.get().to_be_bytes()])
    }

    /// A resume token for `call_id`/`tenant` at `epoch`, valid for the configured TTL.
    pub fn issue(&self, call_id: &CallId, tenant: &TenantId, epoch: Epoch, now: UnixMillis) -> String {
        let expiry = now + self.ttl;
        let mac = self.resume_mac(call_id, tenant, epoch, expiry.0);
        format!("v1.{}.{}", expiry.0, URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Verifies a token presented for `call_id`/`tenant` at `epoch`.
    pub fn verify(
        &self,
        token: &str,
        call_id: &CallId,
        tenant: &TenantId,
        epoch: Epoch,
        now: UnixMillis,
    ) -> Result<(), TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.splitn(3, '.');
        let (Some("v1"), Some(expiry), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let expiry = canonical_u64(expiry).ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        self.resume_mac(call_id, tenant, epoch, expiry)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if now.0 > expiry {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Signature of the Twilio `<Parameter>`s naming a call, so a stream cannot claim a call
    /// it was not sent to.
    pub fn stream_signature(&self, call_id: &CallId, epoch: Epoch) -> String {
        URL_SAFE_NO_PAD.encode(self.stream_mac(call_id, epoch).finalize().into_bytes())
    }

    /// Verifies a Twilio stream-parameter signature.
    pub fn verify_stream_signature(
        &self,
        sig: &str,
        call_id: &CallId,
        epoch: Epoch,
    ) -> Result<(), TokenError> {
        if sig.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        self.stream_mac(call_id, epoch).verify_slice(&sig).map_err(|_| TokenError::BadSignature)
    }
}

/// `text` as a decimal written the way [`Tokens::issue`] writes it: ASCII digits, no sign, no
/// leading zero. `u64::from_str` alone also takes `+1` and `01`, which would let one issued
/// token be presented under several spellings (found by the `resume_token_verify` fuzz
/// target's "an accepted token is the issued one" property).
fn canonical_u64(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (CallId, TenantId) {
        (CallId::parse("c1").unwrap(), TenantId::parse("acme").unwrap())
    }

    #[test]
    fn a_token_verifies_only_for_its_call_tenant_epoch_and_lifetime() {
        let tokens = Tokens::new(b"k".repeat(32), Duration::from_secs(60));
        let (call, tenant) = ids();
        let now = UnixMillis(1_000_000);
        let token = tokens.issue(&call, &tenant, Epoch(3), now);
        assert_eq!(tokens.verify(&token, &call, &tenant, Epoch(3), now), Ok(()));
        assert_eq!(
            tokens.verify(&token, &CallId::parse("c2").unwrap(), &tenant, Epoch(3), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            tokens.verify(&token, &call, &TenantId::parse("other").unwrap(), Epoch(3), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(tokens.verify(&token, &call, &tenant, Epoch(4), now), Err(TokenError::BadSignature));
        assert_eq!(
            tokens.verify(&token, &call, &tenant, Epoch(3), now.add_ms(61_000)),
            Err(TokenError::Expired)
        );
        let other_key = Tokens::new(b"x".repeat(32), Duration::from_secs(60));
        assert_eq!(other_key.verify(&token, &call, &tenant, Epoch(3), now), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_and_malformed_tokens_are_refused() {
        let tokens = Tokens::new(b"k".repeat(32), Duration::from_secs(60));
        let (call, tenant) = ids();
        let now = UnixMillis(1_000_000);
        let token = tokens.issue(&call, &tenant, Epoch(1), now);
        // Moving the expiry forward invalidates the MAC.
        let (_, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let extended = format!("v1.{}.{}", u64::MAX, sig);
        assert_eq!(tokens.verify(&extended, &call, &tenant, Epoch(1), now), Err(TokenError::BadSignature));
        for bad in ["", "v1", "v2.1.abc", "v1.x.abc", "v1.1.@@@", &"a".repeat(200)] {
            assert_eq!(
                tokens.verify(bad, &call, &tenant, Epoch(1), now),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let mut flipped = token.into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(tokens.verify(&flipped, &call, &tenant, Epoch(1), now).is_err());
    }

    #[test]
    fn only_the_issued_spelling_of_the_expiry_is_accepted() {
        let tokens = Tokens::new(b"k".repeat(32), Duration::from_secs(60));
        let (call, tenant) = ids();
        let now = UnixMillis(1_000_000);
        let token = tokens.issue(&call, &tenant, Epoch(1), now);
        let (_, rest) = token.split_once('.').unwrap();
        let (expiry, sig) = rest.split_once('.').unwrap();
        for respelled in [format!("0{expiry}"), format!("+{expiry}"), format!("00{expiry}")] {
            let presented = format!("v1.{respelled}.{sig}");
            assert_eq!(
                tokens.verify(&presented, &call, &tenant, Epoch(1), now),
                Err(TokenError::Malformed),
                "{presented}"
            );
        }
        assert_eq!(tokens.verify(&token, &call, &tenant, Epoch(1), now), Ok(()));
        assert_eq!(canonical_u64("0"), Some(0));
        assert_eq!(canonical_u64(""), None);
        assert_eq!(canonical_u64("18446744073709551616"), None);
    }

    #[test]
    fn stream_signatures_bind_call_and_epoch() {
        let tokens = Tokens::new(b"k".repeat(32), Duration::from_secs(60));
        let (call, _) = ids();
        let sig = tokens.stream_signature(&call, Epoch(0));
        assert_eq!(tokens.verify_stream_signature(&sig, &call, Epoch(0)), Ok(()));
        assert!(tokens.verify_stream_signature(&sig, &call, Epoch(1)).is_err());
        assert!(tokens.verify_stream_signature(&sig, &CallId::parse("c9").unwrap(), Epoch(0)).is_err());
    }
}
