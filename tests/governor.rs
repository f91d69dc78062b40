//! The memory governor's wiring: a worker whose memory is over its (configured) limit stops
//! admitting; one well under it admits as usual. The limit is configured below or far above
//! what this machine's memory cgroup actually holds, so the real cgroup is what is read.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use callworker_client::api::ControlApi;
use callworker_testkit::{Worker, WorkerOptions};
use common::*;
use serde_json::{Value, json};

async fn admin_memory(api: &ControlApi) -> Value {
    let url = format!("{}/v1/admin/memory", api.base_url());
    api.http().get(url).send().await.unwrap().json().await.unwrap()
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
    let api = ControlApi::new(&worker.base_url);
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
    let api = ControlApi::new(&worker.base_url);
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
