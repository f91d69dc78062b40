//! Webhooks: which call events become webhook events, and the delivery task every worker
//! runs (docs/webhooks.md).
//!
//! Events are never sent from where they happen. A session hands the timeline events that
//! are new since its last write ([`timeline_events`]) to its checkpoint writer, which
//! stores them *with* the checkpoint that covers them; the store writes `call.ended` and
//! `recording.ready` itself with the end (`callworker_store::outbox`). So an event exists
//! exactly when the state change behind it is durable, and a worker killed right after the
//! change loses nothing: the event waits in the store's outbox.
//!
//! [`task_main`] delivers them: every `webhooks.poll_interval` it claims due calls (a claim
//! is a lease; a dead worker's claims lapse and others take them), and for each claimed
//! call POSTs its events oldest first, signed, one at a time. A failure counts an attempt
//! and makes the call due again after an exponential backoff with jitter; after
//! `webhooks.attempts_max` attempts the event is dead-lettered. Delivery is at least once:
//! a worker that dies after the receiver accepted an event but before the store heard of
//! it leaves the event to be sent again, with the same `Idempotency-Key`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callworker_call::{Call, EventKind, ResumeCause};
use callworker_store::StoreError;
use callworker_store::outbox::{EventBody, EventType, OutboxClaim, OutboxEvent, PendingEvent, Settle};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{WebhookTarget, WebhooksConfig};
use crate::metrics as m;
use crate::state::{AppState, now};

/// The header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>` over
/// `<t>.<body>`.
pub const SIGNATURE_HEADER: &str = "X-Callworker-Signature";
/// The event id; the same on every attempt of one event.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The event type (also in the body).
pub const EVENT_HEADER: &str = "X-Callworker-Event";
/// Which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "X-Callworker-Attempt";
/// How often the outbox depth gauge is refreshed (one `ZCARD` per worker).
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// The webhook events among the timeline entries from absolute position `from` on (the
/// timeline's `dropped()` count plus the index in it), and the position after the last
/// entry. An event's id is its position, so it is stable across workers and retries.
pub fn timeline_events(call: &Call, from: u64) -> (Vec<OutboxEvent>, u64) {
    let first = call.timeline.dropped();
    let end = first + call.timeline.len() as u64;
    let mut events = Vec::new();
    let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
    for (n, event) in (first..).zip(call.timeline.events()).skip(skip) {
        let (kind, data) = match &event.kind {
            EventKind::Attached { transport } => {
                (EventType::CallStarted, serde_json::json!({ "transport": transport.as_str() }))
            }
            EventKind::Resumed { transport, cause, gap_ms } => {
                let kind = match cause {
                    ResumeCause::WorkerLost => EventType::CallResumed,
                    ResumeCause::MigratedMemory | ResumeCause::MigratedDrain => EventType::CallMigrated,
                };
                let data = serde_json::json!({
                    "transport": transport.as_str(),
                    "cause": cause.as_str(),
                    "gap_ms": gap_ms,
                });
                (kind, data)
            }
            EventKind::Dtmf { digit } => (EventType::Dtmf, serde_json::json!({ "digit": digit.to_string() })),
            // call.ended comes from the store's end, which every end goes through.
            _ => continue,
        };
        events.push(OutboxEvent {
            id: format!("{}:e{n}", call.id),
            kind,
            at: event.at,
            data: data.to_string(),
        });
    }
    (events, end)
}

/// The `X-Callworker-Signature` value for `body` sent at `unix_s`.
pub fn signature(secret: &[u8], unix_s: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_s},v1={hex}")
}

/// The delay before the next attempt after `failed` failed attempts (≥ 1): the base
/// doubled per earlier failure, capped, then lowered by a random share of up to half, so
/// that receivers that come back are not hit by every worker at once.
pub fn backoff(config: &WebhooksConfig, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(30);
    let full = config.backoff_base.saturating_mul(1 << doublings).min(config.backoff_max);
    let keep = 0.5 + rand::random::<f64>() * 0.5;
    full.mul_f64(keep)
}

/// How long a claim on a call lasts: long enough for a few deliveries in a row.
fn claim_lease(config: &WebhooksConfig) -> Duration {
    config.request_timeout * 4 + Duration::from_secs(1)
}

/// Delivers webhooks until the process ends. Without any webhook tenant it does nothing
/// at all (no store traffic).
pub async fn task_main(state: AppState) {
    let config = &state.config.webhooks;
    if config.tenants.is_empty() {
        return std::future::pending().await;
    }
    let client = match reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "webhook HTTP client could not be built; webhooks stay in the outbox");
            return std::future::pending().await;
        }
    };
    info!(tenants = config.tenants.len(), "webhook delivery running");
    let slots = Arc::new(Semaphore::new(config.concurrency_max));
    let lease = claim_lease(config);
    let mut tick = tokio::time::interval(config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut depth_at: Option<Instant> = None;
    loop {
        tick.tick().await;
        if depth_at.is_none_or(|t| t.elapsed() >= DEPTH_INTERVAL) {
            depth_at = Some(Instant::now());
            match state.store.outbox_calls().await {
                Ok(n) => metrics::gauge!(m::WEBHOOK_OUTBOX_CALLS).set(n as f64),
                Err(e) => store_error("outbox_calls", &e),
            }
        }
        let free = slots.available_permits().min(config.claim_batch_max);
        if free == 0 {
            continue;
        }
        let claims = match state.store.outbox_claim(free, lease).await {
            Ok(claims) => claims,
            Err(e) => {
                store_error("claim", &e);
                continue;
            }
        };
        for claim in claims {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let state = state.clone();
            let client = client.clone();
            tokio::spawn(async move {
                deliver_call(&state, &client, claim, lease).await;
                drop(slot);
            });
        }
    }
}

fn store_error(op: &'static str, e: &StoreError) {
    metrics::counter!(m::WEBHOOK_STORE_ERRORS, "op" => op).increment(1);
    warn!(op, error = %e, "webhook outbox operation failed; the claim lapses and is retried");
}

/// Delivers a claimed call's events, oldest first, until its outbox is empty, one fails,
/// or the claim is about to lapse.
async fn deliver_call(state: &AppState, client: &reqwest::Client, claim: OutboxClaim, lease: Duration) {
    let config = &state.config.webhooks;
    let started = Instant::now();
    loop {
        let head = match state.store.outbox_head(&claim).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => return store_error("head", &e),
        };
        let settle = deliver_one(state, client, &claim, &head).await;
        let stop = matches!(settle, Settle::Retry { .. });
        if let Err(e) = state.store.outbox_settle(&claim, &head, settle).await {
            return store_error("settle", &e);
        }
        if stop {
            return;
        }
        if started.elapsed() + config.request_timeout * 2 > lease {
            // Give the call back rather than let the claim lapse mid-request.
            if let Err(e) = state.store.outbox_yield(&claim).await {
                store_error("yield", &e);
            }
            return;
        }
    }
}

/// Sends one event and decides what becomes of it.
async fn deliver_one(
    state: &AppState,
    client: &reqwest::Client,
    claim: &OutboxClaim,
    head: &PendingEvent,
) -> Settle {
    let config = &state.config.webhooks;
    let dead = |reason: &str, attempts: u32| {
        metrics::counter!(m::WEBHOOKS_DEAD_LETTERED, "reason" => reason.to_owned()).increment(1);
        Settle::Dead { reason: reason.to_owned(), attempts }
    };
    let body: EventBody = match serde_json::from_slice(&head.body) {
        Ok(body) => body,
        Err(e) => {
            warn!(call_id = %claim.call_id, error = %e, "unreadable webhook event dead-lettered");
            return dead("unreadable", head.attempts);
        }
    };
    let Some(target) = config.target(&body.tenant) else {
        warn!(call_id = %claim.call_id, event_id = %body.id, tenant = %body.tenant, "webhook for a tenant without a webhook target dead-lettered");
        return dead("tenant_not_configured", head.attempts);
    };
    if !target.events.iter().any(|e| e.as_str() == body.kind) {
        metrics::counter!(m::WEBHOOKS_DROPPED, "reason" => "unsubscribed").increment(1);
        debug!(event_id = %body.id, kind = %body.kind, "webhook event no longer subscribed; not sent");
        return Settle::Delivered;
    }
    let attempt = head.attempts.saturating_add(1);
    match post(client, target, &body, head, attempt).await {
        Ok(()) => {
            let kind = EventType::parse(&body.kind).map_or("unknown", EventType::as_str);
            metrics::counter!(m::WEBHOOKS_DELIVERED, "type" => kind).increment(1);
            let age_ms = now().0.saturating_sub(body.at);
            metrics::histogram!(m::WEBHOOK_DELIVERY_SECONDS).record(age_ms as f64 / 1000.0);
            debug!(event_id = %body.id, attempt, "webhook delivered");
            Settle::Delivered
        }
        Err((reason, detail)) => {
            if attempt >= config.attempts_max {
                warn!(event_id = %body.id, url = %target.url, attempt, detail, "webhook failed its last attempt; dead-lettered");
                return dead("attempts_exhausted", attempt);
            }
            let after = backoff(config, attempt);
            metrics::counter!(m::WEBHOOKS_RETRIED, "reason" => reason).increment(1);
            info!(event_id = %body.id, url = %target.url, attempt, detail, retry_in_ms = after.as_millis() as u64, "webhook attempt failed; will retry");
            Settle::Retry { after }
        }
    }
}

/// POSTs one event; `Err((reason label, detail))` unless the receiver answered 2xx.
async fn post(
    client: &reqwest::Client,
    target: &WebhookTarget,
    body: &EventBody,
    head: &PendingEvent,
    attempt: u32,
) -> Result<(), (&'static str, String)> {
    let unix_s = now().0 / 1000;
    let response = client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_HEADER, &body.id)
        .header(EVENT_HEADER, &body.kind)
        .header(ATTEMPT_HEADER, attempt)
        .header(SIGNATURE_HEADER, signature(&target.secret, unix_s, &head.body))
        .body(head.body.clone())
        .send()
        .await
        .map_err(|e| ("network", e.to_string()))?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(("status", format!("HTTP {}", status.as_u16()))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_dot_body() {
        // The framing (timestamp, a dot, the body) against a direct computation.
        let sig = signature(b"secret", 1_700_000_000, b"{\"a\":1}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sig, format!("t=1700000000,v1={hex}"));
        assert_ne!(signature(b"other", 1_700_000_000, b"{\"a\":1}"), sig);
        assert_ne!(signature(b"secret", 1_700_000_001, b"{\"a\":1}"), sig);
    }

    #[test]
    fn timeline_events_map_attach_resume_and_dtmf_with_stable_positions() {
        use callworker_call::{
            CallId, CallLimits, CallSpec, Direction, Input, RecordingSettings, Resume, TenantId, Transport,
            UnixMillis,
        };
        let spec = CallSpec {
            tenant: TenantId::parse("acme").unwrap(),
            direction: Direction::Inbound,
            from: None,
            to: None,
            program: serde_json::from_value(serde_json::json!({"name": "echo", "params": {"delay_ms": 0}}))
                .unwrap(),
            audio: callworker_protocol::AudioFormat::TWILIO,
            limits: CallLimits::default(),
            recording: RecordingSettings::default(),
        };
        let mut call = Call::new(CallId::parse("c1").unwrap(), spec, UnixMillis(1_000)).unwrap();
        let mut out = Vec::new();
        call.handle(
            UnixMillis(1_001),
            Input::Attached { transport: Transport::Native, resume: None },
            &mut out,
        );
        call.handle(UnixMillis(1_002), Input::Dtmf { digit: '5' }, &mut out);
        let (events, seen) = timeline_events(&call, 0);
        let summary: Vec<(&str, EventType, u64, &str)> =
            events.iter().map(|e| (e.id.as_str(), e.kind, e.at.0, e.data.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("c1:e1", EventType::CallStarted, 1_001, r#"{"transport":"native"}"#),
                ("c1:e2", EventType::Dtmf, 1_002, r#"{"digit":"5"}"#),
            ]
        );
        assert_eq!(seen, 3, "created, attached, dtmf");
        assert!(timeline_events(&call, seen).0.is_empty(), "nothing new since");

        call.handle(UnixMillis(1_003), Input::Detached { cause: Some(ResumeCause::MigratedDrain) }, &mut out);
        let resume = Resume { cause: ResumeCause::MigratedDrain, gap_ms: 7 };
        call.handle(
            UnixMillis(1_010),
            Input::Attached { transport: Transport::Twilio, resume: Some(resume) },
            &mut out,
        );
        let (events, _) = timeline_events(&call, seen);
        assert_eq!(events.len(), 1, "the detach is not a webhook: {events:?}");
        assert_eq!((events[0].id.as_str(), events[0].kind), ("c1:e4", EventType::CallMigrated));
        let data: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(data, serde_json::json!({"transport": "twilio", "cause": "migrated_drain", "gap_ms": 7}));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_down_by_at_most_half() {
        let config = WebhooksConfig {
            tenants: Vec::new(),
            request_timeout: Duration::from_secs(1),
            attempts_max: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            poll_interval: Duration::from_millis(100),
            claim_batch_max: 1,
            concurrency_max: 1,
            call_events_max: 1,
            dead_letters_max: 1,
        };
        for _ in 0..100 {
            for (failed, full_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (40, 1_000)] {
                let d = backoff(&config, failed).as_millis() as u64;
                assert!(d >= full_ms / 2 && d <= full_ms, "attempt {failed}: {d} ms");
            }
        }
    }
}
