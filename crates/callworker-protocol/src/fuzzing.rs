//! Fuzz checks for this crate's parsers, shared by the cargo-fuzz targets in `fuzz/` and by
//! the stable corpus replay (`tests/fuzz_corpus.rs`), so both run exactly the same code.
//!
//! Each check takes the fuzzer's raw bytes, never returns an error and panics on a broken
//! property: a panic *is* the finding. Compiled only with the `fuzzing` feature.
//!
//! Input formats (chosen so seeds are readable files built from the golden fixtures):
//! - [`twilio_message`]: Twilio text frames separated by NUL bytes (JSON cannot contain a raw
//!   NUL, so the separator takes nothing away), read as one stream.
//! - [`native_frame`]: one frame, tried as a control text frame (both directions) and as a
//!   binary audio frame (both directions).
//! - [`twilio_signature`]: NUL-separated fields `url, header, auth token, name, value, name,
//!   value, …`.

use crate::native::{self, NativeError};
use crate::twilio::{self, FromTwilio, Limits, SequenceTracker, TwilioError};
use crate::twilio_signature::{self, SignatureError};

/// Tighter limits than the defaults: whatever they accept, the defaults must accept too.
const TIGHT_LIMITS: Limits =
    Limits { message_bytes_max: 1024, payload_bytes_max: 160, id_bytes_max: 16, custom_parameters_max: 2 };

/// Largest native control frame the check parses with (the server's default bound is 4 KiB).
const NATIVE_CONTROL_BYTES_MAX: usize = 4096;

/// Twilio → server parsing, under the default and under tight [`Limits`]:
/// - never panics, and error texts stay within their documented bounds;
/// - tighter limits never accept what the defaults refuse, and agree when both accept;
/// - whatever parses encodes to text that parses back to the same message (both directions);
/// - [`SequenceTracker`] accepts exactly the next number over the stream and never moves on
///   a refusal.
pub fn twilio_message(data: &[u8]) {
    let limits = Limits::default();
    // The encoder may write a message longer than its input (a JSON number becomes a
    // string), so re-parsing is bounded by the field limits only.
    let reparse_limits = Limits { message_bytes_max: usize::MAX, ..limits };
    let mut tracker = SequenceTracker::default();
    let mut expected = 1u64;
    for frame in data.split(|&b| b == 0) {
        let Ok(text) = std::str::from_utf8(frame) else { continue };

        let parsed = twilio::parse_from_twilio(text, &limits);
        let tight = twilio::parse_from_twilio(text, &TIGHT_LIMITS);
        if let Err(e) = &parsed {
            check_twilio_error(e);
        }
        if let Err(e) = &tight {
            check_twilio_error(e);
        }
        if let Ok(msg) = &tight {
            assert_eq!(
                parsed.as_ref().ok(),
                Some(msg),
                "tight limits accepted what the defaults refused: {text:?}"
            );
        }

        if let Ok(msg) = &parsed {
            let mut out = String::new();
            twilio::encode_from_twilio(msg, &mut out);
            let again = twilio::parse_from_twilio(&out, &reparse_limits);
            assert_eq!(again.as_ref(), Ok(msg), "from-Twilio round trip changed {text:?} into {out:?}");

            if let Some(seq) = msg.sequence_number() {
                let before = tracker.expected();
                assert_eq!(before, expected, "tracker and model disagree on the next number");
                match tracker.check(seq) {
                    Ok(()) => {
                        assert_eq!(seq, expected, "tracker accepted {seq}, expected {expected}");
                        expected = seq.saturating_add(1);
                    }
                    Err(e) => {
                        assert_ne!(seq, expected, "tracker refused the expected number {seq}");
                        assert_eq!((e.expected, e.got), (expected, seq));
                    }
                }
                assert_eq!(tracker.expected(), expected);
            }
            if let FromTwilio::Dtmf(d) = msg {
                assert!(crate::is_dtmf_digit(d.digit));
            }
        }

        match twilio::parse_to_twilio(text, &limits) {
            Ok(msg) => {
                let mut out = String::new();
                twilio::encode_to_twilio(&msg, &mut out);
                let again = twilio::parse_to_twilio(&out, &reparse_limits);
                assert_eq!(again, Ok(msg), "to-Twilio round trip changed {text:?} into {out:?}");
            }
            Err(e) => check_twilio_error(&e),
        }
    }
}

fn check_twilio_error(e: &TwilioError) {
    match e {
        TwilioError::UnknownEvent(name) => assert!(name.len() <= twilio::EVENT_NAME_BYTES_MAX),
        TwilioError::MalformedJson(text) => assert!(text.len() <= twilio::ERROR_TEXT_BYTES_MAX),
        _ => {}
    }
    assert!(!e.label().is_empty());
}

/// Native protocol frames:
/// - control text parses or is refused without panicking, with bounded error text; a `hello`
///   that parses has our version and a `dtmf` a valid digit;
/// - parsed control messages encode and parse back to themselves (both directions);
/// - binary audio frames that decode re-encode to exactly the same bytes (both directions).
pub fn native_frame(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match native::parse_client_control(text, NATIVE_CONTROL_BYTES_MAX) {
            Ok(msg) => {
                match &msg {
                    native::ClientControl::Hello(h) => assert_eq!(h.version, native::PROTOCOL_VERSION),
                    native::ClientControl::Dtmf { digit } => assert!(crate::is_dtmf_digit(*digit)),
                    _ => {}
                }
                let out = native::encode_client_control(&msg);
                assert_eq!(
                    native::parse_client_control(&out, usize::MAX),
                    Ok(msg),
                    "client control round trip changed {text:?} into {out:?}"
                );
            }
            Err(e) => check_native_error(&e),
        }
        match native::parse_server_control(text, NATIVE_CONTROL_BYTES_MAX) {
            Ok(msg) => {
                let out = native::encode_server_control(&msg);
                assert_eq!(
                    native::parse_server_control(&out, usize::MAX),
                    Ok(msg),
                    "server control round trip changed {text:?} into {out:?}"
                );
            }
            Err(e) => check_native_error(&e),
        }
    }

    match native::decode_client_audio(data) {
        Ok(frame) => {
            let mut out = Vec::new();
            native::encode_client_audio(frame.seq, frame.payload, &mut out);
            assert_eq!(out, data, "client audio frame did not re-encode to its bytes");
        }
        Err(e) => check_native_error(&e),
    }
    match native::decode_server_audio(data) {
        Ok(frame) => {
            let mut out = Vec::new();
            native::encode_server_audio(frame.epoch, frame.seq, frame.payload, &mut out);
            assert_eq!(out, data, "server audio frame did not re-encode to its bytes");
        }
        Err(e) => check_native_error(&e),
    }
}

fn check_native_error(e: &NativeError) {
    if let NativeError::MalformedJson(text) = e {
        assert!(text.len() <= native::ERROR_TEXT_BYTES_MAX);
    }
    assert!(!e.label().is_empty());
}

/// Twilio request signatures:
/// - [`twilio_signature::canonical_string`] starts with the URL and does not depend on the
///   order of the parameters;
/// - [`twilio_signature::verify`] never panics and accepts what [`twilio_signature::sign`]
///   produced, for the URL and for its port variant;
/// - any header it accepts is (after trimming the surrounding whitespace an HTTP header may
///   carry) exactly the signature of the URL or of its port variant.
pub fn twilio_signature(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let url = fields.next().unwrap_or_default();
    let header = fields.next();
    let auth_token = fields.next().unwrap_or("12345").as_bytes();
    let rest: Vec<&str> = fields.collect();
    let params: Vec<(String, String)> = rest
        .chunks(2)
        .map(|kv| (kv[0].to_owned(), kv.get(1).copied().unwrap_or_default().to_owned()))
        .collect();

    let canonical = twilio_signature::canonical_string(url, &params);
    assert!(canonical.starts_with(url));
    let reversed: Vec<(String, String)> = params.iter().rev().cloned().collect();
    assert_eq!(
        twilio_signature::canonical_string(url, &reversed),
        canonical,
        "parameter order changed the string"
    );

    let signed = twilio_signature::sign(auth_token, url, &params);
    assert_eq!(twilio_signature::verify(auth_token, url, &params, Some(&signed)), Ok(()));
    let variant = twilio_signature::port_variant(url);
    let signed_variant = variant.as_deref().map(|v| twilio_signature::sign(auth_token, v, &params));
    if let Some(sv) = &signed_variant {
        assert_eq!(
            twilio_signature::verify(auth_token, url, &params, Some(sv)),
            Ok(()),
            "port variant refused"
        );
    }

    match twilio_signature::verify(auth_token, url, &params, header) {
        Ok(()) => {
            let presented = header.map(str::trim).unwrap_or_default();
            assert!(
                presented == signed || signed_variant.as_deref() == Some(presented),
                "accepted {presented:?}, which is neither {signed:?} nor {signed_variant:?}"
            );
        }
        Err(SignatureError::Missing) => assert!(header.is_none_or(|h| h.trim().is_empty())),
        Err(SignatureError::Malformed | SignatureError::Mismatch) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_accept_well_formed_inputs() {
        twilio_message(include_bytes!("../tests/fixtures/twilio/from_start.json"));
        native_frame(include_bytes!("../tests/fixtures/native/client_hello.json"));
        native_frame(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 0xff]);
        twilio_signature(
            b"https://mycompany.com/myapp.php?foo=1&bar=2\0RSOYDt4T1cUTdK1PDd93/VVr8B8=\x0012345",
        );
    }
}
