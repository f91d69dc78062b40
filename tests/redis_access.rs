//! A worker on a Redis locked down as production's should be: a least-privilege ACL user
//! (the default user off), and TLS with a private CA (`rediss://`, `store.redis_ca_file`).
//! Each test runs one recorded call through a real worker, with acks (checkpoints), the
//! recording, the registry and readiness, i.e. every kind of store command.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::native::{self, ServerEvent};
use callworker_protocol::native::ServerControl;
use callworker_testkit::{
    OPERATOR_KEY, RedisServer, TENANT_KEY, TlsFiles, Worker, WorkerOptions, redis_cli, workspace_root,
};
use common::*;
use serde_json::{Value, json};

/// 20 ms of 8 kHz μ-law.
const FRAME_BYTES: usize = 160;
const FRAMES: u64 = 25;

/// One recorded echo call through `worker`: every frame echoed and acked (so checkpoints
/// were written), the recording exactly the audio sent; the worker is registered and ready.
async fn one_recorded_call(worker: &Worker) {
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let created =
        api.create_call(&json!({ "program": echo_program(), "record": {"inbound": true} })).await.unwrap();
    let hello = native::first_hello(created.call_id(), &created.resume_token, PCMU_8K);
    let (mut tx, mut rx, _welcome) = native::connect(&created.media_url, hello).await.unwrap();
    let mut sent = Vec::new();
    for seq in 1..=FRAMES {
        let frame: Vec<u8> = (0..FRAME_BYTES).map(|i| ((seq * 7 + i as u64) % 251) as u8).collect();
        tx.send_audio(seq, &frame).await.unwrap();
        sent.extend_from_slice(&frame);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (echoed, _, _) = receive_audio(&mut rx, sent.len()).await;
    assert_eq!(echoed, sent, "the echo");
    let acked = tokio::time::timeout(WAIT, async {
        loop {
            match rx.next().await {
                Some(ServerEvent::Control(ServerControl::Ack { upto_seq })) if upto_seq >= FRAMES => return,
                Some(ServerEvent::Closed { code, reason }) => panic!("closed: {code} {reason}"),
                None => panic!("receiver ended"),
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "a checkpoint covered every frame; log:\n{}", worker.log_tail());
    tx.bye().await.unwrap();
    let view = wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(view["end_reason"], "client_hangup");
    let url = format!("{}/v1/calls/{}/recording", api.base_url(), created.call_id());
    let wav = api.http().get(url).send().await.unwrap().bytes().await.unwrap();
    let at = wav.windows(4).position(|w| w == b"data").expect("a data chunk");
    assert!(wav[at + 8..] == sent[..], "the recording is exactly the audio sent");
    let workers: Value = api
        .http()
        .get(format!("{}/v1/workers", api.base_url()))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(workers["workers"].as_array().map(Vec::len), Some(1), "{workers}");
    let ready = api.http().get(format!("{}/readyz", api.base_url())).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(metric(&api, "callworker_store_errors_total", &[]).await, 0.0, "no store command failed");
}

/// The default user is off; `callworker` may run only the documented commands, on `cw:*`
/// keys (the ACL line of docs/operations.md, built from `ACL_COMMANDS`). A worker logged in
/// as it carries a call, and Redis refused nothing (its `ACL LOG` stays empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_as_a_least_privilege_acl_user() {
    let commands = std::fs::read_to_string(workspace_root().join("docs/operations.md")).unwrap();
    let line = commands
        .lines()
        .find(|l| l.starts_with("ACL SETUSER callworker "))
        .expect("docs/operations.md has the ACL SETUSER line");
    // The documented line, with the password placeholder filled in and as server arguments.
    let rules: Vec<String> = line
        .trim_start_matches("ACL SETUSER callworker ")
        .split_whitespace()
        .map(|r| if r.starts_with('>') { ">s3cret-pw".to_owned() } else { r.to_owned() })
        .collect();
    let mut args = vec!["--user", "default", "off", "--user", "admin", "on", ">admin-pw", "~*", "+@all"];
    args.extend(["--user", "callworker"]);
    args.extend(rules.iter().map(String::as_str));
    let redis = RedisServer::start_with(&args).await.unwrap();
    let url = format!("redis://callworker:s3cret-pw@127.0.0.1:{}", redis.port());
    let options = WorkerOptions::named("acl")
        .env("CALLWORKER_STORE__KIND", "redis")
        .env("CALLWORKER_STORE__REDIS_URL", &url)
        .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "200")
        .env("CALLWORKER_RESUME__REAPER_INTERVAL_MS", "200")
        .env("CALLWORKER_RESUME__HEARTBEAT_INTERVAL_MS", "200");
    let worker = Worker::start(options).await.unwrap();
    one_recorded_call(&worker).await;
    // Let the reaper and the registry run a few rounds too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let port = redis.port();
    let log = tokio::task::spawn_blocking(move || {
        redis_cli(port, &["--user", "admin", "--pass", "admin-pw", "--no-auth-warning", "ACL", "LOG"])
    })
    .await
    .unwrap()
    .unwrap();
    assert!(log.trim().is_empty(), "Redis refused some of the worker's commands: {log}");
}

/// `rediss://` to a redis-server that speaks only TLS, with a certificate from a CA made
/// here and trusted through `store.redis_ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reaches_redis_over_tls_with_a_private_ca() {
    let dir = workspace_root().join(format!("target/test-logs/tls-worker-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir).unwrap();
    // Debian's redis-server is built with TLS; a build without it cannot start this server.
    let redis = match RedisServer::start_tls(&tls, &[]).await {
        Ok(redis) => redis,
        Err(e) if e.to_string().contains("TLS") || e.to_string().contains("tls") => {
            eprintln!("SKIPPED: redis-server cannot serve TLS here (built without BUILD_TLS?): {e:#}");
            return;
        }
        Err(e) => panic!("start a TLS redis-server: {e:#}"),
    };
    let options = WorkerOptions::named("tls")
        .env("CALLWORKER_STORE__KIND", "redis")
        .env("CALLWORKER_STORE__REDIS_URL", &redis.url())
        .env("CALLWORKER_STORE__REDIS_CA_FILE", tls.ca_cert.to_str().unwrap())
        .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "200");
    let worker = Worker::start(options).await.unwrap();
    one_recorded_call(&worker).await;
    drop(worker);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
