//! `[agent]`: the voice-agent legs of calls running the `agent` program (see
//! `session/agent.rs` and `docs/agent-protocol.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use callworker_call::TenantId;
use callworker_call::program::Secret;
use callworker_call::program::agent::{
    AGENT_PLAYBACK_FRAMES_MAX, AGENT_TRANSCRIPT_BYTES_MAX, AGENT_TRANSCRIPT_ENTRIES_MAX, AGENT_URL_BYTES_MAX,
    validate_url,
};
use serde::Deserialize;

use super::{ConfigError, WS_MESSAGE_BYTES_MAX, invalid, ms, range};

/// Most tenants with a configured agent.
pub const AGENT_TENANTS_MAX: usize = 10_000;

/// Validated `[agent]` settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Largest agent message (text or binary). Larger: the leg is closed with 1009 and
    /// reconnected, and the refusal counted.
    pub message_bytes_max: usize,
    /// Time for the agent's WebSocket to open (TCP and upgrade).
    pub connect_timeout: Duration,
    /// Reconnects in a row after a leg fails before the call gives up on its agent (the
    /// fallback program, or the end `agent_unavailable`). A leg that comes up resets it.
    pub reconnect_attempts_max: u32,
    /// Backoff before the first reconnect; doubles per attempt up to `reconnect_backoff_max`.
    pub reconnect_backoff: Duration,
    pub reconnect_backoff_max: Duration,
    /// Messages queued towards the agent per call. Caller audio is dropped (and counted)
    /// once fewer than [`AGENT_CONTROL_RESERVE`] places remain; a control message that finds
    /// the queue full closes the leg as too slow.
    pub to_agent_queue_max: usize,
    /// Messages queued from the agent per call. When full, the leg stops reading the
    /// agent's socket: TCP pushes back on the agent.
    pub from_agent_queue_max: usize,
    /// Transcript bounds for calls whose parameters do not set them.
    pub transcript_entries_max: u32,
    pub transcript_bytes_max: u32,
    /// Agent audio frames a call holds for playing, for calls that do not say; the oldest
    /// are dropped (and counted) beyond it.
    pub playback_frames_max: u32,
    /// Per-call agent URLs must start with one of these; empty: any `ws://` URL.
    pub url_prefixes_allowed: Vec<String>,
    /// The agent of each tenant, for calls that name no URL.
    pub tenants: BTreeMap<TenantId, TenantAgent>,
}

/// Places of the to-agent queue kept for control messages (DTMF, marks, stop).
pub const AGENT_CONTROL_RESERVE: usize = 8;

/// A tenant's agent.
#[derive(Debug, Clone)]
pub struct TenantAgent {
    pub url: String,
    pub token: Option<Secret>,
}

impl AgentConfig {
    /// Whether a per-call URL is allowed by `url_prefixes_allowed`.
    pub fn url_allowed(&self, url: &str) -> bool {
        self.url_prefixes_allowed.is_empty() || self.url_prefixes_allowed.iter().any(|p| url.starts_with(p))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    message_bytes_max: usize,
    connect_timeout_ms: u64,
    reconnect_attempts_max: u32,
    reconnect_backoff_ms: u64,
    reconnect_backoff_max_ms: u64,
    to_agent_queue_max: usize,
    from_agent_queue_max: usize,
    transcript_entries_max: u32,
    transcript_bytes_max: u32,
    playback_frames_max: u32,
    url_prefixes_allowed: Vec<String>,
    tenants: BTreeMap<String, RawTenantAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantAgent {
    url: String,
    #[serde(default)]
    token: Option<String>,
}

pub(super) fn validate(raw: RawAgent) -> Result<AgentConfig, ConfigError> {
    let reconnect_backoff = ms("agent.reconnect_backoff_ms", raw.reconnect_backoff_ms, 10, 60_000)?;
    let reconnect_backoff_max =
        ms("agent.reconnect_backoff_max_ms", raw.reconnect_backoff_max_ms, 10, 600_000)?;
    if reconnect_backoff_max < reconnect_backoff {
        return Err(invalid("agent.reconnect_backoff_max_ms must be at least agent.reconnect_backoff_ms"));
    }
    for prefix in &raw.url_prefixes_allowed {
        if !prefix.starts_with("ws://") || prefix.len() > AGENT_URL_BYTES_MAX {
            return Err(invalid(format!("agent.url_prefixes_allowed: {prefix:?} must start with ws://")));
        }
    }
    if raw.tenants.len() > AGENT_TENANTS_MAX {
        return Err(invalid(format!("agent.tenants: at most {AGENT_TENANTS_MAX} tenants")));
    }
    let mut tenants = BTreeMap::new();
    for (name, t) in raw.tenants {
        let tenant = TenantId::parse(&name).map_err(|e| invalid(format!("agent.tenants.{name}: {e}")))?;
        validate_url(&t.url).map_err(|e| invalid(format!("agent.tenants.{name}.url: {e}")))?;
        let token = t.token.filter(|t| !t.is_empty()).map(Secret::new);
        tenants.insert(tenant, TenantAgent { url: t.url, token });
    }
    let to_agent_queue_max = range("agent.to_agent_queue_max", raw.to_agent_queue_max, 16, 10_000)?;
    Ok(AgentConfig {
        message_bytes_max: range(
            "agent.message_bytes_max",
            raw.message_bytes_max,
            1024,
            WS_MESSAGE_BYTES_MAX,
        )?,
        connect_timeout: ms("agent.connect_timeout_ms", raw.connect_timeout_ms, 100, 60_000)?,
        reconnect_attempts_max: range("agent.reconnect_attempts_max", raw.reconnect_attempts_max, 0, 100)?,
        reconnect_backoff,
        reconnect_backoff_max,
        to_agent_queue_max,
        from_agent_queue_max: range("agent.from_agent_queue_max", raw.from_agent_queue_max, 1, 10_000)?,
        transcript_entries_max: range(
            "agent.transcript_entries_max",
            raw.transcript_entries_max,
            1,
            AGENT_TRANSCRIPT_ENTRIES_MAX,
        )?,
        transcript_bytes_max: range(
            "agent.transcript_bytes_max",
            raw.transcript_bytes_max,
            1,
            AGENT_TRANSCRIPT_BYTES_MAX,
        )?,
        playback_frames_max: range(
            "agent.playback_frames_max",
            raw.playback_frames_max,
            1,
            AGENT_PLAYBACK_FRAMES_MAX,
        )?,
        url_prefixes_allowed: raw.url_prefixes_allowed,
        tenants,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::Config;

    fn load(vars: &[(&str, &str)]) -> Result<Config, String> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config");
        Config::load(&dir, None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tenant_agents_and_bounds_are_read_from_the_environment_and_checked() {
        let config = load(&[
            ("CALLWORKER_AGENT__TENANTS", r#"{acme = {url = "ws://agent.acme:9000/v1", token = "s3cret"}}"#),
            ("CALLWORKER_AGENT__URL_PREFIXES_ALLOWED", r#"["ws://agents.internal/"]"#),
        ])
        .unwrap();
        let acme = &config.agent.tenants[&callworker_call::TenantId::parse("acme").unwrap()];
        assert_eq!(acme.url, "ws://agent.acme:9000/v1");
        assert_eq!(acme.token.as_ref().map(|t| t.expose()), Some("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"), "the token is redacted in Debug");
        assert!(config.agent.url_allowed("ws://agents.internal/a"));
        assert!(!config.agent.url_allowed("ws://elsewhere/a"));
        let default = load(&[]).unwrap();
        assert!(default.agent.url_allowed("ws://anywhere:1/"), "no prefixes: any ws:// URL");

        let bad = [
            (("CALLWORKER_AGENT__TENANTS", r#"{acme = {url = "http://x"}}"#), "agent.tenants.acme.url"),
            (("CALLWORKER_AGENT__TENANTS", r#"{"a:b" = {url = "ws://x"}}"#), "agent.tenants.a:b"),
            (("CALLWORKER_AGENT__URL_PREFIXES_ALLOWED", r#"["http://x"]"#), "agent.url_prefixes_allowed"),
            (("CALLWORKER_AGENT__RECONNECT_BACKOFF_MAX_MS", "20"), "agent.reconnect_backoff_max_ms"),
            (("CALLWORKER_AGENT__TO_AGENT_QUEUE_MAX", "4"), "agent.to_agent_queue_max"),
            (("CALLWORKER_AGENT__TRANSCRIPT_ENTRIES_MAX", "0"), "agent.transcript_entries_max"),
        ];
        for ((key, value), field) in bad {
            let e = load(&[(key, value)]).unwrap_err();
            assert!(e.contains(field), "{key}={value}: {e}");
        }
    }
}
