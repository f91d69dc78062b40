//! The resilient native client against real `callworker` processes: lost connections are
//! resumed with the audio replayed and de-duplicated, a fenced connection stops for good,
//! and every way a call ends is reported. Build the worker first:
//! `cargo build -p callworker-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use callworker_client::ClientError;
use callworker_client::api::{ControlApi, CreatedCall};
use callworker_client::audio::{FrameClock, test_pattern};
use callworker_client::resilient::{
    CallEvent, EndCause, ReconnectPolicy, ResilientCall, ResilientConfig, ResumeFrom,
};
use callworker_protocol::{AudioFormat, Encoding};
use callworker_testkit::{Signal, TENANT_KEY, Worker, WorkerOptions, free_port};
use serde_json::json;
use tokio::sync::mpsc;

/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);
const FRAME_BYTES: usize = 160;
const PCMU_8K: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };

async fn echo_call(api: &ControlApi) -> CreatedCall {
    api.create_call(&json!({"program": {"name": "echo", "params": {"delay_ms": 0}}})).await.unwrap()
}

/// A policy that gives up quickly, for tests where nothing can answer.
fn quick_policy() -> ResilientConfig {
    ResilientConfig {
        reconnect: ReconnectPolicy {
            attempts_max: 3,
            backoff_step: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(2),
            ..ReconnectPolicy::default()
        },
        ..ResilientConfig::default()
    }
}

async fn connect(
    created: &CreatedCall,
    config: ResilientConfig,
) -> (ResilientCall, mpsc::Receiver<CallEvent>) {
    ResilientCall::connect(
        [created.media_url.clone()],
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        config,
    )
    .await
    .unwrap()
}

/// What the application saw: server audio in order, and every other event.
#[derive(Debug, Default)]
struct Seen {
    audio: Vec<u8>,
    seqs: Vec<u64>,
    epochs: Vec<u64>,
    acked: u64,
    others: Vec<CallEvent>,
}

impl Seen {
    fn take(&mut self, event: CallEvent) {
        match event {
            CallEvent::Audio { epoch, seq, payload } => {
                self.audio.extend_from_slice(&payload);
                self.seqs.push(seq);
                if self.epochs.last() != Some(&epoch) {
                    self.epochs.push(epoch);
                }
            }
            CallEvent::Acked { upto_seq } => self.acked = self.acked.max(upto_seq),
            other => self.others.push(other),
        }
    }

    fn drain(&mut self, events: &mut mpsc::Receiver<CallEvent>) {
        while let Ok(event) = events.try_recv() {
            self.take(event);
        }
    }

    /// Takes events until `done` holds (bounded by [`WAIT`]).
    async fn until(
        &mut self,
        events: &mut mpsc::Receiver<CallEvent>,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) {
        let result = tokio::time::timeout(WAIT, async {
            while !done(self) {
                match events.recv().await {
                    Some(event) => self.take(event),
                    None => panic!("events ended while waiting for {what}: {:?}", self.others),
                }
            }
        })
        .await;
        assert!(result.is_ok(), "timed out waiting for {what}; seen {:?}", self.others);
    }

    fn resumes(&self) -> Vec<&CallEvent> {
        self.others.iter().filter(|e| matches!(e, CallEvent::Resumed { .. })).collect()
    }

    fn disconnects(&self) -> Vec<&CallEvent> {
        self.others.iter().filter(|e| matches!(e, CallEvent::Disconnected { .. })).collect()
    }

    fn ended(&self) -> Option<&EndCause> {
        self.others.iter().find_map(|e| if let CallEvent::Ended(cause) = e { Some(cause) } else { None })
    }
}

/// Sends `frames` (all of them `FRAME_BYTES` long) at 20 ms, gathering events meanwhile.
async fn send_paced(
    call: &ResilientCall,
    events: &mut mpsc::Receiver<CallEvent>,
    seen: &mut Seen,
    frames: &[u8],
) {
    let mut clock = FrameClock::start();
    for frame in frames.chunks(FRAME_BYTES) {
        clock.tick().await;
        call.send_audio(frame).await.unwrap();
        seen.drain(events);
    }
}

#[tokio::test]
async fn dropped_connections_resume_and_the_echo_stays_exact_and_in_order() {
    let worker = Worker::start(WorkerOptions::named("resilient-replay")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    let (call, mut events) = connect(&created, ResilientConfig::default()).await;
    assert_eq!(call.session().epoch, 1);
    assert!(call.session().connected);

    let total = 150;
    let sent = test_pattern(21, FRAME_BYTES * total);
    let mut seen = Seen::default();
    let mut clock = FrameClock::start();
    for (i, frame) in sent.chunks(FRAME_BYTES).enumerate() {
        let seq = i as u64 + 1;
        if seq == 51 || seq == 101 {
            // Drop once the echo has caught up, so no server audio is in flight: what the
            // server applied after this point must come back after the resume.
            seen.until(&mut events, "the echo to catch up", |s| s.seqs.len() as u64 == seq - 1).await;
            call.debug_drop_connection().await.unwrap();
            // These frames are sent while the session is down or resuming: buffered.
            clock = FrameClock::start();
        }
        clock.tick().await;
        assert_eq!(call.send_audio(frame).await.unwrap(), seq, "seqs continue across sessions");
        seen.drain(&mut events);
    }
    seen.until(&mut events, "the whole echo", |s| s.audio.len() >= sent.len()).await;

    assert_eq!(seen.seqs, (1..=total as u64).collect::<Vec<_>>(), "server seqs: continuous, no duplicates");
    assert!(seen.audio == sent, "the echo is exactly the audio sent");
    assert_eq!(seen.epochs, [1, 2, 3], "each resume takes a new epoch");
    assert_eq!(seen.disconnects().len(), 2, "{:?}", seen.others);
    for d in seen.disconnects() {
        assert!(matches!(d, CallEvent::Disconnected { code: 1006, migrate_after_ms: None, .. }), "{d:?}");
    }
    let resumes = seen.resumes();
    assert_eq!(resumes.len(), 2, "{:?}", seen.others);
    for (resume, epoch) in resumes.iter().zip([2, 3]) {
        let CallEvent::Resumed { epoch: e, silence_frames, attempts, .. } = resume else { unreachable!() };
        assert_eq!((*e, *silence_frames), (epoch, 0), "a lossless resume: {resume:?}");
        assert!(*attempts >= 1);
    }
    let stats = call.stats();
    assert_eq!((stats.disconnects, stats.reconnects), (2, 2), "{stats:?}");
    assert_eq!(stats.silence_frames_sent, 0, "{stats:?}");
    assert_eq!(stats.frames_dropped_overflow, 0, "{stats:?}");
    assert_eq!(stats.stale_epoch_dropped, 0, "{stats:?}");
    assert_eq!(stats.audio_frames_received, total as u64, "{stats:?}");
    assert!(stats.frames_sent >= total as u64, "{stats:?}");

    assert_eq!(call.hangup().await, EndCause::HungUp);
    seen.until(&mut events, "the end", |s| s.ended().is_some()).await;
    let call = api.get_call(created.call_id()).await.unwrap();
    assert_eq!(call["status"], "ended");
    assert_eq!(call["end_reason"], "client_hangup");
    assert_eq!(call["media"]["inbound_applied_seq"], total, "the server applied every frame once");
}

#[tokio::test]
async fn a_half_open_connection_is_replaced_and_what_the_checkpoint_missed_is_replayed() {
    // Checkpoints every 2 s: the takeover below lands well between two of them.
    let worker = Worker::start(
        WorkerOptions::named("resilient-half-open").env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "2000"),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    let (call, mut events) = connect(&created, ResilientConfig::default()).await;
    let total = 200;
    let sent = test_pattern(33, FRAME_BYTES * total);
    let mut frames = sent.chunks(FRAME_BYTES);
    let mut seen = Seen::default();
    let mut clock = FrameClock::start();

    // Audio until the first checkpoint is acknowledged, then 5 frames more.
    let mut extra = None;
    while extra != Some(0) {
        clock.tick().await;
        call.send_audio(frames.next().expect("an ack within 200 frames")).await.unwrap();
        seen.drain(&mut events);
        extra = match extra {
            None if seen.acked > 0 => Some(5),
            Some(n) => Some(n - 1),
            None => None,
        };
    }
    let sent_before = call.next_seq() - 1;
    seen.until(&mut events, "the echo to catch up", |s| s.seqs.len() as u64 == sent_before).await;
    let acked = seen.acked;
    assert!(acked < sent_before, "frames {}..={sent_before} are not acknowledged yet", acked + 1);

    // The connection is given up but not closed: the server still holds the old session
    // when the resume arrives, and restores the call from its last checkpoint.
    call.debug_abandon_connection().await.unwrap();
    seen.until(&mut events, "the resume", |s| !s.resumes().is_empty()).await;
    let CallEvent::Resumed { resume_from_seq, silence_frames, .. } = seen.resumes()[0].clone() else {
        unreachable!()
    };
    assert!(resume_from_seq > acked && resume_from_seq <= sent_before, "resume_from_seq {resume_from_seq}");
    assert_eq!(silence_frames, 0, "the unacknowledged frames were all held");
    for frame in frames {
        clock.tick().await;
        call.send_audio(frame).await.unwrap();
        seen.drain(&mut events);
    }
    seen.until(&mut events, "the whole echo", |s| s.audio.len() >= sent.len()).await;

    assert!(seen.audio == sent, "the echo is exactly the audio sent");
    assert_eq!(seen.seqs, (1..=total as u64).collect::<Vec<_>>(), "no duplicate reached the application");
    let stats = call.stats();
    let replayed = sent_before + 1 - resume_from_seq;
    assert_eq!(stats.frames_replayed, replayed, "{stats:?}");
    assert_eq!(stats.duplicates_dropped, replayed, "the regenerated echo was dropped: {stats:?}");
    assert_eq!(call.hangup().await, EndCause::HungUp);
    let call = api.get_call(created.call_id()).await.unwrap();
    assert_eq!(call["media"]["inbound_applied_seq"], total);
}

#[tokio::test]
async fn a_fenced_connection_stops_for_good_and_nobody_ping_pongs() {
    let worker = Worker::start(WorkerOptions::named("resilient-fence")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    let (mut a, mut a_events) = connect(&created, ResilientConfig::default()).await;

    // A second client with the creation token (epoch 0) cannot take the call: 4409, final.
    let refused = ResilientCall::connect(
        [created.media_url.clone()],
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        ResilientConfig::default(),
    )
    .await;
    assert!(matches!(refused, Err(ClientError::Closed { code: 4409, .. })), "{refused:?}");
    assert!(a.session().connected, "the owner is untouched");

    // A second client holding A's current token takes the call over; A is fenced out
    // with 4409 and must not try to take it back.
    let state = a.session();
    let from = ResumeFrom { epoch_seen: state.epoch, next_seq: a.next_seq(), ..ResumeFrom::NEW_CALL };
    let (b, mut b_events) = ResilientCall::connect_from(
        [created.media_url.clone()],
        created.call_id(),
        &state.resume_token,
        from,
        PCMU_8K,
        ResilientConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(b.session().epoch, 2);
    let mut a_seen = Seen::default();
    a_seen.until(&mut a_events, "A to end", |s| s.ended().is_some()).await;
    assert!(matches!(a_seen.ended(), Some(EndCause::Closed { code: 4409, .. })), "{:?}", a_seen.others);
    assert!(matches!(a.finished().await, EndCause::Closed { code: 4409, .. }));
    assert!(a.send_audio(&[0xFF; FRAME_BYTES]).await.is_err(), "a finished call takes no audio");

    // Three seconds of audio through B: it stays the owner, A never comes back.
    let sent = test_pattern(5, FRAME_BYTES * 150);
    let mut b_seen = Seen::default();
    send_paced(&b, &mut b_events, &mut b_seen, &sent).await;
    b_seen.until(&mut b_events, "B's echo", |s| s.audio.len() >= sent.len()).await;
    assert!(b_seen.audio == sent);
    assert!(b_seen.disconnects().is_empty() && b_seen.ended().is_none(), "{:?}", b_seen.others);
    assert!(b.session().connected);
    assert_eq!(b.session().epoch, 2, "no takeover since");
    let a_stats = a.stats();
    assert_eq!((a_stats.disconnects, a_stats.reconnects, a_stats.failed_attempts), (0, 0, 0), "{a_stats:?}");
    assert_eq!(b.stats().disconnects, 0);
    assert_eq!(api.get_call(created.call_id()).await.unwrap()["status"], "active");
}

#[tokio::test]
async fn a_silent_connection_is_declared_dead_and_resumed_with_the_audio_buffered_meanwhile() {
    let mut worker = Worker::start(WorkerOptions::named("resilient-liveness")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    let (call, mut events) = connect(&created, ResilientConfig::default()).await;
    let sent = test_pattern(9, FRAME_BYTES * 120);
    let (before, during_and_after) = sent.split_at(FRAME_BYTES * 40);
    let (during, after) = during_and_after.split_at(FRAME_BYTES * 40);
    let mut seen = Seen::default();
    send_paced(&call, &mut events, &mut seen, before).await;
    seen.until(&mut events, "the echo to catch up", |s| s.audio.len() == before.len()).await;

    // A frozen worker answers nothing, not even pings: after the liveness timeout the
    // client gives the connection up and starts resuming.
    worker.signal(Signal::STOP).unwrap();
    seen.until(&mut events, "the liveness timeout", |s| !s.disconnects().is_empty()).await;
    let lost = seen.disconnects()[0].clone();
    assert!(
        matches!(&lost, CallEvent::Disconnected { code: 1006, reason, .. } if reason.contains("liveness")),
        "{lost:?}"
    );
    assert!(!call.session().connected);
    // Audio keeps coming while the call is down: it is buffered, not lost.
    send_paced(&call, &mut events, &mut seen, during).await;
    worker.signal(Signal::CONT).unwrap();
    seen.until(&mut events, "the resume", |s| !s.resumes().is_empty()).await;
    send_paced(&call, &mut events, &mut seen, after).await;
    seen.until(&mut events, "the whole echo", |s| s.audio.len() >= sent.len()).await;

    assert!(seen.audio == sent, "the echo is exactly the audio sent");
    assert_eq!(seen.seqs, (1..=120).collect::<Vec<_>>());
    assert_eq!(call.stats().reconnects, 1);
    assert_eq!(call.hangup().await, EndCause::HungUp);
    assert!(worker.try_wait().unwrap().is_none(), "the worker survived");
}

#[tokio::test]
async fn the_first_connection_rotates_media_urls_and_gives_up_when_bounded() {
    let worker = Worker::start(WorkerOptions::named("resilient-urls")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    let dead = format!("ws://127.0.0.1:{}/v1/media", free_port());

    let (call, _events) = ResilientCall::connect(
        [dead.clone(), created.media_url.clone()],
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        quick_policy(),
    )
    .await
    .unwrap();
    assert_eq!(call.session().media_url, created.media_url, "the second URL answered");
    assert_eq!(call.stats().failed_attempts, 1);
    assert_eq!(call.session().epoch, 1);
    drop(call);

    let other = echo_call(&api).await;
    let result = ResilientCall::connect(
        [dead.clone(), dead],
        other.call_id(),
        &other.resume_token,
        PCMU_8K,
        quick_policy(),
    )
    .await;
    assert!(matches!(result, Err(ClientError::WebSocket(_))), "{result:?}");
}

#[tokio::test]
async fn final_close_codes_are_never_retried() {
    let worker = Worker::start(WorkerOptions::named("resilient-final")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    // A retry would wait 10 s first: the refusal must come back well before.
    let patient = ResilientConfig {
        reconnect: ReconnectPolicy { backoff_step: Duration::from_secs(10), ..ReconnectPolicy::default() },
        ..ResilientConfig::default()
    };
    let forged = tokio::time::timeout(
        Duration::from_secs(5),
        ResilientCall::connect(
            [created.media_url.clone()],
            created.call_id(),
            "v1.0.forged",
            PCMU_8K,
            patient.clone(),
        ),
    )
    .await
    .expect("no retry");
    assert!(matches!(forged, Err(ClientError::Closed { code: 4401, .. })), "{forged:?}");

    // The server ends the call: `bye` then close 1000; the client reports it, no resume.
    let (mut call, mut events) = connect(&created, patient).await;
    api.end_call(created.call_id()).await.unwrap();
    let mut seen = Seen::default();
    seen.until(&mut events, "the end", |s| s.ended().is_some()).await;
    assert_eq!(seen.ended(), Some(&EndCause::ServerBye { reason: "api_ended".into() }), "{:?}", seen.others);
    assert!(seen.disconnects().is_empty());
    assert_eq!(call.finished().await, EndCause::ServerBye { reason: "api_ended".into() });
    assert_eq!(call.stats().failed_attempts, 0);

    // A call that has ended refuses a later hello with 4410, final too.
    let again = ResilientCall::connect_from(
        [created.media_url.clone()],
        created.call_id(),
        &call.session().resume_token,
        ResumeFrom { epoch_seen: 1, ..ResumeFrom::NEW_CALL },
        PCMU_8K,
        ResilientConfig::default(),
    )
    .await;
    assert!(matches!(again, Err(ClientError::Closed { code: 4410, .. })), "{again:?}");
}

#[tokio::test]
async fn a_migrate_on_shutdown_is_followed_and_a_bounded_resume_gives_up() {
    let mut worker = Worker::start(WorkerOptions::named("resilient-migrate")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created = echo_call(&api).await;
    let (mut call, mut events) = connect(&created, quick_policy()).await;
    call.send_audio(&[0xFF; FRAME_BYTES]).await.unwrap();

    // SIGTERM: the worker detaches the session with `migrate` and close 1001. With a single
    // worker nobody is left to resume on, so the bounded resume gives up.
    worker.signal(Signal::TERM).unwrap();
    let mut seen = Seen::default();
    seen.until(&mut events, "the end", |s| s.ended().is_some()).await;
    let lost = seen.disconnects();
    assert_eq!(lost.len(), 1, "{:?}", seen.others);
    assert!(
        matches!(lost[0], CallEvent::Disconnected { code: 1001, migrate_after_ms: Some(0), .. }),
        "{lost:?}"
    );
    assert!(matches!(seen.ended(), Some(EndCause::GaveUp { attempts: 3, .. })), "{:?}", seen.others);
    assert_eq!(call.stats().failed_attempts, 3);
    assert!(matches!(call.finished().await, EndCause::GaveUp { .. }));
    let status = worker.terminate(WAIT).await.unwrap();
    assert!(status.success(), "{status:?}");
}
