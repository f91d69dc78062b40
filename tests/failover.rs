//! Calls survive worker death: a real `redis-server`, three real workers, real clients.
//!
//! Each test starts its own Redis (free loopback port, AOF on) and workers sharing it, with
//! short leases and reaper periods so failures are detected within seconds. Clients are
//! given every worker's media URL (a fleet without a load balancer: they rotate through the
//! list when they reconnect).
//!
//! The key failure tests run twice, on one Redis and on a three-primary Redis Cluster
//! ([`Backend`]): `on_both_backends!` turns each `async fn name(backend)` into the tests
//! `name::single` and `name::cluster`. The others run on one server.

#![allow(clippy::unwrap_used)]

mod common;
mod fleet;

use std::time::{Duration, Instant};

use callworker_client::api::{ControlApi, CreatedCall};
use callworker_client::resilient::{CallEvent, EndCause, ResilientCall, ResilientConfig};
use callworker_client::twilio::{StreamEvent, TwilioSimulator, Twiml};
use callworker_testkit::{OPERATOR_KEY, Signal, TWILIO_AUTH_TOKEN, Worker};
use common::*;
use fleet::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Runs each `async fn name(backend: Backend)` as two tests, `name::single` and
/// `name::cluster`, so one body covers both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single() {
                super::$name(super::Backend::Single).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name(super::Backend::Cluster).await
            }
        }
    )*};
}

async fn create_recorded_echo(api: &ControlApi) -> CreatedCall {
    api.create_call(&json!({ "program": echo_program(), "record": {"inbound": true} })).await.unwrap()
}

/// kill -9 of the worker that owns live native calls mid-audio: every call resumes on
/// another worker, inbound sequence numbers stay continuous, and the recording is exactly
/// the audio the client sent.
async fn native_calls_survive_kill_9_of_their_worker_with_no_audio_lost(backend: Backend) {
    const CALLS: usize = 8;
    const FRAMES_BEFORE: u64 = 40;
    const FRAMES_AFTER: u64 = 60;
    let mut fleet = Fleet::start_on(backend, "kill9", 3, &[]).await;
    let api = fleet.api(0);
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let created = create_recorded_echo(&api).await;
        let (call, events) = connect(fleet.media_urls(0), &created).await;
        calls.push((created, call, events));
    }
    let mut sent = vec![Vec::new(); CALLS];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 1..=FRAMES_BEFORE + FRAMES_AFTER {
        if seq == FRAMES_BEFORE + 1 {
            fleet.workers[0].kill(); // SIGKILL, reaped
        }
        tick.tick().await;
        for (i, (_, call, _)) in calls.iter_mut().enumerate() {
            let f = frame(i, seq);
            assert_eq!(call.send_audio(&f).await.unwrap(), seq);
            sent[i].extend_from_slice(&f);
        }
    }
    let last = FRAMES_BEFORE + FRAMES_AFTER;
    let survivor = fleet.other_api(0);
    for (i, (created, call, events)) in calls.iter_mut().enumerate() {
        let seen = until(
            events,
            Duration::from_secs(15),
            |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= last),
        )
        .await;
        let resumed: Vec<_> = seen.iter().filter(|e| matches!(e, CallEvent::Resumed { .. })).collect();
        assert_eq!(resumed.len(), 1, "call {i} resumed once: {resumed:?}");
        assert!(call.session().epoch >= 2, "call {i} runs at a new epoch");
        let stats = call.stats();
        assert_eq!(stats.silence_frames_sent, 0, "call {i}: nothing had to be filled with silence");
        assert_eq!(stats.frames_dropped_overflow, 0);
        let view = survivor.get_call(created.call_id()).await.unwrap();
        assert_eq!(view["status"], "active", "{view}");
        let events = events_of(&survivor, created.call_id()).await;
        assert!(
            events.iter().any(|e| e["type"] == "resumed" && e["cause"] == "worker_lost"),
            "call {i} has a resume event with its cause: {events:?}"
        );
    }
    for (i, (created, call, _)) in calls.into_iter().enumerate() {
        assert_eq!(call.hangup().await, EndCause::HungUp);
        let view = wait_for_call(&survivor, created.call_id(), |c| c["status"] == "ended").await;
        assert_eq!(view["end_reason"], "client_hangup");
        let recorded = recording(&survivor, created.call_id()).await;
        assert_eq!(recorded.len(), sent[i].len(), "call {i}: recording length (no gap, no duplicate)");
        assert!(recorded == sent[i], "call {i}: the recording is exactly the audio sent");
    }
    let resumed = metric(&survivor, "callworker_calls_resumed_total", &[("cause", "worker_lost")]).await
        + metric(&fleet.api(2), "callworker_calls_resumed_total", &[("cause", "worker_lost")]).await;
    assert_eq!(resumed, CALLS as f64, "every call was resumed by one of the survivors");
    drop(fleet.redis);
}

/// The same with Twilio-protocol calls: when the stream dies with its worker, Twilio asks
/// the `<Connect action>` URL, which answers a new stream for the same live call; the new
/// worker takes it over from its checkpoint. The gap is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_calls_resume_through_the_stream_ended_twiml() {
    let mut fleet = Fleet::start("twkill", 2, &[]).await;
    let sim = TwilioSimulator::new(&fleet.workers[0].base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let action = stream.action.clone().expect("the TwiML names an action URL");
    let call_id = action.split("call_id=").nth(1).unwrap().to_owned();
    for _ in 0..20 {
        stream.send_media(vec![0x55; FRAME_BYTES]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let a checkpoint cover the audio, then kill the owner.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed_at = Instant::now();
    fleet.workers[0].kill();
    let (code, _) = stream.closed(WAIT).await.unwrap();
    assert_eq!(code, 1006, "the stream vanished without a close frame");

    // What Twilio does next: request the action URL (through the load balancer, which
    // would route it to a live worker: here, worker 1).
    let survivor = &fleet.workers[1].base_url;
    let action = action.replace(&fleet.workers[0].base_url, survivor);
    let twiml = sim.stream_ended(&action, &stream.call_sid).await.unwrap();
    let Twiml::Connect { stream_url, parameters, .. } = twiml else {
        panic!("expected a new stream, got {twiml:?}")
    };
    assert_eq!(parameters.get("call_id"), Some(&call_id));
    let stream_url =
        stream_url.replace(&fleet.workers[0].base_url.replace("http", "ws"), &survivor.replace("http", "ws"));
    let same_parameters = parameters.clone();
    let mut resumed = sim.open_stream(&stream_url, &stream.call_sid, parameters).await.unwrap();
    resumed.send_media(vec![0x22; FRAME_BYTES]).await.unwrap();
    let echoed = next_twilio_media(&mut resumed).await;
    assert_eq!(echoed, vec![0x22; FRAME_BYTES], "the echo program carries on");
    let gap = killed_at.elapsed();
    println!("twilio failover: kill -9 → first echoed audio on the new worker in {gap:?}");

    let api = fleet.api(1);
    let view = api.get_call(&call_id).await.unwrap();
    assert_eq!(view["status"], "active");
    assert_eq!(view["epoch"], 2, "{view}");
    let events = events_of(&api, &call_id).await;
    let resume = events.iter().find(|e| e["type"] == "resumed").expect("a resume event");
    assert_eq!(resume["cause"], "worker_lost");
    assert_eq!(resume["transport"], "twilio");
    println!("twilio failover: resume event gap_ms = {}", resume["gap_ms"]);

    // Twilio re-invoking the same stream (same parameters) while it runs: the duplicate
    // loses the takeover and is closed; the running stream is undisturbed.
    let mut duplicate = sim.open_stream(&stream_url, &stream.call_sid, same_parameters).await.unwrap();
    let (code, reason) = duplicate.closed(WAIT).await.unwrap();
    assert_eq!(code, 4409, "a duplicate stream loses the takeover: {reason}");
    resumed.send_media(vec![0x33; FRAME_BYTES]).await.unwrap();
    let still = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(StreamEvent::Media(audio)) = resumed.next_event().await
                && audio == vec![0x33; FRAME_BYTES]
            {
                return;
            }
        }
    })
    .await;
    assert!(still.is_ok(), "the running stream still echoes");
    resumed.stop().await.unwrap();
    let view = wait_for_call(&api, &call_id, |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "remote_hangup");

    // An ended call hangs up when its stream ends.
    assert_eq!(sim.stream_ended(&action, &stream.call_sid).await.unwrap(), Twiml::Hangup);
}

/// SIGSTOP the owner past its lease while the client moves to another worker, then
/// SIGCONT: the old owner's next write is fenced, it stops driving the call and closes.
async fn a_paused_owner_is_fenced_when_it_wakes_up(backend: Backend) {
    let fleet = Fleet::start_on(backend, "sigstop", 2, &[]).await;
    let created = create_recorded_echo(&fleet.api(0)).await;
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    for seq in 1..=10 {
        call.send_audio(&frame(0, seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until(&mut events, WAIT, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= 10)).await;
    fleet.workers[0].signal(Signal::STOP).unwrap();
    // The client's liveness check notices the silent worker and resumes on worker 1.
    let mut seq = 10;
    let resumed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            seq += 1;
            call.send_audio(&frame(0, seq)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            while let Ok(e) = events.try_recv() {
                if let CallEvent::Resumed { epoch, .. } = e {
                    return epoch;
                }
            }
        }
    })
    .await
    .expect("the client resumed elsewhere");
    assert_eq!(resumed, 2);
    let api1 = fleet.api(1);
    // Let the paused worker's lease run out, then wake it up.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    fleet.workers[0].signal(Signal::CONT).unwrap();
    let api0 = fleet.api(0);
    let deadline = Instant::now() + WAIT;
    loop {
        let fenced = metric(&api0, "callworker_fenced_writes_total", &[]).await;
        let sessions = metric(&api0, "callworker_ws_sessions", &[]).await;
        if fenced >= 1.0 && sessions == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "old owner not fenced: fenced={fenced} sessions={sessions}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The call carries on on worker 1, driven by it alone.
    for _ in 0..10 {
        seq += 1;
        call.send_audio(&frame(0, seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until(&mut events, WAIT, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= seq)).await;
    let view = api1.get_call(created.call_id()).await.unwrap();
    assert_eq!((view["status"].as_str(), view["epoch"].as_u64()), (Some("active"), Some(2)), "{view}");
    assert_eq!(call.stats().stale_epoch_dropped, 0, "no audio from the fenced worker reached the client");
    assert_eq!(call.hangup().await, EndCause::HungUp);
    let recorded = recording(&api1, created.call_id()).await;
    let sent: Vec<u8> = (1..=seq).flat_map(|s| frame(0, s)).collect();
    assert!(
        recorded == sent,
        "recording continuous across the pause ({} of {} bytes)",
        recorded.len(),
        sent.len()
    );
}

/// Two connections for one call at once: exactly one wins, the other is closed with 4409
/// and does not come back (no ping-pong).
async fn two_connections_for_one_call_exactly_one_wins(backend: Backend) {
    let fleet = Fleet::start_on(backend, "dup", 2, &[]).await;
    let created = fleet.api(0).create_call(&json!({ "program": echo_program() })).await.unwrap();
    let a = ResilientCall::connect(
        fleet.media_urls(0),
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        ResilientConfig::default(),
    );
    let b = ResilientCall::connect(
        fleet.media_urls(1),
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        ResilientConfig::default(),
    );
    let (a, b) = tokio::join!(a, b);
    let (winner, _events) = match (a, b) {
        (Ok(w), Err(e)) | (Err(e), Ok(w)) => {
            assert!(e.to_string().contains("4409"), "the loser is closed as stale: {e}");
            w
        }
        (Ok(_), Ok(_)) => panic!("both connections won the call"),
        (Err(a), Err(b)) => panic!("neither won: {a} / {b}"),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let session = winner.session();
    assert!(session.connected, "the winner keeps the call");
    assert_eq!((session.sessions, session.epoch), (1, 1), "no ping-pong: one session, one takeover");
    let view = fleet.api(1).get_call(created.call_id()).await.unwrap();
    assert_eq!(view["epoch"], 1);
    winner.send_audio(&frame(0, 1)).await.unwrap();
    drop(winner.hangup().await);
}

/// A client that never returns: after the lease and the resume window the reaper ends the
/// call with `resume_window_expired`, and nothing about it is left in the lease index. A
/// call created and never connected goes the same way.
async fn a_client_that_never_returns_is_reaped(backend: Backend) {
    let fleet =
        Fleet::start_on(backend, "orphan", 2, &[("CALLWORKER_RESUME__RESUME_WINDOW_MS", "1000")]).await;
    let api = fleet.api(0);
    let created = api.create_call(&json!({ "program": echo_program() })).await.unwrap();
    let never = api.create_call(&json!({ "program": echo_program() })).await.unwrap();
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    call.send_audio(&frame(0, 1)).await.unwrap();
    until(&mut events, WAIT, |e| matches!(e, CallEvent::Acked { .. })).await;
    drop(call); // gone for good: socket closed, no bye, no resume
    for id in [created.call_id(), never.call_id()] {
        let view =
            wait_for_call_within(&fleet.api(1), id, Duration::from_secs(15), |c| c["status"] == "ended")
                .await;
        assert_eq!(view["end_reason"], "resume_window_expired", "{view}");
    }
    let ended = metric(&fleet.api(0), "callworker_reaper_actions_total", &[("action", "ended")]).await
        + metric(&fleet.api(1), "callworker_reaper_actions_total", &[("action", "ended")]).await;
    assert_eq!(ended, 2.0, "each orphan ended exactly once across both reapers");
    let index = redis_cli(&fleet.redis, &["ZRANGE", "cw:{idx}:leases", "0", "-1"], None);
    assert!(index.trim().is_empty(), "the lease index is clean: {index:?}");
}

/// Runs `redis-cli` against the test's Redis (`-c`: following a cluster's redirections);
/// `value` (binary-safe) is passed on stdin as the last argument (`-x`).
fn redis_cli(redis: &Redis, args: &[&str], value: Option<&[u8]>) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let port = redis.port().to_string();
    let mut command = Command::new("redis-cli");
    command.args(["-c", "-p", &port]);
    if value.is_some() {
        command.arg("-x");
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed with redis-server");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(value.unwrap_or_default()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Redis (on a cluster: the node holding the call) killed and restarted mid-call (AOF on):
/// the call keeps running in memory, and checkpoints (acks) resume once Redis is back, on
/// the same connection; the call can still fail over afterwards.
async fn calls_ride_out_a_redis_restart(backend: Backend) {
    let mut fleet = Fleet::start_on(backend, "redisrestart", 2, &[]).await;
    let created = create_recorded_echo(&fleet.api(0)).await;
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    let mut seq = 0;
    let send = async |call: &ResilientCall, n: u64, seq: &mut u64| {
        for _ in 0..n {
            *seq += 1;
            call.send_audio(&frame(0, *seq)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    send(&call, 20, &mut seq).await;
    until(&mut events, WAIT, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= 20)).await;
    // Let AOF's once-a-second fsync cover the last checkpoint before the crash.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let killed = fleet.redis.server_of(created.call_id());
    killed.kill();
    let killed = killed.port();
    send(&call, 25, &mut seq).await;
    // Echo still flows while Redis is down: the call lives in the worker's memory.
    let echoed = until(&mut events, WAIT, |e| matches!(e, CallEvent::Audio { seq, .. } if *seq >= 40)).await;
    assert!(!echoed.iter().any(|e| matches!(e, CallEvent::Disconnected { .. })), "the session stayed up");
    fleet.redis.restart(killed).await;
    send(&call, 10, &mut seq).await;
    until(
        &mut events,
        Duration::from_secs(15),
        |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= seq),
    )
    .await;
    // And the call still fails over from what Redis now holds.
    fleet.workers[0].kill();
    send(&call, 10, &mut seq).await;
    until(
        &mut events,
        Duration::from_secs(15),
        |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= seq),
    )
    .await;
    assert_eq!(call.stats().silence_frames_sent, 0);
    assert_eq!(call.hangup().await, EndCause::HungUp);
    let recorded = recording(&fleet.api(1), created.call_id()).await;
    let sent: Vec<u8> = (1..=seq).flat_map(|s| frame(0, s)).collect();
    assert!(recorded == sent, "recording continuous across the Redis restart and the failover");
}

/// A corrupt checkpoint ends the call with `checkpoint_corrupt` instead of crash-looping;
/// a checkpoint in a format newer than this build is refused without ending the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_too_new_checkpoints_are_handled_cleanly() {
    let fleet = Fleet::start("badckpt", 1, &[]).await;
    let api = fleet.api(0);
    let corrupt = api.create_call(&json!({ "program": echo_program() })).await.unwrap();
    let too_new = api.create_call(&json!({ "program": echo_program() })).await.unwrap();
    let key = |id: &str| format!("cw:call:{{{id}}}");
    // A valid header of format 99 with a junk payload; and a good header with a bad CRC.
    let mut newer = b"CWCK".to_vec();
    newer.extend_from_slice(&99u16.to_be_bytes());
    newer.extend_from_slice(&3u32.to_be_bytes());
    newer.extend_from_slice(&0u32.to_be_bytes());
    newer.extend_from_slice(b"abc");
    redis_cli(&fleet.redis, &["HSET", &key(too_new.call_id()), "ckpt"], Some(&newer));
    let mut bad_crc = newer.clone();
    bad_crc[4..6].copy_from_slice(&2u16.to_be_bytes());
    redis_cli(&fleet.redis, &["HSET", &key(corrupt.call_id()), "ckpt"], Some(&bad_crc));

    let refused = ResilientCall::connect(
        fleet.media_urls(0),
        too_new.call_id(),
        &too_new.resume_token,
        PCMU_8K,
        ResilientConfig { reconnect: quick_give_up(), ..ResilientConfig::default() },
    )
    .await
    .expect_err("a too-new checkpoint is not taken over");
    assert!(refused.to_string().contains("version_incompatible"), "{refused}");
    let record = api.get_call(too_new.call_id()).await;
    // The call is not ended (a newer worker may take it); this worker cannot show it.
    assert!(record.is_err() || record.as_ref().unwrap()["status"] != "ended", "{record:?}");

    let ended = ResilientCall::connect(
        fleet.media_urls(0),
        corrupt.call_id(),
        &corrupt.resume_token,
        PCMU_8K,
        ResilientConfig::default(),
    )
    .await
    .expect_err("a corrupt checkpoint ends the call");
    assert!(ended.to_string().contains("4410"), "{ended}");
    let list = api.list_calls("status=ended").await.unwrap();
    let row = list["calls"].as_array().unwrap().iter().find(|c| c["call_id"] == corrupt.call_id()).cloned();
    assert_eq!(row.map(|r| r["end_reason"].clone()), Some(json!("checkpoint_corrupt")));
}

fn quick_give_up() -> callworker_client::resilient::ReconnectPolicy {
    callworker_client::resilient::ReconnectPolicy { attempts_max: 2, ..Default::default() }
}

/// The worker registry lists every live worker with its address and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_announce_themselves_in_the_registry() {
    let mut fleet = Fleet::start("registry", 2, &[]).await;
    let list = |api: ControlApi| async move {
        let url = format!("{}/v1/workers", api.base_url());
        let body: Value =
            api.http().get(url).bearer_auth(OPERATOR_KEY).send().await.unwrap().json().await.unwrap();
        body["workers"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let workers = list(fleet.api(0)).await;
        if workers.len() == 2 {
            assert!(workers.iter().all(|w| w["version"].is_string() && w["address"].is_string()));
            break;
        }
        assert!(Instant::now() < deadline, "{workers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.workers[1].kill();
    let deadline = Instant::now() + WAIT;
    while list(fleet.api(0)).await.len() != 1 {
        assert!(Instant::now() < deadline, "a dead worker's entry lapses");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker that hangs with its Twilio stream open (SIGSTOP): Twilio never asks the action
/// URL, so the reaper on another worker redirects the live call through Twilio's REST API
/// to a new stream, which takes the call over; the hung worker is fenced when it wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_workers_twilio_call_is_rescued_through_the_rest_api() {
    let (rest_port, mut requests) = rest_recorder().await;
    let rest_url = format!("http://127.0.0.1:{rest_port}");
    let fleet = Fleet::start(
        "rescue",
        2,
        &[
            ("CALLWORKER_TWILIO__ACCOUNT_SID", "ACtest"),
            ("CALLWORKER_TWILIO__AUTH_TOKEN", TWILIO_AUTH_TOKEN),
            ("CALLWORKER_TWILIO__REST_API_BASE_URL", &rest_url),
        ],
    )
    .await;
    let sim = TwilioSimulator::new(&fleet.workers[0].base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut hung = sim.place_call("+15550100", "+15550199").await.unwrap();
    let call_id = hung.action.clone().unwrap().split("call_id=").nth(1).unwrap().to_owned();
    for _ in 0..10 {
        hung.send_media(vec![0x55; FRAME_BYTES]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    fleet.workers[0].signal(Signal::STOP).unwrap();

    let request = tokio::time::timeout(Duration::from_secs(15), requests.recv())
        .await
        .expect("the reaper called the REST API")
        .unwrap();
    let expected_path = format!(
        "POST /2010-04-01/Accounts/{}/Calls/{}.json ",
        "AC00000000000000000000000000000000", hung.call_sid
    );
    assert!(request.request_line.starts_with(&expected_path), "{request:?}");
    assert!(request.authorization.as_deref().is_some_and(|a| a.starts_with("Basic ")), "{request:?}");
    let twiml = form_decode(request.body.strip_prefix("Twiml=").expect("a Twiml parameter"));
    let Twiml::Connect { stream_url, parameters, .. } =
        callworker_client::twilio::parse_twiml(&twiml).unwrap()
    else {
        panic!("expected <Connect><Stream>: {twiml}")
    };
    assert_eq!(parameters.get("call_id"), Some(&call_id));
    assert_eq!(
        parameters.get("epoch").map(String::as_str),
        Some("1"),
        "the redirect keeps the current epoch"
    );

    // Twilio follows the new TwiML: a new stream, which takes the call over.
    let mut rescued = sim.open_stream(&stream_url, &hung.call_sid, parameters).await.unwrap();
    rescued.send_media(vec![0x44; FRAME_BYTES]).await.unwrap();
    let echoed = next_twilio_media(&mut rescued).await;
    assert_eq!(echoed, vec![0x44; FRAME_BYTES]);
    let api = fleet.api(1);
    assert_eq!(metric(&api, "callworker_reaper_actions_total", &[("action", "rescued")]).await, 1.0);

    // The hung worker wakes: its next write is fenced and it closes its stale stream.
    fleet.workers[0].signal(Signal::CONT).unwrap();
    let (code, reason) = hung.closed(WAIT).await.unwrap();
    assert_eq!(code, 4409, "the old owner stops driving the call: {reason}");
    let view = api.get_call(&call_id).await.unwrap();
    assert_eq!((view["status"].as_str(), view["epoch"].as_u64()), (Some("active"), Some(2)), "{view}");
    rescued.stop().await.unwrap();
}

/// SIGTERM: the worker detaches its calls with `migrate`, the client resumes on another
/// worker, and the resume is recorded with cause `migrated_drain`; no audio is lost.
async fn a_draining_worker_hands_its_calls_to_another(backend: Backend) {
    let mut fleet = Fleet::start_on(backend, "drain", 2, &[]).await;
    let created = create_recorded_echo(&fleet.api(0)).await;
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    let mut seq = 0;
    for _ in 0..20 {
        seq += 1;
        call.send_audio(&frame(0, seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = fleet.workers[0].terminate(WAIT).await.unwrap();
    assert!(exit.success(), "the draining worker exits 0: {exit}");
    for _ in 0..20 {
        seq += 1;
        call.send_audio(&frame(0, seq)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until(&mut events, WAIT, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= seq)).await;
    let api = fleet.api(1);
    let events = events_of(&api, created.call_id()).await;
    assert!(
        events.iter().any(|e| e["type"] == "resumed" && e["cause"] == "migrated_drain"),
        "the resume names the drain: {events:?}"
    );
    assert_eq!(metric(&api, "callworker_calls_resumed_total", &[("cause", "migrated_drain")]).await, 1.0);
    assert_eq!(call.hangup().await, EndCause::HungUp);
    let recorded = recording(&api, created.call_id()).await;
    let sent: Vec<u8> = (1..=seq).flat_map(|s| frame(0, s)).collect();
    assert!(recorded == sent, "no audio lost across the drain");
}

/// `POST /v1/admin/drain`: the worker stops admitting and migrates every call to another
/// worker; each resumes there with cause `migrated_drain`, losing no audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_endpoint_moves_every_call_off_a_worker() {
    let fleet = Fleet::start("admindrain", 2, &[]).await;
    let api0 = fleet.api(0);
    let mut calls = Vec::new();
    for i in 0..3 {
        let created = create_recorded_echo(&api0).await;
        let (call, events) = connect(fleet.media_urls(0), &created).await;
        for seq in 1..=10 {
            call.send_audio(&frame(i, seq)).await.unwrap();
        }
        calls.push((created, call, events));
    }
    let url = format!("{}/v1/admin/drain", api0.base_url());
    let body: Value =
        api0.http().post(url).bearer_auth(OPERATOR_KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["migrating"], 3, "{body}");
    for (i, (_, call, events)) in calls.iter_mut().enumerate() {
        until(events, WAIT, |e| matches!(e, CallEvent::Resumed { .. })).await;
        for seq in 11..=20 {
            call.send_audio(&frame(i, seq)).await.unwrap();
        }
        until(events, WAIT, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= 20)).await;
    }
    let ready = api0.http().get(format!("{}/readyz", api0.base_url())).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(metric(&api0, "callworker_calls_migrated_total", &[("reason", "migrated_drain")]).await, 3.0);
    let api1 = fleet.api(1);
    assert_eq!(metric(&api1, "callworker_calls_resumed_total", &[("cause", "migrated_drain")]).await, 3.0);
    for (i, (created, call, _)) in calls.into_iter().enumerate() {
        assert_eq!(call.hangup().await, EndCause::HungUp);
        let recorded = recording(&api1, created.call_id()).await;
        let sent: Vec<u8> = (1..=20).flat_map(|s| frame(i, s)).collect();
        assert!(recorded == sent, "call {i}: nothing lost across the drain");
    }
}

/// SIGTERM with a client that never reconnects: after `server.drain_timeout_ms` the
/// draining worker ends the call with `drain_timeout` (rather than leaving it to the reaper's
/// resume window), and still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_resumed_within_the_drain_timeout_ends_with_drain_timeout() {
    let mut fleet = Fleet::start("straggler", 2, &[("CALLWORKER_SERVER__DRAIN_TIMEOUT_MS", "1000")]).await;
    let api1 = fleet.api(1);
    // A plain (non-resuming) client: it will not come back after the worker lets go.
    let (created, _tx, _rx, _welcome) = native_call(&fleet.api(0), echo_program()).await;
    let exit = fleet.workers[0].terminate(WAIT).await.unwrap();
    assert!(exit.success(), "the draining worker exits 0: {exit}");
    let view = wait_for_call(&api1, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "drain_timeout", "{view}");
}

/// Waits for `n` server audio frames (bounded by [`WAIT`]), noting other events.
async fn audio_frames(events: &mut mpsc::Receiver<CallEvent>, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut frames = Vec::new();
    tokio::time::timeout(WAIT, async {
        while frames.len() < n {
            match events.recv().await.expect("events end with the call") {
                CallEvent::Audio { seq, payload, .. } => frames.push((seq, payload.to_vec())),
                CallEvent::Ended(cause) => panic!("call ended: {cause:?}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} frames arrived", frames.len()));
    frames
}

/// Polls the call's timeline through `api` (a worker that reads the store) until `pred`
/// holds for one event.
async fn wait_for_event(api: &ControlApi, call_id: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = events_of(api, call_id).await;
        if events.iter().any(&pred) {
            return events;
        }
        assert!(Instant::now() < deadline, "event never stored: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the worker a client's session is on.
fn worker_of(fleet: &Fleet, media_url: &str) -> usize {
    fleet.workers.iter().position(|w| media_url.contains(&format!(":{}/", w.port))).unwrap()
}

/// An IVR call of a named definition (a recorded WAV prompt) across two kill -9s:
///
/// 1. 40 frames of the 100-frame main prompt arrive, the caller reports 30 played, the
///    owner dies: on the next worker the caller gets exactly prompt frames 30..100, byte
///    for byte (the frames it had received but not played are sent again, with new
///    numbers).
/// 2. "1" leads to the account menu, "4" "2" are keyed, the owner dies again: on the third
///    worker "7" "#" finish the collection, which holds all four digits ("427"), and the
///    main prompt starts again from its first frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ivr_call_resumes_at_the_prompt_frame_the_caller_heard() {
    let defs = IvrDefinitions::write("failover");
    let mut fleet = Fleet::start("ivrkill", 3, &[("CALLWORKER_IVR__DIR", defs.dir())]).await;
    let api = fleet.api(0);
    let created = api.create_call(&json!({ "program": ivr_definition_program() })).await.unwrap();
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    let first = audio_frames(&mut events, 40).await;
    for (i, (seq, payload)) in first.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert!(*payload == ivr_prompt_frame(i), "frame {i} is the WAV prompt's");
    }
    call.played(30).await.unwrap();
    // The played position is durable once a worker that is not the owner reads it back.
    let reader = fleet.api(2);
    wait_for_call(&reader, created.call_id(), |c| c["media"]["outbound_played_seq"] == 30).await;
    let owner = worker_of(&fleet, &call.session().media_url);
    assert_eq!(owner, 0);
    fleet.workers[0].kill();

    // Frames the dying worker still sent arrive before the resume; after it, the prompt
    // continues from frame 30.
    let mut before_resume = 0;
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await.unwrap() {
                CallEvent::Audio { .. } => before_resume += 1,
                CallEvent::Resumed { .. } => return,
                CallEvent::Ended(cause) => panic!("ended: {cause:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the call resumes");
    println!("ivr failover: {before_resume} frames after the first 40 arrived from the dying worker");
    let rest = audio_frames(&mut events, IVR_PROMPT_FRAMES - 30).await;
    for (k, (_, payload)) in rest.iter().enumerate() {
        assert!(
            *payload == ivr_prompt_frame(30 + k),
            "after the resume, frame {k} is prompt frame {}",
            30 + k
        );
    }
    assert!(rest.windows(2).all(|w| w[1].0 == w[0].0 + 1), "numbered in order");
    assert!(rest[0].0 > 40 + before_resume as u64, "new numbers, after every frame the client holds");

    // Navigate: "1", then two digits of the account number.
    call.dtmf('1').await.unwrap();
    call.dtmf('4').await.unwrap();
    call.dtmf('2').await.unwrap();
    let owner = worker_of(&fleet, &call.session().media_url);
    assert_ne!(owner, 0);
    let survivor = (0..3).find(|&i| i != 0 && i != owner).unwrap();
    wait_for_event(&fleet.api(survivor), created.call_id(), |e| e["type"] == "dtmf" && e["digit"] == "2")
        .await;
    fleet.workers[owner].kill();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await.unwrap() {
                CallEvent::Resumed { .. } => return,
                CallEvent::Ended(cause) => panic!("ended: {cause:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the call resumes again");
    call.dtmf('7').await.unwrap();
    call.dtmf('#').await.unwrap();
    let api = fleet.api(survivor);
    let events_seen = wait_for_event(&api, created.call_id(), |e| e["type"] == "digits_collected").await;
    let collected = events_seen.iter().find(|e| e["type"] == "digits_collected").unwrap();
    assert_eq!(collected["menu"], "account");
    assert_eq!(collected["digits"], "427", "digits from both sides of the kill: {events_seen:?}");
    assert_eq!(events_seen.iter().filter(|e| e["type"] == "resumed").count(), 2);
    // Back in the main menu: its prompt from the first frame (skipping the account prompt
    // frames that may still be in flight).
    let restarted = tokio::time::timeout(WAIT, async {
        loop {
            if let CallEvent::Audio { payload, .. } = events.recv().await.unwrap()
                && payload.as_ref() == ivr_prompt_frame(0).as_slice()
            {
                return;
            }
        }
    })
    .await;
    assert!(restarted.is_ok(), "the main prompt starts again");
    let next = audio_frames(&mut events, 3).await;
    for (k, (_, payload)) in next.iter().enumerate() {
        assert!(*payload == ivr_prompt_frame(1 + k));
    }
    assert_eq!(call.hangup().await, EndCause::HungUp);
    let view = wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "client_hangup");
    drop(fleet.redis);
}

/// The same over Twilio Media Streams: the marks Twilio echoed tell the worker what the
/// caller heard; after a kill -9 and the re-stream, the prompt continues from a frame the
/// caller had not heard yet, no earlier than the durable played position and no later
/// than what had been sent, with every later frame in order and byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_ivr_call_resumes_at_the_prompt_frame_twilio_marked_played() {
    let defs = IvrDefinitions::write("twfailover");
    let program = r#"{name = "ivr", params = {definition = "main-menu"}}"#;
    let mut fleet = Fleet::start(
        "twivr",
        2,
        &[
            ("CALLWORKER_IVR__DIR", defs.dir()),
            ("CALLWORKER_CALLS__DEFAULT_PROGRAM", program),
            ("CALLWORKER_TWILIO__MARK_INTERVAL_FRAMES", "2"),
        ],
    )
    .await;
    let sim = TwilioSimulator::new(&fleet.workers[0].base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let action = stream.action.clone().unwrap();
    let call_id = action.split("call_id=").nth(1).unwrap().to_owned();
    let mut received = 0usize;
    while received < 40 {
        let audio = next_twilio_media(&mut stream).await;
        assert!(audio == ivr_prompt_frame(received), "frame {received} is the WAV prompt's");
        received += 1;
    }
    // What the worker on the other side has read back from the store.
    let reader = fleet.api(1);
    let durable =
        wait_for_call(&reader, &call_id, |c| c["media"]["outbound_played_seq"].as_u64().unwrap() >= 20).await
            ["media"]["outbound_played_seq"]
            .as_u64()
            .unwrap();
    fleet.workers[0].kill();
    // Whatever the dead worker still got through counts as sent.
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.next_event().await {
                Some(StreamEvent::Media(_)) => received += 1,
                Some(StreamEvent::Closed { .. }) | None => break,
                Some(_) => {}
            }
        }
    })
    .await
    .expect("the stream closes with its worker");
    let survivor = &fleet.workers[1].base_url;
    let action = action.replace(&fleet.workers[0].base_url, survivor);
    let Twiml::Connect { stream_url, parameters, .. } =
        sim.stream_ended(&action, &stream.call_sid).await.unwrap()
    else {
        panic!("expected a new stream")
    };
    let stream_url =
        stream_url.replace(&fleet.workers[0].base_url.replace("http", "ws"), &survivor.replace("http", "ws"));
    let mut resumed = sim.open_stream(&stream_url, &stream.call_sid, parameters).await.unwrap();
    let first = next_twilio_media(&mut resumed).await;
    let from = (0..IVR_PROMPT_FRAMES).find(|&i| ivr_prompt_frame(i) == first).expect("a prompt frame");
    println!(
        "twilio ivr failover: {received} frames sent, {durable} durably played, resumed at frame {from}"
    );
    assert!(
        (durable as usize..=received).contains(&from),
        "resumed at frame {from}: not before the durable played position {durable}, not after the {received} frames sent"
    );
    for k in from + 1..IVR_PROMPT_FRAMES {
        let audio = next_twilio_media(&mut resumed).await;
        assert!(audio == ivr_prompt_frame(k), "frame {k} follows in order");
    }
    let events = events_of(&fleet.api(1), &call_id).await;
    assert!(events.iter().any(|e| e["type"] == "resumed" && e["transport"] == "twilio"), "{events:?}");
    resumed.stop().await.unwrap();
    drop(fleet.redis);
}

/// Workers whose configurations differ: one without the call's IVR definition refuses to
/// create such a call (400) and to take one over (close 4503, before the epoch moves, so
/// the call stays as it was), and a worker that has the definition takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_ivr_definition_refuses_the_takeover() {
    let defs = IvrDefinitions::write("missing");
    let mut fleet = Fleet::start("ivrmissing", 1, &[("CALLWORKER_IVR__DIR", defs.dir())]).await;
    let plain = Worker::start(fleet_options("ivrmissing-plain", &fleet.redis, &[])).await.unwrap();
    fleet.workers.push(plain);
    let url = |i: usize| format!("ws://127.0.0.1:{}/v1/media", fleet.workers[i].port);
    let err = fleet.api(1).create_call(&json!({ "program": ivr_definition_program() })).await.unwrap_err();
    assert!(err.to_string().contains("400: unknown_ivr_definition"), "{err}");

    let created = fleet.api(0).create_call(&json!({ "program": ivr_definition_program() })).await.unwrap();
    let refused = ResilientCall::connect(
        vec![url(1)],
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        ResilientConfig { reconnect: quick_give_up(), ..ResilientConfig::default() },
    )
    .await
    .expect_err("a worker without the definition does not take the call");
    assert!(refused.to_string().contains("ivr_definition_missing"), "{refused}");
    let refusals =
        metric(&fleet.api(1), "callworker_takeovers_refused_total", &[("reason", "ivr_definition_missing")])
            .await;
    assert!(refusals >= 1.0, "counted: {refusals}");
    let view = fleet.api(0).get_call(created.call_id()).await.unwrap();
    assert_eq!((view["status"].as_str(), view["epoch"].as_u64()), (Some("created"), Some(0)), "{view}");

    let (call, mut events) = connect(vec![url(0)], &created).await;
    let frames = audio_frames(&mut events, 3).await;
    for (i, (_, payload)) in frames.iter().enumerate() {
        assert!(*payload == ivr_prompt_frame(i), "the prompt plays on the worker that has it");
    }
    assert_eq!(call.hangup().await, EndCause::HungUp);
}

on_both_backends!(
    native_calls_survive_kill_9_of_their_worker_with_no_audio_lost,
    a_paused_owner_is_fenced_when_it_wakes_up,
    two_connections_for_one_call_exactly_one_wins,
    a_client_that_never_returns_is_reaped,
    a_draining_worker_hands_its_calls_to_another,
    calls_ride_out_a_redis_restart,
);
