//! The memory governor's wiring: a worker whose memory is over its (configured) limit stops
//! admitting; one well under it admits as usual. The limit is configured below or far above
//! what this machine's memory cgroup actually holds, so the real cgroup is what is read.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use callworker_client::api::ControlApi;
use callworker_testkit::{OPERATOR_KEY, TENANT_KEY, Worker, WorkerOptions};
use common::*;
use serde_json::{Value, json};

/// `n` native calls on the worker behind `api` that each hold ~128 KB once their echo delay
/// buffer fills (L16 16 kHz, 4 s delay), connected through `media_urls`.
async fn memory_heavy_calls(
    api: &ControlApi,
    n: usize,
    media_urls: &[String],
) -> Vec<(
    callworker_client::resilient::ResilientCall,
    tokio::sync::mpsc::Receiver<callworker_client::resilient::CallEvent>,
)> {
    use callworker_client::resilient::{ResilientCall, ResilientConfig};
    use callworker_protocol::{AudioFormat, Encoding};
    let l16 = AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 };
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        let created = api
            .create_call(&json!({"program": {"name": "echo", "params": {"delay_ms": 4000}}, "audio": {"encoding": "l16", "sample_rate_hz": 16000}}))
            .await
            .unwrap();
        let connected = ResilientCall::connect(
            media_urls.iter().cloned(),
            created.call_id(),
            &created.resume_token,
            l16,
            ResilientConfig::default(),
        )
        .await
        .unwrap();
        calls.push(connected);
    }
    calls
}

async fn admin_memory(api: &ControlApi) -> Value {
    let url = format!("{}/v1/admin/memory", api.base_url());
    api.http().get(url).bearer_auth(OPERATOR_KEY).send().await.unwrap().json().await.unwrap()
}

/// Waits for the governor's first sample; `None` (after saying why, loudly) when this
/// machine gives the worker no memory cgroup to read.
async fn first_sample(api: &ControlApi) -> Option<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let memory = admin_memory(api).await;
        if !memory["sample"].is_null() {
            return Some(memory);
        }
        if let Some(reason) = memory["idle_reason"].as_str() {
            eprintln!("\n!!! SKIPPING governor test: the governor is idle on this machine: {reason} !!!\n");
            return None;
        }
        assert!(Instant::now() < deadline, "no governor sample: {memory}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_its_memory_limit_a_worker_admits_nothing_and_says_why() {
    let worker = Worker::start(
        WorkerOptions::named("governor-over").env("CALLWORKER_GOVERNOR__MEMORY_LIMIT_BYTES", "1048576"),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let Some(memory) = first_sample(&api).await else { return };
    assert_eq!(memory["level"], "emergency", "{memory}");
    assert_eq!(memory["sample"]["limit_bytes"], 1_048_576);
    assert!(memory["sample"]["pressure"].as_f64().unwrap() > 1.0, "{memory}");

    let refused = api
        .http()
        .post(format!("{}/v1/calls", worker.base_url))
        .json(&json!({"program": echo_program()}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "memory_pressure");

    let ready = api.http().get(format!("{}/readyz", worker.base_url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["reason"], "memory_pressure");

    // Media sessions are refused before the upgrade at this level.
    let media = api
        .http()
        .get(format!("{}/v1/media", worker.base_url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(media.status(), 503);

    assert_eq!(metric(&api, "callworker_governor_level", &[]).await, 4.0);
    assert!(
        metric(&api, "callworker_admission_refused_total", &[("reason", "memory_pressure")]).await >= 2.0
    );
    // Liveness never depends on the governor.
    let health = api.http().get(format!("{}/healthz", worker.base_url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn well_under_its_limit_a_worker_admits_as_usual() {
    let worker = Worker::start(
        WorkerOptions::named("governor-under")
            .env("CALLWORKER_GOVERNOR__MEMORY_LIMIT_BYTES", "1099511627776"),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let Some(memory) = first_sample(&api).await else { return };
    let limit = memory["sample"]["limit_bytes"].as_u64().unwrap();
    assert!(limit <= 1_099_511_627_776, "the configured limit or a lower cgroup one: {memory}");
    let pressure = memory["sample"]["pressure"].as_f64().unwrap();
    if pressure < 0.75 {
        assert_eq!(memory["level"], "normal", "{memory}");
        api.create_call(&json!({"program": echo_program()})).await.unwrap();
        let ready = api.http().get(format!("{}/readyz", worker.base_url)).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    } else {
        eprintln!(
            "\n!!! this machine's memory cgroup is already at {pressure:.2} of its own limit; admission not checked !!!\n"
        );
    }
    assert!(memory["sample"]["working_set_bytes"].as_u64().unwrap() > 0);
}

/// A worker in a real memory cgroup whose calls push it toward the cgroup's limit: the
/// governor migrates calls (largest first) to another worker instead of letting the
/// kernel OOM-kill it, and no call is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_its_cgroup_limit_a_worker_migrates_calls_instead_of_being_oom_killed() {
    use callworker_client::resilient::{CallEvent, ResilientCall};
    use callworker_testkit::{MemoryCgroup, RedisServer};

    let cgroup = match MemoryCgroup::create("governor") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("\n!!! SKIPPING the cgroup governor test: {e:#} !!!\n");
            return;
        }
    };
    let redis = RedisServer::start().await.unwrap();
    let fleet = |name: &str| {
        WorkerOptions::named(name)
            .env("CALLWORKER_STORE__KIND", "redis")
            .env("CALLWORKER_STORE__REDIS_URL", &redis.url())
            .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "200")
            .env("CALLWORKER_CHECKPOINT__LEASE_MS", "2000")
            .env("CALLWORKER_GOVERNOR__DWELL_MS", "1000")
    };
    let mut heavy = Worker::start(fleet("governor-heavy").in_cgroup(&cgroup.dir)).await.unwrap();
    let other = Worker::start(fleet("governor-other")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = cgroup.working_set().unwrap();
    let limit = base
        + (std::env::var("CW_TEST_HEADROOM_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(24u64) << 20);
    cgroup.set_limit(limit).unwrap();
    eprintln!(
        "cgroup {}: working set {} KiB at start, limit {} KiB",
        cgroup.dir.display(),
        base >> 10,
        limit >> 10
    );

    const CALLS: usize = 40;
    let api = ControlApi::new(&heavy.base_url).with_key(TENANT_KEY);
    let urls = vec![
        format!("ws://127.0.0.1:{}/v1/media", heavy.port),
        format!("ws://127.0.0.1:{}/v1/media", other.port),
    ];
    let mut calls = memory_heavy_calls(&api, CALLS, &urls).await;
    let frame = vec![0x11u8; 640];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut peak = 0;
    let mut acked = vec![0u64; CALLS];
    let drain = |calls: &mut Vec<(ResilientCall, tokio::sync::mpsc::Receiver<CallEvent>)>,
                 acked: &mut Vec<u64>| {
        for (i, (_, events)) in calls.iter_mut().enumerate() {
            while let Ok(e) = events.try_recv() {
                match e {
                    CallEvent::Acked { upto_seq } => acked[i] = acked[i].max(upto_seq),
                    CallEvent::Ended(cause) => panic!("call {i} ended: {cause:?}"),
                    _ => {}
                }
            }
        }
    };
    for i in 0..500u32 {
        tick.tick().await;
        for (call, _) in &calls {
            call.send_audio(&frame).await.unwrap();
        }
        drain(&mut calls, &mut acked);
        if i % 25 == 0 {
            let ws = cgroup.working_set().unwrap_or(0);
            peak = peak.max(ws);
            let level = admin_memory(&api).await["level"].clone();
            eprintln!(
                "t={}ms working set {} KiB ({:.2} of limit) level {level}",
                i * 20,
                ws >> 10,
                ws as f64 / limit as f64
            );
        }
    }
    assert!(heavy.try_wait().unwrap().is_none(), "the worker was killed: {}", heavy.log_tail());
    assert_eq!(cgroup.oom_kills().unwrap(), 0, "no OOM kill in the worker's cgroup");
    let migrated = metric(&api, "callworker_governor_actions_total", &[("action", "migrate")]).await;
    let other_api = ControlApi::new(&other.base_url).with_key(TENANT_KEY);
    let resumed = metric(&other_api, "callworker_calls_resumed_total", &[("cause", "migrated_memory")]).await;
    eprintln!(
        "peak working set {} KiB of {} KiB; migrated {migrated}, resumed elsewhere {resumed}",
        peak >> 10,
        limit >> 10
    );
    assert!(migrated >= 1.0, "the governor migrated calls");
    assert!(resumed >= 1.0, "migrated calls resumed on the other worker with cause migrated_memory");
    let last = 500u64;
    // A liveness bound, generous for a loaded 2-core CI machine: replays after a migration
    // catch up at 100 frames a second above live audio.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while acked.iter().any(|&a| a < last) && std::time::Instant::now() < deadline {
        drain(&mut calls, &mut acked);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, a) in acked.iter().enumerate() {
        let (call, _) = &calls[i];
        assert!(
            *a >= last,
            "call {i}: every frame acknowledged somewhere (acked up to {a}); session {:?}; stats {:?}",
            call.session(),
            call.stats()
        );
    }
    for (i, (call, _)) in calls.iter().enumerate() {
        assert_eq!(call.stats().silence_frames_sent, 0, "call {i}: no audio lost to the migration");
    }
    drop(calls);
    drop(heavy);
    drop(other);
    drop(redis);
}

/// Releasing allocator memory really returns it: after calls that held a few MB end, a
/// purge lowers jemalloc's resident bytes in the running worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_purge_returns_freed_memory_to_the_kernel() {
    use callworker_client::resilient::EndCause;

    let worker = Worker::start(WorkerOptions::named("governor-purge")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let urls = [format!("ws://127.0.0.1:{}/v1/media", worker.port)];
    let calls = memory_heavy_calls(&api, 40, &urls).await;
    let frame = vec![0x22u8; 640];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..150 {
        tick.tick().await;
        for (call, _) in &calls {
            call.send_audio(&frame).await.unwrap();
        }
    }
    for (call, _) in calls {
        assert_eq!(call.hangup().await, EndCause::HungUp);
    }
    let allocator = admin_memory(&api).await["allocator"].clone();
    assert!(allocator["resident"].as_u64().is_some(), "jemalloc statistics are served: {allocator}");
    let purge = api
        .http()
        .post(format!("{}/v1/admin/memory/purge", worker.base_url))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    let report: Value = purge.json().await.unwrap();
    let (before, after) =
        (report["resident_before"].as_u64().unwrap(), report["resident_after"].as_u64().unwrap());
    eprintln!("purge: resident {} KiB → {} KiB over {} arenas", before >> 10, after >> 10, report["arenas"]);
    assert!(after + (1 << 20) <= before, "a purge after the calls ended returns at least 1 MiB: {report}");
}
