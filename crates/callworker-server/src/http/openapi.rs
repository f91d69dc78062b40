//! The control API's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! The document is generated from the code: every control-API handler carries a
//! `#[utoipa::path]` annotation (method, path, parameters, body, every status it answers),
//! and [`super::router`] registers those handlers through `utoipa_axum::routes!`, which
//! takes the method and path from the annotation. A documented route therefore cannot be
//! missing from the router, nor served under another path than the document says. The
//! routes served but left out of the document on purpose are [`UNDOCUMENTED_ROUTES`]
//! (WebSocket upgrades and Twilio's signed webhooks; docs/api.md says why); a test compares
//! the router's paths with the document's plus that list.
//!
//! The schemas below describe the JSON the API reads and writes. Where the wire type lives
//! in a sans-IO crate with a hand-written serde shape (`ProgramSpec`, `Action`, timeline
//! events) or in the store, this module holds a *schema-only* mirror of its JSON shape, with
//! the bounds that the handlers check (taken from the same constants), so that data valid
//! by the schema is accepted and data invalid by it is refused. Schemathesis checks both
//! directions against a live worker (`scripts/api-conformance`).

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use callworker_call::program::{
    ECHO_DELAY_MS_MAX, TONE_FREQ_HZ_MAX, TONE_MS_MAX, TONE_MS_MIN, TONE_SEGMENTS_MAX,
};
use callworker_protocol::codec::SAMPLE_RATES_HZ;
use serde::Serialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Schema};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

/// Routes the router serves that the document leaves out, as (method, path).
///
/// The media upgrades speak WebSocket after a `101`, which OpenAPI cannot describe (and
/// schemathesis cannot drive); the Twilio webhooks are called by Twilio only, signed with
/// `X-Twilio-Signature`, and answer TwiML. docs/protocol.md describes all of them.
pub const UNDOCUMENTED_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/media"),
    ("GET", "/twilio/media"),
    ("POST", "/twilio/voice"),
    ("POST", "/twilio/stream-ended"),
];

/// Name of the security scheme the authenticated routes name (`Authorization: Bearer <key>`).
pub const BEARER: &str = "bearer";

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "callworker control API",
        description = "Create, list, read, act on and end calls; read their events and recordings; \
                       the worker registry, memory and drain for operators; health, readiness and \
                       metrics. Errors are `{\"error\": {\"code\", \"message\"}}` with a stable `code`. \
                       Media (WebSocket) and Twilio webhook routes are described in docs/protocol.md."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "calls", description = "Calls of the caller's tenant"),
        (name = "operator", description = "Worker registry, memory and drain (operator keys)"),
        (name = "health", description = "Liveness, readiness, metrics and this document (no key)"),
    )
)]
pub struct ApiDoc;

/// Registers the `bearer` HTTP security scheme that the authenticated routes name.
#[derive(Debug)]
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "An API key: `Authorization: Bearer cwk_…`. Tenant keys reach their tenant's calls; \
             operator keys also reach /v1/workers and /v1/admin/*."
                .to_owned(),
        );
        components.add_security_scheme(BEARER, SecurityScheme::Http(http));
    }
}

/// Tagged enums whose JSON form refuses unknown fields (`deny_unknown_fields`): utoipa
/// marks that on structs but not on the variants of an enum.
const CLOSED_ENUMS: &[&str] = &["Action", "ProgramSpec", "FallbackProgram"];

/// What of the document depends on the worker's configuration.
#[derive(Debug, Clone, Copy)]
pub struct WorkerFacts {
    /// `calls.max_duration_ms`: the bound of `max_duration_ms` in `POST /v1/calls`.
    pub max_duration_ms: u64,
    /// Whether API keys are checked (`[auth] required`): otherwise no operation names the
    /// `bearer` scheme, since none requires it.
    pub authenticated: bool,
    /// The form of the store's list cursors (`cursor` of `GET /v1/calls`).
    pub list_cursor_pattern: &'static str,
}

impl WorkerFacts {
    pub fn of(config: &crate::config::Config) -> WorkerFacts {
        WorkerFacts {
            max_duration_ms: config.calls.limits.max_duration_ms,
            authenticated: config.auth.required,
            list_cursor_pattern: match config.store {
                crate::config::StoreConfig::Memory { .. } => callworker_store::memory::LIST_CURSOR_PATTERN,
                crate::config::StoreConfig::Redis { .. } => {
                    callworker_store::redis_store::LIST_CURSOR_PATTERN
                }
            },
        }
    }
}

/// The document for one worker (see [`WorkerFacts`]).
pub fn document(mut doc: Document, facts: WorkerFacts) -> Document {
    let WorkerFacts { max_duration_ms, authenticated, list_cursor_pattern } = facts;
    if let Some(op) = doc.paths.paths.get_mut("/v1/calls").and_then(|item| item.get.as_mut()) {
        for p in op.parameters.iter_mut().flatten() {
            if p.name == "cursor"
                && let Some(RefOr::T(Schema::Object(schema))) = p.schema.as_mut()
            {
                schema.pattern = Some(list_cursor_pattern.to_owned());
            }
        }
    }
    if !authenticated {
        for item in doc.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                op.security = None;
            }
        }
    }
    let Some(components) = doc.components.as_mut() else { return doc };
    if let Some(RefOr::T(Schema::Object(create))) = components.schemas.get_mut("CreateCall")
        && let Some(RefOr::T(Schema::Object(field))) = create.properties.get_mut("max_duration_ms")
    {
        field.maximum = Some(max_duration_ms.into());
    }
    for name in CLOSED_ENUMS {
        if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(*name) {
            for variant in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = variant {
                    object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
    doc
}

/// The serialized document, shared by every request for it.
#[derive(Debug, Clone)]
pub struct DocumentJson(pub Arc<String>);

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(Extension(doc): Extension<DocumentJson>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0.as_str().to_owned()).into_response()
}

// ---- Errors ----------------------------------------------------------------------------

/// Every error: `{"error": {"code": "call_not_found", "message": "…"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case identifier of the failure (e.g. `call_not_found`, `invalid_json`).
    #[schema(pattern = "^[a-z0-9_]+$")]
    pub code: String,
    /// Text for people; not stable.
    pub message: String,
}

/// Refusals every authenticated route can answer.
#[derive(Debug, IntoResponses)]
pub enum AuthErrors {
    /// Missing, unknown or revoked API key.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// Too many requests for this key (`rate_limited`, with `Retry-After`).
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// The store is unavailable, or the worker is not admitting (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Refusals of a route that reads a JSON body.
#[derive(Debug, IntoResponses)]
pub enum BodyErrors {
    /// The body is larger than `limits.http_body_bytes_max` (`body_too_large`).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not `Content-Type: application/json` (`unsupported_media_type`).
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
}

// ---- Requests --------------------------------------------------------------------------

/// `POST /v1/calls` body.
#[derive(Debug, ToSchema)]
#[schema(as = CreateCall)]
#[allow(dead_code)] // schema only: the handler reads `api::CreateCall`
#[serde(deny_unknown_fields)]
pub struct CreateCallDoc {
    program: ProgramSpecDoc,
    /// The tenant (operator keys only; a tenant key may name only its own tenant).
    /// Absent: the key's tenant, else `calls.default_tenant`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    tenant: Option<String>,
    /// Absent: `outbound`.
    direction: Option<DirectionDoc>,
    /// Calling party (E.164 number, SIP URI): at most 256 bytes, no control characters.
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    from: Option<String>,
    /// Called party, like `from`.
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    to: Option<String>,
    /// Absent: `{"encoding": "pcmu", "sample_rate_hz": 8000}`.
    audio: Option<AudioFormatDoc>,
    /// At most the worker's `calls.max_duration_ms` (the maximum below is this worker's).
    #[schema(minimum = 1)]
    max_duration_ms: Option<u64>,
    /// Tracks to record. Absent: the worker's `calls.recording`.
    record: Option<RecordingDoc>,
}

/// A call program: `{"name": "echo", "params": {…}}`, `{"name": "tone", "params": {…}}` or
/// `{"name": "ivr", "params": {…}}`.
#[derive(Debug, ToSchema)]
#[schema(as = ProgramSpec)]
#[allow(dead_code)]
#[serde(tag = "name", content = "params", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProgramSpecDoc {
    Echo(EchoParamsDoc),
    Tone(ToneParamsDoc),
    Ivr(IvrParamsDoc),
    Agent(AgentParamsDoc),
}

/// The program an agent call switches to when its agent cannot be reached: any program but
/// `agent`.
#[derive(Debug, ToSchema)]
#[schema(as = FallbackProgram)]
#[allow(dead_code)]
#[serde(tag = "name", content = "params", rename_all = "snake_case", deny_unknown_fields)]
pub enum FallbackProgramDoc {
    Echo(EchoParamsDoc),
    Tone(ToneParamsDoc),
    Ivr(IvrParamsDoc),
}

/// IVR: inline menus (`start` and `menus`), or a named definition from the worker's
/// `ivr.dir` (`definition` alone; 400 `unknown_ivr_definition` when the worker has none of
/// that name). Menus are described in docs/api.md ("ivr").
#[derive(Debug, ToSchema)]
#[schema(as = IvrParams)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct IvrParamsDoc {
    /// A named definition (alone).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    definition: Option<String>,
    /// The menu the call starts in (with `menus`).
    start: Option<String>,
    /// Menus by id (with `start`): prompt, options or collect, timeout, retries,
    /// on_failure, barge_in.
    #[schema(value_type = Option<Object>)]
    menus: Option<serde_json::Value>,
}

/// Agent talks to an external voice agent over WebSocket (docs/agent-protocol.md).
#[derive(Debug, ToSchema)]
#[schema(as = AgentParams)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct AgentParamsDoc {
    /// `ws://` URL of the agent, within the worker's `agent.url_prefixes_allowed`. Absent:
    /// the tenant's configured agent (else 400 `agent_not_configured`).
    #[schema(max_length = 512, pattern = "^ws://[^/?]+")]
    url: Option<String>,
    /// Sent as `Authorization: Bearer <token>`; shown as `[redacted]`, never logged.
    /// Absent: the tenant's configured token, if the tenant's agent is used.
    #[schema(max_length = 1024)]
    token: Option<String>,
    /// Opaque text handed to the agent in every `start`.
    #[schema(max_length = 4096)]
    context: Option<String>,
    /// Transcript entries kept (oldest dropped beyond). Absent: `agent.transcript_entries_max`.
    #[schema(minimum = 1, maximum = 10000)]
    transcript_entries_max: Option<u32>,
    /// Transcript text bytes kept. Absent: `agent.transcript_bytes_max`.
    #[schema(minimum = 1, maximum = 1048576)]
    transcript_bytes_max: Option<u32>,
    /// Agent audio frames held for playing. Absent: `agent.playback_frames_max`.
    #[schema(minimum = 1, maximum = 15000)]
    playback_frames_max: Option<u32>,
    /// A program (not an agent) the call switches to when the agent cannot be reached.
    /// Absent: the call ends with `agent_unavailable`.
    fallback: Option<FallbackProgramDoc>,
}

/// Echo plays the caller's audio back.
#[derive(Debug, ToSchema)]
#[schema(as = EchoParams)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct EchoParamsDoc {
    /// Delay before a frame is played back. Absent: 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 5000)]
    delay_ms: u32,
}

/// Tone plays a pattern of tones and silences and reacts to DTMF.
#[derive(Debug, ToSchema)]
#[schema(as = ToneParams)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct ToneParamsDoc {
    #[schema(min_items = 1, max_items = 32)]
    segments: Vec<ToneSegmentDoc>,
    /// Play the pattern again when it ends (otherwise the call ends `completed`). Absent: true.
    #[serde(default)]
    repeat: bool,
    /// DTMF digit that ends the call with `completed`.
    #[schema(pattern = "^[0-9*#A-D]$")]
    hangup_digit: Option<String>,
}

/// One step of a tone pattern.
#[derive(Debug, ToSchema)]
#[schema(as = ToneSegment)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct ToneSegmentDoc {
    /// Up to two frequencies (none: silence). Absent: silence.
    #[serde(default)]
    #[schema(max_items = 2, inline)]
    freqs_hz: Vec<FrequencyHz>,
    /// A whole number of 20 ms frames.
    #[schema(minimum = 20, maximum = 60000, multiple_of = 20)]
    duration_ms: u32,
}

/// A tone frequency in hertz, below the Nyquist frequency of 8 kHz audio.
#[derive(Debug)]
pub struct FrequencyHz;

impl PartialSchema for FrequencyHz {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(TONE_FREQ_HZ_MAX))
            .into()
    }
}

impl ToSchema for FrequencyHz {}

/// Who placed the call.
#[derive(Debug, ToSchema)]
#[schema(as = Direction)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum DirectionDoc {
    Inbound,
    Outbound,
}

/// Audio format of both directions of a call.
#[derive(Debug, ToSchema)]
#[schema(as = AudioFormat)]
#[allow(dead_code)]
pub struct AudioFormatDoc {
    encoding: EncodingDoc,
    #[schema(inline)]
    sample_rate_hz: SampleRateHz,
}

#[derive(Debug, ToSchema)]
#[schema(as = Encoding)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum EncodingDoc {
    Pcmu,
    Pcma,
    L16,
}

/// A supported sample rate in hertz.
#[derive(Debug)]
pub struct SampleRateHz;

impl PartialSchema for SampleRateHz {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Integer).enum_values(Some(SAMPLE_RATES_HZ)).into()
    }
}

impl ToSchema for SampleRateHz {}

/// A recording's direction.
#[derive(Debug, ToSchema)]
#[schema(as = Track)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum TrackDoc {
    Inbound,
    Outbound,
}

/// Which directions of a call's audio are recorded.
#[derive(Debug, ToSchema)]
#[schema(as = RecordingSettings)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct RecordingDoc {
    /// Caller audio. Absent: false.
    #[serde(default)]
    inbound: bool,
    /// Audio sent to the caller. Absent: false.
    #[serde(default)]
    outbound: bool,
}

/// An action injected into a live call.
#[derive(Debug, ToSchema)]
#[schema(as = Action)]
#[allow(dead_code)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionDoc {
    /// Play a tone (one or two frequencies; none = silence) over the program's audio.
    PlayTone {
        #[schema(max_items = 2, inline)]
        freqs_hz: Vec<FrequencyHz>,
        #[schema(minimum = 20, maximum = 60000)]
        duration_ms: u32,
    },
    /// Replace the running program.
    SwitchProgram { program: ProgramSpecDoc },
    /// End the call with `api_ended`.
    Hangup,
    /// Play tones and silences in order over the program's audio (replaces a tone playing).
    Play {
        #[schema(min_items = 1, max_items = 32)]
        segments: Vec<ToneSegmentDoc>,
    },
    /// Deliver DTMF digits to the program as if the caller had pressed them.
    InjectDtmf {
        #[schema(pattern = "^[0-9*#A-D]{1,32}$")]
        digits: String,
    },
    /// Silence one or both ways of the call's audio (kept across failovers).
    Mute { direction: MuteDirectionDoc },
    /// Undo `mute` for one or both ways.
    Unmute { direction: MuteDirectionDoc },
    /// Hand the caller to an E.164 number or a SIP URI; the call ends with `transferred`.
    Transfer {
        #[schema(max_length = 256, pattern = r"^(\+[0-9]{2,15}|[sS][iI][pP][sS]?:[!#-&(-;=?-_a-~]+)$")]
        to: String,
    },
}

/// Which way of the audio a `mute`/`unmute` acts on.
#[derive(Debug, ToSchema)]
#[schema(as = MuteDirection)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum MuteDirectionDoc {
    /// The caller's audio: the program hears silence.
    Inbound,
    /// Audio to the caller: the caller hears silence.
    Outbound,
    Both,
}

/// Which ways of a call's audio are muted.
#[derive(Debug, ToSchema)]
#[schema(as = Mute)]
#[allow(dead_code)]
pub struct MuteDoc {
    /// The program hears silence instead of the caller.
    inbound: bool,
    /// The caller hears silence instead of the program.
    outbound: bool,
}

// ---- Responses -------------------------------------------------------------------------

/// `POST /v1/calls` answer.
#[derive(Debug, ToSchema)]
#[schema(as = CreatedCall)]
#[allow(dead_code)]
pub struct CreatedCallDoc {
    call: crate::calls::CallView,
    /// Where a native client connects (WebSocket).
    media_url: String,
    /// Token the native client presents in `hello`.
    resume_token: String,
    epoch: u64,
}

/// A page of calls.
#[derive(Debug, ToSchema)]
#[schema(as = CallPage)]
#[allow(dead_code)]
pub struct CallPageDoc {
    calls: Vec<ListedCallDoc>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// A listed call: its view, or what the store knows of a call whose state cannot be read.
#[derive(Debug, ToSchema)]
#[schema(as = ListedCall)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum ListedCallDoc {
    Readable(crate::calls::CallView),
    Unreadable(UnreadableCallDoc),
}

/// A call whose stored state cannot be read (corrupt, or a newer format).
#[derive(Debug, ToSchema)]
#[schema(as = UnreadableCall)]
#[allow(dead_code)]
pub struct UnreadableCallDoc {
    call_id: String,
    tenant: String,
    status: CallStatusDoc,
    end_reason: Option<EndReasonDoc>,
    epoch: u64,
    created_at_ms: u64,
    /// Always false.
    state_readable: bool,
}

#[derive(Debug, ToSchema)]
#[schema(as = CallStatus)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum CallStatusDoc {
    Created,
    Active,
    Ended,
}

/// Why a call ended (DESIGN.md §4).
#[derive(Debug, ToSchema)]
#[schema(as = EndReason)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum EndReasonDoc {
    Completed,
    ClientHangup,
    RemoteHangup,
    ApiEnded,
    MaxDuration,
    ResumeWindowExpired,
    RescueFailed,
    CheckpointCorrupt,
    VersionIncompatible,
    StoreUnavailable,
    ShedMemory,
    DrainTimeout,
    InternalError,
    Transferred,
    AgentUnavailable,
}

#[derive(Debug, ToSchema)]
#[schema(as = Transport)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum TransportDoc {
    Native,
    Twilio,
}

#[derive(Debug, ToSchema)]
#[schema(as = ResumeCause)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum ResumeCauseDoc {
    WorkerLost,
    MigratedMemory,
    MigratedDrain,
}

/// Where a call's media stands; sequence numbers are the call's own.
#[derive(Debug, ToSchema)]
#[schema(as = MediaPositions)]
#[allow(dead_code)]
pub struct MediaPositionsDoc {
    inbound_applied_seq: u64,
    inbound_duplicate_frames: u64,
    inbound_missing_frames: u64,
    outbound_next_seq: u64,
    outbound_played_seq: u64,
    outbound_dropped_frames: u64,
}

/// `GET /v1/calls/{id}/events` answer.
#[derive(Debug, ToSchema)]
#[schema(as = CallEvents)]
#[allow(dead_code)]
pub struct CallEventsDoc {
    call_id: String,
    /// Oldest first; the timeline keeps the newest `limits.timeline_events_max`.
    events: Vec<CallEventDoc>,
    /// Events dropped from the front of the timeline.
    dropped: u64,
}

/// One event of a call's timeline: `at` (Unix ms), `type` and the type's fields.
#[derive(Debug, ToSchema)]
#[schema(as = CallEvent)]
#[allow(dead_code)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEventDoc {
    Created {
        at: u64,
        program: String,
    },
    Attached {
        at: u64,
        transport: TransportDoc,
    },
    Resumed {
        at: u64,
        transport: TransportDoc,
        cause: ResumeCauseDoc,
        gap_ms: u64,
    },
    Detached {
        at: u64,
    },
    /// A key press; `source` is `api` for a digit injected by `inject_dtmf` and absent for
    /// the caller's own.
    Dtmf {
        at: u64,
        digit: String,
        source: Option<String>,
    },
    ProgramSwitched {
        at: u64,
        program: String,
    },
    ActionApplied {
        at: u64,
        action: String,
    },
    Ended {
        at: u64,
        reason: EndReasonDoc,
    },
    /// The agent leg: `event` is connected, resumed, lost, failed, transfer or hangup.
    Agent {
        at: u64,
        event: String,
        detail: Option<String>,
    },
}

/// `GET /v1/calls/{id}/transcript` answer.
#[derive(Debug, ToSchema)]
#[schema(as = Transcript)]
#[allow(dead_code)]
pub struct TranscriptDoc {
    call_id: String,
    /// Oldest first; the newest within the call's transcript bounds.
    entries: Vec<TranscriptEntryDoc>,
    /// Index the next entry gets.
    next_index: u64,
    /// Entries dropped from the front for the bounds.
    dropped: u64,
    /// Entries the agent sent again, ignored.
    duplicates: u64,
    /// Indexes the agent skipped.
    missing: u64,
    /// `end_of_turn` messages received.
    turns: u64,
    /// Whether an agent leg is up right now.
    connected: bool,
    /// The last agent mark the caller heard.
    last_mark: Option<String>,
}

/// One transcript entry.
#[derive(Debug, ToSchema)]
#[schema(as = TranscriptEntry)]
#[allow(dead_code)]
pub struct TranscriptEntryDoc {
    index: u64,
    /// When the worker stored it (Unix ms).
    at: u64,
    role: TranscriptRoleDoc,
    text: String,
}

#[derive(Debug, ToSchema)]
#[schema(as = TranscriptRole)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptRoleDoc {
    Caller,
    Agent,
}

/// `GET /v1/workers` answer.
#[derive(Debug, ToSchema)]
#[schema(as = Workers)]
#[allow(dead_code)]
pub struct WorkersDoc {
    workers: Vec<WorkerDoc>,
}

/// A worker as it announces itself in the registry.
#[derive(Debug, ToSchema)]
#[schema(as = Worker)]
#[allow(dead_code)]
pub struct WorkerDoc {
    worker_id: String,
    /// Where other workers reach it: `server.advertise_url`, else its bound address.
    address: String,
    version: String,
    live_calls: u64,
    /// Memory governor level.
    governor_level: String,
    /// Unix ms.
    started_at: u64,
    /// Store clock at the last heartbeat (Unix ms).
    heartbeat_at: u64,
}

/// `POST /v1/admin/drain` answer.
#[derive(Debug, ToSchema)]
#[schema(as = Drain)]
#[allow(dead_code)]
pub struct DrainDoc {
    /// Always true.
    draining: bool,
    /// Calls told to migrate.
    migrating: u64,
}

/// Memory governor level.
#[derive(Debug, ToSchema)]
#[schema(as = MemoryLevel)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum MemoryLevelDoc {
    Normal,
    Elevated,
    Shed,
    Migrate,
    Emergency,
}

/// `GET /v1/admin/memory` answer (docs/operations.md explains the fields).
#[derive(Debug, ToSchema)]
#[schema(as = Memory)]
#[allow(dead_code)]
pub struct MemoryDoc {
    level: MemoryLevelDoc,
    /// Why the governor is not sampling (no cgroup and no configured limit), if it is not.
    idle_reason: Option<String>,
    /// The governor's last sample and pressure; null before the first.
    sample: Option<serde_json::Value>,
    /// The configured governor thresholds.
    thresholds: serde_json::Value,
    configured_limit_bytes: Option<u64>,
    live_calls: u64,
    allocator: Option<crate::allocator::AllocatorStats>,
    /// The largest live calls by accounted bytes (at most 10).
    #[schema(max_items = 10)]
    top_calls: Vec<TopCallDoc>,
}

#[derive(Debug, ToSchema)]
#[schema(as = TopCall)]
#[allow(dead_code)]
pub struct TopCallDoc {
    call_id: String,
    bytes: u64,
}

/// `GET /healthz` answer.
#[derive(Debug, ToSchema)]
#[schema(as = Health)]
#[allow(dead_code)]
pub struct HealthDoc {
    /// Always `ok`.
    status: String,
    worker_id: String,
}

/// `GET /readyz` answer.
#[derive(Debug, ToSchema)]
#[schema(as = Readiness)]
#[allow(dead_code)]
pub struct ReadinessDoc {
    ready: bool,
    /// Why the worker is not admitting (`draining`, `memory`, …); absent when ready.
    reason: Option<String>,
    live_calls: u64,
}

/// Bounds the schemas restate, checked against the constants the handlers use: a change of
/// a bound that forgets the document fails to compile.
const _: () = {
    assert!(ECHO_DELAY_MS_MAX == 5000);
    assert!(TONE_SEGMENTS_MAX == 32);
    assert!(TONE_MS_MIN == 20 && TONE_MS_MAX == 60000);
    assert!(TONE_FREQ_HZ_MAX == 3999);
    assert!(callworker_call::ids::ID_BYTES_MAX == 64);
    assert!(super::api::PARTY_CHARS_MAX == 256);
    assert!(callworker_call::program::agent::AGENT_URL_BYTES_MAX == 512);
    assert!(callworker_call::program::agent::AGENT_TOKEN_BYTES_MAX == 1024);
    assert!(callworker_call::program::agent::AGENT_CONTEXT_BYTES_MAX == 4096);
    assert!(callworker_call::program::agent::AGENT_TRANSCRIPT_ENTRIES_MAX == 10000);
    assert!(callworker_call::program::agent::AGENT_TRANSCRIPT_BYTES_MAX == 1048576);
    assert!(callworker_call::program::agent::AGENT_PLAYBACK_FRAMES_MAX == 15000);
};

#[cfg(test)]
mod tests;
