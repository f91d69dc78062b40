//! Chaos suite: real workers, a real Redis, and a fault-injecting proxy between each worker
//! and its store; calls run through latency spikes, stalls, resets, blackholes, a Redis
//! crash and freeze, a worker frozen past its lease and a CPU-starved worker. What every
//! client observed is recorded and checked at the end by the history checker
//! (`callworker_tests::history`): one owner at a time, epochs only increase, recordings
//! byte-exact, every call ended once with a reason. Each scenario prints its figures
//! (`chaos figures: …`): calls, dropped, fenced writes, max concurrent owners.
//!
//! Every scenario runs on two stores ([`Backend`]): one `redis-server` (`name::single`) and
//! a Redis Cluster of three primaries (`name::cluster`). On one server each worker reaches
//! the store through its own [`FaultProxy`], so a fault can cut one worker off while the
//! others (and their reapers) still see the store. A cluster tells every client the same
//! node addresses (and the redis crate cannot remap them per client), so there each node
//! sits behind one proxy that every worker goes through, announced to the clients with
//! `cluster-announce-port`: a fault on "link 0" cuts one shard off from every worker
//! instead of one worker off from the store.
//!
//! `CHAOS_LONG=1` stretches every phase (×4) and runs more calls, for figures; the default
//! keeps the whole suite within a few minutes on a 2-core machine.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use callworker_client::api::{ControlApi, metric_sum};
use callworker_client::resilient::{CallEvent, EndCause, ResilientCall, ResilientConfig};
use callworker_client::twilio::{StreamEvent, TwilioSimulator, TwilioStream};
use callworker_testkit::proxy::FaultProxy;
use callworker_testkit::{
    RedisCluster, RedisServer, Signal, TENANT_KEY, TWILIO_AUTH_TOKEN, Worker, WorkerOptions, redis_cli,
};
use callworker_tests::history::{self, CallHistory, FleetFacts, Observed, ServerFacts, Transport, What};
use common::*;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Checkpoint period, lease and reaper timings of the chaos fleet (short, so that faults
/// longer than the lease happen within seconds).
const CHECKPOINT_INTERVAL_MS: u64 = 200;
const LEASE_MS: u64 = 1_500;
/// `store.redis_response_timeout_ms` (the default): a write not answered within it is
/// retried.
const RESPONSE_TIMEOUT_MS: u64 = 500;
/// Bound on waiting for every call to catch up (acks) after the faults are lifted.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// Bound on a call ending after its hang-up.
const END_WAIT: Duration = Duration::from_secs(30);

fn long() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// A phase length: `ms` normally, four times that with `CHAOS_LONG=1`.
fn phase(ms: u64) -> Duration {
    Duration::from_millis(if long() { ms * 4 } else { ms })
}

/// Native calls per worker.
fn calls_per_worker() -> usize {
    if long() { 6 } else { 2 }
}

/// Runs each `async fn name(kind: BackendKind)` as two tests, `name::single` and
/// `name::cluster`, so one scenario covers both stores.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single() {
                super::$name(super::BackendKind::Single).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name(super::BackendKind::Cluster).await
            }
        }
    )*};
}

on_both_backends!(
    latency_spikes,
    stalls_shorter_and_longer_than_the_write_timeout_and_the_lease,
    connection_resets_and_refusals,
    blackhole_then_heal,
    redis_kill_9_and_restart,
    redis_sigstop_and_sigcont,
    worker_sigstop_past_its_lease_is_fenced,
    cpu_starvation_of_a_worker,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Single,
    Cluster,
}

/// The store the fleet shares. A backend starts its servers, says which proxies the
/// workers reach it through, how a worker is configured to use them, and how to crash,
/// restart and freeze it.
enum Backend {
    /// One `redis-server` (AOF `everysec`, `noeviction`); every worker gets its own proxy.
    Single(RedisServer),
    /// Three primaries, each behind one proxy that every worker shares (the proxy on
    /// `proxy_ports[i]` in front of `nodes[i]`), announced to clients in place of the node's
    /// own port. The fleet takes the proxies themselves (its links).
    Cluster { cluster: RedisCluster, proxy_ports: Vec<u16>, proxies: Vec<FaultProxy> },
}

impl Backend {
    async fn start(kind: BackendKind) -> Backend {
        match kind {
            BackendKind::Single => Backend::Single(RedisServer::start().await.unwrap()),
            BackendKind::Cluster => {
                let cluster = RedisCluster::start(3).await.unwrap();
                let proxies: Vec<FaultProxy> =
                    cluster.nodes.iter().map(|n| FaultProxy::to_local_port(n.port()).unwrap()).collect();
                let proxy_ports = proxies.iter().map(FaultProxy::port).collect();
                let backend = Backend::Cluster { cluster, proxy_ports, proxies };
                backend.announce_proxies().await;
                backend
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Single(_) => "redis",
            Backend::Cluster { .. } => "cluster",
        }
    }

    /// Makes every cluster node announce its proxy's port (and its own bus port, which the
    /// nodes use among themselves, unproxied), and waits until every node's `CLUSTER
    /// SLOTS` names only proxies: from then on a client that asks any node for the slot
    /// map, or follows a `MOVED`, goes through the proxies.
    async fn announce_proxies(&self) {
        let Backend::Cluster { cluster, proxy_ports, .. } = self else { return };
        let pairs: Vec<(u16, u16)> =
            cluster.nodes.iter().map(RedisServer::port).zip(proxy_ports.clone()).collect();
        tokio::task::spawn_blocking(move || {
            for (node, proxy) in &pairs {
                // `free_cluster_port` keeps the default bus port (port + 10000) free.
                let bus = (node + 10_000).to_string();
                redis_cli(*node, &["CONFIG", "SET", "cluster-announce-bus-port", &bus]).unwrap();
                redis_cli(*node, &["CONFIG", "SET", "cluster-announce-port", &proxy.to_string()]).unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let announced = pairs.iter().all(|(node, _)| {
                    let slots = redis_cli(*node, &["CLUSTER", "SLOTS"]).unwrap_or_default();
                    let ports: Vec<&str> = slots.lines().map(str::trim).collect();
                    pairs.iter().all(|(n, p)| {
                        ports.contains(&p.to_string().as_str()) && !ports.contains(&n.to_string().as_str())
                    })
                });
                if announced {
                    return;
                }
                assert!(Instant::now() < deadline, "the cluster did not announce its proxies within 20 s");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .unwrap();
    }

    /// Proxies for a new worker, one per node: its own on one server, the shared ones on a
    /// cluster.
    fn proxies_for_worker(&self) -> Vec<FaultProxy> {
        match self {
            Backend::Single(r) => vec![FaultProxy::to_local_port(r.port()).unwrap()],
            Backend::Cluster { .. } => Vec::new(),
        }
    }

    /// Store settings of a worker whose own proxies listen on `ports` (none on a cluster).
    fn worker_env(&self, ports: &[u16]) -> Vec<(String, String)> {
        let (mode, url) = match self {
            Backend::Single(_) => ("standalone", format!("redis://127.0.0.1:{}", ports[0])),
            Backend::Cluster { proxy_ports, .. } => (
                "cluster",
                proxy_ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
            ),
        };
        vec![
            ("CALLWORKER_STORE__KIND".into(), "redis".into()),
            ("CALLWORKER_STORE__REDIS_MODE".into(), mode.into()),
            ("CALLWORKER_STORE__REDIS_URL".into(), url),
        ]
    }

    /// kill -9 every node.
    fn crash(&mut self) {
        match self {
            Backend::Single(r) => r.kill(),
            Backend::Cluster { cluster, .. } => cluster.nodes.iter_mut().for_each(RedisServer::kill),
        }
    }

    /// Starts every node again on the same ports and data (AOF replay; a cluster node also
    /// reads its `nodes.conf`), and on a cluster announces the proxies again.
    async fn restart(&mut self) {
        match self {
            Backend::Single(r) => r.restart().await.unwrap(),
            Backend::Cluster { cluster, .. } => {
                for node in &mut cluster.nodes {
                    node.restart().await.unwrap();
                }
                cluster.wait_ok().await.unwrap();
            }
        }
        self.announce_proxies().await;
    }

    /// SIGSTOP every node (sockets stay open; nothing answers).
    fn freeze(&self) {
        match self {
            Backend::Single(r) => r.stop().unwrap(),
            Backend::Cluster { cluster, .. } => cluster.nodes.iter().for_each(|n| n.stop().unwrap()),
        }
    }

    fn thaw(&self) {
        match self {
            Backend::Single(r) => r.cont().unwrap(),
            Backend::Cluster { cluster, .. } => cluster.nodes.iter().for_each(|n| n.cont().unwrap()),
        }
    }
}

/// A fleet of workers and the proxies between them and the store.
struct Fleet {
    name: String,
    backend: Backend,
    /// The links a scenario faults, in groups: on one server, worker `i`'s proxies; on a
    /// cluster, the proxy of node `i` (shared by every worker).
    links: Vec<Vec<FaultProxy>>,
    workers: Vec<Worker>,
    /// Time zero of every history.
    t0: Instant,
}

impl Fleet {
    async fn start(kind: BackendKind, name: &str, workers: usize) -> Fleet {
        let mut backend = Backend::start(kind).await;
        let mut links = Vec::new();
        let mut started = Vec::new();
        for i in 0..workers {
            let proxies = backend.proxies_for_worker();
            let ports: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
            let mut options = WorkerOptions::named(&format!("chaos-{name}-{}-w{i}", backend.name()))
                .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", &CHECKPOINT_INTERVAL_MS.to_string())
                .env("CALLWORKER_CHECKPOINT__LEASE_MS", &LEASE_MS.to_string())
                .env("CALLWORKER_STORE__REDIS_RESPONSE_TIMEOUT_MS", &RESPONSE_TIMEOUT_MS.to_string())
                .env("CALLWORKER_RESUME__REAPER_INTERVAL_MS", "200")
                .env("CALLWORKER_RESUME__REAPER_GRACE_MS", "300")
                .env("CALLWORKER_RESUME__HEARTBEAT_INTERVAL_MS", "200")
                // Twilio calls record both tracks too (they cannot say so themselves).
                .env("CALLWORKER_CALLS__RECORDING", "{inbound=true,outbound=true}");
            for (k, v) in backend.worker_env(&ports) {
                options = options.env(&k, &v);
            }
            started.push(Worker::start(options).await.unwrap());
            if !proxies.is_empty() {
                links.push(proxies);
            }
        }
        if let Backend::Cluster { proxies, .. } = &mut backend {
            links = std::mem::take(proxies).into_iter().map(|p| vec![p]).collect();
        }
        println!("chaos {name}: backend {}, {workers} workers", backend.name());
        Fleet {
            name: format!("{name}/{}", backend.name()),
            backend,
            links,
            workers: started,
            t0: Instant::now(),
        }
    }

    fn api(&self, i: usize) -> ControlApi {
        ControlApi::new(&self.workers[i].base_url).with_key(TENANT_KEY)
    }

    /// Every worker's media URL, worker `first` first.
    fn media_urls(&self, first: usize) -> Vec<String> {
        let n = self.workers.len();
        (0..n).map(|k| format!("ws://127.0.0.1:{}/v1/media", self.workers[(first + k) % n].port)).collect()
    }

    /// Applies `f` to link group `i`: worker `i`'s proxies on one server, node `i`'s proxy
    /// on a cluster.
    fn link(&self, i: usize, f: impl Fn(&FaultProxy)) {
        self.links[i].iter().for_each(f);
    }

    /// The link group that cuts `call` (a call of worker 0) off from the store: worker 0's
    /// on one server; on a cluster, the proxy of the node that holds the call's keys.
    fn link_of(&self, call: &RunningCall) -> usize {
        match &self.backend {
            Backend::Single(_) => 0,
            Backend::Cluster { cluster, .. } => {
                cluster.node_for_key(&format!("cw:call:{{{}}}", call.call_id)).unwrap()
            }
        }
    }

    /// Applies `f` to every proxy of every worker.
    fn all_links(&self, f: impl Fn(&FaultProxy)) {
        self.links.iter().flatten().for_each(f);
    }
}

/// How a client's run ended and what it saw.
struct ClientRun {
    observed: Vec<Observed>,
    sent: Vec<u8>,
}

/// A call under way: its client runs in a task until told to stop.
struct RunningCall {
    call_id: String,
    transport: Transport,
    /// Highest client seq sent and highest acked (native), for the recovery wait.
    progress: watch::Receiver<(u64, u64)>,
    stop: watch::Sender<bool>,
    task: JoinHandle<ClientRun>,
}

/// Starts `calls_per_worker()` native calls created on each worker (recording both
/// tracks, echo program), and `twilio` Twilio calls placed on worker 0.
async fn start_calls(fleet: &Fleet, twilio: usize) -> Vec<RunningCall> {
    let mut calls = Vec::new();
    for w in 0..fleet.workers.len() {
        for _ in 0..calls_per_worker() {
            let index = calls.len();
            calls.push(start_native(fleet, w, index).await);
        }
    }
    for _ in 0..twilio {
        let index = calls.len();
        calls.push(start_twilio(fleet, 0, index).await);
    }
    calls
}

async fn start_native(fleet: &Fleet, worker: usize, index: usize) -> RunningCall {
    let api = fleet.api(worker);
    let body = json!({"program": echo_program(), "record": {"inbound": true, "outbound": true}});
    let created = api.create_call(&body).await.unwrap();
    let (call, events) = ResilientCall::connect(
        fleet.media_urls(worker),
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        ResilientConfig::default(),
    )
    .await
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let (progress_tx, progress) = watch::channel((0, 0));
    let t0 = fleet.t0;
    let task = tokio::spawn(drive_native(index, call, events, t0, stop_rx, progress_tx));
    RunningCall { call_id: created.call_id().to_owned(), transport: Transport::Native, progress, stop, task }
}

/// A native client: one frame every 20 ms, every event recorded, hang-up when told.
async fn drive_native(
    index: usize,
    call: ResilientCall,
    mut events: tokio::sync::mpsc::Receiver<CallEvent>,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<(u64, u64)>,
) -> ClientRun {
    let ms = || t0.elapsed().as_millis() as u64;
    let mut session = call.session().epoch;
    let mut observed = vec![Observed { at_ms: ms(), session, what: What::Welcome { epoch: Some(session) } }];
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let record = |e: CallEvent, session: &mut u64, observed: &mut Vec<Observed>| {
        let what = match e {
            CallEvent::Audio { epoch, seq, .. } => What::Audio { epoch: Some(epoch), seq: Some(seq) },
            CallEvent::Acked { upto_seq } => {
                progress.send_modify(|p| p.1 = p.1.max(upto_seq));
                What::Acked { upto_seq }
            }
            CallEvent::Disconnected { code, .. } => What::Lost { code },
            CallEvent::Resumed { epoch, .. } => {
                *session = epoch;
                What::Welcome { epoch: Some(epoch) }
            }
            CallEvent::Ended(cause) => {
                let clean = matches!(cause, EndCause::HungUp | EndCause::ServerBye { .. });
                What::Ended { cause: format!("{cause:?}"), clean }
            }
            _ => return,
        };
        observed.push(Observed { at_ms: ms(), session: *session, what });
    };
    let mut seq = 0;
    let mut ended = false;
    while !*stop.borrow() && !ended {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let f = frame(index, seq);
                if call.send_audio(&f).await.is_err() {
                    break;
                }
                sent.extend_from_slice(&f);
                progress.send_modify(|p| p.0 = seq);
            }
            e = events.recv() => match e {
                Some(e) => {
                    ended = matches!(e, CallEvent::Ended(_));
                    record(e, &mut session, &mut observed);
                }
                None => ended = true,
            },
            _ = stop.changed() => {}
        }
    }
    if !ended {
        // Hang up while still recording what arrives, until the end event.
        let hangup = call.hangup();
        tokio::pin!(hangup);
        let mut hung_up = false;
        loop {
            tokio::select! {
                _ = &mut hangup, if !hung_up => hung_up = true,
                e = events.recv() => match e {
                    Some(e) => {
                        let end = matches!(e, CallEvent::Ended(_));
                        record(e, &mut session, &mut observed);
                        if end {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        if !hung_up {
            hangup.await;
        }
    }
    ClientRun { observed, sent }
}

async fn start_twilio(fleet: &Fleet, worker: usize, index: usize) -> RunningCall {
    let sim = TwilioSimulator::new(&fleet.workers[worker].base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let call_id = stream.action.clone().unwrap().split("call_id=").nth(1).unwrap().to_owned();
    let (stop, stop_rx) = watch::channel(false);
    let (progress_tx, progress) = watch::channel((0, 0));
    let task = tokio::spawn(drive_twilio(index, stream, fleet.t0, stop_rx, progress_tx));
    RunningCall { call_id, transport: Transport::Twilio, progress, stop, task }
}

/// A Twilio stream: one chunk every 20 ms, media recorded, `stop` when told.
async fn drive_twilio(
    index: usize,
    mut stream: TwilioStream,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<(u64, u64)>,
) -> ClientRun {
    let ms = || t0.elapsed().as_millis() as u64;
    let mut observed = vec![Observed { at_ms: ms(), session: 1, what: What::Welcome { epoch: None } }];
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seq = 0;
    let mut closed = None;
    while !*stop.borrow() && closed.is_none() {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let f = frame(index, seq);
                if stream.send_media(f.clone()).await.is_err() {
                    break;
                }
                sent.extend_from_slice(&f);
                // Twilio has no acks: a chunk counts as caught up once sent.
                progress.send_modify(|p| *p = (seq, seq));
            }
            e = stream.next_event() => match e {
                Some(StreamEvent::Media(_)) => {
                    observed.push(Observed { at_ms: ms(), session: 1, what: What::Audio { epoch: None, seq: None } });
                }
                Some(StreamEvent::Closed { code, reason }) => closed = Some((code, reason)),
                Some(_) => {}
                None => closed = Some((1006, "stream task ended".into())),
            },
            _ = stop.changed() => {}
        }
    }
    let (code, reason, clean) = match closed {
        Some((code, reason)) => (code, reason, false),
        None => {
            let _ = stream.stop().await;
            loop {
                match tokio::time::timeout(END_WAIT, stream.next_event()).await {
                    Ok(Some(StreamEvent::Media(_))) => observed.push(Observed {
                        at_ms: ms(),
                        session: 1,
                        what: What::Audio { epoch: None, seq: None },
                    }),
                    Ok(Some(StreamEvent::Closed { code, reason })) => break (code, reason, true),
                    Ok(Some(_)) => {}
                    Ok(None) => break (1006, "stream task ended".into(), false),
                    Err(_) => break (0, "no close within the wait".into(), false),
                }
            }
        }
    };
    let cause = format!("closed {code} {reason}");
    observed.push(Observed { at_ms: ms(), session: 1, what: What::Ended { cause, clean } });
    ClientRun { observed, sent }
}

/// Waits until every native call's audio is acked (the fleet caught up after the faults),
/// bounded by [`RECOVERY_WAIT`]; panics naming the calls that did not.
async fn wait_caught_up(fleet: &Fleet, calls: &[RunningCall]) {
    let started = Instant::now();
    let deadline = started + RECOVERY_WAIT;
    // Audio keeps flowing meanwhile: caught up means acks reach what was sent `lag` ago.
    loop {
        let behind: Vec<String> = calls
            .iter()
            .filter(|c| c.transport == Transport::Native)
            .filter_map(|c| {
                let (sent, acked) = *c.progress.borrow();
                // Within 25 frames (0.5 s): a checkpoint every 200 ms acks the rest.
                (acked + 25 < sent).then(|| format!("{} acked {acked} of {sent}", c.call_id))
            })
            .collect();
        if behind.is_empty() {
            println!("chaos {}: caught up {} ms after the faults", fleet.name, started.elapsed().as_millis());
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = fleet.workers.iter().map(|w| w.log_tail()).collect();
            panic!(
                "chaos {}: calls did not catch up within {RECOVERY_WAIT:?} of the faults: {behind:?}\n{}",
                fleet.name,
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops every client (hang-up), gathers the server's facts, checks the histories, prints
/// the figures and returns the report (asserting no violation).
async fn finish(fleet: &Fleet, calls: Vec<RunningCall>) -> history::Report {
    for c in &calls {
        let _ = c.stop.send(true);
    }
    let api = fleet.api(fleet.workers.len() - 1);
    let mut histories = Vec::new();
    for c in calls {
        let run = tokio::time::timeout(END_WAIT, c.task).await.expect("the client ends").unwrap();
        let view = wait_for_call_within(&api, &c.call_id, END_WAIT, |v| v["status"] == "ended").await;
        let events = events_of(&api, &c.call_id).await;
        let inbound = recording(&api, &c.call_id).await;
        let outbound = recording_track(&api, &c.call_id, "outbound").await;
        histories.push(CallHistory {
            call_id: c.call_id.clone(),
            transport: c.transport,
            observed: run.observed,
            sent: run.sent,
            expected_end_reason: match c.transport {
                Transport::Native => "client_hangup".into(),
                Transport::Twilio => "remote_hangup".into(),
            },
            server: Some(ServerFacts {
                status: view["status"].as_str().unwrap_or_default().to_owned(),
                end_reason: view["end_reason"].as_str().map(str::to_owned),
                epoch: view["epoch"].as_u64().unwrap_or(0),
                ended_events: events.iter().filter(|e| e["type"] == "ended").count(),
                recording_inbound: inbound,
                recording_outbound_echo: Some(outbound),
            }),
        });
    }
    let facts = fleet_facts(fleet).await;
    let report = history::check(&histories, &facts);
    let proxies: Vec<String> = fleet
        .links
        .iter()
        .flatten()
        .map(|p| {
            let s = p.stats();
            format!(
                "conns={} reset={} refused={} swallowed={}B",
                s.connections_accepted, s.connections_reset, s.connections_refused, s.bytes_swallowed
            )
        })
        .collect();
    let mut store_reconnects = 0.0;
    let mut store_errors = 0.0;
    for i in 0..fleet.workers.len() {
        let text = fleet.api(i).metrics().await.unwrap();
        store_reconnects += metric_sum(&text, "callworker_store_reconnects_total", &[]);
        store_errors += metric_sum(&text, "callworker_store_errors_total", &[]);
    }
    println!(
        "chaos figures [{}{}]: {report} store_errors={store_errors} store_reconnects={store_reconnects} proxies={proxies:?}",
        fleet.name,
        if long() { ", long" } else { "" }
    );
    assert!(report.violations.is_empty(), "chaos {}: violations: {:#?}", fleet.name, report.violations);
    assert_eq!(report.dropped, 0, "chaos {}: calls dropped", fleet.name);
    assert!(report.max_concurrent_owners <= 1, "chaos {}: {report}", fleet.name);
    report
}

async fn fleet_facts(fleet: &Fleet) -> FleetFacts {
    let mut facts = FleetFacts::default();
    for i in 0..fleet.workers.len() {
        let text = fleet.api(i).metrics().await.unwrap();
        let sum = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels) as u64;
        facts.fenced_writes += sum("callworker_fenced_writes_total", &[]);
        facts.ends_counted += sum("callworker_calls_ended_total", &[])
            + sum("callworker_reaper_actions_total", &[("action", "ended")]);
        facts.resumes += sum("callworker_calls_resumed_total", &[]);
    }
    let api = fleet.api(fleet.workers.len() - 1);
    for status in ["created", "active"] {
        let list = api.list_calls(&format!("status={status}")).await.unwrap();
        facts.calls_left_live += list["calls"].as_array().map_or(0, Vec::len) as u64;
    }
    facts
}

/// Latency between every worker and the store: first below the response timeout, then a
/// spike above it (every write times out and is retried), then back to normal.
async fn latency_spikes(kind: BackendKind) {
    let fleet = Fleet::start(kind, "latency", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(1_000)).await;
    fleet.all_links(|p| p.set_latency(Duration::from_millis(60), Duration::from_millis(60)));
    tokio::time::sleep(phase(2_000)).await;
    // Round trip 700 ms > the 500 ms response timeout: every write is an unknown outcome.
    fleet.all_links(|p| p.set_latency(Duration::from_millis(350), Duration::from_millis(350)));
    tokio::time::sleep(phase(2_000)).await;
    fleet.all_links(FaultProxy::heal);
    wait_caught_up(&fleet, &calls).await;
    finish(&fleet, calls).await;
}

/// Stalls of one worker's link (on a cluster: of the node holding that worker's first call,
/// for every worker): shorter than the write timeout, longer than it but shorter
/// than the lease, and longer than the lease (the other worker's reaper sees the lease
/// lapse, but the resume window has not passed: the call stays with its owner).
async fn stalls_shorter_and_longer_than_the_write_timeout_and_the_lease(kind: BackendKind) {
    let fleet = Fleet::start(kind, "stall", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(1_000)).await;
    let cut = fleet.link_of(&calls[0]);
    for stall_ms in [RESPONSE_TIMEOUT_MS / 2, (RESPONSE_TIMEOUT_MS + LEASE_MS) / 2, LEASE_MS * 2] {
        fleet.link(cut, FaultProxy::stall);
        tokio::time::sleep(Duration::from_millis(stall_ms)).await;
        fleet.link(cut, FaultProxy::resume);
        tokio::time::sleep(phase(1_000)).await;
    }
    wait_caught_up(&fleet, &calls).await;
    finish(&fleet, calls).await;
}

/// Every connection to the store reset, repeatedly; then new connections refused for a
/// while (reconnects fail) and the current ones reset.
async fn connection_resets_and_refusals(kind: BackendKind) {
    let fleet = Fleet::start(kind, "reset", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(1_000)).await;
    for _ in 0..3 {
        fleet.all_links(FaultProxy::reset_all);
        tokio::time::sleep(phase(700)).await;
    }
    fleet.all_links(|p| {
        p.refuse_new(true);
        p.reset_all();
    });
    tokio::time::sleep(phase(1_500)).await;
    fleet.all_links(FaultProxy::heal);
    wait_caught_up(&fleet, &calls).await;
    finish(&fleet, calls).await;
}

/// One worker's link (on a cluster: the node holding that worker's first call) swallows every byte for longer than the lease (a half-open
/// connection: no error, no answer), then heals. The worker must find the store again on
/// its own and catch up.
async fn blackhole_then_heal(kind: BackendKind) {
    let fleet = Fleet::start(kind, "blackhole", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(1_000)).await;
    let cut = fleet.link_of(&calls[0]);
    fleet.link(cut, FaultProxy::blackhole);
    // Longer than the lease; with CHAOS_LONG=1 12 s, still within the clients' 15 s replay
    // buffer.
    tokio::time::sleep(phase(LEASE_MS * 2)).await;
    fleet.link(cut, FaultProxy::heal);
    wait_caught_up(&fleet, &calls).await;
    finish(&fleet, calls).await;
}

/// kill -9 of Redis, down for a second, restarted on its AOF. The calls were created and
/// attached well over a second before (`appendfsync everysec` loses up to about a second
/// of writes; an attach lost that way is a known limit, see docs/operations.md).
async fn redis_kill_9_and_restart(kind: BackendKind) {
    let mut fleet = Fleet::start(kind, "rediskill", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(2_500)).await;
    fleet.backend.crash();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    fleet.backend.restart().await;
    wait_caught_up(&fleet, &calls).await;
    tokio::time::sleep(phase(1_000)).await;
    finish(&fleet, calls).await;
}

/// Redis frozen (SIGSTOP) past the lease, then thawed: every worker's writes time out, then
/// everything queued is answered in order.
async fn redis_sigstop_and_sigcont(kind: BackendKind) {
    let fleet = Fleet::start(kind, "redisstop", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(1_000)).await;
    fleet.backend.freeze();
    tokio::time::sleep(phase(LEASE_MS * 2)).await;
    fleet.backend.thaw();
    wait_caught_up(&fleet, &calls).await;
    finish(&fleet, calls).await;
}

/// A worker frozen (SIGSTOP) past its lease: its native clients resume on the other worker;
/// when it thaws, its next writes are fenced and it drives nothing more. (No Twilio call
/// here: a frozen worker's Twilio stream is rescued through Twilio's REST API, which
/// `failover.rs` covers with a stand-in for it.)
///
/// Besides the resilient clients, one *split-brain observer* keeps reading its old
/// connection to the frozen worker after it resumed on the other one, and had kept sending
/// on it until then, as a client that does not yet know the worker froze does: whatever
/// the thawed worker sends there goes into the history, unfiltered.
async fn worker_sigstop_past_its_lease_is_fenced(kind: BackendKind) {
    let fleet = Fleet::start(kind, "workerstop", 2).await;
    let mut calls = start_calls(&fleet, 0).await;
    let observer = SplitBrainObserver::start(&fleet, calls.len()).await;
    tokio::time::sleep(phase(1_000)).await;
    fleet.workers[0].signal(Signal::STOP).unwrap();
    // The clients' liveness timeout (3 s) moves them; the lease (1.5 s) has lapsed by then.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let observer = observer.move_to(&fleet, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fleet.workers[0].signal(Signal::CONT).unwrap();
    wait_caught_up(&fleet, &calls).await;
    tokio::time::sleep(phase(1_000)).await;
    calls.push(observer.finish());
    let report = finish(&fleet, calls).await;
    let fenced = metric(&fleet.api(0), "callworker_fenced_writes_total", &[]).await;
    assert!(fenced >= 1.0, "the thawed worker was fenced: {fenced} fenced writes; {report}");
    let paused = metric(&fleet.api(0), "callworker_session_pauses_past_lease_total", &[]).await;
    assert!(paused >= 1.0, "the thawed worker noticed its pause before driving its calls again");
    assert!(report.resumes >= calls_per_worker() as u64, "{report}");
}

/// A raw native client that keeps its first connection open and read after moving to a
/// second one (see `worker_sigstop_past_its_lease_is_fenced`).
struct SplitBrainObserver {
    call_id: String,
    index: usize,
    welcome: callworker_protocol::native::Welcome,
    /// Reads the old connection into the shared history until it closes.
    old_reader: JoinHandle<()>,
    observed: std::sync::Arc<std::sync::Mutex<Vec<Observed>>>,
    /// Highest server seq seen, for the resume's `hello`.
    last_server_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop_sending: watch::Sender<bool>,
    sender: JoinHandle<(callworker_client::native::NativeSender, u64)>,
}

/// A moved [`SplitBrainObserver`]: its new connection runs; the old one is still read.
struct MovedObserver {
    call_id: String,
    old_tx: callworker_client::native::NativeSender,
    old_reader: JoinHandle<()>,
    new_reader: JoinHandle<()>,
    observed: std::sync::Arc<std::sync::Mutex<Vec<Observed>>>,
    stop: watch::Sender<bool>,
    sender: JoinHandle<u64>,
    progress: watch::Receiver<(u64, u64)>,
    index: usize,
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// Records everything a raw connection receives as `session`, until it closes.
fn read_raw(
    mut rx: callworker_client::native::NativeReceiver,
    session: u64,
    observed: Shared<Vec<Observed>>,
    last_server_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    acked: Option<watch::Sender<(u64, u64)>>,
    t0: Instant,
) -> JoinHandle<()> {
    use callworker_client::native::ServerEvent;
    use callworker_protocol::native::ServerControl;
    tokio::spawn(async move {
        let ms = || t0.elapsed().as_millis() as u64;
        let mut bye = false;
        while let Some(e) = rx.next().await {
            let what = match e {
                ServerEvent::Audio { epoch, seq, .. } => {
                    last_server_seq.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                    What::Audio { epoch: Some(epoch), seq: Some(seq) }
                }
                ServerEvent::Control(ServerControl::Ack { upto_seq }) => {
                    if let Some(a) = &acked {
                        a.send_modify(|p| p.1 = p.1.max(upto_seq));
                    }
                    What::Acked { upto_seq }
                }
                ServerEvent::Control(ServerControl::Bye { .. }) => {
                    bye = true;
                    continue;
                }
                ServerEvent::Control(_) => continue,
                ServerEvent::Closed { code, reason } if bye => {
                    What::Ended { cause: format!("closed {code} {reason}"), clean: code == 1000 }
                }
                ServerEvent::Closed { code, .. } => What::Lost { code },
            };
            let end = matches!(what, What::Ended { .. } | What::Lost { .. });
            observed.lock().unwrap().push(Observed { at_ms: ms(), session, what });
            if end {
                return;
            }
        }
    })
}

/// Sends one frame every 20 ms from `next_seq` on, until told to stop; returns the sender
/// and the next seq.
fn send_raw(
    mut tx: callworker_client::native::NativeSender,
    index: usize,
    mut next_seq: u64,
    mut stop: watch::Receiver<bool>,
    progress: Option<watch::Sender<(u64, u64)>>,
) -> JoinHandle<(callworker_client::native::NativeSender, u64)> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    // A frozen peer fills the socket's buffers: a send may stall (bounded).
                    let sent = tokio::time::timeout(Duration::from_millis(100), tx.send_audio(next_seq, &frame(index, next_seq))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                    if let Some(p) = &progress {
                        p.send_modify(|p| p.0 = next_seq);
                    }
                    next_seq += 1;
                }
                _ = stop.changed() => {}
            }
        }
        (tx, next_seq)
    })
}

impl SplitBrainObserver {
    async fn start(fleet: &Fleet, index: usize) -> SplitBrainObserver {
        let api = fleet.api(0);
        let body = json!({"program": echo_program(), "record": {"inbound": true, "outbound": true}});
        let created = api.create_call(&body).await.unwrap();
        let hello = callworker_client::native::first_hello(created.call_id(), &created.resume_token, PCMU_8K);
        let url = fleet.media_urls(0).remove(0);
        let (tx, rx, welcome) = callworker_client::native::connect(&url, hello).await.unwrap();
        let observed: Shared<Vec<Observed>> = Default::default();
        let at_ms = fleet.t0.elapsed().as_millis() as u64;
        observed.lock().unwrap().push(Observed {
            at_ms,
            session: welcome.epoch,
            what: What::Welcome { epoch: Some(welcome.epoch) },
        });
        let last_server_seq = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let old_reader =
            read_raw(rx, welcome.epoch, observed.clone(), last_server_seq.clone(), None, fleet.t0);
        let (stop_sending, stop_rx) = watch::channel(false);
        let sender = send_raw(tx, index, 1, stop_rx, None);
        SplitBrainObserver {
            call_id: created.call_id().to_owned(),
            index,
            welcome,
            old_reader,
            observed,
            last_server_seq,
            stop_sending,
            sender,
        }
    }

    /// Stops sending on the old connection (leaving it open and read) and resumes on
    /// worker `to`, replaying from what the new owner asks for.
    async fn move_to(self, fleet: &Fleet, to: usize) -> MovedObserver {
        let _ = self.stop_sending.send(true);
        // The old connection's sender is kept (not closed, not reset) until the end.
        let (old_tx, next_seq) = self.sender.await.unwrap();
        let hello = callworker_protocol::native::Hello {
            epoch_seen: self.welcome.epoch,
            next_seq,
            last_server_seq_rx: self.last_server_seq.load(std::sync::atomic::Ordering::Relaxed),
            ..callworker_client::native::first_hello(&self.call_id, &self.welcome.resume_token, PCMU_8K)
        };
        let url = fleet.media_urls(to).remove(0);
        let (mut tx, rx, welcome) = callworker_client::native::connect(&url, hello).await.unwrap();
        let at_ms = fleet.t0.elapsed().as_millis() as u64;
        self.observed.lock().unwrap().push(Observed {
            at_ms,
            session: welcome.epoch,
            what: What::Welcome { epoch: Some(welcome.epoch) },
        });
        let (progress_tx, progress) = watch::channel((next_seq - 1, 0));
        let new_reader = read_raw(
            rx,
            welcome.epoch,
            self.observed.clone(),
            self.last_server_seq.clone(),
            Some(progress_tx.clone()),
            fleet.t0,
        );
        for seq in welcome.resume_from_seq..next_seq {
            tx.send_audio(seq, &frame(self.index, seq)).await.unwrap();
        }
        let (stop, stop_rx) = watch::channel(false);
        let inner = send_raw(tx, self.index, next_seq, stop_rx, Some(progress_tx));
        let sender = tokio::spawn(async move {
            let (mut tx, next) = inner.await.unwrap();
            tx.bye().await.unwrap();
            next
        });
        MovedObserver {
            call_id: self.call_id,
            old_tx,
            old_reader: self.old_reader,
            new_reader,
            observed: self.observed,
            stop,
            sender,
            progress,
            index: self.index,
        }
    }
}

impl MovedObserver {
    /// Hands the observer to [`finish`] as a running call: stopping it says `bye` on the
    /// new connection; its history holds both connections, in time order.
    fn finish(self) -> RunningCall {
        let MovedObserver {
            call_id,
            old_tx,
            old_reader,
            new_reader,
            observed,
            stop,
            sender,
            progress,
            index,
        } = self;
        let task = tokio::spawn(async move {
            let next = sender.await.unwrap();
            let _ = tokio::time::timeout(END_WAIT, new_reader).await;
            // The old connection is closed by its thawed, fenced worker.
            let closed = tokio::time::timeout(END_WAIT, old_reader).await.is_ok();
            assert!(closed, "the fenced worker closed the old connection");
            drop(old_tx);
            let mut observed = observed.lock().unwrap().clone();
            observed.sort_by_key(|o| o.at_ms);
            ClientRun { observed, sent: (1..next).flat_map(|s| frame(index, s)).collect() }
        });
        RunningCall { call_id, transport: Transport::Native, progress, stop, task }
    }
}

/// CPU starvation of one worker, as a CPU limit does it: CFS throttling lets a cgroup run
/// for its quota and then deschedules it until the next period. Emulated with a SIGSTOP /
/// SIGCONT duty cycle on the worker (this needs no privilege and burns no CPU on a shared
/// 2-core machine, unlike burner threads pinned to its core): first 60 ms stopped in every
/// 100 ms, then 450 of every 500 ms, then 2 s of every 2.5 s: longer than the lease but
/// shorter than the clients' liveness timeout, so the worker keeps its calls and must
/// confirm its ownership after each pause before it drives them again.
async fn cpu_starvation_of_a_worker(kind: BackendKind) {
    let fleet = Fleet::start(kind, "starve", 2).await;
    let calls = start_calls(&fleet, 1).await;
    tokio::time::sleep(phase(1_000)).await;
    let phases = [(60, 100, phase(3_000)), (450, 500, phase(3_000)), (2_000, 2_500, phase(5_000))];
    for (stopped_ms, period_ms, total) in phases {
        let until = Instant::now() + total;
        while Instant::now() < until {
            fleet.workers[0].signal(Signal::STOP).unwrap();
            tokio::time::sleep(Duration::from_millis(stopped_ms)).await;
            fleet.workers[0].signal(Signal::CONT).unwrap();
            tokio::time::sleep(Duration::from_millis(period_ms - stopped_ms)).await;
        }
    }
    wait_caught_up(&fleet, &calls).await;
    let report = finish(&fleet, calls).await;
    let paused = metric(&fleet.api(0), "callworker_session_pauses_past_lease_total", &[]).await;
    assert!(paused >= 1.0, "the worker noticed the pauses longer than its lease; {report}");
}
