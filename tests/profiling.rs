//! On-demand heap profiling (`GET /v1/admin/memory/profile`): refused, each time with its
//! own error, when configuration is off, when jemalloc was not started with `prof:true`, for
//! a window out of bounds and while another profile runs; otherwise a gzipped pprof profile.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::time::Duration;

use callworker_testkit::{OPERATOR_KEY, Worker, WorkerOptions};
use prost::Message;
use serde_json::Value;

/// What operators are told to start a profilable worker with (see `profiling.rs`).
const MALLOC_CONF: &str = "prof:true,prof_active:false,lg_prof_sample:19";
/// The same with one sample per 4 KiB rather than 512 KiB, so that what a test worker keeps
/// from a one-second window is sure to be sampled.
const MALLOC_CONF_DENSE: &str = "prof:true,prof_active:false,lg_prof_sample:12";

/// The parts of pprof's `Profile` message (perftools.profiles, profile.proto) this test
/// reads; prost skips the other fields.
#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
}

/// A client that sends the operator key (the profile route is an operator route).
fn operator_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {OPERATOR_KEY}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

fn profile_url(worker: &Worker, seconds: &str) -> String {
    format!("{}/v1/admin/memory/profile?seconds={seconds}", worker.base_url)
}

/// Expects a JSON error with `status` and `code`; returns its message.
async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn disabled_by_configuration_the_endpoint_is_not_found() {
    let worker = Worker::start(WorkerOptions::named("profiling-off").env("_RJEM_MALLOC_CONF", MALLOC_CONF))
        .await
        .unwrap();
    let response = operator_http().get(profile_url(&worker, "1")).send().await.unwrap();
    let message = expect_error(response, 404, "profiling_disabled").await;
    assert!(message.contains("CALLWORKER_PROFILING__ENABLED"), "{message}");
}

#[tokio::test]
async fn without_jemalloc_profiling_the_endpoint_says_how_to_start_the_worker() {
    let worker =
        Worker::start(WorkerOptions::named("profiling-no-prof").env("CALLWORKER_PROFILING__ENABLED", "true"))
            .await
            .unwrap();
    let response = operator_http().get(profile_url(&worker, "1")).send().await.unwrap();
    let message = expect_error(response, 409, "profiling_unavailable").await;
    assert!(message.contains(&format!("_RJEM_MALLOC_CONF={MALLOC_CONF}")), "{message}");
}

#[tokio::test]
async fn a_one_second_profile_is_a_gzipped_pprof_heap_profile() {
    let worker = Worker::start(
        WorkerOptions::named("profiling-on")
            .env("CALLWORKER_PROFILING__ENABLED", "true")
            .env("_RJEM_MALLOC_CONF", MALLOC_CONF_DENSE),
    )
    .await
    .unwrap();
    let http = operator_http();

    for seconds in ["0", "301"] {
        let response = http.get(profile_url(&worker, seconds)).send().await.unwrap();
        expect_error(response, 400, "invalid_seconds").await;
    }
    let response = http.get(profile_url(&worker, "soon")).send().await.unwrap();
    expect_error(response, 400, "invalid_query").await;

    let profile = tokio::spawn({
        let (http, url) = (http.clone(), profile_url(&worker, "1"));
        async move { http.get(url).send().await.unwrap() }
    });
    // While it runs: a second profile is refused, and the worker allocates (every /metrics
    // render builds a fresh text body) so the window holds samples.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = http.get(profile_url(&worker, "1")).send().await.unwrap();
    expect_error(second, 409, "profile_in_progress").await;
    while !profile.is_finished() {
        let _ = http.get(format!("{}/metrics", worker.base_url)).send().await.unwrap().bytes().await;
    }
    let response = profile.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.starts_with("attachment; filename=\"callworker-heap-"), "{disposition}");
    assert!(disposition.ends_with(".pb.gz\""), "{disposition}");

    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip stream");
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut decoded).unwrap();
    let profile = Profile::decode(&decoded[..]).expect("a pprof Profile message");
    let name = |i: i64| profile.string_table[usize::try_from(i).unwrap()].as_str();
    let sample_types: Vec<(&str, &str)> =
        profile.sample_type.iter().map(|t| (name(t.r#type), name(t.unit))).collect();
    assert_eq!(sample_types, [("inuse_space", "bytes")]);
    assert!(!profile.mapping.is_empty(), "the profile maps the binary's addresses");
    eprintln!("profile: {} samples, {} bytes gzipped", profile.sample.len(), body.len());
    assert!(!profile.sample.is_empty(), "allocations during the window were sampled");
    assert!(profile.sample.iter().all(|s| !s.location_id.is_empty() && s.value.len() == 1));

    // Sampling was switched off and the slot released: the next profile is taken too.
    let again = http.get(profile_url(&worker, "1")).send().await.unwrap();
    assert_eq!(again.status(), 200);
}
