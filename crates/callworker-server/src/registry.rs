//! The worker registry: each worker announces itself in the store every
//! `resume.heartbeat_interval` (id, address, version, live calls, governor level); an entry
//! lapses after three missed heartbeats. `GET /v1/workers` reads it.

use callworker_call::UnixMillis;
use callworker_store::WorkerInfo;
use tracing::warn;

use crate::metrics as m;
use crate::state::{AppState, now};

/// Heartbeats missed before the registry forgets a worker.
const MISSED_HEARTBEATS_MAX: u32 = 3;

/// This worker as the registry shows it.
pub fn info(state: &AppState, address: &str, started_at: UnixMillis) -> WorkerInfo {
    WorkerInfo {
        worker_id: state.worker_id.clone(),
        address: address.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        live_calls: state.live.len() as u64,
        governor_level: state.admission.memory_level().as_str().to_owned(),
        started_at,
        heartbeat_at: UnixMillis(0),
    }
}

/// Heartbeats until shutdown, then removes this worker from the registry.
pub async fn run(state: AppState, address: String) {
    let started_at = now();
    let period = state.config.resume.heartbeat_interval;
    let ttl = period * MISSED_HEARTBEATS_MAX;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = state.store.heartbeat(&info(&state, &address, started_at), ttl).await {
                    metrics::counter!(m::STORE_ERRORS, "op" => "heartbeat").increment(1);
                    warn!(error = %e, "worker heartbeat failed");
                }
                if let Ok(workers) = state.store.workers().await {
                    metrics::gauge!(m::WORKERS_LIVE).set(workers.len() as f64);
                }
            }
        }
    }
    if let Err(e) = state.store.deregister(&state.worker_id).await {
        warn!(error = %e, "could not remove this worker from the registry");
    }
}
