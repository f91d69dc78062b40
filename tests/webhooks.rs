//! Webhooks end to end: real workers on a real Redis, a local HTTP receiver in this test
//! that records every request, checks its signature and counts deliveries per
//! `Idempotency-Key`.
//!
//! The receiver refuses everything at first, so events wait in the store's outbox; the
//! worker that owns the call is then killed with SIGKILL, *after* its events are durable
//! (they have been attempted) and *before* any was accepted. The call resumes elsewhere,
//! the receiver starts accepting, and every event must arrive, signed, in order, with one
//! accepted delivery per key (duplicates may be sent: delivery is at least once; the test
//! reports how many).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::resilient::{CallEvent, EndCause, ResilientCall, ResilientConfig};
use callworker_testkit::{
    OPERATOR_KEY, OTHER_TENANT_KEY, RedisCluster, RedisServer, TENANT_KEY, Worker, WorkerOptions, redis_cli,
    run_worker_command,
};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "test-webhook-secret-0123456789abcdef";
/// Bound on waiting for webhooks (generous: a killed worker's claim must lapse first).
const HOOK_WAIT: Duration = Duration::from_secs(60);

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    event: String,
    attempt: u32,
    body: Value,
    raw: Vec<u8>,
    signature_ok: bool,
    accepted: bool,
}

#[derive(Debug, Default)]
struct ReceiverState {
    accepting: bool,
    /// How long a refusal takes: a slow receiver keeps deliveries (and their claims) in
    /// flight, so a killed worker is likely to die holding one.
    refuse_delay: Duration,
    /// Requests read and not answered yet.
    in_flight: usize,
    requests: Vec<Seen>,
    /// Accepted deliveries per key, in order of first acceptance.
    accepted_order: Vec<String>,
    accepted: BTreeMap<String, u32>,
}

/// A minimal HTTP/1.1 server (keep-alive, Content-Length bodies): the tests crate does
/// not link an HTTP server library, and this is all the webhooks need.
struct Receiver {
    port: u16,
    state: Arc<Mutex<ReceiverState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        Receiver { port, state, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    fn accept(&self, on: bool) {
        self.state.lock().unwrap().accepting = on;
    }

    fn refuse_slowly(&self, delay: Duration) {
        self.state.lock().unwrap().refuse_delay = delay;
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    fn accepted_order(&self) -> Vec<String> {
        self.state.lock().unwrap().accepted_order.clone()
    }

    /// Waits until every key in `keys` was accepted (bounded by [`HOOK_WAIT`]).
    async fn wait_accepted(&self, keys: &[String]) {
        let deadline = tokio::time::Instant::now() + HOOK_WAIT;
        loop {
            let done = {
                let s = self.state.lock().unwrap();
                keys.iter().all(|k| s.accepted.contains_key(k))
            };
            if done {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not all webhooks were accepted: wanted {keys:?}, got {:?}",
                self.accepted_order()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a delivery is in flight (read, not answered yet).
    async fn wait_in_flight(&self) {
        let deadline = tokio::time::Instant::now() + HOOK_WAIT;
        while self.state.lock().unwrap().in_flight == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no delivery in flight");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a request for each of `keys` arrived (accepted or not).
    async fn wait_attempted(&self, keys: &[String]) {
        let deadline = tokio::time::Instant::now() + HOOK_WAIT;
        loop {
            let seen = self.requests();
            if keys.iter().all(|k| seen.iter().any(|r| &r.key == k)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no attempt for all of {keys:?}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Serves one connection: reads requests, records them, answers 200 or 503.
async fn serve(mut socket: TcpStream, state: Arc<Mutex<ReceiverState>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let raw = buf[head_end + 4..head_end + 4 + len].to_vec();
        buf.drain(..head_end + 4 + len);
        let signature_ok = header("x-callworker-signature").is_some_and(|s| verify(&s, &raw));
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let key = header("idempotency-key").unwrap_or_default();
        let refuse_delay = {
            let mut s = state.lock().unwrap();
            s.in_flight += 1;
            if s.accepting { Duration::ZERO } else { s.refuse_delay }
        };
        tokio::time::sleep(refuse_delay).await;
        let status = {
            let mut s = state.lock().unwrap();
            let accepted = s.accepting && signature_ok;
            if accepted {
                let count = s.accepted.entry(key.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    s.accepted_order.push(key.clone());
                }
            }
            s.requests.push(Seen {
                key,
                event: header("x-callworker-event").unwrap_or_default(),
                attempt: header("x-callworker-attempt").and_then(|v| v.parse().ok()).unwrap_or(0),
                body,
                raw,
                signature_ok,
                accepted,
            });
            s.in_flight -= 1;
            if accepted { "200 OK" } else { "503 Service Unavailable" }
        };
        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if socket.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Checks `t=<unix s>,v1=<hex>` against HMAC-SHA256(SECRET, "<t>.<body>"), and that the
/// timestamp is recent (the replay window docs/webhooks.md recommends: 5 minutes).
fn verify(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    expected == v1
}

/// Worker settings: webhooks for tenant `default` only, quick retries, quick failover.
fn hook_env(receiver: &Receiver, attempts_max: u32) -> Vec<(String, String)> {
    let tenants = format!(r#"[{{tenant = "default", url = "{}", secret = "{SECRET}"}}]"#, receiver.url());
    [
        ("CALLWORKER_WEBHOOKS__TENANTS", tenants),
        ("CALLWORKER_WEBHOOKS__ATTEMPTS_MAX", attempts_max.to_string()),
        ("CALLWORKER_WEBHOOKS__BACKOFF_BASE_MS", "100".to_owned()),
        ("CALLWORKER_WEBHOOKS__BACKOFF_MAX_MS", "400".to_owned()),
        ("CALLWORKER_WEBHOOKS__REQUEST_TIMEOUT_MS", "1000".to_owned()),
        ("CALLWORKER_WEBHOOKS__POLL_INTERVAL_MS", "100".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The store of the fleet: one redis-server, or a Redis Cluster of three primaries.
enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    async fn start(cluster: bool) -> Redis {
        if cluster {
            Redis::Cluster(RedisCluster::start(3).await.unwrap())
        } else {
            Redis::Single(RedisServer::start().await.unwrap())
        }
    }

    /// `store.redis_url` and `store.redis_mode`.
    fn settings(&self) -> (String, &'static str) {
        match self {
            Redis::Single(server) => (server.url(), "standalone"),
            Redis::Cluster(cluster) => (cluster.seed_urls(), "cluster"),
        }
    }

    /// Runs a redis-cli command on the node that holds `key`.
    fn cli(&self, key: &str, args: &[&str]) -> String {
        let port = match self {
            Redis::Single(server) => server.port(),
            Redis::Cluster(cluster) => cluster.nodes[cluster.node_for_key(key).unwrap()].port(),
        };
        redis_cli(port, args).unwrap()
    }
}

fn fleet_worker(name: &str, redis: &Redis, env: &[(String, String)]) -> WorkerOptions {
    let (url, mode) = redis.settings();
    let mut options = WorkerOptions::named(name)
        .env("CALLWORKER_STORE__KIND", "redis")
        .env("CALLWORKER_STORE__REDIS_URL", &url)
        .env("CALLWORKER_STORE__REDIS_MODE", mode)
        .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "200")
        .env("CALLWORKER_CHECKPOINT__LEASE_MS", "1500")
        .env("CALLWORKER_RESUME__REAPER_INTERVAL_MS", "200")
        .env("CALLWORKER_RESUME__REAPER_GRACE_MS", "300")
        .env("CALLWORKER_RESUME__HEARTBEAT_INTERVAL_MS", "200");
    for (k, v) in env {
        options = options.env(k, v);
    }
    options
}

/// Drains resilient-call events until `pred` matches one (bounded).
async fn until(events: &mut tokio::sync::mpsc::Receiver<CallEvent>, pred: impl Fn(&CallEvent) -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.recv().await {
            if pred(&e) {
                return;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("the expected call event within 20 s");
}

/// Waits until the call's outbox in Redis holds an event of `kind`; returns its id.
async fn durable_event_key(redis: &Redis, call_id: &str, kind: &str) -> String {
    let key = format!("cw:call:{{{call_id}}}:outbox");
    let deadline = tokio::time::Instant::now() + HOOK_WAIT;
    loop {
        let listed = redis.cli(&key, &["LRANGE", &key, "0", "-1"]);
        let found = listed
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|event| event["type"] == kind);
        if let Some(event) = found {
            return event["id"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no {kind} event in the outbox: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A call of tenant `other` (no webhooks configured) that presses a key and hangs up.
async fn other_tenant_call(base_url: &str) -> String {
    let api = ControlApi::new(base_url).with_key(OTHER_TENANT_KEY);
    let (created, mut tx, mut rx, _) = native_call(&api, echo_program()).await;
    tx.dtmf('9').await.unwrap();
    tx.send_audio(1, &frame(9, 1)).await.unwrap();
    tx.bye().await.unwrap();
    rx.closed(WAIT).await.unwrap();
    let id = created.call_id().to_owned();
    wait_for_call(&api, &id, |c| c["status"] == "ended").await;
    id
}

mod every_webhook_is_delivered_once_per_key_despite_a_kill_9_before_delivery {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single() {
        super::every_webhook_is_delivered_once_per_key_despite_a_kill_9_before_delivery(false).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        super::every_webhook_is_delivered_once_per_key_despite_a_kill_9_before_delivery(true).await
    }
}

async fn every_webhook_is_delivered_once_per_key_despite_a_kill_9_before_delivery(cluster: bool) {
    const FRAMES: u64 = 25;
    let receiver = Receiver::start().await;
    receiver.refuse_slowly(Duration::from_millis(700));
    let redis = Redis::start(cluster).await;
    let env = hook_env(&receiver, 1_000);
    // Workers 1 and 2 look for due webhooks only every 5 s (and once at start, before any
    // event exists), so the deliveries before the kill are worker 0's: it dies holding a
    // claim, which must lapse (4 × 1 s + 1 s) before a survivor retries.
    let mut slow_poll = env.clone();
    for (k, v) in &mut slow_poll {
        if k == "CALLWORKER_WEBHOOKS__POLL_INTERVAL_MS" {
            *v = "5000".to_owned();
        }
    }
    let mut workers = Vec::new();
    for i in 0..3 {
        let env = if i == 0 { &env } else { &slow_poll };
        workers.push(Worker::start(fleet_worker(&format!("hooks-w{i}"), &redis, env)).await.unwrap());
    }
    let other_call = other_tenant_call(&workers[0].base_url).await;

    let api = ControlApi::new(&workers[0].base_url).with_key(TENANT_KEY);
    let created =
        api.create_call(&json!({ "program": echo_program(), "record": {"inbound": true} })).await.unwrap();
    let call_id = created.call_id().to_owned();
    let urls: Vec<String> = workers.iter().map(|w| format!("ws://127.0.0.1:{}/v1/media", w.port)).collect();
    let (call, mut events) =
        ResilientCall::connect(urls, &call_id, &created.resume_token, PCMU_8K, ResilientConfig::default())
            .await
            .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 1..=FRAMES {
        tick.tick().await;
        call.send_audio(&frame(0, seq)).await.unwrap();
    }
    call.dtmf('5').await.unwrap();
    until(&mut events, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= FRAMES)).await;

    // Both events are durable: in the call's outbox in Redis (the receiver has refused the
    // first one; the second waits behind it). None was accepted.
    let started_key = format!("{call_id}:e1");
    receiver.wait_attempted(std::slice::from_ref(&started_key)).await;
    let dtmf_key = durable_event_key(&redis, &call_id, "dtmf").await;
    assert!(receiver.accepted_order().is_empty(), "nothing accepted before the kill");

    receiver.wait_in_flight().await;
    workers[0].kill(); // SIGKILL mid-delivery: the owner dies with the events undelivered
    for seq in FRAMES + 1..=2 * FRAMES {
        tick.tick().await;
        call.send_audio(&frame(0, seq)).await.unwrap();
    }
    until(&mut events, |e| matches!(e, CallEvent::Resumed { .. })).await;
    until(&mut events, |e| matches!(e, CallEvent::Acked { upto_seq } if *upto_seq >= 2 * FRAMES)).await;
    receiver.accept(true);
    let accepting_since = std::time::Instant::now();
    call.dtmf('7').await.unwrap();
    // Let a checkpoint carry the digit before hanging up (the end carries it otherwise).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(call.hangup().await, EndCause::HungUp);
    let survivor = ControlApi::new(&workers[1].base_url).with_key(TENANT_KEY);
    let view = wait_for_call(&survivor, &call_id, |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "client_hangup");

    // Every event arrives: started, dtmf 5, resumed, dtmf 7, ended, recording.
    let ended_key = format!("{call_id}:ended");
    let recording_key = format!("{call_id}:recording");
    let deadline = tokio::time::Instant::now() + HOOK_WAIT;
    let keys = loop {
        let seen = receiver.requests();
        let mut keys: Vec<String> =
            seen.iter().filter(|r| r.body["call_id"] == call_id).map(|r| r.key.clone()).collect();
        keys.sort();
        keys.dedup();
        if keys.len() >= 6 && keys.contains(&ended_key) && keys.contains(&recording_key) {
            break keys;
        }
        assert!(tokio::time::Instant::now() < deadline, "not every event was attempted: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    receiver.wait_accepted(&keys).await;
    let all_accepted = accepting_since.elapsed();

    let requests = receiver.requests();
    let ours: Vec<&Seen> = requests.iter().filter(|r| r.body["call_id"] == call_id).collect();
    assert!(ours.iter().all(|r| r.signature_ok), "every request is signed with the tenant's secret");
    // One event per key: every request for a key carried the very same body.
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for r in &ours {
        let first = bodies.entry(r.key.as_str()).or_insert(r.raw.as_slice());
        assert_eq!(*first, &r.raw[..], "{}: every delivery of a key is the same event", r.key);
        assert_eq!(r.body["id"], r.key.as_str(), "the Idempotency-Key is the event id");
        assert_eq!(r.body["type"], r.event.as_str());
        assert_eq!(r.body["tenant"], "default");
    }
    let order: Vec<String> = receiver.accepted_order().into_iter().filter(|k| keys.contains(k)).collect();
    let body_of = |key: &str| ours.iter().find(|r| r.key == key).unwrap().body.clone();
    let types: Vec<String> = order.iter().map(|k| body_of(k)["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        types,
        ["call.started", "dtmf", "call.resumed", "dtmf", "call.ended", "recording.ready"],
        "each event exactly once, in the call's order: {order:?}"
    );
    assert_eq!(order[0], started_key);
    assert_eq!(order[1], dtmf_key);
    assert_eq!(body_of(&dtmf_key)["data"]["digit"], "5");
    assert_eq!(body_of(&order[3])["data"]["digit"], "7");
    let resumed = body_of(&order[2]);
    assert_eq!(resumed["data"]["cause"], "worker_lost");
    assert_eq!(resumed["data"]["transport"], "native");
    let gap = resumed["data"]["gap_ms"].as_u64().unwrap();
    assert!(gap > 0 && gap < 60_000, "a plausible resume gap: {gap} ms");
    assert_eq!(body_of(&ended_key)["data"]["reason"], "client_hangup");
    let recording = body_of(&recording_key);
    assert_eq!(recording["data"]["inbound_bytes"], 2 * FRAMES * FRAME_BYTES as u64, "{recording}");
    assert_eq!(recording["data"]["truncated"], false);

    // The receiver was down at first: the first events were retried with backoff.
    let started_attempts: Vec<u32> =
        ours.iter().filter(|r| r.key == started_key).map(|r| r.attempt).collect();
    assert!(started_attempts.len() >= 2 && started_attempts.iter().any(|a| *a >= 2), "{started_attempts:?}");
    let accepted_started = ours.iter().find(|r| r.key == started_key && r.accepted).unwrap();
    assert!(accepted_started.attempt >= 2, "accepted after failed attempts: {}", accepted_started.attempt);

    // A tenant without webhooks got none, and nothing is left in the outbox.
    assert!(requests.iter().all(|r| r.body["call_id"] != other_call), "no webhook for tenant other");
    let deadline = tokio::time::Instant::now() + HOOK_WAIT;
    loop {
        let depth = redis.cli("cw:{idx}:outbox", &["ZCARD", "cw:{idx}:outbox"]);
        if depth.trim() == "0" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the outbox never emptied: {depth}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duplicates: u32 = receiver.state.lock().unwrap().accepted.values().map(|n| n - 1).sum();
    let refused = ours.iter().filter(|r| !r.accepted).count();
    println!(
        "webhooks ({}): {} events, {} requests ({refused} refused while the receiver was down), {duplicates} duplicate deliveries after acceptance; all accepted {all_accepted:?} after the receiver came back",
        if cluster { "cluster" } else { "single" },
        keys.len(),
        ours.len(),
    );
}

/// With one worker on the in-memory store: an event whose attempts run out is
/// dead-lettered, visible to operators only, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_webhooks_are_dead_lettered_and_listed_for_operators() {
    let receiver = Receiver::start().await; // never accepts
    let mut options = WorkerOptions::named("hooks-dead");
    for (k, v) in hook_env(&receiver, 2) {
        options = options.env(&k, &v);
    }
    let worker = Worker::start(options).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (created, mut tx, mut rx, _) = native_call(&api, echo_program()).await;
    tx.bye().await.unwrap();
    rx.closed(WAIT).await.unwrap();
    let call_id = created.call_id().to_owned();
    let operator = ControlApi::new(&worker.base_url).with_key(OPERATOR_KEY);
    let url = format!("{}/v1/admin/webhooks/dead?limit=10", worker.base_url);
    let deadline = tokio::time::Instant::now() + HOOK_WAIT;
    let letters = loop {
        let page: Value = operator.http().get(&url).send().await.unwrap().json().await.unwrap();
        let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
        if letters.iter().filter(|l| l["event"]["call_id"] == call_id).count() >= 2 {
            break letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = letters.iter().find(|l| l["event"]["type"] == "call.started").unwrap();
    assert_eq!(started["reason"], "attempts_exhausted");
    assert_eq!(started["attempts"], 2, "{started}");
    let attempts: Vec<u32> = receiver
        .requests()
        .iter()
        .filter(|r| r.body["call_id"] == call_id && r.event == "call.started")
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, [1, 2], "attempts_max = 2 attempts, numbered");
    let dead =
        metric(&operator, "callworker_webhooks_dead_lettered_total", &[("reason", "attempts_exhausted")])
            .await;
    assert!(dead >= 2.0, "{dead}");
    // Operators only.
    let response = api.http().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = operator
        .http()
        .get(format!("{}/v1/admin/webhooks/dead?limit=0", worker.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_limit");
}

#[test]
fn a_bad_webhook_configuration_is_refused_at_start() {
    let good = format!(r#"[{{tenant = "default", url = "http://127.0.0.1:9/h", secret = "{SECRET}"}}]"#);
    let (code, out) =
        run_worker_command(&["--check-config"], &[("CALLWORKER_WEBHOOKS__TENANTS", &good)]).unwrap();
    assert_eq!(code, Some(0), "{out}");
    for (value, needle) in [
        (
            r#"[{tenant = "default", url = "http://127.0.0.1:9/h", secret = "too-short"}]"#.to_owned(),
            "at least 32 bytes",
        ),
        (r#"[{tenant = "default", url = "http://127.0.0.1:9/h"}]"#.to_owned(), "needs a secret"),
        (
            format!(r#"[{{tenant = "default", url = "gopher://x", secret = "{SECRET}"}}]"#),
            "http:// or https://",
        ),
    ] {
        let (code, out) = run_worker_command(&[], &[("CALLWORKER_WEBHOOKS__TENANTS", &value)]).unwrap();
        assert_eq!(code, Some(64), "{value}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
        assert!(out.contains(needle), "{value}: {out}");
        assert!(!out.contains("too-short"), "the secret is not printed: {out}");
    }
}
