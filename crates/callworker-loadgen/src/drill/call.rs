//! One drill call: created through the target's API at its instant in the ramp, connected
//! with a [`ResilientCall`] that knows every worker's media URL, streamed in real time until
//! the drill stops, then hung up once its last frame is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use callworker_client::ClientError;
use callworker_client::api::ControlApi;
use callworker_client::resilient::{CallEvent, EndCause, ResilientCall, ResilientConfig};
use callworker_protocol::AudioFormat;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until, timeout};

/// Period of one audio frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Time allowed for `POST /v1/calls`.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the first media session (the client tries every URL in turn).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for `hangup` beyond the ack wait: a resume under way runs first, bounded by
/// the client's resume window (30 s by default).
const HANGUP_TIMEOUT: Duration = Duration::from_secs(35);

/// What every call shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub api: ControlApi,
    pub create_body: Arc<Value>,
    /// The target's media URL first, then the others'.
    pub media_urls: Arc<Vec<String>>,
    pub audio: AudioFormat,
    /// One frame of audio (20 ms in `audio`), sent on every tick.
    pub frame: Arc<[u8]>,
    /// Becomes `true` when every call must stop streaming.
    pub stop: watch::Receiver<bool>,
    /// How long a call waits for the ack of its last frame before it counts as dropped.
    pub ack_wait: Duration,
    /// The drill's time origin.
    pub started: Instant,
}

/// How a call fared.
#[derive(Debug, Clone, Serialize)]
pub struct CallOutcome {
    pub index: u32,
    pub call_id: Option<String>,
    /// `placed`, `refused` (503 at creation), `create_failed` (any other failure to create
    /// or first connect) or `not_attempted` (the drill stopped before its turn).
    pub placement: &'static str,
    /// Why creation failed or was refused.
    pub placement_detail: Option<String>,
    /// Milliseconds from the drill's start to the creation request.
    pub created_at_ms: Option<u64>,
    /// For placed calls: `live_on_target`, `resumed_elsewhere` or `dropped`.
    pub outcome: Option<&'static str>,
    pub drop_reason: Option<String>,
    /// `migrate` messages the client received.
    pub migrate_messages: u32,
    /// Sessions lost (any cause) and resumes that worked.
    pub disconnects: u32,
    pub resumes: u32,
    pub frames_sent: u64,
    pub last_acked_seq: u64,
    /// Media URL of the last session.
    pub final_media_url: Option<String>,
}

impl CallOutcome {
    fn new(index: u32) -> CallOutcome {
        CallOutcome {
            index,
            call_id: None,
            placement: "not_attempted",
            placement_detail: None,
            created_at_ms: None,
            outcome: None,
            drop_reason: None,
            migrate_messages: 0,
            disconnects: 0,
            resumes: 0,
            frames_sent: 0,
            last_acked_seq: 0,
            final_media_url: None,
        }
    }
}

fn ms_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs call `index`, due at `due`; always returns its outcome.
pub async fn run(index: u32, due: Instant, shared: Shared) -> CallOutcome {
    let mut out = CallOutcome::new(index);
    let mut stop = shared.stop.clone();
    tokio::select! {
        () = sleep_until(due) => {}
        () = stopped(&mut stop) => return out,
    }
    if *stop.borrow() {
        return out;
    }
    out.created_at_ms = Some(ms_since(shared.started));
    let created = match timeout(CREATE_TIMEOUT, shared.api.create_call(&shared.create_body)).await {
        Ok(Ok(created)) => created,
        Ok(Err(ClientError::Api { status: 503, code, .. })) => {
            out.placement = "refused";
            out.placement_detail = Some(code);
            return out;
        }
        Ok(Err(e)) => {
            out.placement = "create_failed";
            out.placement_detail = Some(e.to_string());
            return out;
        }
        Err(_) => {
            out.placement = "create_failed";
            out.placement_detail = Some(format!("no answer within {} s", CREATE_TIMEOUT.as_secs()));
            return out;
        }
    };
    out.call_id = Some(created.call_id().to_owned());
    let connect = ResilientCall::connect(
        shared.media_urls.iter().cloned(),
        created.call_id(),
        &created.resume_token,
        shared.audio,
        ResilientConfig::default(),
    );
    let (call, events) = match timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            out.placement = "create_failed";
            out.placement_detail = Some(format!("created but never connected: {e}"));
            return out;
        }
        Err(_) => {
            out.placement = "create_failed";
            out.placement_detail =
                Some(format!("created but not connected within {} s", CONNECT_TIMEOUT.as_secs()));
            return out;
        }
    };
    out.placement = "placed";
    stream(call, events, &shared, &mut stop, &mut out).await;
    out
}

/// Streams until the drill stops, waits for the last ack, hangs up and classifies.
async fn stream(
    call: ResilientCall,
    mut events: tokio::sync::mpsc::Receiver<CallEvent>,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    out: &mut CallOutcome,
) {
    let mut ended: Option<String> = None;
    let mut tick = interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while ended.is_none() && !*stop.borrow() {
        tokio::select! {
            () = stopped(stop) => break,
            event = events.recv() => match event {
                Some(event) => note(event, out, &mut ended),
                None => ended = Some("the call's event queue closed".to_owned()),
            },
            _ = tick.tick() => {
                if let Err(e) = call.send_audio(&shared.frame).await {
                    ended = Some(format!("send failed: {e}"));
                }
            }
        }
    }
    let last_seq = call.next_seq().saturating_sub(1);
    if ended.is_none() {
        let deadline = Instant::now() + shared.ack_wait;
        while ended.is_none() && out.last_acked_seq < last_seq {
            match timeout(deadline.saturating_duration_since(Instant::now()), events.recv()).await {
                Ok(Some(event)) => note(event, out, &mut ended),
                Ok(None) => ended = Some("the call's event queue closed".to_owned()),
                Err(_) => break,
            }
        }
    }
    let stats = call.stats();
    out.frames_sent = stats.frames_sent;
    let session = call.session();
    out.final_media_url = Some(session.media_url.clone());
    let hangup = if ended.is_none() {
        timeout(shared.ack_wait + HANGUP_TIMEOUT, call.hangup()).await.ok()
    } else {
        drop(call);
        None
    };
    out.drop_reason = match (ended, hangup) {
        (Some(why), _) => Some(why),
        (None, _) if out.last_acked_seq < last_seq => {
            Some(format!("acknowledged up to frame {} of {last_seq}", out.last_acked_seq))
        }
        (None, Some(EndCause::HungUp)) => None,
        (None, Some(other)) => Some(format!("hang-up ended as {other:?}")),
        (None, None) => Some("hang-up did not finish".to_owned()),
    };
    out.outcome = Some(match (&out.drop_reason, shared.media_urls.first()) {
        (Some(_), _) => "dropped",
        (None, Some(target)) if *target == session.media_url => "live_on_target",
        (None, _) => "resumed_elsewhere",
    });
}

/// Resolves once the drill stops (the watch's guard is never held across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn note(event: CallEvent, out: &mut CallOutcome, ended: &mut Option<String>) {
    match event {
        CallEvent::Acked { upto_seq } => out.last_acked_seq = out.last_acked_seq.max(upto_seq),
        CallEvent::Disconnected { migrate_after_ms, .. } => {
            out.disconnects += 1;
            if migrate_after_ms.is_some() {
                out.migrate_messages += 1;
            }
        }
        CallEvent::Resumed { .. } => out.resumes += 1,
        CallEvent::Ended(cause) => *ended = Some(format!("ended before our hang-up: {cause:?}")),
        _ => {}
    }
}
