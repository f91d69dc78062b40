//! WebSocket close codes used by callworker on both media endpoints.
//!
//! Standard codes (RFC 6455 §7.4.1) where one fits; application codes in 4000–4999 otherwise,
//! shaped after HTTP statuses so operators can read them. A client must treat
//! [`STALE_SESSION`] and [`CALL_ENDED`] as final (never reconnect with the same epoch), and
//! [`MIGRATE`] / [`OVERLOADED`] as "reconnect, probably elsewhere".

/// Normal end of the session (call ended cleanly, `bye` exchanged).
pub const NORMAL: u16 = 1000;
/// The worker is shutting down; reconnect.
pub const GOING_AWAY: u16 = 1001;
/// Wrong frame type for the endpoint (binary on the Twilio endpoint, text audio on native).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Never sent on the wire (RFC 6455 §7.4.1): what WebSocket libraries report when the
/// connection dropped without a close frame, which is how a killed worker looks to a client.
pub const ABNORMAL: u16 = 1006;
/// A message larger than the configured bound.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Unexpected server failure; reconnect.
pub const INTERNAL_ERROR: u16 = 1011;

/// Malformed message: bad JSON, bad base64, missing or invalid field.
pub const BAD_REQUEST: u16 = 4400;
/// Resume token missing, forged or for another call.
pub const UNAUTHORIZED: u16 = 4401;
/// The call id is not known to the store.
pub const UNKNOWN_CALL: u16 = 4404;
/// No handshake within the handshake timeout, or no traffic within the idle timeout.
pub const TIMEOUT: u16 = 4408;
/// Another connection owns the call (lost the takeover); do not retry with this epoch.
pub const STALE_SESSION: u16 = 4409;
/// The call has ended; the reason follows in the close reason text.
pub const CALL_ENDED: u16 = 4410;
/// Out-of-order input: media before `start`, a sequence number gap or regression.
pub const OUT_OF_ORDER: u16 = 4422;
/// Protocol version not supported by this worker.
pub const UNSUPPORTED_VERSION: u16 = 4426;
/// Message or byte rate above the per-connection bound.
pub const RATE_LIMITED: u16 = 4429;
/// The session's outbound queue overflowed with control messages (slow consumer).
pub const SLOW_CONSUMER: u16 = 4430;
/// The worker asks the client to reconnect (migration, drain); the call continues elsewhere.
pub const MIGRATE: u16 = 4302;
/// The worker is not admitting calls right now; reconnect elsewhere after a delay.
pub const OVERLOADED: u16 = 4503;

/// Whether a client should reconnect after the server closed with `code` (or the connection
/// dropped, reported as [`ABNORMAL`]): resuming is the point of a lost worker.
pub fn should_reconnect(code: u16) -> bool {
    matches!(code, GOING_AWAY | ABNORMAL | INTERNAL_ERROR | MIGRATE | OVERLOADED | TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (code, reconnect?) — the table in `docs/protocol.md` §8.
    const TABLE: &[(u16, bool)] = &[
        (NORMAL, false),
        (GOING_AWAY, true),
        (UNSUPPORTED_DATA, false),
        (ABNORMAL, true),
        (MESSAGE_TOO_BIG, false),
        (INTERNAL_ERROR, true),
        (MIGRATE, true),
        (BAD_REQUEST, false),
        (UNAUTHORIZED, false),
        (UNKNOWN_CALL, false),
        (TIMEOUT, true),
        (STALE_SESSION, false),
        (CALL_ENDED, false),
        (OUT_OF_ORDER, false),
        (UNSUPPORTED_VERSION, false),
        (RATE_LIMITED, false),
        (SLOW_CONSUMER, false),
        (OVERLOADED, true),
    ];

    #[test]
    fn reconnect_table() {
        for &(code, reconnect) in TABLE {
            assert_eq!(should_reconnect(code), reconnect, "{code}");
        }
        assert!(!should_reconnect(0));
        assert!(!should_reconnect(4999));
    }

    #[test]
    fn codes_are_distinct_and_in_valid_ranges() {
        let mut codes: Vec<u16> = TABLE.iter().map(|&(c, _)| c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
        for code in codes {
            assert!((1000..=1011).contains(&code) || (4000..=4999).contains(&code), "{code}");
        }
        assert_eq!(UNSUPPORTED_VERSION, 4426, "docs/protocol.md §9 names this code");
    }

    #[test]
    fn doc_table_lists_every_code() {
        let doc = include_str!("../../../docs/protocol.md");
        for &(code, reconnect) in TABLE {
            let line = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {code} |")))
                .unwrap_or_else(|| panic!("docs/protocol.md §8 lacks {code}"));
            assert_eq!(line.contains("**yes**"), reconnect, "{line}");
        }
    }
}
