//! Configuration: `config/default.toml` → `config/<env>.toml` → `CALLWORKER_SECTION__KEY`
//! environment variables, read into a raw serde form that refuses unknown keys, then
//! validated into a typed [`Config`] (durations as [`Duration`], bounds checked).
//!
//! Every knob an operator may need during an incident is here and documented in
//! `config/default.toml`. An invalid configuration is reported in one line and the process
//! exits with code 64 before binding any socket (see `main.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use callworker_call::{CallLimits, ProgramSpec, RecordingSettings, TenantId, WorkerId};
use callworker_protocol::twilio;
pub use callworker_store::redis_store::RedisMode;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::Deserialize;

pub mod agent;
pub use agent::AgentConfig;

/// Exit code for an invalid configuration (`EX_USAGE`/`EX_CONFIG` family: 64 = usage).
pub const EXIT_CONFIG_INVALID: i32 = 64;

/// The development-only token secret shipped in `config/default.toml`. A worker started
/// with it logs a warning: production must set `CALLWORKER_SECURITY__TOKEN_SECRET`.
pub const DEV_TOKEN_SECRET: &str = "dev-only-insecure-secret-change-me-0123456789";

/// Largest WebSocket message accepted on any media endpoint, whatever the configuration.
pub const WS_MESSAGE_BYTES_MAX: usize = 1 << 20;

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub limits: Limits,
    pub calls: CallsConfig,
    pub checkpoint: CheckpointConfig,
    pub twilio: TwilioConfig,
    pub security: SecurityConfig,
    pub store: StoreConfig,
    pub resume: ResumeConfig,
    pub governor: GovernorConfig,
    pub profiling: ProfilingConfig,
    pub auth: AuthConfig,
    pub webhooks: WebhooksConfig,
    pub ivr: IvrConfig,
    pub agent: AgentConfig,
}

/// Named IVR definitions (see `ivr_definitions.rs`).
#[derive(Debug, Clone)]
pub struct IvrConfig {
    /// Directory of `<name>.toml` definitions (relative to the config directory); `None` =
    /// no named definitions.
    pub dir: Option<PathBuf>,
    /// Most definition files; more is a configuration error.
    pub definitions_max: usize,
    /// Largest prompt (WAV) file, in bytes; a larger one is a configuration error.
    pub prompt_file_bytes_max: u64,
    /// Decoded prompt audio all definitions may hold in memory together (PCM at every call
    /// rate), in bytes; more is a configuration error.
    pub prompt_memory_bytes_max: usize,
    /// The loaded definitions by name, with their prompts, shared by every call.
    pub definitions: std::sync::Arc<std::collections::BTreeMap<String, callworker_call::program::IvrParams>>,
}

/// Webhooks: per-tenant targets and the delivery bounds (see `webhooks.rs`,
/// docs/webhooks.md).
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Where each tenant's events go; a tenant not listed gets none.
    pub tenants: Vec<WebhookTarget>,
    /// Bound on one delivery request (connect, send, response head).
    pub request_timeout: Duration,
    /// Attempts per event; after the last failed one the event is dead-lettered.
    pub attempts_max: u32,
    /// The delay after the first failed attempt; doubled per further failure, at most
    /// `backoff_max`, then jittered down by up to half.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often each worker looks for due events.
    pub poll_interval: Duration,
    /// Calls claimed per poll.
    pub claim_batch_max: usize,
    /// Deliveries in flight per worker (one call's events go out one at a time, in order).
    /// When all are busy, no more calls are claimed until one finishes.
    pub concurrency_max: usize,
    /// Undelivered events per call, in the store and in a session's unwritten state; beyond
    /// it the call's newer timeline events are dropped and counted (the end's are kept).
    pub call_events_max: usize,
    /// Dead letters kept fleet-wide; beyond it the oldest is dropped.
    pub dead_letters_max: usize,
}

impl WebhooksConfig {
    /// The event masks the store keeps per tenant.
    pub fn subscriptions(&self) -> callworker_store::outbox::Subscriptions {
        let mut subscriptions = callworker_store::outbox::Subscriptions::default();
        for t in &self.tenants {
            subscriptions.subscribe(&t.tenant, t.events.iter().copied());
        }
        subscriptions
    }

    pub fn target(&self, tenant: &str) -> Option<&WebhookTarget> {
        self.tenants.iter().find(|t| t.tenant.as_str() == tenant)
    }
}

/// One tenant's webhook endpoint.
#[derive(Clone)]
pub struct WebhookTarget {
    pub tenant: TenantId,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// The events the tenant receives.
    pub events: Vec<callworker_store::outbox::EventType>,
    /// Key of the `X-Callworker-Signature` HMAC (at least 32 bytes).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for WebhookTarget {
    /// Leaves the secret out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Most webhook tenants a worker accepts.
pub const WEBHOOK_TENANTS_MAX: usize = 10_000;
/// Shortest webhook signing secret.
pub const WEBHOOK_SECRET_BYTES_MIN: usize = 32;

/// Who may call the control API, and how much (see `auth.rs`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Whether every control-API route needs an API key. Off is for local experiments only:
    /// every request then acts as an operator, and the worker warns at start.
    pub required: bool,
    /// Keys written in the configuration (reloaded only with the process).
    pub keys: Vec<ApiKeyConfig>,
    /// A TOML file of `[[keys]]` (a Kubernetes Secret mount), re-read when its modification
    /// time changes; a file that fails to parse keeps the previous keys and is logged.
    pub keys_file: Option<std::path::PathBuf>,
    /// Period of the keys file's modification-time check.
    pub keys_reload_interval: Duration,
    /// Control-API requests per second per key (token bucket); above it 429 `rate_limited`
    /// with `Retry-After`. One bucket per configured key, so the map is bounded by
    /// [`API_KEYS_MAX`].
    pub requests_per_second: u32,
    /// Bucket size: requests a key may make at once after being idle.
    pub requests_burst: u32,
    /// Live (not ended) calls one tenant may have across the fleet; creation beyond it is
    /// refused with 429 `tenant_calls_limit`. 0 = unlimited.
    pub tenant_calls_max: usize,
}

/// Most API keys a worker accepts (config and keys file together).
pub const API_KEYS_MAX: usize = 10_000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `/v1/calls…` for its own tenant only.
    Tenant,
    /// Every route, every tenant: `/v1/admin/*`, `/v1/workers`, and any call.
    Operator,
}

/// One API key as configured: never the key itself, only its SHA-256.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    /// Names the key in logs and metrics (never secret).
    pub id: String,
    pub role: Role,
    /// The key's tenant (tenant keys); operators have none.
    pub tenant: Option<TenantId>,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// A revoked key is refused with 401 `revoked_api_key`.
    pub revoked: bool,
}

/// A key as written in `[auth] keys` or a keys file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    id: String,
    #[serde(default)]
    tenant: String,
    role: Role,
    sha256: String,
    #[serde(default)]
    revoked: bool,
}

/// The keys file's form: `[[keys]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeysFile {
    #[serde(default)]
    keys: Vec<RawApiKey>,
}

/// Validates keys (from the configuration or a keys file): plain unique ids, a tenant for
/// tenant keys and none for operators, 64 hex digits of SHA-256.
pub fn validate_keys(raw: Vec<RawApiKey>, origin: &str) -> Result<Vec<ApiKeyConfig>, ConfigError> {
    if raw.len() > API_KEYS_MAX {
        return Err(invalid(format!("{origin}: more than {API_KEYS_MAX} keys")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::with_capacity(raw.len());
    for k in raw {
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if !plain(&k.id) {
            return Err(invalid(format!(
                "{origin}: key id {:?} is not a plain name (≤ 64 of a-z0-9-_.)",
                k.id
            )));
        }
        if !seen.insert(k.id.clone()) {
            return Err(invalid(format!("{origin}: key id {:?} is given twice", k.id)));
        }
        let tenant = match (k.role, k.tenant.as_str()) {
            (Role::Tenant, "") => {
                return Err(invalid(format!("{origin}: key {:?} is a tenant key without a tenant", k.id)));
            }
            (Role::Tenant, t) => Some(
                TenantId::parse(t).map_err(|e| invalid(format!("{origin}: key {:?} tenant: {e}", k.id)))?,
            ),
            (Role::Operator, "") => None,
            (Role::Operator, _) => {
                return Err(invalid(format!("{origin}: operator key {:?} must not name a tenant", k.id)));
            }
        };
        let sha256 = parse_sha256_hex(&k.sha256)
            .ok_or_else(|| invalid(format!("{origin}: key {:?} sha256 must be 64 hex digits", k.id)))?;
        keys.push(ApiKeyConfig { id: k.id, role: k.role, tenant, sha256, revoked: k.revoked });
    }
    Ok(keys)
}

fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads and validates a keys file.
pub fn load_keys_file(path: &Path) -> Result<Vec<ApiKeyConfig>, ConfigError> {
    let origin = format!("auth.keys_file {}", path.display());
    if !path.is_file() {
        return Err(invalid(format!("{origin}: not found")));
    }
    let raw: RawKeysFile = Figment::from(Toml::file(path))
        .extract()
        .map_err(|e| invalid(format!("{origin}: {}", one_line(&e.to_string()))))?;
    validate_keys(raw.keys, &origin)
}

/// On-demand heap profiling (see `profiling.rs`).
#[derive(Debug, Clone)]
pub struct ProfilingConfig {
    /// Whether `GET /v1/admin/memory/profile` may take heap profiles. It also needs the
    /// process started with `_RJEM_MALLOC_CONF=prof:true,…`; off, the endpoint answers 404.
    pub enabled: bool,
}

/// The memory governor (see `governor.rs`).
#[derive(Debug, Clone)]
pub struct GovernorConfig {
    pub enabled: bool,
    /// Period of the cgroup memory sample.
    pub sample_interval: Duration,
    /// A limit to govern against when the cgroup has none or a higher one.
    pub memory_limit_bytes: Option<u64>,
    pub thresholds: callworker_governor::Thresholds,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen_addr: SocketAddr,
    /// Base URL clients and Twilio use to reach this fleet (the load balancer), without a
    /// trailing slash; media URLs are derived from it (`http` → `ws`, `https` → `wss`).
    pub public_url: String,
    /// This worker's id; generated at start when not configured.
    pub worker_id: Option<WorkerId>,
    /// How long shutdown may take before remaining sessions are dropped.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the calls this worker let go of may take to resume elsewhere;
    /// a call still at the epoch it left with is then ended with `drain_timeout`. Below
    /// `shutdown_grace`.
    pub drain_timeout: Duration,
    /// Base URL other workers use to reach this one directly (registered in the worker
    /// registry), to forward control-API actions for the calls it carries. `None`: the
    /// bound address, `http://<listen_addr>`.
    pub advertise_url: Option<String>,
    /// Time allowed for one forwarded action (one hop, answer included); then the API
    /// answers 503 `owner_unreachable`.
    pub forward_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` overrides when set.
    pub filter: String,
}

/// Per-worker and per-connection bounds. Each says what happens when it is reached.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Media sessions this worker carries at once; beyond it new sessions and new calls are
    /// refused with 503 + `Retry-After` and readiness turns false.
    pub calls_max: usize,
    /// Largest WebSocket message (and frame); larger closes the socket with 1009.
    pub ws_message_bytes_max: usize,
    /// Outbound audio frames queued per session; when full the oldest audio is dropped and
    /// counted (`callworker_frames_dropped_total`).
    pub outbound_audio_frames_max: usize,
    /// Outbound control messages queued per session; when full the session is closed as a
    /// slow consumer (control is never dropped silently).
    pub outbound_control_max: usize,
    /// Time for a client to complete the protocol handshake (`hello` / `start`).
    pub handshake_timeout: Duration,
    /// A session with no inbound message for this long is closed (4408).
    pub idle_timeout: Duration,
    /// Inbound messages per second per connection (burst: one second's worth); above it
    /// the connection is closed with 4429.
    pub messages_per_second_max: u32,
    /// Inbound bytes per second per connection (burst: one second's worth); above it the
    /// connection is closed with 4429.
    pub bytes_per_second_max: u32,
    /// Largest HTTP request body; larger is refused with 413.
    pub http_body_bytes_max: usize,
    /// Commands queued to one call's actor from the control API; when full the API answers
    /// 503 `call_busy`.
    pub actor_commands_max: usize,
}

#[derive(Debug, Clone)]
pub struct CallsConfig {
    /// Program for calls that arrive without one (static Twilio TwiML).
    pub default_program: ProgramSpec,
    /// Tenant for calls created without one (until API keys carry tenants).
    pub default_tenant: TenantId,
    pub limits: CallLimits,
    /// Which tracks calls record unless their creation says otherwise.
    pub recording: RecordingSettings,
}

#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Period of the progress checkpoint while media flows (semantic transitions are
    /// checkpointed at once).
    pub interval: Duration,
    /// Ownership lease granted by each attach/checkpoint; the reaper treats a call whose
    /// lease ran out as orphaned.
    pub lease: Duration,
}

#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// A `mark` is sent after every this many outbound frames to learn what was played.
    pub mark_interval_frames: u32,
    pub parse_limits: twilio::Limits,
    /// Twilio's REST API base URL (tests point it at a local recorder).
    pub rest_api_base_url: String,
    /// Whether webhooks and the media upgrade must carry a valid `X-Twilio-Signature`
    /// (keyed by `auth_token`). While on with no `auth_token`, every Twilio route is refused
    /// with 403 `twilio_not_configured`; off, the worker warns at start.
    pub verify_signatures: bool,
    /// Credentials for the REST call-update rescue; rescue is off while either is empty.
    /// `auth_token` also keys `X-Twilio-Signature`.
    pub account_sid: String,
    pub auth_token: String,
    /// Time allowed for one REST request.
    pub rest_timeout: Duration,
}

impl TwilioConfig {
    /// Whether the reaper may rescue Twilio calls through the REST API.
    pub fn rescue_enabled(&self) -> bool {
        !self.account_sid.is_empty() && !self.auth_token.is_empty()
    }
}

/// Resume, orphans and the worker registry.
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// How long after its lease ran out a call waits for its client to come back before the
    /// reaper ends it with `resume_window_expired`.
    pub resume_window: Duration,
    /// Period of the reaper on each worker.
    pub reaper_interval: Duration,
    /// Extra wait, on the reaper's own clock, between seeing an expired lease and acting on
    /// it (phase two re-checks that nobody renewed meanwhile).
    pub reaper_grace: Duration,
    /// Orphans handled per reaper pass; the rest wait for the next pass.
    pub reaper_batch_max: usize,
    /// How long a rescue (Twilio REST redirect) holds the call before another may be tried.
    pub rescue_claim: Duration,
    /// Period of this worker's registry heartbeat; the entry lapses after three periods.
    pub heartbeat_interval: Duration,
    /// Recorded audio a call may hold in memory while its checkpoints cannot be written
    /// (bytes); beyond it the oldest unwritten audio is dropped and counted
    /// (`callworker_recording_dropped_bytes_total`).
    pub recording_pending_bytes_max: usize,
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Key for resume tokens and Twilio stream parameter signatures (≥ 32 bytes).
    pub token_secret: Vec<u8>,
    /// Lifetime of a resume token from issue.
    pub resume_token_ttl: Duration,
    /// Browser origins (`scheme://host[:port]`) allowed to call the API or open media
    /// sockets; a request with another `Origin` is refused with 403 `origin_not_allowed`.
    /// Requests without `Origin` (servers, SDKs, Twilio) are not affected.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In-process store holding at most `capacity` calls (oldest ended evicted first):
    /// a single worker, no failover.
    Memory { capacity: usize, recording_track_bytes_max: usize },
    /// Redis (shared by the fleet): calls survive worker death.
    Redis(RedisConfig),
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS). In cluster mode, a
    /// comma-separated list of seed nodes.
    pub url: String,
    /// One server or a Redis Cluster.
    pub mode: RedisMode,
    /// For `rediss://`: the PEM CA file to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key, so fleets can share a Redis.
    pub namespace: String,
    /// Time allowed for an ordinary write (checkpoint, renew); past it the outcome is
    /// unknown and the write is retried (idempotent).
    pub response_timeout: Duration,
    /// Time allowed for a takeover.
    pub takeover_timeout: Duration,
    /// How long an ended call and its recording stay readable.
    pub ended_retention: Duration,
    pub recording_track_bytes_max: usize,
}

/// Why the configuration was refused (one line, printed before exit 64).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

pub(crate) fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

// ----- raw form, exactly as written in the files ------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    log: RawLog,
    limits: RawLimits,
    calls: RawCalls,
    checkpoint: RawCheckpoint,
    twilio: RawTwilio,
    security: RawSecurity,
    store: RawStore,
    resume: RawResume,
    governor: RawGovernor,
    profiling: RawProfiling,
    auth: RawAuth,
    webhooks: RawWebhooks,
    ivr: RawIvr,
    agent: agent::RawAgent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    tenants: Vec<RawWebhookTarget>,
    request_timeout_ms: u64,
    attempts_max: u32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    poll_interval_ms: u64,
    claim_batch_max: usize,
    concurrency_max: usize,
    call_events_max: usize,
    dead_letters_max: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhookTarget {
    tenant: String,
    url: String,
    #[serde(default = "all_events")]
    events: Vec<String>,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    secret_file: String,
}

impl std::fmt::Debug for RawWebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWebhookTarget").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

fn all_events() -> Vec<String> {
    vec!["*".to_owned()]
}

/// Validates `[webhooks] tenants`: a plain unique tenant, an http(s) URL, known event names
/// (`*` for all), and exactly one of `secret` / `secret_file`, at least
/// [`WEBHOOK_SECRET_BYTES_MIN`] bytes long.
fn validate_webhook_targets(raw: Vec<RawWebhookTarget>) -> Result<Vec<WebhookTarget>, ConfigError> {
    use callworker_store::outbox::EventType;
    if raw.len() > WEBHOOK_TENANTS_MAX {
        return Err(invalid(format!("webhooks.tenants: more than {WEBHOOK_TENANTS_MAX} entries")));
    }
    let mut targets: Vec<WebhookTarget> = Vec::with_capacity(raw.len());
    for t in raw {
        let tenant = TenantId::parse(&t.tenant)
            .map_err(|e| invalid(format!("webhooks.tenants: tenant {:?}: {e}", t.tenant)))?;
        let at = format!("webhooks.tenants[{}]", tenant.as_str());
        if targets.iter().any(|o| o.tenant == tenant) {
            return Err(invalid(format!("{at}: the tenant is listed twice")));
        }
        let url = reqwest::Url::parse(&t.url).map_err(|e| invalid(format!("{at}: url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("{at}: url must be http:// or https:// with a host")));
        }
        let mut events = Vec::new();
        for name in &t.events {
            if name == "*" {
                events = EventType::ALL.to_vec();
                break;
            }
            let kind = EventType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
                invalid(format!("{at}: unknown event {name:?} (known: {}, or \"*\")", known.join(", ")))
            })?;
            if !events.contains(&kind) {
                events.push(kind);
            }
        }
        if events.is_empty() {
            return Err(invalid(format!("{at}: events is empty (omit it, or use [\"*\"], for all)")));
        }
        let secret = match (t.secret.is_empty(), t.secret_file.is_empty()) {
            (false, true) => t.secret.into_bytes(),
            (true, false) => {
                let text = std::fs::read_to_string(&t.secret_file)
                    .map_err(|e| invalid(format!("{at}: secret_file {:?}: {e}", t.secret_file)))?;
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
            }
            (true, true) => return Err(invalid(format!("{at}: needs a secret or a secret_file"))),
            (false, false) => return Err(invalid(format!("{at}: give a secret or a secret_file, not both"))),
        };
        if secret.len() < WEBHOOK_SECRET_BYTES_MIN {
            return Err(invalid(format!(
                "{at}: the signing secret must be at least {WEBHOOK_SECRET_BYTES_MIN} bytes"
            )));
        }
        targets.push(WebhookTarget { tenant, url: url.to_string(), events, secret });
    }
    Ok(targets)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIvr {
    dir: String,
    definitions_max: usize,
    prompt_file_bytes_max: u64,
    prompt_memory_bytes_max: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    required: bool,
    keys: Vec<RawApiKey>,
    keys_file: String,
    keys_reload_interval_ms: u64,
    requests_per_second: u32,
    requests_burst: u32,
    tenant_calls_max: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfiling {
    enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGovernor {
    enabled: bool,
    sample_interval_ms: u64,
    memory_limit_bytes: u64,
    enter: [f64; 4],
    exit: [f64; 4],
    dwell_ms: u64,
    projection_horizon_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen_addr: String,
    public_url: String,
    #[serde(default)]
    worker_id: String,
    shutdown_grace_ms: u64,
    drain_timeout_ms: u64,
    #[serde(default)]
    advertise_url: String,
    forward_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: LogFormat,
    filter: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    calls_max: usize,
    ws_message_bytes_max: usize,
    outbound_audio_frames_max: usize,
    outbound_control_max: usize,
    handshake_timeout_ms: u64,
    idle_timeout_ms: u64,
    messages_per_second_max: u32,
    bytes_per_second_max: u32,
    http_body_bytes_max: usize,
    actor_commands_max: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    default_program: ProgramSpec,
    default_tenant: String,
    max_duration_ms: u64,
    timeline_events_max: u32,
    delay_frames_max: u32,
    recording: RecordingSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    interval_ms: u64,
    lease_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    mark_interval_frames: u32,
    payload_bytes_max: usize,
    verify_signatures: bool,
    rest_api_base_url: String,
    account_sid: String,
    auth_token: String,
    rest_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResume {
    resume_window_ms: u64,
    reaper_interval_ms: u64,
    reaper_grace_ms: u64,
    reaper_batch_max: usize,
    rescue_claim_ms: u64,
    heartbeat_interval_ms: u64,
    recording_pending_bytes_max: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    token_secret: String,
    resume_token_ttl_ms: u64,
    allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: String,
    memory_capacity: usize,
    redis_url: String,
    redis_mode: String,
    redis_ca_file: String,
    redis_namespace: String,
    redis_response_timeout_ms: u64,
    redis_takeover_timeout_ms: u64,
    ended_retention_ms: u64,
    recording_track_bytes_max: usize,
}

impl Config {
    /// Loads `<dir>/default.toml`, then `<dir>/<env>.toml` when `env` is given (it must
    /// exist), then `CALLWORKER_SECTION__KEY` variables from `vars`, and validates.
    ///
    /// The variables are passed in rather than read here so tests can exercise overrides
    /// without mutating the process environment.
    pub fn load(
        dir: &Path,
        env: Option<&str>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let default_path = dir.join("default.toml");
        if !default_path.is_file() {
            return Err(invalid(format!("{} not found", default_path.display())));
        }
        let mut figment = Figment::new().merge(Toml::file(&default_path));
        if let Some(env) = env {
            if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(format!("environment name {env:?} is not a plain name")));
            }
            let path = dir.join(format!("{env}.toml"));
            if !path.is_file() {
                return Err(invalid(format!("{} not found", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only SECTION__KEY variables are configuration; CALLWORKER_ENV and
        // CALLWORKER_CONFIG_DIR select files and are read by the CLI.
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix("CALLWORKER_")?;
                rest.contains("__").then(|| (rest.to_ascii_lowercase().replace("__", "."), v))
            })
            .collect();
        // An environment variable replaces the whole value at its key (a table given in an
        // env var is not merged into the file's table), parsed the way figment parses
        // environment values: numbers, booleans, arrays and inline tables become typed.
        let mut tree: figment::value::Dict =
            figment.extract().map_err(|e| invalid(one_line(&e.to_string())))?;
        for (key, value) in vars {
            let value: figment::value::Value = value.parse().unwrap_or_else(|_| value.into());
            set_path(&mut tree, &key, value);
        }
        let raw: RawConfig = Figment::from(Serialized::defaults(tree)).extract().map_err(describe)?;
        let mut config = validate(raw)?;
        // Named IVR definitions are read last: they may refer to files next to the config.
        if let Some(ivr_dir) = &config.ivr.dir
            && ivr_dir.is_relative()
        {
            config.ivr.dir = Some(dir.join(ivr_dir));
        }
        config.ivr.definitions = std::sync::Arc::new(crate::ivr_definitions::load(&config.ivr)?);
        config
            .calls
            .default_program
            .resolve_ivr(&config.ivr.definitions)
            .and_then(|()| config.calls.default_program.validate())
            .map_err(|e| invalid(format!("calls.default_program: {e}")))?;
        Ok(config)
    }
}

/// Sets `tree[a][b]… = value` for the dotted `path`, replacing what was there.
fn set_path(tree: &mut figment::value::Dict, path: &str, value: figment::value::Value) {
    use figment::value::{Tag, Value};
    match path.split_once('.') {
        None => {
            tree.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry =
                tree.entry(head.to_owned()).or_insert_with(|| Value::Dict(Tag::Default, Default::default()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Default::default());
            }
            if let Value::Dict(_, dict) = entry {
                set_path(dict, rest, value);
            }
        }
    }
}

/// The first error as `key.path: what is wrong`, without figment's provenance details
/// (which name Rust types and source lines, not the operator's files).
fn describe(e: figment::Error) -> ConfigError {
    let first = e.into_iter().next();
    match first {
        Some(err) if !err.path.is_empty() => {
            invalid(one_line(&format!("{}: {}", err.path.join("."), err.kind)))
        }
        Some(err) => invalid(one_line(&err.kind.to_string())),
        None => invalid("unreadable configuration"),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks `store.redis_mode`, `store.redis_url` and `store.redis_ca_file` together: one URL
/// for a standalone server, one or more seeds for a cluster; TLS on all seeds or none; a CA
/// file only with TLS, and it must exist. Certificate checks cannot be turned off.
fn redis_endpoint(mode: &str, url: &str, ca_file: &str) -> Result<(RedisMode, Option<PathBuf>), ConfigError> {
    let mode = match mode {
        "standalone" => RedisMode::Standalone,
        "cluster" => RedisMode::Cluster,
        other => {
            return Err(invalid(format!("store.redis_mode {other:?} is not one of: standalone, cluster")));
        }
    };
    let urls: Vec<&str> = url.split(',').map(str::trim).collect();
    if mode == RedisMode::Standalone && urls.len() != 1 {
        return Err(invalid("store.redis_url: several URLs are only for store.redis_mode = \"cluster\""));
    }
    let schemes: &[&str] = match mode {
        RedisMode::Standalone => &["redis://", "rediss://", "unix://"],
        RedisMode::Cluster => &["redis://", "rediss://"],
    };
    for u in &urls {
        if !schemes.iter().any(|s| u.starts_with(s)) || u.len() <= "redis://".len() {
            return Err(invalid(format!("store.redis_url: each URL must start with one of {schemes:?}")));
        }
        if u.contains("#insecure") {
            return Err(invalid(
                "store.redis_url: #insecure is refused; trust a private CA with store.redis_ca_file",
            ));
        }
    }
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls != 0 && tls != urls.len() {
        return Err(invalid("store.redis_url: mixes rediss:// and redis:// seeds"));
    }
    let ca_file = match ca_file {
        "" => None,
        _ if tls == 0 => {
            return Err(invalid("store.redis_ca_file is set but store.redis_url is not rediss://"));
        }
        path if !Path::new(path).is_file() => {
            return Err(invalid(format!("store.redis_ca_file {path:?} is not a readable file")));
        }
        path => Some(PathBuf::from(path)),
    };
    Ok((mode, ca_file))
}

fn ms(field: &str, value: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    range(field, value, min, max).map(|_| Duration::from_millis(value))
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(invalid(format!("{field} = {value} is outside {min}..={max}")));
    }
    Ok(value)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let listen_addr: SocketAddr = raw
        .server
        .listen_addr
        .parse()
        .map_err(|e| invalid(format!("server.listen_addr {:?}: {e}", raw.server.listen_addr)))?;
    let public_url = raw.server.public_url.trim_end_matches('/').to_owned();
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        return Err(invalid(format!("server.public_url {public_url:?} must start with http:// or https://")));
    }
    let worker_id = match raw.server.worker_id.as_str() {
        "" => None,
        s => Some(WorkerId::parse(s).map_err(|e| invalid(format!("server.worker_id: {e}")))?),
    };
    let server = ServerConfig {
        listen_addr,
        public_url,
        worker_id,
        shutdown_grace: ms("server.shutdown_grace_ms", raw.server.shutdown_grace_ms, 0, 3_600_000)?,
        drain_timeout: ms("server.drain_timeout_ms", raw.server.drain_timeout_ms, 0, 3_600_000)?,
        advertise_url: match raw.server.advertise_url.trim_end_matches('/') {
            "" => None,
            url if url.starts_with("http://") || url.starts_with("https://") => Some(url.to_owned()),
            url => {
                return Err(invalid(format!(
                    "server.advertise_url {url:?} must start with http:// or https://"
                )));
            }
        },
        forward_timeout: ms("server.forward_timeout_ms", raw.server.forward_timeout_ms, 100, 60_000)?,
    };
    if server.drain_timeout >= server.shutdown_grace && !server.shutdown_grace.is_zero() {
        return Err(invalid("server.drain_timeout_ms must be below server.shutdown_grace_ms"));
    }

    tracing_subscriber::EnvFilter::try_new(&raw.log.filter)
        .map_err(|e| invalid(format!("log.filter {:?}: {e}", raw.log.filter)))?;
    let log = LogConfig { format: raw.log.format, filter: raw.log.filter };

    let l = raw.limits;
    let limits = Limits {
        calls_max: range("limits.calls_max", l.calls_max, 1, 1_000_000)?,
        ws_message_bytes_max: range(
            "limits.ws_message_bytes_max",
            l.ws_message_bytes_max,
            1024,
            WS_MESSAGE_BYTES_MAX,
        )?,
        outbound_audio_frames_max: range(
            "limits.outbound_audio_frames_max",
            l.outbound_audio_frames_max,
            1,
            10_000,
        )?,
        outbound_control_max: range("limits.outbound_control_max", l.outbound_control_max, 4, 10_000)?,
        handshake_timeout: ms("limits.handshake_timeout_ms", l.handshake_timeout_ms, 100, 120_000)?,
        idle_timeout: ms("limits.idle_timeout_ms", l.idle_timeout_ms, 1_000, 3_600_000)?,
        messages_per_second_max: range(
            "limits.messages_per_second_max",
            l.messages_per_second_max,
            60,
            100_000,
        )?,
        bytes_per_second_max: range(
            "limits.bytes_per_second_max",
            l.bytes_per_second_max,
            16_384,
            100_000_000,
        )?,
        http_body_bytes_max: range("limits.http_body_bytes_max", l.http_body_bytes_max, 1024, 16 << 20)?,
        actor_commands_max: range("limits.actor_commands_max", l.actor_commands_max, 1, 10_000)?,
    };

    let c = raw.calls;
    // A named IVR definition is resolved (and the program validated) once the definitions
    // are loaded, in `Config::load`.
    if !matches!(&c.default_program, ProgramSpec::Ivr(p) if p.is_unresolved()) {
        c.default_program.validate().map_err(|e| invalid(format!("calls.default_program: {e}")))?;
    }
    let calls = CallsConfig {
        default_program: c.default_program,
        default_tenant: TenantId::parse(&c.default_tenant)
            .map_err(|e| invalid(format!("calls.default_tenant: {e}")))?,
        limits: CallLimits {
            max_duration_ms: range("calls.max_duration_ms", c.max_duration_ms, 1_000, 7 * 24 * 3_600_000)?,
            timeline_events_max: range("calls.timeline_events_max", c.timeline_events_max, 8, 100_000)?,
            delay_frames_max: range("calls.delay_frames_max", c.delay_frames_max, 1, 100_000)?,
        },
        recording: c.recording,
    };

    let checkpoint = CheckpointConfig {
        interval: ms("checkpoint.interval_ms", raw.checkpoint.interval_ms, 20, 60_000)?,
        lease: ms("checkpoint.lease_ms", raw.checkpoint.lease_ms, 500, 600_000)?,
    };
    if checkpoint.lease <= checkpoint.interval * 2 {
        return Err(invalid(format!(
            "checkpoint.lease_ms ({}) must exceed twice checkpoint.interval_ms ({}) so one lost write does not expire the lease",
            checkpoint.lease.as_millis(),
            checkpoint.interval.as_millis()
        )));
    }

    let twilio = TwilioConfig {
        mark_interval_frames: range(
            "twilio.mark_interval_frames",
            raw.twilio.mark_interval_frames,
            1,
            1_000,
        )?,
        parse_limits: twilio::Limits {
            message_bytes_max: limits.ws_message_bytes_max,
            payload_bytes_max: range(
                "twilio.payload_bytes_max",
                raw.twilio.payload_bytes_max,
                160,
                limits.ws_message_bytes_max,
            )?,
            ..twilio::Limits::default()
        },
        rest_api_base_url: {
            let url = raw.twilio.rest_api_base_url.trim_end_matches('/').to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!(
                    "twilio.rest_api_base_url {url:?} must start with http:// or https://"
                )));
            }
            url
        },
        verify_signatures: raw.twilio.verify_signatures,
        account_sid: raw.twilio.account_sid,
        auth_token: raw.twilio.auth_token,
        rest_timeout: ms("twilio.rest_timeout_ms", raw.twilio.rest_timeout_ms, 100, 60_000)?,
    };

    if raw.security.token_secret.len() < 32 {
        return Err(invalid("security.token_secret must be at least 32 bytes"));
    }
    let security = SecurityConfig {
        token_secret: raw.security.token_secret.into_bytes(),
        resume_token_ttl: ms(
            "security.resume_token_ttl_ms",
            raw.security.resume_token_ttl_ms,
            1_000,
            30 * 24 * 3_600_000,
        )?,
        allowed_origins: raw
            .security
            .allowed_origins
            .into_iter()
            .map(|o| {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                let valid = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
                if valid {
                    Ok(o)
                } else {
                    Err(invalid(format!("security.allowed_origins: {o:?} is not scheme://host[:port]")))
                }
            })
            .collect::<Result<_, _>>()?,
    };

    let a = raw.auth;
    let auth = AuthConfig {
        required: a.required,
        keys: validate_keys(a.keys, "auth.keys")?,
        keys_file: (!a.keys_file.is_empty()).then(|| std::path::PathBuf::from(&a.keys_file)),
        keys_reload_interval: ms("auth.keys_reload_interval_ms", a.keys_reload_interval_ms, 100, 3_600_000)?,
        requests_per_second: range("auth.requests_per_second", a.requests_per_second, 1, 1_000_000)?,
        requests_burst: range("auth.requests_burst", a.requests_burst, 1, 1_000_000)?,
        tenant_calls_max: range("auth.tenant_calls_max", a.tenant_calls_max, 0, 10_000_000)?,
    };
    if let Some(path) = &auth.keys_file {
        // A keys file that is missing or invalid at start is a configuration error; later
        // changes that fail to parse keep the keys in force (see auth.rs).
        load_keys_file(path)?;
    }

    let st = raw.store;
    let recording_track_bytes_max =
        range("store.recording_track_bytes_max", st.recording_track_bytes_max, 0, 512 << 20)?;
    let store = match st.kind.as_str() {
        "memory" => StoreConfig::Memory {
            capacity: range("store.memory_capacity", st.memory_capacity, 1, 10_000_000)?,
            recording_track_bytes_max,
        },
        "redis" => {
            let (mode, ca_file) = redis_endpoint(&st.redis_mode, &st.redis_url, &st.redis_ca_file)?;
            if st.redis_namespace.is_empty()
                || !st.redis_namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid("store.redis_namespace must be a non-empty plain name"));
            }
            StoreConfig::Redis(RedisConfig {
                url: st.redis_url,
                mode,
                ca_file,
                namespace: st.redis_namespace,
                response_timeout: ms(
                    "store.redis_response_timeout_ms",
                    st.redis_response_timeout_ms,
                    10,
                    60_000,
                )?,
                takeover_timeout: ms(
                    "store.redis_takeover_timeout_ms",
                    st.redis_takeover_timeout_ms,
                    10,
                    60_000,
                )?,
                ended_retention: ms(
                    "store.ended_retention_ms",
                    st.ended_retention_ms,
                    1_000,
                    30 * 24 * 3_600_000,
                )?,
                recording_track_bytes_max,
            })
        }
        other => return Err(invalid(format!("store.kind {other:?} is not one of: memory, redis"))),
    };

    let r = raw.resume;
    let resume = ResumeConfig {
        resume_window: ms("resume.resume_window_ms", r.resume_window_ms, 0, 24 * 3_600_000)?,
        reaper_interval: ms("resume.reaper_interval_ms", r.reaper_interval_ms, 50, 600_000)?,
        reaper_grace: ms("resume.reaper_grace_ms", r.reaper_grace_ms, 0, 600_000)?,
        reaper_batch_max: range("resume.reaper_batch_max", r.reaper_batch_max, 1, 100_000)?,
        rescue_claim: ms("resume.rescue_claim_ms", r.rescue_claim_ms, 1_000, 600_000)?,
        heartbeat_interval: ms("resume.heartbeat_interval_ms", r.heartbeat_interval_ms, 100, 600_000)?,
        recording_pending_bytes_max: range(
            "resume.recording_pending_bytes_max",
            r.recording_pending_bytes_max,
            1024,
            64 << 20,
        )?,
    };

    let g = raw.governor;
    let thresholds = callworker_governor::Thresholds {
        enter: g.enter,
        exit: g.exit,
        dwell_ms: range("governor.dwell_ms", g.dwell_ms, 0, 3_600_000)?,
        projection_horizon_ms: range("governor.projection_horizon_ms", g.projection_horizon_ms, 0, 600_000)?,
        ..callworker_governor::Thresholds::default()
    };
    thresholds.validate().map_err(|e| invalid(format!("governor.enter/exit: {e}")))?;
    let governor = GovernorConfig {
        enabled: g.enabled,
        sample_interval: ms("governor.sample_interval_ms", g.sample_interval_ms, 10, 60_000)?,
        memory_limit_bytes: (g.memory_limit_bytes > 0).then_some(g.memory_limit_bytes),
        thresholds,
    };

    let profiling = ProfilingConfig { enabled: raw.profiling.enabled };
    let agent = agent::validate(raw.agent)?;

    let w = raw.webhooks;
    let webhooks = WebhooksConfig {
        tenants: validate_webhook_targets(w.tenants)?,
        request_timeout: ms("webhooks.request_timeout_ms", w.request_timeout_ms, 100, 120_000)?,
        attempts_max: range("webhooks.attempts_max", w.attempts_max, 1, 1_000)?,
        backoff_base: ms("webhooks.backoff_base_ms", w.backoff_base_ms, 10, 3_600_000)?,
        backoff_max: ms("webhooks.backoff_max_ms", w.backoff_max_ms, 10, 24 * 3_600_000)?,
        poll_interval: ms("webhooks.poll_interval_ms", w.poll_interval_ms, 10, 60_000)?,
        claim_batch_max: range("webhooks.claim_batch_max", w.claim_batch_max, 1, 10_000)?,
        concurrency_max: range("webhooks.concurrency_max", w.concurrency_max, 1, 10_000)?,
        call_events_max: range("webhooks.call_events_max", w.call_events_max, 1, 100_000)?,
        dead_letters_max: range("webhooks.dead_letters_max", w.dead_letters_max, 1, 1_000_000)?,
    };
    if webhooks.backoff_max < webhooks.backoff_base {
        return Err(invalid("webhooks.backoff_max_ms must not be below webhooks.backoff_base_ms"));
    }

    let i = raw.ivr;
    let ivr = IvrConfig {
        dir: (!i.dir.is_empty()).then(|| PathBuf::from(&i.dir)),
        definitions_max: range("ivr.definitions_max", i.definitions_max, 1, 1_000)?,
        prompt_file_bytes_max: range("ivr.prompt_file_bytes_max", i.prompt_file_bytes_max, 1_024, 1 << 30)?,
        prompt_memory_bytes_max: range(
            "ivr.prompt_memory_bytes_max",
            i.prompt_memory_bytes_max,
            1_024,
            4 << 30,
        )?,
        definitions: Default::default(),
    };
    Ok(Config {
        ivr,
        server,
        log,
        limits,
        calls,
        checkpoint,
        twilio,
        security,
        store,
        resume,
        governor,
        profiling,
        auth,
        webhooks,
        agent,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config")
    }

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&config_dir(), None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn shipped_default_config_is_valid() {
        let config = load(&[]).expect("config/default.toml must validate");
        assert_eq!(config.limits.ws_message_bytes_max, 65_536);
        assert!(matches!(config.store, StoreConfig::Memory { .. }));
        assert!(!config.profiling.enabled, "heap profiling is opt-in");
    }

    #[test]
    fn the_shipped_config_is_secure_by_default() {
        let config = load(&[]).unwrap();
        assert!(config.auth.required, "API keys are required by default");
        assert!(config.auth.keys.is_empty() && config.auth.keys_file.is_none(), "no key ships");
        assert!(config.twilio.verify_signatures);
        assert!(config.security.allowed_origins.is_empty(), "no browser origin is allowed by default");
    }

    #[test]
    fn webhook_targets_are_validated() {
        let secret = "s".repeat(32);
        let good = format!(
            r#"[{{tenant = "acme", url = "https://hooks.example.com/cw", secret = "{secret}"}}, {{tenant = "b", url = "http://127.0.0.1:9/x", events = ["dtmf", "call.ended"], secret = "{secret}"}}]"#
        );
        let config = load(&[("CALLWORKER_WEBHOOKS__TENANTS", &good)]).unwrap();
        let w = &config.webhooks;
        assert_eq!(w.tenants.len(), 2);
        assert_eq!(w.tenants[0].events.len(), 6, "events default to all");
        assert_eq!(w.tenants[1].events.len(), 2);
        assert!(!format!("{w:?}").contains(&secret), "the secret is never printed");
        let subs = w.subscriptions();
        assert_eq!(subs.mask(&TenantId::parse("acme").unwrap()), callworker_store::outbox::MASK_ALL);
        assert_eq!(subs.mask(&TenantId::parse("nobody").unwrap()), 0);
        let cases = [
            (r#"[{tenant = "acme", url = "https://x.example"}]"#.to_owned(), "needs a secret"),
            (
                r#"[{tenant = "acme", url = "https://x.example", secret = "short"}]"#.to_owned(),
                "at least 32 bytes",
            ),
            (
                format!(r#"[{{tenant = "acme", url = "ftp://x.example", secret = "{secret}"}}]"#),
                "http:// or https://",
            ),
            (
                format!(
                    r#"[{{tenant = "acme", url = "https://x", events = ["nope"], secret = "{secret}"}}]"#
                ),
                "unknown event",
            ),
            (
                format!(r#"[{{tenant = "acme", url = "https://x", events = [], secret = "{secret}"}}]"#),
                "events is empty",
            ),
            (format!(r#"[{{tenant = "a b", url = "https://x", secret = "{secret}"}}]"#), "tenant"),
            (
                format!(
                    r#"[{{tenant = "acme", url = "https://x", secret = "{secret}", secret_file = "/nonexistent"}}]"#
                ),
                "not both",
            ),
            (
                r#"[{tenant = "acme", url = "https://x", secret_file = "/nonexistent/secret"}]"#.to_owned(),
                "secret_file",
            ),
            (
                format!(
                    r#"[{{tenant = "acme", url = "https://x", secret = "{secret}"}}, {{tenant = "acme", url = "https://y", secret = "{secret}"}}]"#
                ),
                "listed twice",
            ),
        ];
        for (value, needle) in cases {
            let err = load(&[("CALLWORKER_WEBHOOKS__TENANTS", &value)]).unwrap_err().to_string();
            assert!(err.contains(needle), "{value}: {err}");
            assert!(!err.contains(&secret), "{err}");
        }
        let err = load(&[
            ("CALLWORKER_WEBHOOKS__BACKOFF_MAX_MS", "20"),
            ("CALLWORKER_WEBHOOKS__BACKOFF_BASE_MS", "50"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("backoff_max_ms"), "{err}");
    }

    #[test]
    fn keys_and_origins_are_validated() {
        let hash = "a".repeat(64);
        let good = format!(
            r#"[{{id = "k1", role = "tenant", tenant = "acme", sha256 = "{hash}"}}, {{id = "op", role = "operator", sha256 = "{hash}", revoked = true}}]"#
        );
        let config = load(&[("CALLWORKER_AUTH__KEYS", &good)]).unwrap();
        assert_eq!(config.auth.keys.len(), 2);
        assert_eq!(config.auth.keys[0].tenant.as_ref().map(TenantId::as_str), Some("acme"));
        assert_eq!((config.auth.keys[1].role, config.auth.keys[1].revoked), (Role::Operator, true));
        let cases = [
            (format!(r#"[{{id = "k1", role = "tenant", sha256 = "{hash}"}}]"#), "without a tenant"),
            (
                format!(r#"[{{id = "op", role = "operator", tenant = "acme", sha256 = "{hash}"}}]"#),
                "must not name a tenant",
            ),
            (
                r#"[{id = "k1", role = "tenant", tenant = "acme", sha256 = "abc"}]"#.to_owned(),
                "64 hex digits",
            ),
            (
                format!(
                    r#"[{{id = "k1", role = "tenant", tenant = "acme", sha256 = "{}"}}]"#,
                    "g".repeat(64)
                ),
                "64 hex digits",
            ),
            (
                format!(r#"[{{id = "k 1", role = "tenant", tenant = "acme", sha256 = "{hash}"}}]"#),
                "plain name",
            ),
            (
                format!(
                    r#"[{{id = "k", role = "tenant", tenant = "a", sha256 = "{hash}"}}, {{id = "k", role = "operator", sha256 = "{hash}"}}]"#
                ),
                "given twice",
            ),
            (format!(r#"[{{id = "k", role = "admin", sha256 = "{hash}"}}]"#), "role"),
        ];
        for (keys, needle) in cases {
            let err = load(&[("CALLWORKER_AUTH__KEYS", &keys)]).expect_err(&keys).to_string();
            assert!(err.contains(needle), "{keys}: {err}");
        }
        let err = load(&[("CALLWORKER_AUTH__KEYS_FILE", "/nonexistent/keys.toml")]).unwrap_err().to_string();
        assert!(err.contains("auth.keys_file") && err.contains("not found"), "{err}");
        for origin in [r#"["app.example.com"]"#, r#"["https://app.example.com/path"]"#, r#"["https://"]"#] {
            let err =
                load(&[("CALLWORKER_SECURITY__ALLOWED_ORIGINS", origin)]).expect_err(origin).to_string();
            assert!(err.contains("allowed_origins"), "{origin}: {err}");
        }
        let config =
            load(&[("CALLWORKER_SECURITY__ALLOWED_ORIGINS", r#"["HTTPS://App.Example.com/"]"#)]).unwrap();
        assert_eq!(config.security.allowed_origins, ["https://app.example.com"]);
    }

    #[test]
    fn profiling_is_enabled_by_its_env_var() {
        let config = load(&[("CALLWORKER_PROFILING__ENABLED", "true")]).unwrap();
        assert!(config.profiling.enabled);
    }

    #[test]
    fn env_vars_override_files_and_other_prefixes_are_ignored() {
        let config = load(&[
            ("CALLWORKER_LIMITS__CALLS_MAX", "7"),
            ("CALLWORKER_SERVER__PUBLIC_URL", "https://lb.example/"),
            ("CALLWORKER_ENV", "ignored-here"),
            ("OTHER_LIMITS__CALLS_MAX", "9"),
        ])
        .unwrap();
        assert_eq!(config.limits.calls_max, 7);
        assert_eq!(config.server.public_url, "https://lb.example");
        assert_eq!(config.server.advertise_url, None, "empty: derived from the bound address");
        let config = load(&[("CALLWORKER_SERVER__ADVERTISE_URL", "http://10.0.0.7:8080/")]).unwrap();
        assert_eq!(config.server.advertise_url.as_deref(), Some("http://10.0.0.7:8080"));
    }

    #[test]
    fn a_table_in_an_env_var_replaces_the_file_table() {
        let config = load(&[(
            "CALLWORKER_CALLS__DEFAULT_PROGRAM",
            r#"{name = "tone", params = {segments = [{freqs_hz = [440], duration_ms = 100}]}}"#,
        )])
        .unwrap();
        assert_eq!(config.calls.default_program.name(), "tone");
    }

    #[test]
    fn invalid_values_are_refused_with_the_field_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("CALLWORKER_LIMITS__CALLS_MAX", "0", "limits.calls_max"),
            ("CALLWORKER_SERVER__LISTEN_ADDR", "nowhere", "server.listen_addr"),
            ("CALLWORKER_SECURITY__TOKEN_SECRET", "short", "token_secret"),
            ("CALLWORKER_LIMITS__UNKNOWN_KNOB", "1", "unknown_knob"),
            ("CALLWORKER_CHECKPOINT__LEASE_MS", "600", "lease_ms"),
            ("CALLWORKER_STORE__KIND", "etcd", "store.kind"),
            ("CALLWORKER_SERVER__ADVERTISE_URL", "10.0.0.7:8080", "server.advertise_url"),
            ("CALLWORKER_SERVER__FORWARD_TIMEOUT_MS", "0", "server.forward_timeout_ms"),
        ];
        for (key, value, needle) in cases {
            let err = load(&[(key, value)]).expect_err(key).to_string();
            assert!(err.contains(needle), "{key}={value}: {err}");
            assert!(!err.contains('\n'), "error must be one line: {err}");
        }
    }

    fn redis(vars: &[(&str, &str)]) -> Result<RedisConfig, ConfigError> {
        let mut all = vec![("CALLWORKER_STORE__KIND", "redis")];
        all.extend_from_slice(vars);
        match load(&all)?.store {
            StoreConfig::Redis(r) => Ok(r),
            other => panic!("not redis: {other:?}"),
        }
    }

    #[test]
    fn redis_cluster_and_tls_settings_are_checked_together() {
        let cluster = redis(&[
            ("CALLWORKER_STORE__REDIS_MODE", "cluster"),
            ("CALLWORKER_STORE__REDIS_URL", "redis://a:7000, redis://b:7001"),
        ])
        .unwrap();
        assert_eq!(cluster.mode, RedisMode::Cluster);
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let tls = redis(&[
            ("CALLWORKER_STORE__REDIS_URL", "rediss://user:pw@redis.example:6380"),
            ("CALLWORKER_STORE__REDIS_CA_FILE", ca),
        ])
        .unwrap();
        assert_eq!((tls.mode, tls.ca_file.as_deref()), (RedisMode::Standalone, Some(Path::new(ca))));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CALLWORKER_STORE__REDIS_MODE", "sentinel")], "store.redis_mode"),
            (&[("CALLWORKER_STORE__REDIS_URL", "redis://a:1,redis://b:2")], "only for store.redis_mode"),
            (&[("CALLWORKER_STORE__REDIS_URL", "http://a:1")], "store.redis_url"),
            (
                &[
                    ("CALLWORKER_STORE__REDIS_MODE", "cluster"),
                    ("CALLWORKER_STORE__REDIS_URL", "rediss://a:1,redis://b:2"),
                ],
                "mixes",
            ),
            (&[("CALLWORKER_STORE__REDIS_URL", "rediss://a:1/#insecure")], "#insecure"),
            (&[("CALLWORKER_STORE__REDIS_CA_FILE", ca)], "not rediss://"),
            (
                &[
                    ("CALLWORKER_STORE__REDIS_URL", "rediss://a:1"),
                    ("CALLWORKER_STORE__REDIS_CA_FILE", "/no/such.pem"),
                ],
                "store.redis_ca_file",
            ),
        ];
        for (vars, needle) in cases {
            let err = redis(vars).expect_err(needle).to_string();
            assert!(err.contains(needle), "{vars:?}: {err}");
            assert!(!err.contains('\n'), "error must be one line: {err}");
        }
    }
}
