//! The control API lists, reads, acts on and ends calls; end reasons show in the call and in
//! /metrics; bad requests get specific JSON errors.
#![allow(clippy::unwrap_used)]

mod common;

use callworker_client::ClientError;
use callworker_client::api::ControlApi;
use callworker_client::audio::test_pattern;
use callworker_client::native::ServerEvent;
use callworker_protocol::native::ServerControl;
use callworker_testkit::{TENANT_KEY, Worker, WorkerOptions};
use common::*;
use serde_json::{Value, json};

fn api_error(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("expected an API error, got {other}"),
    }
}

async fn raw(api: &ControlApi, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
    let url = format!("{}{path}", api.base_url());
    let mut req = api.http().request(method.parse().unwrap(), url);
    if let Some((content_type, body)) = body {
        req = req.header("content-type", content_type).body(body.to_owned());
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn calls_are_listed_read_acted_on_and_ended() {
    let worker = Worker::start(WorkerOptions::named("api")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);

    // Three calls: one never attached, two live.
    let idle =
        api.create_call(&json!({"program": echo_program(), "from": "+1555", "to": "+1666"})).await.unwrap();
    assert_eq!(idle.call["status"], "created");
    assert_eq!(idle.call["from"], "+1555");
    assert!(idle.media_url.ends_with("/v1/media"));
    let (live, mut tx, mut rx, _) = native_call(&api, echo_program()).await;
    let (other, _tx2, mut rx2, _) = native_call(&api, echo_program()).await;

    // Listing: filters and pagination.
    let all = api.list_calls("").await.unwrap();
    assert_eq!(all["calls"].as_array().unwrap().len(), 3);
    let active = wait_for_active(&api, 2).await;
    let ids: Vec<&str> = active.iter().map(|c| c["call_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&live.call_id()) && ids.contains(&other.call_id()));
    let page1 = api.list_calls("limit=2").await.unwrap();
    assert_eq!(page1["calls"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().expect("a second page");
    let page2 = api.list_calls(&format!("limit=2&cursor={cursor}")).await.unwrap();
    assert_eq!(page2["calls"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());

    // Actions on a live call: play a tone (heard), switch program, then hang up.
    let after = api
        .action(live.call_id(), &json!({"type": "play_tone", "freqs_hz": [1000], "duration_ms": 200}))
        .await
        .unwrap();
    assert_eq!(after["status"], "active");
    let (tone, _, _) = receive_audio(&mut rx, 1600).await;
    assert!(tone.iter().any(|&b| b != 0xFF), "the tone is audible (not silence)");
    let switched = api
        .action(live.call_id(), &json!({"type": "switch_program", "program": {"name": "tone", "params": {"segments": [{"freqs_hz": [], "duration_ms": 100}]}}}))
        .await
        .unwrap();
    assert_eq!(switched["program"], "tone");
    // An action the call refuses to validate is a 400 with a specific code.
    let bad = api
        .action(live.call_id(), &json!({"type": "play_tone", "freqs_hz": [99999], "duration_ms": 200}))
        .await;
    assert_eq!(api_error(bad.unwrap_err()), (400, "invalid_action".into()));
    // An action on a call with no session attached is a 409.
    let detached = api
        .action(idle.call_id(), &json!({"type": "play_tone", "freqs_hz": [440], "duration_ms": 200}))
        .await;
    assert_eq!(api_error(detached.unwrap_err()), (409, "call_not_attached".into()));

    // Ending through the API: the live session hears bye(api_ended) and closes.
    let ended = api.end_call(live.call_id()).await.unwrap();
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["end_reason"], "api_ended");
    let mut bye = None;
    let (code, _) = tokio::time::timeout(WAIT, async {
        loop {
            match rx.next().await.unwrap() {
                ServerEvent::Control(ServerControl::Bye { reason }) => bye = Some(reason),
                ServerEvent::Closed { code, reason } => break (code, reason),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((bye.as_deref(), code), (Some("api_ended"), 1000));
    // An idle call ends through the store.
    assert_eq!(api.end_call(idle.call_id()).await.unwrap()["end_reason"], "api_ended");
    // Hang-up action on the other live call.
    api.action(other.call_id(), &json!({"type": "hangup"})).await.unwrap();
    rx2.closed(WAIT).await.unwrap();
    wait_for_call(&api, other.call_id(), |c| c["end_reason"] == "api_ended").await;
    assert!(tx.send_audio(1, &test_pattern(1, 160)).await.is_err() || rx.next().await.is_none());

    // Ending twice, acting on an ended call: 409 call_ended.
    assert_eq!(api_error(api.end_call(live.call_id()).await.unwrap_err()), (409, "call_ended".into()));
    let late = api.action(live.call_id(), &json!({"type": "hangup"})).await;
    assert_eq!(api_error(late.unwrap_err()), (409, "call_ended".into()));
    assert_eq!(api.list_calls("status=ended").await.unwrap()["calls"].as_array().unwrap().len(), 3);
    assert_eq!(metric(&api, "callworker_calls_ended_total", &[("reason", "api_ended")]).await, 3.0);
    assert!(
        metric(&api, "callworker_http_requests_total", &[("route", "/v1/calls/{id}/end"), ("status", "200")])
            .await
            >= 2.0
    );
}

async fn wait_for_active(api: &ControlApi, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let calls = api.list_calls("status=active").await.unwrap()["calls"].as_array().unwrap().clone();
        if calls.len() == n {
            return calls;
        }
        assert!(tokio::time::Instant::now() < deadline, "expected {n} active calls, have {}", calls.len());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// (method, path, (content type, body), expected status, expected error code)
type Case = (&'static str, &'static str, Option<(&'static str, &'static str)>, u16, &'static str);

#[tokio::test]
async fn bad_requests_get_specific_errors() {
    let worker = Worker::start(WorkerOptions::named("api-errors")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let json_ct = "application/json";
    let cases: &[Case] = &[
        ("POST", "/v1/calls", Some((json_ct, "{not json")), 400, "invalid_json"),
        ("POST", "/v1/calls", Some(("text/plain", "{}")), 415, "unsupported_media_type"),
        ("POST", "/v1/calls", Some((json_ct, r#"{"program": {"name": "karaoke"}}"#)), 400, "invalid_body"),
        (
            "POST",
            "/v1/calls",
            Some((json_ct, r#"{"program": {"name": "echo", "params": {}}, "surprise": 1}"#)),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/calls",
            Some((json_ct, r#"{"program": {"name": "echo", "params": {"delay_ms": 999999}}}"#)),
            400,
            "invalid_program",
        ),
        (
            "POST",
            "/v1/calls",
            Some((json_ct, r#"{"program": {"name": "echo", "params": {}}, "tenant": "a:b"}"#)),
            400,
            "invalid_tenant",
        ),
        (
            "POST",
            "/v1/calls",
            Some((
                json_ct,
                r#"{"program": {"name": "echo", "params": {}}, "audio": {"encoding": "pcmu", "sample_rate_hz": 44100}}"#,
            )),
            400,
            "unsupported_audio",
        ),
        ("POST", "/v1/calls", Some((json_ct, r#"{"program": {"name": "echo"}}"#)), 400, "invalid_body"),
        ("GET", "/v1/calls/c_doesnotexist", None, 404, "call_not_found"),
        ("GET", "/v1/calls/not%20an%20id", None, 404, "call_not_found"),
        ("POST", "/v1/calls/c_doesnotexist/end", None, 404, "call_not_found"),
        ("GET", "/v1/calls?status=sleeping", None, 400, "invalid_status"),
        ("GET", "/v1/calls?limit=0", None, 400, "invalid_limit"),
        ("GET", "/v1/calls?cursor=garbage", None, 400, "invalid_request"),
        ("GET", "/nowhere", None, 404, "route_not_found"),
        ("DELETE", "/v1/calls", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let (got_status, got) = raw(&api, method, path, *body).await;
        assert_eq!(
            (got_status, got["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path}: {got}"
        );
        assert!(got["error"]["message"].is_string(), "{method} {path}: {got}");
    }
    let huge =
        format!(r#"{{"program": {{"name": "echo", "params": {{}}}}, "from": "{}"}}"#, "1".repeat(70_000));
    let (status, got) = raw(&api, "POST", "/v1/calls", Some((json_ct, &huge))).await;
    assert_eq!((status, got["error"]["code"].as_str()), (413, Some("body_too_large")), "{got}");
    // Nothing above created a call.
    assert_eq!(api.list_calls("").await.unwrap()["calls"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn health_readiness_and_capacity_refusals() {
    let worker = Worker::start(WorkerOptions::named("api-capacity").env("CALLWORKER_LIMITS__CALLS_MAX", "1"))
        .await
        .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (status, body) = raw(&api, "GET", "/healthz", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(raw(&api, "GET", "/readyz", None).await.0, 200);

    let (_created, _tx, _rx, _) = native_call(&api, echo_program()).await;
    // The only session slot is taken: not ready, new calls and sessions refused with 503.
    let (status, body) = raw(&api, "GET", "/readyz", None).await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("at_capacity")));
    let refused = api.create_call(&json!({"program": echo_program()})).await.unwrap_err();
    assert_eq!(api_error(refused), (503, "at_capacity".into()));
    let response = api
        .http()
        .post(format!("{}/v1/calls", api.base_url()))
        .json(&json!({"program": echo_program()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let upgrade =
        callworker_client::native::connect_raw(&format!("ws://127.0.0.1:{}/v1/media", worker.port)).await;
    match upgrade.unwrap_err() {
        ClientError::WebSocket(e) => assert!(e.to_string().contains("503"), "{e}"),
        other => panic!("expected an HTTP 503 refusal of the upgrade, got {other}"),
    }
    assert!(metric(&api, "callworker_admission_refused_total", &[("reason", "at_capacity")]).await >= 3.0);
}

#[tokio::test]
async fn sigterm_detaches_live_sessions_and_exits_zero() {
    let mut worker = Worker::start(WorkerOptions::named("api-sigterm")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (created, mut tx, mut rx, _) = native_call(&api, echo_program()).await;
    tx.send_audio(1, &test_pattern(5, 160)).await.unwrap();
    receive_audio(&mut rx, 160).await;

    let status = worker.terminate(std::time::Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "worker exit status after SIGTERM: {status}");
    // The client was told to reconnect elsewhere; the call was detached, not ended.
    let mut migrate = None;
    let (code, _) = tokio::time::timeout(WAIT, async {
        loop {
            match rx.next().await.unwrap() {
                ServerEvent::Control(ServerControl::Migrate { reason, .. }) => migrate = Some(reason),
                ServerEvent::Closed { code, reason } => break (code, reason),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((migrate.as_deref(), code), (Some("worker_shutdown"), 1001), "call {}", created.call_id());
}

#[tokio::test]
async fn media_endpoints_and_webhooks_refuse_the_wrong_kind_of_request_in_json() {
    let worker = Worker::start(WorkerOptions::named("api-kinds")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    // (/twilio/media is checked for its Twilio signature first: tests/auth.rs.)
    for path in ["/v1/media"] {
        let (status, body) = raw(&api, "GET", path, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("websocket_upgrade_required")),
            "{path}"
        );
    }
    let (status, body) = raw(&api, "POST", "/twilio/voice", Some(("application/json", "{}"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (415, Some("unsupported_media_type")));
}
