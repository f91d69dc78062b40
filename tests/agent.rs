//! The voice-agent bridge end to end: real `callworker` workers (on a real Redis where a
//! failover is involved), the reference agent from `examples/reference-agent` (in this
//! process, on its own port), and native clients.
//!
//! - An agent call survives kill -9 of its worker: the client resumes on another worker,
//!   which reconnects the agent with `start {resume: true}` and the transcript; the
//!   conversation continues with no lost or duplicated transcript entry.
//! - An unreachable or refusing agent ends the call `agent_unavailable` (or switches it to
//!   its fallback program), with the error in the timeline and the metrics; the control
//!   API refuses agent programs it cannot connect.
//! - An oversized agent message closes that call's leg (1009, counted) and the leg comes
//!   back; other calls do not notice.
//! - Over Twilio Media Streams, Twilio's played marks become the agent's mark acks.
//! - A SIGTERM drain tells the agent `stop {migrated_drain}` and the leg resumes elsewhere.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::resilient::{CallEvent, EndCause, ResilientCall, ResilientConfig};
use callworker_protocol::agent::TranscriptRole;
use callworker_testkit::{OTHER_TENANT_KEY, RedisServer, TENANT_KEY, Worker, WorkerOptions, free_port};
use common::*;
use reference_agent::{GREETING, Options, ReferenceAgent, SeenEvent, WELCOME_BACK, tone_reply};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const AGENT_TOKEN: &str = "agent-secret-0123456789";
/// Caller frames per turn of the reference agent (200 ms: turns come quickly).
const TURN_FRAMES: usize = 10;

fn worker_options(name: &str, redis: Option<&RedisServer>, extra: &[(&str, &str)]) -> WorkerOptions {
    let mut options = WorkerOptions::named(name)
        .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "200")
        .env("CALLWORKER_CHECKPOINT__LEASE_MS", "1500")
        .env("CALLWORKER_AGENT__RECONNECT_BACKOFF_MS", "50")
        .env("CALLWORKER_AGENT__RECONNECT_BACKOFF_MAX_MS", "200");
    if let Some(redis) = redis {
        options = options
            .env("CALLWORKER_STORE__KIND", "redis")
            .env("CALLWORKER_STORE__REDIS_URL", &redis.url())
            .env("CALLWORKER_RESUME__REAPER_INTERVAL_MS", "200")
            .env("CALLWORKER_RESUME__REAPER_GRACE_MS", "300")
            .env("CALLWORKER_RESUME__HEARTBEAT_INTERVAL_MS", "200");
    }
    for (k, v) in extra {
        options = options.env(k, v);
    }
    options
}

fn media_url(worker: &Worker) -> String {
    format!("ws://127.0.0.1:{}/v1/media", worker.port)
}

fn agent_program(url: &str, token: Option<&str>) -> Value {
    let mut params = json!({ "url": url, "context": "test-context" });
    if let Some(token) = token {
        params["token"] = json!(token);
    }
    json!({ "name": "agent", "params": params })
}

async fn transcript(api: &ControlApi, call_id: &str) -> Result<Value, String> {
    let url = format!("{}/v1/calls/{call_id}/transcript", api.base_url());
    let response = api.http().get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if status.is_success() { Ok(body) } else { Err(format!("{status}: {body}")) }
}

fn texts(transcript: &Value) -> Vec<String> {
    transcript["entries"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap().to_owned()).collect()
}

fn has_text(transcript: &Value, text: &str) -> bool {
    texts(transcript).iter().any(|t| t == text)
}

/// The highest `caller turn k` in a transcript.
fn last_turn(transcript: &Value) -> u64 {
    texts(transcript).iter().filter_map(|t| t.strip_prefix("caller turn ")?.parse().ok()).max().unwrap_or(0)
}

/// A native client on an agent call: a test frame every 20 ms, and every frame it receives
/// reported as played at once (so the agent's marks come back).
struct Caller {
    id: usize,
    call_id: String,
    call: ResilientCall,
    events: mpsc::Receiver<CallEvent>,
    seq: u64,
    sent: Vec<u8>,
    received: Vec<u8>,
    resumed: usize,
}

impl Caller {
    async fn connect(id: usize, urls: Vec<String>, created: &callworker_client::api::CreatedCall) -> Caller {
        let (call, events) = ResilientCall::connect(
            urls,
            created.call_id(),
            &created.resume_token,
            PCMU_8K,
            ResilientConfig::default(),
        )
        .await
        .unwrap();
        Caller {
            id,
            call_id: created.call_id().to_owned(),
            call,
            events,
            seq: 0,
            sent: Vec::new(),
            received: Vec::new(),
            resumed: 0,
        }
    }

    /// Talks until the call's transcript (read from `api`) satisfies `done`, bounded by
    /// `wait`; returns that transcript.
    async fn talk_until(&mut self, api: &ControlApi, wait: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut check = tokio::time::interval(Duration::from_millis(200));
        let mut last = Value::Null;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.seq += 1;
                    let f = frame(self.id, self.seq);
                    self.call.send_audio(&f).await.unwrap();
                    self.sent.extend_from_slice(&f);
                }
                Some(event) = self.events.recv() => match event {
                    CallEvent::Audio { seq, payload, .. } => {
                        self.received.extend_from_slice(&payload);
                        let _ = self.call.played(seq).await;
                    }
                    CallEvent::Resumed { .. } => self.resumed += 1,
                    CallEvent::Ended(cause) => panic!("call {} ended: {cause:?}; transcript {last}", self.call_id),
                    _ => {}
                },
                _ = check.tick() => {
                    if let Ok(t) = transcript(api, &self.call_id).await {
                        if done(&t) {
                            return t;
                        }
                        last = t;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "call {} never got there; transcript {last}", self.call_id);
                }
            }
        }
    }

    /// Presses `digit` and waits for the call to end; returns how it ended for the client.
    async fn press_and_wait_for_end(mut self, digit: char) -> EndCause {
        self.call.dtmf(digit).await.unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(CallEvent::Ended(cause)) => return cause,
                    Some(_) => {}
                    None => return self.call.finished().await,
                }
            }
        })
        .await
        .expect("the call ends")
    }
}

/// Waits (bounded) until the agent has seen something matching `pred`.
async fn wait_seen(agent: &ReferenceAgent, pred: impl Fn(&SeenEvent) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !agent.seen().iter().any(|s| pred(&s.event)) {
        assert!(tokio::time::Instant::now() < deadline, "the agent never saw it: {:?}", agent.seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks a transcript is one unbroken conversation: indexes 0.. without gaps, the
/// greeting first, every caller turn 1..=k once and in order, each answered once, right
/// after it. Returns how many `welcome back`s it holds.
fn check_conversation(t: &Value) -> usize {
    let entries = t["entries"].as_array().unwrap();
    assert_eq!(t["dropped"], 0, "{t}");
    assert_eq!(t["missing"], 0, "{t}");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["index"], i as u64, "indexes are contiguous: {t}");
    }
    assert_eq!(t["next_index"], entries.len() as u64);
    let texts = texts(t);
    assert_eq!(texts[0], GREETING);
    let mut turn = 0;
    let mut welcomes = 0;
    let mut i = 1;
    while i < texts.len() {
        if texts[i] == WELCOME_BACK {
            welcomes += 1;
            assert_eq!(entries[i]["role"], "agent");
            i += 1;
            continue;
        }
        turn += 1;
        assert_eq!(
            texts[i],
            format!("caller turn {turn}"),
            "turns in order, none lost or repeated: {texts:?}"
        );
        assert_eq!(entries[i]["role"], TranscriptRole::Caller.as_str());
        if i + 1 < texts.len() {
            assert_eq!(texts[i + 1], format!("reply {turn}"), "each turn answered once: {texts:?}");
        }
        i += 2;
    }
    welcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_call_survives_kill_9_with_its_transcript_and_its_agent_leg() {
    let redis = RedisServer::start().await.unwrap();
    let options = Options { token: Some(AGENT_TOKEN.into()), turn_frames: TURN_FRAMES };
    let agent = ReferenceAgent::start("127.0.0.1:0", options).await.unwrap();
    let mut workers = [
        Worker::start(worker_options("agent-kill9-w0", Some(&redis), &[])).await.unwrap(),
        Worker::start(worker_options("agent-kill9-w1", Some(&redis), &[])).await.unwrap(),
    ];
    let api0 = ControlApi::new(&workers[0].base_url).with_key(TENANT_KEY);
    let api1 = ControlApi::new(&workers[1].base_url).with_key(TENANT_KEY);
    let created = api0
        .create_call(&json!({ "program": agent_program(&agent.url(), Some(AGENT_TOKEN)) }))
        .await
        .unwrap();
    let call_id = created.call_id().to_owned();
    let view = api0.get_call(&call_id).await.unwrap();
    assert_eq!(view["program"], "agent");
    assert!(!view.to_string().contains(AGENT_TOKEN), "the token is never shown: {view}");
    let mut caller = Caller::connect(0, vec![media_url(&workers[0]), media_url(&workers[1])], &created).await;

    // The greeting and three caller turns on the first worker (the first two durable by
    // the time the third shows, checkpoints being immediate on each entry).
    let before = caller.talk_until(&api0, Duration::from_secs(20), |t| last_turn(t) >= 3).await;
    assert_eq!(check_conversation(&before), 0);
    workers[0].kill(); // SIGKILL, reaped
    // The client resumes on the other worker, which reconnects the agent; two more turns.
    let turns_before = last_turn(&before);
    let after = caller
        .talk_until(&api1, Duration::from_secs(30), |t| {
            has_text(t, WELCOME_BACK) && last_turn(t) >= turns_before + 2
        })
        .await;
    assert_eq!(caller.resumed, 1, "the client resumed once");
    assert_eq!(check_conversation(&after), 1, "one welcome back: {after}");

    // What the agent saw: a fresh start, then one resume carrying the durable transcript.
    let starts: Vec<_> = agent.starts().into_iter().filter(|s| s.call_id == call_id).collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(!starts[0].resume);
    assert_eq!(starts[0].context.as_deref(), Some("test-context"));
    assert_eq!(starts[0].tenant, "default");
    let resume = &starts[1];
    assert!(resume.resume);
    assert_eq!(resume.transcript_next_index, resume.transcript.len() as u64);
    assert!(resume.transcript.iter().any(|l| l.text == "caller turn 1"), "{resume:?}");
    assert!(resume.turns >= 2, "the greeting and turn 1 at least: {resume:?}");
    let final_entries = after["entries"].as_array().unwrap();
    for line in &resume.transcript {
        let kept = &final_entries[line.index as usize];
        assert_eq!(
            (kept["text"].as_str().unwrap(), kept["role"].as_str().unwrap()),
            (line.text.as_str(), line.role.as_str())
        );
    }

    // The caller heard the agent: its greeting tone first, then its echo of a caller turn.
    let greeting = tone_reply(PCMU_8K);
    assert_eq!(&caller.received[..greeting.len()], &greeting[..], "the greeting is the call's first audio");
    let reply = &caller.received[greeting.len()..greeting.len() + TURN_FRAMES * FRAME_BYTES];
    assert!(caller.sent.windows(reply.len()).any(|w| w == reply), "reply 1 is the caller's own turn, echoed");

    let events = events_of(&api1, &call_id).await;
    let agent_events: Vec<&str> =
        events.iter().filter(|e| e["type"] == "agent").map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(agent_events, ["connected", "resumed"], "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "resumed" && e["cause"] == "worker_lost"), "{events:?}");
    assert_eq!(metric(&api1, "callworker_agent_legs_total", &[("resume", "true")]).await, 1.0);
    // Marks came back as the caller played the agent's audio.
    wait_seen(
        &agent,
        |e| matches!(e, SeenEvent::Mark { name, cleared: false } if name.starts_with("welcome-back")),
    )
    .await;

    // The caller presses #: the agent hangs up.
    let cause = caller.press_and_wait_for_end('#').await;
    assert_eq!(cause, EndCause::ServerBye { reason: "completed".into() });
    let view = wait_for_call(&api1, &call_id, |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "completed");
    wait_seen(&agent, |e| matches!(e, SeenEvent::Stop { reason } if reason == "completed")).await;
    assert!(!workers[1].log_tail().contains(AGENT_TOKEN), "the token is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_ends_the_call_or_falls_back() {
    let refusing = ReferenceAgent::start(
        "127.0.0.1:0",
        Options { token: Some(AGENT_TOKEN.into()), turn_frames: TURN_FRAMES },
    )
    .await
    .unwrap();
    let tenant_agent = format!("{{default = {{url = \"{}\", token = \"{AGENT_TOKEN}\"}}}}", refusing.url());
    let worker = Worker::start(worker_options(
        "agent-unreachable",
        None,
        &[
            ("CALLWORKER_AGENT__RECONNECT_ATTEMPTS_MAX", "1"),
            ("CALLWORKER_AGENT__CONNECT_TIMEOUT_MS", "1000"),
            ("CALLWORKER_AGENT__URL_PREFIXES_ALLOWED", "[\"ws://127.0.0.1:\"]"),
            ("CALLWORKER_AGENT__TENANTS", tenant_agent.as_str()),
        ],
    ))
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let dead = format!("ws://127.0.0.1:{}/agent", free_port());

    // Nobody listens: two failed legs (the first reconnect allowed), then the end.
    let (created, _tx, _rx, _) = native_call(&api, agent_program(&dead, None)).await;
    let view = wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "agent_unavailable");
    let events = events_of(&api, created.call_id()).await;
    let agent_events: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "agent")
        .map(|e| (e["event"].as_str().unwrap(), e["detail"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(agent_events, [("lost", "connect_failed"), ("failed", "connect_failed")], "{events:?}");
    assert!(metric(&api, "callworker_agent_gave_up_total", &[("reason", "connect_failed")]).await >= 1.0);
    assert!(metric(&api, "callworker_agent_leg_errors_total", &[("reason", "connect_failed")]).await >= 2.0);

    // With a fallback the call carries on as that program: here an echo.
    let mut program = agent_program(&dead, None);
    program["params"]["fallback"] = echo_program();
    let (created, mut tx, mut rx, _) = native_call(&api, program).await;
    wait_for_call(&api, created.call_id(), |c| c["program"] == "echo").await;
    let f = frame(7, 1);
    tx.send_audio(1, &f).await.unwrap();
    let (echoed, _, _) = receive_audio(&mut rx, FRAME_BYTES).await;
    assert_eq!(echoed, f, "the fallback echo plays the caller back");
    let events = events_of(&api, created.call_id()).await;
    assert!(events.iter().any(|e| e["type"] == "program_switched" && e["program"] == "echo"), "{events:?}");

    // A wrong token: the agent answers 401, which no reconnect fixes either.
    let (created, _tx, _rx, _) = native_call(&api, agent_program(&refusing.url(), Some("wrong-token"))).await;
    let view = wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "agent_unavailable");
    assert!(metric(&api, "callworker_agent_gave_up_total", &[("reason", "agent_unauthorized")]).await >= 1.0);
    wait_seen(&refusing, |e| matches!(e, SeenEvent::Unauthorized)).await;

    // No URL: the tenant's configured agent, with the tenant's token.
    let (created, _tx, _rx, _) = native_call(&api, json!({"name": "agent", "params": {}})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !refusing.starts().iter().any(|s| s.call_id == created.call_id()) {
        assert!(tokio::time::Instant::now() < deadline, "the tenant's agent was never reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What the API refuses up front.
    let other = ControlApi::new(&worker.base_url).with_key(OTHER_TENANT_KEY);
    let refused = [
        (&other, json!({"name": "agent", "params": {}}), "agent_not_configured"),
        (&api, agent_program("ws://localhost:1/agent", None), "agent_url_not_allowed"),
        (&api, agent_program("wss://127.0.0.1:1/agent", None), "invalid_program"),
        (
            &api,
            json!({"name": "agent", "params": {"url": dead, "transcript_entries_max": 0}}),
            "invalid_program",
        ),
    ];
    for (api, program, code) in refused {
        match api.create_call(&json!({ "program": program })).await {
            Err(callworker_client::ClientError::Api { status, code: c, .. }) => {
                assert_eq!((status, c.as_str()), (400, code), "{program}");
            }
            other => panic!("{program}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_agent_message_is_refused_and_other_calls_are_undisturbed() {
    let agent = ReferenceAgent::start("127.0.0.1:0", Options { token: None, turn_frames: TURN_FRAMES })
        .await
        .unwrap();
    let worker = Worker::start(worker_options("agent-oversized", None, &[])).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let healthy = HealthyCall::start(&api).await;
    let mut callers = Vec::new();
    for id in 0..2 {
        let created =
            api.create_call(&json!({ "program": agent_program(&agent.url(), None) })).await.unwrap();
        callers.push(Caller::connect(id, vec![media_url(&worker)], &created).await);
    }
    let (a, b) = callers.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let wait = Duration::from_secs(20);
    tokio::join!(
        a.talk_until(&api, wait, |t| last_turn(t) >= 1),
        b.talk_until(&api, wait, |t| last_turn(t) >= 1)
    );

    // Call a's caller presses 0: the agent answers with a message above the 64 KiB bound.
    a.call.dtmf('0').await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&api, "callworker_agent_leg_errors_total", &[("reason", "message_too_large")]).await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the oversized message was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Call a's leg comes back (a resume) and both conversations go on.
    let turns_a = last_turn(&transcript(&api, &a.call_id).await.unwrap());
    let turns_b = last_turn(&transcript(&api, &b.call_id).await.unwrap());
    let (ta, tb) = tokio::join!(
        a.talk_until(&api, wait, |t| has_text(t, WELCOME_BACK) && last_turn(t) >= turns_a + 2),
        b.talk_until(&api, wait, |t| last_turn(t) >= turns_b + 2),
    );
    assert_eq!(check_conversation(&ta), 1);
    assert_eq!(check_conversation(&tb), 0);
    let events = events_of(&api, &a.call_id).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "agent" && e["event"] == "lost" && e["detail"] == "message_too_large"),
        "{events:?}"
    );
    let starts = |id: &str| {
        agent.starts().into_iter().filter(|s| s.call_id == id).map(|s| s.resume).collect::<Vec<_>>()
    };
    assert_eq!(starts(&a.call_id), [false, true]);
    assert_eq!(starts(&b.call_id), [false], "call b's leg was never touched");
    assert_eq!(metric(&api, "callworker_agent_leg_errors_total", &[]).await, 1.0, "nothing else failed");
    healthy.finish(&api).await;
    for caller in callers {
        let id = caller.call_id.clone();
        assert_eq!(
            caller.press_and_wait_for_end('#').await,
            EndCause::ServerBye { reason: "completed".into() }
        );
        wait_for_call(&api, &id, |c| c["end_reason"] == "completed").await;
    }
}

/// The agent program over Twilio Media Streams (the default program of Twilio calls): the
/// caller hears the agent, Twilio's played marks become the agent's mark acks, and the
/// agent's hang-up ends the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_call_over_twilio_hears_the_agent_and_its_marks_come_back() {
    use callworker_client::twilio::{StreamEvent, TwilioSimulator};
    let agent = ReferenceAgent::start("127.0.0.1:0", Options { token: None, turn_frames: TURN_FRAMES })
        .await
        .unwrap();
    let program = format!("{{name = \"agent\", params = {{url = \"{}\"}}}}", agent.url());
    let worker = Worker::start(worker_options(
        "agent-twilio",
        None,
        &[("CALLWORKER_CALLS__DEFAULT_PROGRAM", program.as_str())],
    ))
    .await
    .unwrap();
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(callworker_testkit::TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550001111", "+15550002222").await.unwrap();
    let greeting = tone_reply(PCMU_8K);
    let mut received = Vec::new();
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + WAIT;
    let heard = |agent: &ReferenceAgent| {
        agent
            .seen()
            .iter()
            .any(|s| matches!(&s.event, SeenEvent::Mark { name, cleared: false } if name == "reply-1"))
    };
    let mut seq = 0;
    while !heard(&agent) {
        assert!(tokio::time::Instant::now() < deadline, "no mark came back: {:?}", agent.seen());
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let f = frame(3, seq);
                stream.send_media(f.clone()).await.unwrap();
                sent.extend_from_slice(&f);
            }
            event = stream.next_event() => match event.unwrap() {
                StreamEvent::Media(payload) => received.extend_from_slice(&payload),
                StreamEvent::Closed { code, reason } => panic!("closed early: {code} {reason}"),
                _ => {}
            }
        }
    }
    assert_eq!(&received[..greeting.len()], &greeting[..], "the caller hears the agent's greeting first");
    let reply = &received[greeting.len()..greeting.len() + TURN_FRAMES * FRAME_BYTES];
    assert!(sent.windows(reply.len()).any(|w| w == reply), "then its echo of the caller's first turn");
    assert!(
        agent
            .seen()
            .iter()
            .any(|s| matches!(&s.event, SeenEvent::Mark { name, cleared: false } if name == "greeting"))
    );
    stream.send_dtmf('#').await.unwrap();
    stream.closed(WAIT).await.unwrap();
    wait_seen(&agent, |e| matches!(e, SeenEvent::Stop { reason } if reason == "completed")).await;
}

/// SIGTERM drains an agent call: the worker tells the agent `stop {migrated_drain}`, the
/// client moves to the other worker, and the agent leg comes back there as a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_hands_an_agent_call_over_with_its_conversation() {
    let redis = RedisServer::start().await.unwrap();
    let agent = ReferenceAgent::start("127.0.0.1:0", Options { token: None, turn_frames: TURN_FRAMES })
        .await
        .unwrap();
    let mut workers = [
        Worker::start(worker_options("agent-drain-w0", Some(&redis), &[])).await.unwrap(),
        Worker::start(worker_options("agent-drain-w1", Some(&redis), &[])).await.unwrap(),
    ];
    let api0 = ControlApi::new(&workers[0].base_url).with_key(TENANT_KEY);
    let api1 = ControlApi::new(&workers[1].base_url).with_key(TENANT_KEY);
    let created = api0.create_call(&json!({ "program": agent_program(&agent.url(), None) })).await.unwrap();
    let mut caller = Caller::connect(0, vec![media_url(&workers[0]), media_url(&workers[1])], &created).await;
    let before = caller.talk_until(&api0, Duration::from_secs(20), |t| last_turn(t) >= 2).await;
    let status = workers[0].terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "the drained worker exits 0: {status:?}");
    wait_seen(&agent, |e| matches!(e, SeenEvent::Stop { reason } if reason == "migrated_drain")).await;
    let turns = last_turn(&before);
    let after = caller
        .talk_until(&api1, Duration::from_secs(30), |t| {
            has_text(t, WELCOME_BACK) && last_turn(t) >= turns + 2
        })
        .await;
    assert_eq!(check_conversation(&after), 1);
    let resumes: Vec<bool> =
        agent.starts().into_iter().filter(|s| s.call_id == created.call_id()).map(|s| s.resume).collect();
    assert_eq!(resumes, [false, true]);
    let events = events_of(&api1, created.call_id()).await;
    assert!(events.iter().any(|e| e["type"] == "resumed" && e["cause"] == "migrated_drain"), "{events:?}");
}
