//! Control-API actions for a call that another worker carries: found through the store,
//! forwarded there once, authenticated worker to worker.
//!
//! A live call is driven by the one worker whose media session holds it: its *owner*,
//! recorded in the call's store record. The load balancer sends an action to any worker.
//! One that does not carry the call forwards it:
//!
//! 1. It authenticates the client and authorizes the call as for any request.
//! 2. It reads the owner from the call's record ([`route`]) and the owner's advertised URL
//!    (`server.advertise_url`) from the worker registry, and sends the same body to the
//!    owner's `POST /v1/calls/{id}/actions` with a [`FORWARD_HEADER`] in place of the
//!    client's API key ([`forward`]), within `server.forward_timeout`.
//! 3. The owner checks the header ([`verify`]), acts for the caller it names, and its
//!    answer goes back to the client unchanged.
//!
//! The header is an HMAC-SHA256 keyed by `security.token_secret` (the secret every worker
//! of a fleet already shares for resume tokens), under a label of its own so it can never
//! pass for a resume token or a stream signature. It binds the time it was made, the
//! sending and the receiving worker, the call, the caller (API key id, role, tenant) and the
//! SHA-256 of the body. A client cannot make one without the secret: a forged or altered
//! header is refused with 403 `forward_signature_invalid` and counted in
//! `callworker_auth_refused_total`. A captured one is good only for the same body, to the
//! same worker, for the same call, for [`SIGNATURE_TTL_MS`].
//!
//! At most one hop: a request that carries the header is never forwarded again. If the call
//! left the owner meanwhile, the owner answers 409 `call_owner_moved` (with `Retry-After`),
//! so a stale registry or a racing resume can never bounce an action between workers.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use callworker_call::{CallId, TenantId, UnixMillis, WorkerId};
use callworker_store::{CallRecord, WorkerInfo};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tracing::{debug, error, warn};

use crate::auth::{Caller, count_refusal};
use crate::config::Role;
use crate::error::{Error, ErrorKind};
use crate::metrics as m;
use crate::state::{AppState, now};

/// The request header that marks (and authenticates) a forwarded action.
pub const FORWARD_HEADER: &str = "x-callworker-forwarded";
/// How long a forwarding signature is accepted after it was made, either way (clock skew
/// between workers included).
pub const SIGNATURE_TTL_MS: u64 = 30_000;
/// Longest header accepted; longer is refused unread.
const HEADER_BYTES_MAX: usize = 512;
/// Largest answer relayed from an owner (a call view is a few KB); larger is a bad answer.
const RESPONSE_BYTES_MAX: usize = 256 * 1024;
/// Idle connections the forwarding client keeps per peer; more are closed when returned.
const HTTP_IDLE_PER_HOST_MAX: usize = 16;
/// How much later than a lease's end the owner is taken for gone without asking it, so a
/// little clock skew between the store and this worker does not skip a live owner.
const LEASE_SKEW_MS: u64 = 1_000;

type HmacSha256 = Hmac<Sha256>;

/// Who a verified forwarded request acts for.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The worker that forwarded it.
    pub from: WorkerId,
    /// The caller as that worker authenticated them.
    pub caller: Caller,
}

/// The MAC over every bound field, each length-prefixed so that no two field lists collide.
fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(b"callworker-forward-v1");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn role_tag(role: Role) -> &'static str {
    match role {
        Role::Tenant => "t",
        Role::Operator => "o",
    }
}

/// Signs a forwarded action: `v1.<at ms>.<from>.<key id, base64url>.<role t|o>.<tenant or
/// empty>.<body SHA-256, base64url>.<mac, base64url>`.
pub fn sign(
    secret: &[u8],
    at: UnixMillis,
    from: &WorkerId,
    to: &WorkerId,
    call_id: &CallId,
    caller: &Caller,
    body: &[u8],
) -> String {
    let body_sha = Sha256::digest(body);
    let tenant = caller.tenant.as_ref().map_or("", TenantId::as_str);
    let role = role_tag(caller.role);
    let tag = mac(
        secret,
        &[
            &at.0.to_be_bytes(),
            from.as_str().as_bytes(),
            to.as_str().as_bytes(),
            call_id.as_str().as_bytes(),
            caller.key_id.as_bytes(),
            role.as_bytes(),
            tenant.as_bytes(),
            &body_sha,
        ],
    )
    .finalize()
    .into_bytes();
    format!(
        "v1.{}.{}.{}.{role}.{tenant}.{}.{}",
        at.0,
        from,
        URL_SAFE_NO_PAD.encode(caller.key_id.as_bytes()),
        URL_SAFE_NO_PAD.encode(body_sha),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// Why a forwarding header was refused (all answered alike; the reason is logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("malformed")]
    Malformed,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signature is outside its validity window")]
    Expired,
}

/// Checks a forwarding header received by worker `to` for `call_id` with `body` at `now`.
pub fn verify(
    secret: &[u8],
    value: &str,
    to: &WorkerId,
    call_id: &CallId,
    body: &[u8],
    now: UnixMillis,
) -> Result<Forwarded, ForwardError> {
    if value.len() > HEADER_BYTES_MAX {
        return Err(ForwardError::Malformed);
    }
    let parts: Vec<&str> = value.split('.').collect();
    let ["v1", at, from, key_id, role, tenant, body_sha, tag] = parts.as_slice() else {
        return Err(ForwardError::Malformed);
    };
    let at: u64 = match at.parse() {
        Ok(v) if at.len() <= 20 && !at.starts_with('+') => v,
        _ => return Err(ForwardError::Malformed),
    };
    let from = WorkerId::parse(from).map_err(|_| ForwardError::Malformed)?;
    let key_id = URL_SAFE_NO_PAD.decode(key_id).map_err(|_| ForwardError::Malformed)?;
    let key_id = String::from_utf8(key_id).map_err(|_| ForwardError::Malformed)?;
    let role = match *role {
        "t" => Role::Tenant,
        "o" => Role::Operator,
        _ => return Err(ForwardError::Malformed),
    };
    let claimed_sha = URL_SAFE_NO_PAD.decode(body_sha).map_err(|_| ForwardError::Malformed)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| ForwardError::Malformed)?;
    // The MAC covers the body's hash as computed here: a body changed on the way (or a hash
    // field that does not match it) fails like a forged signature.
    let body_sha = Sha256::digest(body);
    mac(
        secret,
        &[
            &at.to_be_bytes(),
            from.as_str().as_bytes(),
            to.as_str().as_bytes(),
            call_id.as_str().as_bytes(),
            key_id.as_bytes(),
            role_tag(role).as_bytes(),
            tenant.as_bytes(),
            &body_sha,
        ],
    )
    .verify_slice(&tag)
    .map_err(|_| ForwardError::BadSignature)?;
    if claimed_sha != body_sha.as_slice() {
        return Err(ForwardError::BadSignature);
    }
    if now.0.abs_diff(at) > SIGNATURE_TTL_MS {
        return Err(ForwardError::Expired);
    }
    let tenant = match (role, *tenant) {
        (Role::Operator, "") => None,
        (Role::Tenant, t) => Some(TenantId::parse(t).map_err(|_| ForwardError::Malformed)?),
        (Role::Operator, _) => return Err(ForwardError::Malformed),
    };
    Ok(Forwarded { from, caller: Caller { key_id: Arc::from(key_id), role, tenant } })
}

/// [`verify`] for this worker, as the API answers it: 403 `forward_signature_invalid`,
/// counted, when the header does not hold.
pub fn check(state: &AppState, value: &str, call_id: &CallId, body: &[u8]) -> Result<Forwarded, Error> {
    verify(&state.config.security.token_secret, value, &state.worker_id, call_id, body, now()).map_err(|e| {
        count_refusal("forward_signature_invalid");
        warn!(call_id = %call_id, reason = %e, "forwarded action refused");
        Error::new(
            ErrorKind::Forbidden,
            "forward_signature_invalid",
            "the forwarding header is not valid for this request",
        )
    })
}

/// Where an action for a call not carried here should go.
#[derive(Debug)]
pub enum Route {
    /// To this live worker, which owns the call.
    Owner(WorkerInfo),
    /// Nowhere: no worker drives the call now (never attached, detached, or its owner's
    /// lease ran out or it left the registry: it resumes when its client reconnects).
    Unattached,
}

/// Finds the live worker that owns the call of `record`, if another one does.
pub async fn route(state: &AppState, record: &CallRecord) -> Result<Route, Error> {
    let Some(owner) = &record.owner else { return Ok(Route::Unattached) };
    if *owner == state.worker_id {
        return Ok(Route::Unattached);
    }
    if record.lease_until.is_some_and(|until| until.add_ms(LEASE_SKEW_MS) < now()) {
        return Ok(Route::Unattached);
    }
    let workers = state.store.workers().await?;
    let own_address = workers.iter().find(|w| w.worker_id == state.worker_id).map(|w| w.address.clone());
    match workers.into_iter().find(|w| w.worker_id == *owner) {
        // A previous process at this very address (restarted within the lease, its entry
        // not lapsed yet): it is gone, and the request would only come back here.
        Some(worker) if own_address.as_ref() == Some(&worker.address) => {
            metrics::counter!(m::ACTION_FORWARD_FAILURES, "reason" => "owner_not_registered").increment(1);
            Ok(Route::Unattached)
        }
        Some(worker) => Ok(Route::Owner(worker)),
        None => {
            metrics::counter!(m::ACTION_FORWARD_FAILURES, "reason" => "owner_not_registered").increment(1);
            Ok(Route::Unattached)
        }
    }
}

/// One HTTP client for forwards and API-driven Twilio updates: connections are reused. It
/// never follows redirects (an owner answers; it does not send us elsewhere). Timeouts are
/// set per request.
pub(crate) fn http() -> &'static reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Bounded: idle connections kept per peer (other workers, Twilio's API).
            .pool_max_idle_per_host(HTTP_IDLE_PER_HOST_MAX)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

fn owner_unreachable(reason: &'static str) -> Error {
    metrics::counter!(m::ACTION_FORWARD_FAILURES, "reason" => reason).increment(1);
    Error::new(
        ErrorKind::Unavailable,
        "owner_unreachable",
        "the worker carrying the call did not answer in time; retry",
    )
    .retry_after(1)
}

/// Sends the action (`body`, as the client sent it) to `owner` and relays its answer:
/// status, JSON body and `Retry-After`.
pub async fn forward(
    state: &AppState,
    owner: &WorkerInfo,
    call_id: &CallId,
    caller: &Caller,
    body: Bytes,
) -> Result<Response, Error> {
    let signed = sign(
        &state.config.security.token_secret,
        now(),
        &state.worker_id,
        &owner.worker_id,
        call_id,
        caller,
        &body,
    );
    let url = format!("{}/v1/calls/{call_id}/actions", owner.address.trim_end_matches('/'));
    debug!(call_id = %call_id, owner = %owner.worker_id, "forwarding an action to the call's worker");
    let sent = http()
        .post(url)
        .timeout(state.config.server.forward_timeout)
        .header(header::CONTENT_TYPE, "application/json")
        .header(FORWARD_HEADER, signed)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_timeout() { "timeout" } else { "connect" };
            warn!(call_id = %call_id, owner = %owner.worker_id, error = %e, "forwarding an action failed");
            return Err(owner_unreachable(reason));
        }
    };
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| HeaderValue::from_str(v).ok());
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= RESPONSE_BYTES_MAX => {
                bytes.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => return Err(owner_unreachable("bad_response")),
            Ok(None) => break,
            Err(e) => return Err(owner_unreachable(if e.is_timeout() { "timeout" } else { "bad_response" })),
        }
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Err(owner_unreachable("bad_response"));
    };
    if status.is_success() {
        metrics::counter!(m::ACTIONS_FORWARDED, "outcome" => "applied").increment(1);
    } else if json["error"]["code"] == "forward_signature_invalid" {
        // Not the client's doing: the workers do not share `security.token_secret`.
        error!(owner = %owner.worker_id, "the call's worker refused this worker's forwarding signature; do the workers share security.token_secret?");
        return Err(owner_unreachable("signature_refused"));
    } else if json["error"]["code"] == "call_owner_moved" {
        metrics::counter!(m::ACTION_FORWARD_FAILURES, "reason" => "owner_moved").increment(1);
    } else {
        metrics::counter!(m::ACTIONS_FORWARDED, "outcome" => "refused").increment(1);
    }
    let mut relayed = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    if let Some(v) = retry_after {
        relayed.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(relayed)
}

/// Whether the store names another worker than this one as the call's owner: a forwarded
/// action for a call not carried here then answers [`owner_moved`] (one hop: it is never
/// forwarded again).
pub fn owned_elsewhere(state: &AppState, record: &CallRecord) -> bool {
    record.owner.as_ref().is_some_and(|owner| *owner != state.worker_id)
}

/// The call moved to another worker while a forwarded action was on its way.
pub fn owner_moved() -> Error {
    Error::new(
        ErrorKind::Conflict,
        "call_owner_moved",
        "the call moved to another worker while the action was forwarded; retry",
    )
    .retry_after(1)
}

/// No media session drives the call anywhere right now.
pub fn not_attached() -> Error {
    Error::new(
        ErrorKind::Conflict,
        "call_not_attached",
        "no media session drives this call right now; it resumes when its client reconnects",
    )
    .retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-fleet-secret-of-at-least-32-bytes-long";

    fn ids() -> (WorkerId, WorkerId, CallId) {
        (WorkerId::parse("w-a").unwrap(), WorkerId::parse("w-b").unwrap(), CallId::parse("c_1").unwrap())
    }

    fn tenant_caller() -> Caller {
        Caller {
            key_id: Arc::from("acme.key/1"),
            role: Role::Tenant,
            tenant: Some(TenantId::parse("acme").unwrap()),
        }
    }

    #[test]
    fn a_signed_action_verifies_only_as_signed() {
        let (a, b, call) = ids();
        let body = br#"{"type":"hangup"}"#;
        let at = UnixMillis(1_700_000_000_000);
        let header = sign(SECRET, at, &a, &b, &call, &tenant_caller(), body);
        let ok = verify(SECRET, &header, &b, &call, body, at.add_ms(1_000)).unwrap();
        assert_eq!(ok.from, a);
        assert_eq!(ok.caller.tenant, tenant_caller().tenant);
        assert_eq!(&*ok.caller.key_id, "acme.key/1");
        assert_eq!(ok.caller.role, Role::Tenant);
        let operator = Caller { key_id: Arc::from("ops"), role: Role::Operator, tenant: None };
        let header_op = sign(SECRET, at, &a, &b, &call, &operator, body);
        assert_eq!(verify(SECRET, &header_op, &b, &call, body, at).unwrap().caller.tenant, None);

        let other_call = CallId::parse("c_2").unwrap();
        let cases: Vec<(&str, Result<(), ForwardError>)> = vec![
            ("another receiver", verify(SECRET, &header, &a, &call, body, at).map(|_| ())),
            ("another call", verify(SECRET, &header, &b, &other_call, body, at).map(|_| ())),
            ("another body", verify(SECRET, &header, &b, &call, b"{}", at).map(|_| ())),
            (
                "another secret",
                verify(b"another-secret-of-at-least-32-bytes!!", &header, &b, &call, body, at).map(|_| ()),
            ),
            (
                "too late",
                verify(SECRET, &header, &b, &call, body, at.add_ms(SIGNATURE_TTL_MS + 1)).map(|_| ()),
            ),
            ("garbage", verify(SECRET, "v1.x", &b, &call, body, at).map(|_| ())),
            ("empty", verify(SECRET, "", &b, &call, body, at).map(|_| ())),
        ];
        for (what, result) in cases {
            assert!(result.is_err(), "{what} must be refused");
        }
        // Promoting oneself to operator, or to another tenant, breaks the signature.
        let forged = header.replacen(".t.acme.", ".o..", 1);
        assert_eq!(verify(SECRET, &forged, &b, &call, body, at).unwrap_err(), ForwardError::BadSignature);
        let forged = header.replacen(".t.acme.", ".t.other.", 1);
        assert_eq!(verify(SECRET, &forged, &b, &call, body, at).unwrap_err(), ForwardError::BadSignature);
    }
}
