//! State shared by every request and session of one worker.

use std::sync::Arc;

use callworker_call::{CallId, UnixMillis, WorkerId};
use callworker_store::CallStore;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Config;
use crate::live::LiveCalls;
use crate::token::Tokens;

/// Cheap to clone; one per worker.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub worker_id: WorkerId,
    pub store: Arc<dyn CallStore>,
    pub tokens: Tokens,
    /// API keys in force and their rate buckets.
    pub keys: crate::auth::KeyRing,
    pub live: LiveCalls,
    pub admission: Admission,
    /// The memory governor's last snapshot.
    pub memory: crate::governor::MemoryState,
    pub metrics: PrometheusHandle,
    /// Cancelled when the worker shuts down: every session detaches and closes.
    pub shutdown: CancellationToken,
    /// Every media session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// The media URL (ws/wss) for a path, derived from the public base URL.
    pub fn media_url(&self, path: &str) -> String {
        let base = &self.config.server.public_url;
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.clone()
        };
        format!("{ws_base}{path}")
    }
}

/// Wall-clock now, as the call sees time.
pub fn now() -> UnixMillis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    UnixMillis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A fresh random call id: `c_` and 24 hex digits (96 bits).
pub fn new_call_id() -> CallId {
    let bits: u128 = rand::random();
    CallId::parse(&format!("c_{:024x}", bits >> 32)).expect("generated ids use the allowed alphabet")
}

/// A fresh random worker id: `w-` and 12 hex digits.
pub fn new_worker_id() -> WorkerId {
    let bits: u64 = rand::random();
    WorkerId::parse(&format!("w-{:012x}", bits >> 16)).expect("generated ids use the allowed alphabet")
}
