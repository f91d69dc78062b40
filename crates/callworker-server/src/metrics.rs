//! Every metric the worker exports, defined in one place (names in base units, counters
//! end in `_total`), and the Prometheus recorder served at `/metrics`.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Calls carried by this worker right now (a media session attached).
pub const CALLS_ACTIVE: &str = "callworker_calls_active";
/// Calls created, by `via`: `api` (control API) or `twilio` (voice webhook, static stream).
pub const CALLS_CREATED: &str = "callworker_calls_created_total";
/// Media sessions that attached to a call, by `transport` and `resumed`.
pub const CALLS_ATTACHED: &str = "callworker_calls_attached_total";
/// Calls ended, by `reason` (DESIGN.md §4).
pub const CALLS_ENDED: &str = "callworker_calls_ended_total";
/// WebSocket media sessions open, by `transport`.
pub const WS_SESSIONS: &str = "callworker_ws_sessions";
/// WebSocket sessions closed, by `transport` and close `code`.
pub const WS_CLOSED: &str = "callworker_ws_sessions_closed_total";
/// Inbound messages refused or ignored as bad input, by `transport` and `reason`.
pub const WS_REJECTED: &str = "callworker_ws_messages_rejected_total";
/// Audio frames received, by `transport`.
pub const FRAMES_IN: &str = "callworker_frames_in_total";
/// Audio frames sent, by `transport`.
pub const FRAMES_OUT: &str = "callworker_frames_out_total";
/// Outbound audio frames dropped (queue full: slow consumer; or older than the lease when
/// the writer got to them: a paused process), by `transport`.
pub const FRAMES_DROPPED: &str = "callworker_frames_dropped_total";
/// Time to process one inbound audio frame (parse → call program → outputs queued).
pub const FRAME_PROCESSING_SECONDS: &str = "callworker_frame_processing_seconds";
/// Checkpoints written, by `outcome` (applied, duplicate, fenced, ended, error).
pub const CHECKPOINTS: &str = "callworker_checkpoints_total";
/// Checkpoint write latency.
pub const CHECKPOINT_SECONDS: &str = "callworker_checkpoint_seconds";
/// Checkpoint size.
pub const CHECKPOINT_BYTES: &str = "callworker_checkpoint_bytes";
/// New sessions or calls refused by admission, by `reason`.
pub const ADMISSION_REFUSED: &str = "callworker_admission_refused_total";
/// HTTP requests, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "callworker_http_requests_total";
/// HTTP request latency, by `route`.
pub const HTTP_REQUEST_SECONDS: &str = "callworker_http_request_seconds";

/// Calls resumed on this worker, by `cause` (worker_lost, migrated_memory, migrated_drain)
/// and `transport`.
pub const CALLS_RESUMED: &str = "callworker_calls_resumed_total";
/// Resume gap: from the previous owner's last durable write to this attach.
pub const RESUME_GAP_SECONDS: &str = "callworker_resume_gap_seconds";
/// Takeovers refused, by `reason` (stale, ended, not_found, version_incompatible,
/// checkpoint_corrupt, store_unavailable, invalid_token, audio_format_mismatch).
pub const TAKEOVERS_REFUSED: &str = "callworker_takeovers_refused_total";
/// Writes refused because another session owns the call (this session then stops).
pub const FENCED_WRITES: &str = "callworker_fenced_writes_total";
/// Sessions that found themselves paused (not run) for longer than the lease and confirmed
/// their ownership with a write before driving the call again.
pub const PAUSES_PAST_LEASE: &str = "callworker_session_pauses_past_lease_total";
/// Store operations that failed for the store's sake (unreachable, timeout), by `op`.
pub const STORE_ERRORS: &str = "callworker_store_errors_total";
/// Recorded audio dropped because checkpoints could not be written for too long.
pub const RECORDING_DROPPED_BYTES: &str = "callworker_recording_dropped_bytes_total";
/// Orphans handled by the reaper, by `action` (ended, rescued, rescue_failed, remote_hangup).
pub const REAPER_ACTIONS: &str = "callworker_reaper_actions_total";
/// Twilio REST call updates, by `outcome`.
pub const TWILIO_REST_REQUESTS: &str = "callworker_twilio_rest_requests_total";
/// When this worker process started (Unix seconds): a change means a restart.
pub const PROCESS_START_TIME: &str = "callworker_process_start_time_seconds";
/// Requests refused by authentication or authorization, by `reason` (missing_api_key,
/// malformed_authorization, invalid_api_key, revoked_api_key, operator_key_required,
/// wrong_tenant, tenant_mismatch, origin_not_allowed, twilio_signature_missing,
/// twilio_signature_invalid, twilio_not_configured, forward_signature_invalid).
pub const AUTH_REFUSED: &str = "callworker_auth_refused_total";
/// Requests or connections refused by an abuse limit, by `limit` (api_rate,
/// tenant_calls, ws_message_rate, ws_byte_rate, ws_message_size, handshake_timeout).
pub const LIMIT_REFUSED: &str = "callworker_limit_refused_total";
/// Changes of the API keys file that could not be loaded (the keys in force stayed).
pub const AUTH_KEYS_RELOAD_FAILURES: &str = "callworker_auth_keys_reload_failures_total";
/// Live workers in the registry, as this worker last saw it.
pub const WORKERS_LIVE: &str = "callworker_workers_live";
/// Control-API actions this worker forwarded to the worker carrying the call, by
/// `outcome`: `applied` (the owner answered 2xx) or `refused` (the owner answered an error,
/// relayed to the client).
pub const ACTIONS_FORWARDED: &str = "callworker_actions_forwarded_total";
/// Actions that could not reach the call's worker, by `reason`: `connect`, `timeout`,
/// `bad_response`, `signature_refused` (503 `owner_unreachable`), `owner_moved` (the call left the owner
/// meanwhile: 409 `call_owner_moved`), `owner_not_registered` (the owner left the registry:
/// 409 `call_not_attached`).
pub const ACTION_FORWARD_FAILURES: &str = "callworker_action_forward_failures_total";

/// Memory governor level: 0 normal, 1 elevated, 2 shed, 3 migrate, 4 emergency.
pub const GOVERNOR_LEVEL: &str = "callworker_governor_level";
/// Working set over the effective memory limit.
pub const GOVERNOR_PRESSURE: &str = "callworker_governor_pressure_ratio";
/// The worker's cgroup memory, by `kind` (working_set, usage).
pub const GOVERNOR_MEMORY_BYTES: &str = "callworker_governor_memory_bytes";
/// The effective memory limit the governor measures against.
pub const GOVERNOR_LIMIT_BYTES: &str = "callworker_governor_memory_limit_bytes";
/// Governor level changes, by `from` and `to`.
pub const GOVERNOR_TRANSITIONS: &str = "callworker_governor_level_transitions_total";
/// Governor actions on calls, by `action` (migrate, shed).
pub const GOVERNOR_ACTIONS: &str = "callworker_governor_actions_total";
/// Calls this worker moved to other workers, by `reason` (migrated_memory, migrated_drain).
pub const CALLS_MIGRATED: &str = "callworker_calls_migrated_total";
/// Allocator (jemalloc) figures, by `kind` (allocated, active, resident, retained).
pub const ALLOCATOR_BYTES: &str = "callworker_allocator_bytes";
/// Resident bytes released by allocator purges.
pub const ALLOCATOR_PURGED_BYTES: &str = "callworker_allocator_purged_bytes_total";
/// Per-call memory accounts, sampled at each checkpoint.
pub const CALL_ACCOUNT_BYTES: &str = "callworker_call_account_bytes";
/// Samples the governor could not read.
pub const GOVERNOR_READ_FAILURES: &str = "callworker_governor_read_failures_total";
/// DTMF digits an IVR detected in the caller's audio (in-band), by transport.
pub const IVR_DTMF_DETECTED: &str = "callworker_ivr_dtmf_detected_total";
/// IVR prompts interrupted by the caller (voice or a digit), by transport.
pub const IVR_BARGE_INS: &str = "callworker_ivr_barge_ins_total";

/// Webhook events accepted by their receiver (2xx), by `type`.
pub const WEBHOOKS_DELIVERED: &str = "callworker_webhooks_delivered_total";
/// Failed webhook attempts scheduled for a retry, by `reason` (`status`, `network`).
pub const WEBHOOKS_RETRIED: &str = "callworker_webhooks_retried_total";
/// Webhook events given up on and dead-lettered, by `reason` (`attempts_exhausted`,
/// `tenant_not_configured`, `unreadable`).
pub const WEBHOOKS_DEAD_LETTERED: &str = "callworker_webhooks_dead_lettered_total";
/// Webhook events not sent, by `reason` (`unsubscribed`: the tenant's current configuration
/// no longer lists the event; `pending_full`: a session's unwritten events beyond
/// `webhooks.call_events_max`).
pub const WEBHOOKS_DROPPED: &str = "callworker_webhooks_dropped_total";
/// Calls with undelivered webhook events, fleet-wide (the outbox depth).
pub const WEBHOOK_OUTBOX_CALLS: &str = "callworker_webhook_outbox_calls";
/// From an event to its acceptance by the receiver (includes retries).
pub const WEBHOOK_DELIVERY_SECONDS: &str = "callworker_webhook_delivery_seconds";
/// Outbox operations that failed for the store's sake.
pub const WEBHOOK_STORE_ERRORS: &str = "callworker_webhook_store_errors_total";

/// Agent legs established, by `resume` (true when the call had a leg before).
pub const AGENT_LEGS: &str = "callworker_agent_legs_total";
/// Agent legs that failed or were refused, by `reason` (connect_timeout, connect_failed,
/// agent_unauthorized, closed, message_too_large, invalid_json, invalid_message,
/// slow_agent, agent_not_configured, agent_url_not_allowed).
pub const AGENT_LEG_ERRORS: &str = "callworker_agent_leg_errors_total";
/// Calls whose agent could not be reached (fallback program or end agent_unavailable), by
/// the last `reason`.
pub const AGENT_GAVE_UP: &str = "callworker_agent_gave_up_total";
/// Caller audio frames not sent to an agent because its queue was full.
pub const AGENT_FRAMES_DROPPED: &str = "callworker_agent_frames_dropped_total";

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SIZE_BUCKETS_BYTES: &[f64] =
    &[256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0, 262_144.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle, so in-process tests can start several servers).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), SIZE_BUCKETS_BYTES))
                .expect("bucket lists are non-empty constants");
            let handle =
                builder.install_recorder().expect("no other metrics recorder is installed in this process");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CALLS_ACTIVE, "Calls carried by this worker right now (media session attached)");
    describe_counter!(CALLS_CREATED, "Calls created, by via (api, twilio)");
    describe_counter!(CALLS_ATTACHED, "Media sessions attached to a call, by transport and resumed");
    describe_counter!(IVR_DTMF_DETECTED, "DTMF digits detected in callers' audio by IVRs, by transport");
    describe_counter!(IVR_BARGE_INS, "IVR prompts interrupted by the caller (voice or digit), by transport");
    describe_counter!(CALLS_ENDED, "Calls ended, by end reason");
    describe_gauge!(WS_SESSIONS, "Open WebSocket media sessions, by transport");
    describe_counter!(WS_CLOSED, "WebSocket media sessions closed, by transport and close code");
    describe_counter!(
        WS_REJECTED,
        "Inbound media messages refused or ignored as bad input, by transport and reason"
    );
    describe_counter!(FRAMES_IN, "Inbound audio frames, by transport");
    describe_counter!(FRAMES_OUT, "Outbound audio frames, by transport");
    describe_counter!(
        FRAMES_DROPPED,
        "Outbound audio frames dropped: the session queue was full, or they waited past the lease"
    );
    describe_histogram!(FRAME_PROCESSING_SECONDS, Unit::Seconds, "Time to process one inbound audio frame");
    describe_counter!(CHECKPOINTS, "Checkpoint writes, by outcome");
    describe_histogram!(CHECKPOINT_SECONDS, Unit::Seconds, "Checkpoint write latency");
    describe_histogram!(CHECKPOINT_BYTES, Unit::Bytes, "Checkpoint size");
    describe_counter!(ADMISSION_REFUSED, "Sessions or calls refused by admission, by reason");
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by route, method and status");
    describe_histogram!(HTTP_REQUEST_SECONDS, Unit::Seconds, "HTTP request latency, by route");
    describe_counter!(CALLS_RESUMED, "Calls resumed on this worker, by cause and transport");
    describe_histogram!(
        RESUME_GAP_SECONDS,
        Unit::Seconds,
        "Resume gap: previous owner's last durable write to this attach"
    );
    describe_counter!(TAKEOVERS_REFUSED, "Takeovers refused, by reason");
    describe_counter!(FENCED_WRITES, "Writes refused because another session owns the call");
    describe_counter!(
        PAUSES_PAST_LEASE,
        "Sessions paused past the lease that confirmed ownership before driving the call again"
    );
    describe_counter!(STORE_ERRORS, "Store operations failed (unreachable, timeout), by op");
    describe_counter!(
        RECORDING_DROPPED_BYTES,
        Unit::Bytes,
        "Recorded audio dropped while checkpoints could not be written"
    );
    describe_counter!(REAPER_ACTIONS, "Orphaned calls handled by the reaper, by action");
    describe_counter!(TWILIO_REST_REQUESTS, "Twilio REST call updates, by outcome");
    describe_gauge!(WORKERS_LIVE, "Live workers in the registry");
    describe_counter!(ACTIONS_FORWARDED, "Control-API actions forwarded to the call's worker, by outcome");
    describe_counter!(ACTION_FORWARD_FAILURES, "Actions that could not reach the call's worker, by reason");
    describe_gauge!(PROCESS_START_TIME, Unit::Seconds, "When this worker process started (Unix seconds)");
    describe_gauge!(GOVERNOR_LEVEL, "Memory governor level (0 normal .. 4 emergency)");
    describe_gauge!(GOVERNOR_PRESSURE, "Working set over the effective memory limit");
    describe_gauge!(GOVERNOR_MEMORY_BYTES, Unit::Bytes, "Worker cgroup memory, by kind");
    describe_gauge!(GOVERNOR_LIMIT_BYTES, Unit::Bytes, "Effective memory limit");
    describe_counter!(GOVERNOR_TRANSITIONS, "Memory governor level changes, by from and to");
    describe_counter!(GOVERNOR_ACTIONS, "Governor actions on calls, by action (migrate, shed)");
    describe_counter!(CALLS_MIGRATED, "Calls moved to other workers, by reason");
    describe_gauge!(ALLOCATOR_BYTES, Unit::Bytes, "jemalloc figures, by kind");
    describe_counter!(ALLOCATOR_PURGED_BYTES, Unit::Bytes, "Resident bytes released by allocator purges");
    describe_histogram!(
        CALL_ACCOUNT_BYTES,
        Unit::Bytes,
        "Per-call memory accounts, sampled at each checkpoint"
    );
    describe_counter!(GOVERNOR_READ_FAILURES, "Memory samples the governor could not read");
    describe_counter!(AGENT_LEGS, "Voice-agent legs established, by resume");
    describe_counter!(AGENT_LEG_ERRORS, "Voice-agent legs failed or refused, by reason");
    describe_counter!(AGENT_GAVE_UP, "Calls whose voice agent could not be reached, by last reason");
    describe_counter!(AGENT_FRAMES_DROPPED, "Caller audio frames not sent to a voice agent (queue full)");
    describe_counter!(AUTH_REFUSED, "Requests refused by authentication or authorization, by reason");
    describe_counter!(LIMIT_REFUSED, "Requests or connections refused by an abuse limit, by limit");
    describe_counter!(AUTH_KEYS_RELOAD_FAILURES, "API keys file changes that could not be loaded");
    describe_counter!(WEBHOOKS_DELIVERED, "Webhook events accepted by their receiver, by type");
    describe_counter!(WEBHOOKS_RETRIED, "Failed webhook attempts scheduled for a retry, by reason");
    describe_counter!(WEBHOOKS_DEAD_LETTERED, "Webhook events given up on (dead-lettered), by reason");
    describe_counter!(WEBHOOKS_DROPPED, "Webhook events not sent, by reason");
    describe_gauge!(WEBHOOK_OUTBOX_CALLS, "Calls with undelivered webhook events, fleet-wide");
    describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        Unit::Seconds,
        "From a webhook event to its acceptance by the receiver"
    );
    describe_counter!(WEBHOOK_STORE_ERRORS, "Webhook outbox operations failed for the store's sake");
    describe_counter!(
        callworker_store::metrics::WEBHOOK_EVENTS_DROPPED,
        "Webhook events a call's outbox had no room for (webhooks.call_events_max)"
    );
}
