//! Who is calling: API keys for the control API, per-key request rate limits, the browser
//! `Origin` allow-list, and the object-level check that a call belongs to the caller.
//!
//! Keys are `cwk_` followed by 43 base64url characters (256 random bits). The worker
//! stores only their SHA-256: a fast hash is right here, unlike for passwords, because the
//! keys are high-entropy random strings — nobody can guess one from its hash faster than by
//! guessing the key itself, so a slow KDF would add request latency and no security.
//! Presented keys are hashed and compared with every configured hash in constant time.
//!
//! Keys come from `[auth] keys` (fixed for the process) and an optional keys file, re-read
//! when its modification time changes ([`task_main`]), so removing a key or marking it
//! `revoked` there takes effect within `keys_reload_interval_ms` without a restart.
//!
//! [`Caller`] is an axum extractor: a handler that takes one is authenticated (bearer
//! scheme) and rate limited; [`Operator`] also requires the operator role. Object-level
//! authorization is [`Caller::authorize`], called by every handler that names a call: a
//! call of another tenant is answered exactly like a call that does not exist (404), and
//! counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callworker_call::TenantId;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{ApiKeyConfig, AuthConfig, Role, load_keys_file};
use crate::error::{Error, ErrorKind};
use crate::metrics as m;
use crate::state::AppState;

/// Prefix of every minted key (lets secret scanners recognise leaked keys).
pub const KEY_PREFIX: &str = "cwk_";
/// Longest `Authorization` value looked at; longer is refused unread.
const AUTHORIZATION_BYTES_MAX: usize = 256;

/// SHA-256 of a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex of a hash (the form written in configuration).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random key (256 bits).
pub fn mint_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// `callworker keys new`: a fresh key for `tenant` (an operator key when `None`) and the
/// configuration entry that holds only its hash.
pub fn new_key_text(tenant: Option<&str>, id: Option<&str>) -> Result<String, String> {
    if let Some(t) = tenant {
        TenantId::parse(t).map_err(|e| format!("--tenant {t:?}: {e}"))?;
    }
    let suffix: u32 = rand::random();
    let id = id.map_or_else(|| format!("{}-{:08x}", tenant.unwrap_or("operator"), suffix), str::to_owned);
    let key = mint_key();
    let hash = hex(&hash_key(&key));
    let entry = match tenant {
        Some(t) => format!("{{ id = \"{id}\", role = \"tenant\", tenant = \"{t}\", sha256 = \"{hash}\" }}"),
        None => format!("{{ id = \"{id}\", role = \"operator\", sha256 = \"{hash}\" }}"),
    };
    // Validate the entry the way the worker will.
    let raw: crate::config::RawApiKey = toml_entry(&entry)?;
    crate::config::validate_keys(vec![raw], "the new key").map_err(|e| e.to_string())?;
    Ok(format!(
        "# API key (shown once; give it to the client, store it nowhere else):\n{key}\n\n\
         # Add this entry to keys = [ ... ] under [auth] in the configuration, or to keys = [ ... ] in auth.keys_file:\n\
         {entry}\n"
    ))
}

fn toml_entry(entry: &str) -> Result<crate::config::RawApiKey, String> {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    Figment::from(Toml::string(&format!("k = {entry}"))).extract_inner("k").map_err(|e| e.to_string())
}

/// Equality that takes the same time wherever the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts a refusal of authentication or authorization.
pub fn count_refusal(reason: &'static str) {
    metrics::counter!(m::AUTH_REFUSED, "reason" => reason).increment(1);
}

/// Counts a refusal by an abuse limit.
pub fn count_limit(limit: &'static str) {
    metrics::counter!(m::LIMIT_REFUSED, "limit" => limit).increment(1);
}

fn unauthorized(code: &'static str, message: &str) -> Error {
    count_refusal(code);
    Error::new(ErrorKind::Unauthorized, code, message)
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id (`anonymous` when auth is not required).
    pub key_id: Arc<str>,
    pub role: Role,
    /// The key's tenant; `None` for operators, who act for every tenant.
    pub tenant: Option<TenantId>,
}

impl Caller {
    /// Whether this caller may see or act on a call of `tenant`. A call of another tenant
    /// is answered as not found (its existence is not revealed) and counted.
    pub fn authorize(&self, tenant: &TenantId) -> Result<(), Error> {
        match &self.tenant {
            None => Ok(()),
            Some(own) if own == tenant => Ok(()),
            Some(_) => {
                count_refusal("wrong_tenant");
                Err(Error::call_not_found())
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Error> {
        let caller = state.keys.authenticate(&parts.headers)?;
        state.keys.limit(&caller.key_id)?;
        Ok(caller)
    }
}

/// A caller with the operator role (`/v1/admin/*`, `/v1/workers`).
#[derive(Debug, Clone)]
pub struct Operator(pub Caller);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Operator, Error> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role != Role::Operator {
            count_refusal("operator_key_required");
            return Err(Error::new(
                ErrorKind::Forbidden,
                "operator_key_required",
                "this route needs an operator key",
            ));
        }
        Ok(Operator(caller))
    }
}

/// One key's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The keys in force, their rate buckets, and where to reload them from.
#[derive(Debug)]
pub struct KeyRing {
    required: bool,
    static_keys: Vec<ApiKeyConfig>,
    file: Option<PathBuf>,
    /// Configuration keys followed by the keys file's.
    keys: RwLock<Arc<Vec<ApiKeyConfig>>>,
    /// The keys file's modification time when last loaded.
    file_mtime: Mutex<Option<SystemTime>>,
    per_second: f64,
    burst: f64,
    /// One bucket per key id that made a request. Bounded: only authenticated keys get a
    /// bucket (at most `API_KEYS_MAX` are configured) and reloads drop removed keys'.
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl KeyRing {
    /// Builds the ring from configuration (the keys file was validated with it).
    pub fn new(config: &AuthConfig) -> KeyRing {
        let ring = KeyRing {
            required: config.required,
            static_keys: config.keys.clone(),
            file: config.keys_file.clone(),
            keys: RwLock::new(Arc::new(config.keys.clone())),
            file_mtime: Mutex::new(None),
            per_second: f64::from(config.requests_per_second),
            burst: f64::from(config.requests_burst),
            buckets: Mutex::new(HashMap::new()),
        };
        ring.reload_if_changed();
        ring
    }

    fn current(&self) -> Arc<Vec<ApiKeyConfig>> {
        self.keys.read().map_or_else(|p| p.into_inner().clone(), |k| k.clone())
    }

    /// Number of keys in force (revoked ones included).
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the keys file when its modification time changed. A file that cannot be read
    /// or parsed keeps the keys in force.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let mut last = self.file_mtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if mtime.is_some() && *last == mtime {
                return;
            }
            *last = mtime;
        }
        match load_keys_file(path) {
            Ok(file_keys) => {
                let mut keys = self.static_keys.clone();
                keys.extend(file_keys);
                let live: std::collections::HashSet<&str> = keys.iter().map(|k| k.id.as_str()).collect();
                self.buckets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|id, _| live.contains(id.as_ref()));
                let revoked = keys.iter().filter(|k| k.revoked).count();
                info!(path = %path.display(), keys = keys.len(), revoked, "api keys loaded");
                *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
            }
            Err(e) => {
                metrics::counter!(m::AUTH_KEYS_RELOAD_FAILURES).increment(1);
                warn!(error = %e, "api keys file not reloaded; the keys in force stay");
            }
        }
    }

    /// Who sent these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        if !self.required {
            return Ok(Caller { key_id: Arc::from("anonymous"), role: Role::Operator, tenant: None });
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("missing_api_key", "send Authorization: Bearer <api key>"));
        };
        let presented = value
            .to_str()
            .ok()
            .filter(|v| v.len() <= AUTHORIZATION_BYTES_MAX)
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                unauthorized("malformed_authorization", "expected Authorization: Bearer <api key>")
            })?;
        let hash = hash_key(presented);
        let keys = self.current();
        // Every configured hash is compared (no early exit), each in constant time.
        let mut found: Option<&ApiKeyConfig> = None;
        for key in keys.iter() {
            if ct_eq(&key.sha256, &hash) {
                found = Some(key);
            }
        }
        match found {
            None => Err(unauthorized("invalid_api_key", "unknown API key")),
            Some(k) if k.revoked => Err(unauthorized("revoked_api_key", "this API key has been revoked")),
            Some(k) => {
                Ok(Caller { key_id: Arc::from(k.id.as_str()), role: k.role, tenant: k.tenant.clone() })
            }
        }
    }

    /// Takes one request from the key's bucket, or refuses with 429 and when to retry.
    pub fn limit(&self, key_id: &Arc<str>) -> Result<(), Error> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(key_id.clone()).or_insert(Bucket { tokens: self.burst, refilled: now });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = ((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0);
        count_limit("api_rate");
        Err(Error::new(ErrorKind::RateLimited, "rate_limited", "too many requests for this API key")
            .retry_after(wait_s as u32))
    }
}

/// Re-reads the keys file whenever it changes (a maintenance task; never returns).
pub async fn task_main(state: AppState) {
    let mut tick = tokio::time::interval(state.config.auth.keys_reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ring = state.clone();
        // A metadata read and, rarely, a small file parse: off the runtime threads.
        let _ = tokio::task::spawn_blocking(move || ring.keys.reload_if_changed()).await;
    }
}

/// Refuses a request whose `Origin` is not allowed (403 `origin_not_allowed`); requests
/// without `Origin` pass (they do not come from a browser page).
pub async fn check_origin(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin.to_str().ok().is_some_and(|o| {
            let o = o.trim_end_matches('/');
            state.config.security.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o))
        });
        if !allowed {
            count_refusal("origin_not_allowed");
            return Error::new(ErrorKind::Forbidden, "origin_not_allowed", "this Origin is not allowed")
                .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: Vec<ApiKeyConfig>) -> KeyRing {
        KeyRing::new(&AuthConfig {
            required: true,
            keys,
            keys_file: None,
            keys_reload_interval: std::time::Duration::from_secs(1),
            requests_per_second: 1,
            requests_burst: 2,
            tenant_calls_max: 0,
        })
    }

    fn key(id: &str, tenant: Option<&str>, secret: &str, revoked: bool) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.to_owned(),
            role: if tenant.is_some() { Role::Tenant } else { Role::Operator },
            tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
            sha256: hash_key(secret),
            revoked,
        }
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    #[test]
    fn keys_authenticate_by_hash_and_revoked_or_unknown_keys_are_refused() {
        let ring = ring(vec![
            key("a", Some("acme"), "secret-a", false),
            key("op", None, "secret-op", false),
            key("old", Some("acme"), "secret-old", true),
        ]);
        let a = ring.authenticate(&bearer("secret-a")).unwrap();
        assert_eq!((a.key_id.as_ref(), a.role), ("a", Role::Tenant));
        assert_eq!(a.tenant.unwrap().as_str(), "acme");
        assert_eq!(ring.authenticate(&bearer("secret-op")).unwrap().role, Role::Operator);
        assert_eq!(ring.authenticate(&bearer("secret-old")).unwrap_err().code, "revoked_api_key");
        assert_eq!(ring.authenticate(&bearer("nope")).unwrap_err().code, "invalid_api_key");
        assert_eq!(ring.authenticate(&HeaderMap::new()).unwrap_err().code, "missing_api_key");
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic c2VjcmV0LWE=".parse().unwrap());
        assert_eq!(ring.authenticate(&basic).unwrap_err().code, "malformed_authorization");
    }

    #[test]
    fn callers_see_only_their_tenant_and_operators_see_all() {
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        let tenant = Caller { key_id: Arc::from("a"), role: Role::Tenant, tenant: Some(acme.clone()) };
        assert!(tenant.authorize(&acme).is_ok());
        assert_eq!(tenant.authorize(&other).unwrap_err().code, "call_not_found");
        let operator = Caller { key_id: Arc::from("op"), role: Role::Operator, tenant: None };
        assert!(operator.authorize(&other).is_ok());
    }

    #[test]
    fn the_bucket_allows_its_burst_then_refuses_with_retry_after() {
        let ring = ring(vec![key("a", Some("acme"), "s", false)]);
        let id: Arc<str> = Arc::from("a");
        assert!(ring.limit(&id).is_ok());
        assert!(ring.limit(&id).is_ok());
        let refused = ring.limit(&id).unwrap_err();
        assert_eq!((refused.code, refused.retry_after_s), ("rate_limited", Some(1)));
        // Another key has its own bucket.
        assert!(ring.limit(&Arc::from("b")).is_ok());
    }

    #[test]
    fn minted_keys_are_random_prefixed_and_hash_to_64_hex_digits() {
        let (a, b) = (mint_key(), mint_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43);
        assert_eq!(hex(&hash_key(&a)).len(), 64);
        assert_eq!(hex(&hash_key("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
