//! The reaper: finds calls nobody drives any more and rescues or ends them.
//!
//! Every worker runs one; they need no coordination beyond the store. A pass is two-phase:
//! phase one asks the store for calls whose lease ran out ([`CallStore::expired_leases`])
//! and remembers what it saw; phase two, at least `resume.reaper_grace` later on this
//! worker's own monotonic clock, acts only if the call is still exactly as seen
//! ([`CallStore::expire`] compares epoch and lease). So a call whose owner renewed, or that a
//! client resumed, in between is left alone, and neither a jump of the store's clock nor a
//! paused reaper can end a live call. When several reapers act on one call, the store lets
//! exactly one win.
//!
//! What happens to an orphan:
//! - A Twilio call whose lease ran out (its worker hangs with the stream open, so Twilio
//!   never requests the `<Connect action>`) is *rescued* when REST credentials are
//!   configured: the reaper claims it (extends the lease without changing the epoch, so other
//!   reapers leave it alone) and redirects the live call to a new `<Connect><Stream>` through
//!   Twilio's call-update API. Twilio answering that the call is over ends it with
//!   `remote_hangup`; any other failure ends it with `rescue_failed`.
//! - Any other call (native, a Twilio call already rescued once by this worker, a call
//!   created and never connected) whose lease ran out more than `resume.resume_window` ago
//!   ends with `resume_window_expired`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use callworker_call::{CallId, EndReason, Transport, TwilioLeg, checkpoint as envelope};
use callworker_store::{ExpireAction, LeaseObservation, RecordingChunk, StoreError};
use tracing::{info, warn};

use crate::metrics as m;
use crate::state::AppState;
use crate::twilio_rest::RestOutcome;

/// Calls this worker has rescued and not seen end, remembered so it does not rescue the same
/// call again; bounded (oldest forgotten first).
const RESCUED_MAX: usize = 10_000;

/// Runs reaper passes until the worker shuts down.
pub async fn run(state: AppState) {
    let period = state.config.resume.reaper_interval;
    // Spread the workers' passes: start at a random point of the first period.
    let offset = Duration::from_millis(rand::random_range(0..=period.as_millis() as u64));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reaper = Reaper::new(state.clone());
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => reaper.pass().await,
        }
    }
}

/// One worker's reaper state.
#[derive(Debug)]
pub struct Reaper {
    state: AppState,
    /// Phase one's observations, waiting for the grace period: call → (what was seen, when).
    watching: BTreeMap<CallId, (LeaseObservation, Instant)>,
    rescued: HashSet<CallId>,
    rescued_order: std::collections::VecDeque<CallId>,
    http: reqwest::Client,
}

impl Reaper {
    pub fn new(state: AppState) -> Reaper {
        let http = reqwest::Client::builder()
            .timeout(state.config.twilio.rest_timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Reaper {
            state,
            watching: BTreeMap::new(),
            rescued: HashSet::new(),
            rescued_order: std::collections::VecDeque::new(),
            http,
        }
    }

    /// One pass: phase two for observations old enough, then phase one.
    pub async fn pass(&mut self) {
        let grace = self.state.config.resume.reaper_grace;
        let due: Vec<LeaseObservation> = self
            .watching
            .values()
            .filter(|(_, seen)| seen.elapsed() >= grace)
            .map(|(obs, _)| obs.clone())
            .collect();
        for obs in due {
            self.watching.remove(&obs.call_id);
            self.act(obs).await;
        }
        self.observe().await;
    }

    async fn observe(&mut self) {
        let cfg = &self.state.config.resume;
        let batch = cfg.reaper_batch_max;
        let mut seen = match self.state.store.expired_leases(cfg.resume_window, batch).await {
            Ok(v) => v,
            Err(e) => return store_error("expired_leases", &e),
        };
        if self.state.config.twilio.rescue_enabled() {
            match self.state.store.expired_leases(Duration::ZERO, batch).await {
                Ok(v) => seen.extend(v),
                Err(e) => return store_error("expired_leases", &e),
            }
        }
        let now = Instant::now();
        for obs in seen {
            if self.watching.len() >= batch * 2 {
                break; // the rest waits for the next pass
            }
            self.watching.entry(obs.call_id.clone()).or_insert((obs, now));
        }
    }

    /// Phase two for one call.
    async fn act(&mut self, obs: LeaseObservation) {
        let window = self.state.config.resume.resume_window;
        let record = match self.state.store.get(&obs.call_id).await {
            Ok(r) => r,
            Err(StoreError::NotFound) => return,
            Err(e) => return store_error("get", &e),
        };
        let call = record.checkpoint.as_ref().map(|c| envelope::decode(&c.blob));
        let leg = match &call {
            Some(Ok(call)) if call.transport == Some(Transport::Twilio) => call.twilio.clone(),
            _ => None,
        };
        if let Some(leg) = leg
            && self.state.config.twilio.rescue_enabled()
            && !self.rescued.contains(&obs.call_id)
        {
            return self.rescue(obs, leg).await;
        }
        let overdue_ms = obs.observed_at.since(obs.lease_until);
        if u128::from(overdue_ms) < window.as_millis() {
            return; // seen for a rescue that is not due; its window has not passed
        }
        let reason = match call {
            Some(Err(envelope::CheckpointError::TooNew { .. })) => return, // a newer worker's call
            Some(Err(_)) | None => EndReason::CheckpointCorrupt,
            Some(Ok(_)) => EndReason::ResumeWindowExpired,
        };
        self.end(&obs, reason).await;
    }

    async fn end(&mut self, obs: &LeaseObservation, reason: EndReason) {
        match self.state.store.expire(obs, ExpireAction::End(reason)).await {
            Ok(_) => {
                self.forget_rescue(&obs.call_id);
                metrics::counter!(m::CALLS_ENDED, "reason" => reason.as_str()).increment(1);
                metrics::counter!(m::REAPER_ACTIONS, "action" => "ended").increment(1);
                info!(call_id = %obs.call_id, epoch = %obs.epoch, reason = %reason, "reaper ended an orphaned call");
            }
            Err(StoreError::Stale { .. } | StoreError::Ended { .. } | StoreError::NotFound) => {
                self.forget_rescue(&obs.call_id);
            }
            Err(e) => store_error("expire", &e),
        }
    }

    /// Claims the call, then redirects it through Twilio's REST API to a new stream.
    async fn rescue(&mut self, obs: LeaseObservation, leg: TwilioLeg) {
        let claim = self.state.config.resume.rescue_claim;
        let epoch = match self.state.store.expire(&obs, ExpireAction::Extend(claim)).await {
            Ok(epoch) => epoch,
            Err(StoreError::Stale { .. } | StoreError::Ended { .. } | StoreError::NotFound) => return,
            Err(e) => return store_error("expire", &e),
        };
        self.remember_rescue(obs.call_id.clone());
        let twiml = crate::http::twilio::connect_document(&self.state, &obs.call_id, epoch);
        let outcome = self.update_call(&leg, &twiml).await;
        metrics::counter!(m::TWILIO_REST_REQUESTS, "outcome" => outcome.label()).increment(1);
        match outcome {
            RestOutcome::Redirected => {
                metrics::counter!(m::REAPER_ACTIONS, "action" => "rescued").increment(1);
                info!(call_id = %obs.call_id, call_sid = %leg.call_sid, "reaper redirected a hung Twilio call to a new stream");
            }
            RestOutcome::CallOver => self.end_claimed(&obs.call_id, epoch, EndReason::RemoteHangup).await,
            RestOutcome::Failed(why) => {
                warn!(call_id = %obs.call_id, call_sid = %leg.call_sid, why, "Twilio rescue failed");
                self.end_claimed(&obs.call_id, epoch, EndReason::RescueFailed).await;
            }
        }
    }

    /// Ends a call this reaper claimed (the epoch is unchanged by the claim).
    async fn end_claimed(&mut self, call_id: &CallId, epoch: callworker_call::Epoch, reason: EndReason) {
        match self.state.store.end(call_id, epoch, reason, None, RecordingChunk::default()).await {
            Ok(_) => {
                self.forget_rescue(call_id);
                let action =
                    if reason == EndReason::RemoteHangup { "remote_hangup" } else { "rescue_failed" };
                metrics::counter!(m::CALLS_ENDED, "reason" => reason.as_str()).increment(1);
                metrics::counter!(m::REAPER_ACTIONS, "action" => action).increment(1);
                info!(call_id = %call_id, reason = %reason, "reaper ended a Twilio call it could not rescue");
            }
            Err(StoreError::Fenced { .. } | StoreError::Ended { .. } | StoreError::NotFound) => {}
            Err(e) => store_error("end", &e),
        }
    }

    /// `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with `Twiml`.
    async fn update_call(&self, leg: &TwilioLeg, twiml: &str) -> RestOutcome {
        crate::twilio_rest::update_call(&self.http, &self.state.config.twilio, leg, twiml).await
    }

    fn remember_rescue(&mut self, call_id: CallId) {
        if self.rescued.insert(call_id.clone()) {
            self.rescued_order.push_back(call_id);
            while self.rescued_order.len() > RESCUED_MAX {
                if let Some(old) = self.rescued_order.pop_front() {
                    self.rescued.remove(&old);
                }
            }
        }
    }

    fn forget_rescue(&mut self, call_id: &CallId) {
        if self.rescued.remove(call_id) {
            self.rescued_order.retain(|c| c != call_id);
        }
    }
}

fn store_error(op: &'static str, e: &StoreError) {
    metrics::counter!(m::STORE_ERRORS, "op" => op).increment(1);
    warn!(op, error = %e, "reaper: store operation failed");
}
