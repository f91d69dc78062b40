//! The callworker worker: carries live calls over WebSockets and drives them through an
//! HTTP control API.
//!
//! Layout:
//! - [`run`] / [`serve`]: the service; `main.rs` only parses the CLI and loads [`config`].
//! - [`http`]: routes — control API (`/v1/calls…`), Twilio webhooks, media upgrades,
//!   `/healthz`, `/readyz`, `/metrics`.
//! - [`session`]: one WebSocket carrying one call: the driver (the call's actor while
//!   attached), the writer, the per-call checkpoint writer, and the two protocols.
//! - [`calls`]: call operations shared by routes and sessions (create, view, end).
//! - [`reaper`]: ends or rescues calls nobody drives any more (two-phase, safe on every
//!   worker at once); [`registry`]: this worker's heartbeat in the worker registry.
//! - [`auth`]: API keys, tenancy checks, per-key rate limits, the `Origin` allow-list.
//! - [`forward`]: control-API actions for a call another worker carries, forwarded to that
//!   worker once, signed worker to worker; [`twilio_rest`]: Twilio call updates (rescue,
//!   transfer).
//! - [`webhooks`]: which call events become webhooks, and the delivery task that sends
//!   them from the store's durable outbox.
//! - [`admission`], [`live`], [`token`], [`error`], [`metrics`], [`telemetry`], [`state`].
//! - `fuzzing` (feature `fuzzing`): the check the token fuzz target in `fuzz/` runs, shared
//!   with the stable corpus replay.
//!
//! Invariants:
//! - A call is driven by at most one session on this worker ([`live::LiveCalls`]), and every
//!   write it makes is fenced by its epoch in the store, so two workers never both drive
//!   a call past the first write of the newer one.
//! - Admission is decided before a WebSocket upgrade or a call creation.
//! - Every queue has a bound from [`config::Limits`]; what happens when it is full is
//!   documented on the field.
//! - Every call that ends here ends with a reason, counted in `callworker_calls_ended_total`.

pub mod admission;
pub mod allocator;
pub mod auth;
pub mod calls;
pub mod config;
pub mod error;
pub mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod governor;
pub mod http;
pub mod ivr_definitions;
pub mod live;
pub mod metrics;
pub mod profiling;
pub mod reaper;
pub mod registry;
pub mod session;
pub mod state;
pub mod telemetry;
pub mod token;
pub mod twilio_rest;
pub mod wav;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use callworker_store::CallStore;
use callworker_store::memory::MemoryStore;
use callworker_store::redis_store::{RedisStore, RedisStoreOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::config::{Config, DEV_TOKEN_SECRET, StoreConfig};
use crate::live::LiveCalls;
use crate::state::{AppState, Shared, new_worker_id};
use crate::token::Tokens;

/// How often the Prometheus recorder's histograms are compacted.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Opens the configured store. Redis must answer: a worker that cannot reach its store
/// exits (its supervisor restarts it) rather than accept calls it cannot make durable.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn CallStore>> {
    Ok(match &config.store {
        StoreConfig::Memory { capacity, recording_track_bytes_max } => Arc::new(
            MemoryStore::new(*capacity).with_recording_limit(*recording_track_bytes_max).with_webhooks(
                config.webhooks.subscriptions(),
                config.webhooks.call_events_max,
                config.webhooks.dead_letters_max,
            ),
        ),
        StoreConfig::Redis(redis) => {
            let options = RedisStoreOptions {
                url: redis.url.clone(),
                mode: redis.mode,
                tls_ca_file: redis.ca_file.clone(),
                namespace: redis.namespace.clone(),
                response_timeout: redis.response_timeout,
                takeover_timeout: redis.takeover_timeout,
                ended_retention: redis.ended_retention,
                // A live call's keys outlive the longest call and its resume window; its
                // writes refresh this, so only a call nobody ends and no reaper sees lapses.
                live_ttl: Duration::from_millis(config.calls.limits.max_duration_ms)
                    + config.resume.resume_window
                    + Duration::from_secs(3600),
                recording_track_bytes_max: redis.recording_track_bytes_max,
                webhooks: config.webhooks.subscriptions(),
                webhook_call_events_max: config.webhooks.call_events_max,
                webhook_dead_letters_max: config.webhooks.dead_letters_max,
            };
            let store = RedisStore::connect(options).await.context("connect to Redis (store.redis_url)")?;
            info!(namespace = %redis.namespace, mode = ?redis.mode, "call store: Redis");
            Arc::new(store)
        }
    })
}

/// Waits (up to `server.drain_timeout_ms` from now) for the calls this worker let go of to
/// resume elsewhere, then ends those still at the epoch they were left with
/// (`drain_timeout`). The end is fenced at that epoch, so a resume racing it wins or loses
/// cleanly.
async fn end_stragglers(
    state: &AppState,
    handed_off: Vec<(callworker_call::CallId, callworker_call::Epoch)>,
) {
    // With the in-process store no other worker can take a call over: nothing to wait for.
    if handed_off.is_empty() || matches!(state.config.store, StoreConfig::Memory { .. }) {
        return;
    }
    let deadline = tokio::time::Instant::now() + state.config.server.drain_timeout;
    let mut waiting = handed_off;
    loop {
        let mut still = Vec::with_capacity(waiting.len());
        for (call_id, epoch) in waiting {
            match state.store.get(&call_id).await {
                Ok(r) if r.end_reason.is_none() && r.epoch == epoch => still.push((call_id, epoch)),
                Ok(_) | Err(callworker_store::StoreError::NotFound) => {}
                Err(_) => still.push((call_id, epoch)),
            }
        }
        waiting = still;
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (call_id, epoch) in waiting {
        let reason = callworker_call::EndReason::DrainTimeout;
        match state
            .store
            .end(&call_id, epoch, reason, None, callworker_store::RecordingChunk::default())
            .await
        {
            Ok(_) => {
                ::metrics::counter!(metrics::CALLS_ENDED, "reason" => reason.as_str()).increment(1);
                warn!(call_id = %call_id, "call not resumed elsewhere within the drain timeout; ended");
            }
            Err(e) => info!(call_id = %call_id, error = %e, "straggler not ended (it moved on)"),
        }
    }
}

/// Binds the configured address and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.server.listen_addr)
        .await
        .with_context(|| format!("bind {}", config.server.listen_addr))?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` completes, then stops admitting, detaches every
/// session (their calls stay resumable) and returns within `server.shutdown_grace`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = metrics::install();
    ::metrics::gauge!(metrics::PROCESS_START_TIME).set(state::now().0 as f64 / 1000.0);
    let worker_id = config.server.worker_id.clone().unwrap_or_else(new_worker_id);
    let store = open_store(&config).await?;
    if config.security.token_secret == DEV_TOKEN_SECRET.as_bytes() {
        warn!(
            "security.token_secret is the development value; set CALLWORKER_SECURITY__TOKEN_SECRET in production"
        );
    }
    if !config.auth.required {
        warn!(
            "auth.required is false: the control API accepts every request as an operator; never run like this in production"
        );
    }
    if !config.twilio.verify_signatures {
        warn!(
            "twilio.verify_signatures is false: Twilio webhooks and media upgrades are not authenticated; never run like this in production"
        );
    } else if config.twilio.auth_token.is_empty() {
        warn!("twilio.auth_token is empty: every Twilio route is refused (403 twilio_not_configured)");
    }
    let grace = config.server.shutdown_grace;
    let state = AppState::new(Shared {
        tokens: Tokens::new(config.security.token_secret.clone(), config.security.resume_token_ttl),
        keys: auth::KeyRing::new(&config.auth),
        admission: Admission::new(config.limits.calls_max),
        memory: governor::MemoryState::default(),
        live: LiveCalls::default(),
        worker_id,
        store,
        metrics: metrics.clone(),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        config,
    });
    let addr = listener.local_addr().context("read the bound address")?;
    info!(%addr, worker_id = %state.worker_id, "callworker listening");

    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });

    let reaper = tokio::spawn(reaper::run(state.clone()));
    let governor = tokio::spawn(governor::run(state.clone()));
    // Where other workers forward actions for the calls this one carries.
    let advertised = match &state.config.server.advertise_url {
        Some(url) => url.clone(),
        None => {
            if addr.ip().is_unspecified() {
                warn!(%addr, "server.advertise_url is empty and the listen address is unspecified: other workers cannot forward actions to this one; set CALLWORKER_SERVER__ADVERTISE_URL");
            }
            format!("http://{addr}")
        }
    };
    let registry = tokio::spawn(registry::run(state.clone(), advertised));
    let keys = tokio::spawn(auth::task_main(state.clone()));
    let hooks = tokio::spawn(webhooks::task_main(state.clone()));

    let stop = state.shutdown.clone();
    let app = http::router(state.clone());
    // Media is many small messages in real time: without TCP_NODELAY, Nagle's algorithm holds
    // a small write (an ack, a mark) until the previous one is acknowledged, and the peer's
    // delayed ACK rides on its next frame, so every echo would arrive ~20 ms late.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
    });
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });

    tokio::select! {
        result = &mut server => {
            upkeep.abort();
            reaper.abort();
            registry.abort();
            governor.abort();
            keys.abort();
            hooks.abort();
            return match result {
                Ok(Ok(())) => Err(anyhow::anyhow!("server stopped unexpectedly")),
                Ok(Err(e)) => Err(e).context("serve HTTP"),
                Err(e) => Err(e).context("server task failed"),
            };
        }
        () = shutdown => {}
    }

    info!(grace_ms = grace.as_millis() as u64, "shutting down: no longer admitting, detaching sessions");
    state.admission.start_draining();
    let handed_off = state.live.epochs();
    state.shutdown.cancel();
    state.sessions.close();
    let drained = tokio::time::timeout(grace, async {
        state.sessions.wait().await;
        end_stragglers(&state, handed_off).await;
        let _ = server.await;
    })
    .await;
    upkeep.abort();
    reaper.abort();
    governor.abort();
    keys.abort();
    hooks.abort();
    // Leave the registry cleanly (bounded: the store may be the reason we are stopping).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), registry).await;
    if drained.is_err() {
        warn!("shutdown grace elapsed with sessions still open");
    }
    info!("stopped");
    Ok(())
}
