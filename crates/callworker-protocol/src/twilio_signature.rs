//! Twilio request signatures (`X-Twilio-Signature`).
//!
//! Twilio signs every webhook and the Media Streams WebSocket upgrade with HMAC-SHA1 keyed
//! by the account's auth token, over the canonical string: the full URL Twilio requested
//! (scheme, host, path and query) followed by every form parameter, sorted by name, as name
//! then value with no separators. A name given several times contributes each distinct value
//! once, in sorted order, as Twilio's helper libraries do. The header carries the MAC in
//! standard base64.
//!
//! Proxies and load balancers sometimes add or strip the default port, so [`verify`] accepts
//! the signature for the URL as given, with its default port removed, or with it added, like
//! Twilio's own validators. Comparison is constant-time (the MAC is checked by `hmac`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Longest `X-Twilio-Signature` value accepted (an HMAC-SHA1 in base64 is 28 characters).
pub const SIGNATURE_CHARS_MAX: usize = 64;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is absent or empty.
    #[error("missing X-Twilio-Signature")]
    Missing,
    /// The header is not base64 of the right length.
    #[error("malformed X-Twilio-Signature")]
    Malformed,
    /// Well-formed, but not the signature of this request under this auth token.
    #[error("X-Twilio-Signature does not match the request")]
    Mismatch,
}

/// The string Twilio signs for a request to `url` with form `params`.
pub fn canonical_string(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let len = url.len() + sorted.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let mut s = String::with_capacity(len);
    s.push_str(url);
    for (k, v) in sorted {
        s.push_str(k);
        s.push_str(v);
    }
    s
}

fn mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> HmacSha1 {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha1::new_from_slice(auth_token).expect("HMAC takes any key length");
    mac.update(canonical_string(url, params).as_bytes());
    mac
}

/// The `X-Twilio-Signature` Twilio would send for a request to `url` with form `params`.
pub fn sign(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Checks `presented` (the header's value, `None` when absent) against a request to `url`
/// with form `params`.
pub fn verify(
    auth_token: &[u8],
    url: &str,
    params: &[(String, String)],
    presented: Option<&str>,
) -> Result<(), SignatureError> {
    let presented = presented.map(str::trim).filter(|s| !s.is_empty()).ok_or(SignatureError::Missing)?;
    if presented.len() > SIGNATURE_CHARS_MAX {
        return Err(SignatureError::Malformed);
    }
    let tag = STANDARD.decode(presented).map_err(|_| SignatureError::Malformed)?;
    if tag.len() != 20 {
        return Err(SignatureError::Malformed);
    }
    let matches = |u: &str| mac(auth_token, u, params).verify_slice(&tag).is_ok();
    if matches(url) {
        return Ok(());
    }
    match port_variant(url) {
        Some(other) if matches(&other) => Ok(()),
        _ => Err(SignatureError::Mismatch),
    }
}

/// `url` with its scheme's default port removed when present, or added when absent; `None`
/// for a URL that is not http(s)/ws(s) or that names another port.
pub(crate) fn port_variant(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return None,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // Userinfo is never part of what Twilio signs in practice; keep it as given.
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    // IPv6 literals: the port follows the closing bracket.
    let port_sep = match hostport.rfind(']') {
        Some(close) => hostport[close..].find(':').map(|i| close + i),
        None => hostport.rfind(':'),
    };
    let host_with_port = match port_sep {
        Some(i) if &hostport[i + 1..] == default_port => hostport[..i].to_owned(),
        Some(_) => return None,
        None => format!("{hostport}:{default_port}"),
    };
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Some(format!("{scheme}://{userinfo}{host_with_port}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    // The worked example of Twilio's request-validation documentation (auth token "12345").
    const DOC_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const DOC_SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";

    fn doc_params() -> Vec<(String, String)> {
        // Deliberately out of order: the signature must not depend on it.
        params(&[
            ("To", "+18005551212"),
            ("CallSid", "CA1234567890ABCDE"),
            ("From", "+14158675309"),
            ("Digits", "1234"),
            ("Caller", "+14158675309"),
        ])
    }

    #[test]
    fn matches_twilios_documented_example() {
        assert_eq!(sign(b"12345", DOC_URL, &doc_params()), DOC_SIGNATURE);
        assert_eq!(verify(b"12345", DOC_URL, &doc_params(), Some(DOC_SIGNATURE)), Ok(()));
    }

    #[test]
    fn repeated_names_contribute_each_distinct_value_in_order() {
        let p = params(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(canonical_string("u", &p), "uDigits1234Digits5678SidCA123SidAccountAC123");
        // The same vector as Twilio's helper libraries' tests.
        assert_eq!(sign(b"12345", DOC_URL, &p), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    }

    #[test]
    fn any_change_to_the_request_is_a_mismatch() {
        let mut tampered = doc_params();
        tampered[3].1 = "9999".to_owned();
        assert_eq!(verify(b"12345", DOC_URL, &tampered, Some(DOC_SIGNATURE)), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(b"12345", &format!("{DOC_URL}&x=1"), &doc_params(), Some(DOC_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"54321", DOC_URL, &doc_params(), Some(DOC_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
        let mut extra = doc_params();
        extra.push(("Extra".to_owned(), String::new()));
        assert_eq!(verify(b"12345", DOC_URL, &extra, Some(DOC_SIGNATURE)), Err(SignatureError::Mismatch));
    }

    #[test]
    fn absent_or_malformed_headers_are_refused_with_their_own_error() {
        assert_eq!(verify(b"12345", DOC_URL, &doc_params(), None), Err(SignatureError::Missing));
        assert_eq!(verify(b"12345", DOC_URL, &doc_params(), Some("  ")), Err(SignatureError::Missing));
        for bad in ["not base64!", "AAAA", &"A".repeat(200), "RSOYDt4T1cUTdK1PDd93/VVr8B8"] {
            assert_eq!(
                verify(b"12345", DOC_URL, &doc_params(), Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_default_port_may_be_added_or_removed_by_a_proxy() {
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let signed_with_port = sign(b"12345", with_port, &doc_params());
        assert_eq!(verify(b"12345", DOC_URL, &doc_params(), Some(&signed_with_port)), Ok(()));
        assert_eq!(verify(b"12345", with_port, &doc_params(), Some(DOC_SIGNATURE)), Ok(()));
        // Another port is another URL.
        let other = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify(b"12345", other, &doc_params(), Some(DOC_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn port_variants() {
        assert_eq!(port_variant("wss://h/twilio/media").as_deref(), Some("wss://h:443/twilio/media"));
        assert_eq!(port_variant("ws://h:80/x?a=b").as_deref(), Some("ws://h/x?a=b"));
        assert_eq!(port_variant("http://[::1]:80/x").as_deref(), Some("http://[::1]/x"));
        assert_eq!(port_variant("http://[::1]/x").as_deref(), Some("http://[::1]:80/x"));
        assert_eq!(port_variant("http://u:p@h/x").as_deref(), Some("http://u:p@h:80/x"));
        assert_eq!(port_variant("http://h:8080/x"), None);
        assert_eq!(port_variant("ftp://h/x"), None);
        assert_eq!(port_variant("no scheme"), None);
    }
}
