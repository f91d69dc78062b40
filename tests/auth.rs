//! Authentication, tenancy and abuse limits, end to end against a real worker: every call
//! route refuses other tenants' keys (as if the call did not exist), bad and revoked keys,
//! operator-only routes, forged/expired/replayed/other-call resume tokens, unsigned Twilio
//! requests, foreign browser origins; and the tenant live-call cap and the per-key request
//! rate refuse specifically while a healthy call carries on undisturbed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use callworker_client::ClientError;
use callworker_client::api::{ControlApi, metric_sum};
use callworker_client::native;
use callworker_client::twilio::TwilioSimulator;
use callworker_protocol::native::Hello;
use callworker_protocol::twilio_signature;
use callworker_testkit::{
    OPERATOR_KEY, OTHER_TENANT_KEY, RedisServer, TENANT_KEY, TWILIO_AUTH_TOKEN, Worker, WorkerOptions,
    key_sha256,
};
use common::*;
use serde_json::{Value, json};

/// Sends a request and returns the status and the JSON error code (if any).
async fn call(api: &ControlApi, method: &str, path: &str, body: Option<Value>) -> (u16, Option<String>) {
    let url = format!("{}{path}", api.base_url());
    let request = match method {
        "GET" => api.http().get(url),
        "POST" => api.http().post(url),
        other => panic!("method {other}"),
    };
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert!(response.headers().get("set-cookie").is_none(), "no cookies anywhere: {path}");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

fn code(status: u16, c: &str) -> (u16, Option<String>) {
    (status, Some(c.to_owned()))
}

/// Every route that names a call, as (method, path, body).
fn call_routes(id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/v1/calls/{id}"), None),
        ("GET", format!("/v1/calls/{id}/events"), None),
        ("GET", format!("/v1/calls/{id}/recording"), None),
        (
            "POST",
            format!("/v1/calls/{id}/actions"),
            Some(json!({"type": "play_tone", "freqs_hz": [440], "duration_ms": 100})),
        ),
        ("POST", format!("/v1/calls/{id}/actions"), Some(json!({"type": "hangup"}))),
        ("POST", format!("/v1/calls/{id}/end"), None),
    ]
}

#[tokio::test]
async fn every_call_route_refuses_other_tenants_and_bad_keys() {
    let worker = Worker::start(WorkerOptions::named("auth-tenants")).await.unwrap();
    let a = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let b = ControlApi::new(&worker.base_url).with_key(OTHER_TENANT_KEY);
    let operator = ControlApi::new(&worker.base_url).with_key(OPERATOR_KEY);
    let anonymous = ControlApi::new(&worker.base_url);
    let forged =
        ControlApi::new(&worker.base_url).with_key("cwk_not-a-key-anybody-was-given-000000000000000");

    let mine = a
        .create_call(&json!({"program": echo_program(), "record": {"inbound": true, "outbound": true}}))
        .await
        .unwrap();
    assert_eq!(mine.call["tenant"], "default", "a tenant key creates calls for its tenant");
    let theirs = b.create_call(&json!({"program": echo_program()})).await.unwrap();
    assert_eq!(theirs.call["tenant"], "other");
    let id = mine.call_id().to_owned();

    // Another tenant gets exactly what a call that does not exist gets, on every route.
    let mut failures = Vec::new();
    for (method, path, body) in call_routes(&id) {
        let got = call(&b, method, &path, body.clone()).await;
        let absent = call(&b, method, &path.replace(&id, "c_0000000000000000000000ff"), body.clone()).await;
        if got != code(404, "call_not_found") || got != absent {
            failures.push(format!("other tenant {method} {path}: {got:?} (absent call: {absent:?})"));
        }
        for (who, api, want) in [
            ("no key", &anonymous, code(401, "missing_api_key")),
            ("unknown key", &forged, code(401, "invalid_api_key")),
        ] {
            let got = call(api, method, &path, body.clone()).await;
            if got != want {
                failures.push(format!("{who} {method} {path}: {got:?}, expected {want:?}"));
            }
        }
    }
    // Listing and creating are scoped to the key's tenant.
    let listed = b.list_calls("limit=100").await.unwrap();
    let ids: Vec<&str> =
        listed["calls"].as_array().unwrap().iter().map(|c| c["call_id"].as_str().unwrap()).collect();
    if ids != [theirs.call_id()] {
        failures.push(format!("other tenant lists {ids:?}"));
    }
    for (what, got) in [
        ("list another tenant", call(&b, "GET", "/v1/calls?tenant=default", None).await),
        (
            "create for another tenant",
            call(&b, "POST", "/v1/calls", Some(json!({"program": echo_program(), "tenant": "default"})))
                .await,
        ),
    ] {
        if got != code(403, "tenant_mismatch") {
            failures.push(format!("{what}: {got:?}"));
        }
    }
    for (method, path) in [("GET", "/v1/calls"), ("POST", "/v1/calls")] {
        let body = (method == "POST").then(|| json!({"program": echo_program()}));
        let got = call(&anonymous, method, path, body).await;
        if got != code(401, "missing_api_key") {
            failures.push(format!("no key {method} {path}: {got:?}"));
        }
    }
    // A malformed Authorization header.
    let basic = a
        .http()
        .get(format!("{}/v1/calls", worker.base_url))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    let basic_code: Value = basic.json().await.unwrap();
    if basic_code["error"]["code"] != "malformed_authorization" {
        failures.push(format!("Basic auth: {basic_code}"));
    }

    // Operator-only routes.
    let operator_routes = [
        ("GET", "/v1/workers"),
        ("GET", "/v1/admin/memory"),
        ("GET", "/v1/admin/memory/profile?seconds=1"),
        ("POST", "/v1/admin/memory/purge"),
        ("POST", "/v1/admin/drain"),
    ];
    for (method, path) in operator_routes {
        for (who, api, want) in [
            ("tenant key", &a, code(403, "operator_key_required")),
            ("no key", &anonymous, code(401, "missing_api_key")),
        ] {
            let got = call(api, method, path, None).await;
            if got != want {
                failures.push(format!("{who} {method} {path}: {got:?}, expected {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The operator reaches operator routes and every tenant's calls.
    assert_eq!(call(&operator, "GET", "/v1/workers", None).await.0, 200);
    assert_eq!(call(&operator, "GET", "/v1/admin/memory", None).await.0, 200);
    assert_eq!(operator.get_call(&id).await.unwrap()["tenant"], "default");
    assert_eq!(operator.get_call(theirs.call_id()).await.unwrap()["tenant"], "other");
    // Health and metrics need no key.
    assert_eq!(call(&anonymous, "GET", "/healthz", None).await.0, 200);

    // None of the refused attempts touched the call: its owner still sees it live.
    let call_now = a.get_call(&id).await.unwrap();
    assert_eq!(call_now["status"], "created", "{call_now}");

    // Another tenant's resume token cannot attach to this call.
    let hello = native::first_hello(&id, &theirs.resume_token, PCMU_8K);
    match native::connect(&mine.media_url, hello).await {
        Err(ClientError::Closed { code, reason }) => assert_eq!(code, 4401, "{reason}"),
        other => panic!("another tenant's token attached: {other:?}"),
    }
    // The owner's token does.
    let hello = native::first_hello(&id, &mine.resume_token, PCMU_8K);
    let (mut tx, _rx, welcome) = native::connect(&mine.media_url, hello).await.unwrap();
    assert_eq!(welcome.epoch, 1);
    tx.bye().await.unwrap();

    let metrics = anonymous.metrics().await.unwrap();
    let wrong_tenant = metric_sum(&metrics, "callworker_auth_refused_total", &[("reason", "wrong_tenant")]);
    assert!(wrong_tenant >= call_routes(&id).len() as f64, "wrong-tenant refusals counted: {wrong_tenant}");
    for reason in [
        "missing_api_key",
        "invalid_api_key",
        "malformed_authorization",
        "operator_key_required",
        "tenant_mismatch",
    ] {
        assert!(
            metric_sum(&metrics, "callworker_auth_refused_total", &[("reason", reason)]) >= 1.0,
            "{reason} counted"
        );
    }
}

#[tokio::test]
async fn with_auth_turned_off_the_api_is_open_and_the_worker_says_so_loudly() {
    let worker = Worker::start(WorkerOptions::named("auth-off").env("CALLWORKER_AUTH__REQUIRED", "false"))
        .await
        .unwrap();
    let anonymous = ControlApi::new(&worker.base_url);
    assert_eq!(call(&anonymous, "GET", "/v1/workers", None).await.0, 200);
    let created = anonymous.create_call(&json!({"program": echo_program()})).await.unwrap();
    assert_eq!(created.call["tenant"], "default");
    let log = std::fs::read_to_string(&worker.log_path).unwrap();
    assert!(log.contains("auth.required is false"), "the worker warns at start:\n{log}");
}

#[tokio::test]
async fn keys_in_the_keys_file_are_revoked_without_a_restart() {
    let dir = callworker_testkit::workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("auth-keys-{}.toml", std::process::id()));
    let rotating = "cwk_rotating-key-for-the-revocation-test-00000000";
    let write = |revoked: &str| {
        let body = match revoked {
            "gone" => "keys = []\n".to_owned(),
            "garbage" => "keys = [ this is not toml\n".to_owned(),
            flag => format!(
                "[[keys]]\nid = \"rotating\"\nrole = \"tenant\"\ntenant = \"default\"\nsha256 = \"{}\"\nrevoked = {flag}\n",
                key_sha256(rotating)
            ),
        };
        std::fs::write(&path, body).unwrap();
    };
    write("false");
    let worker = Worker::start(
        WorkerOptions::named("auth-revoke")
            .env("CALLWORKER_AUTH__KEYS_FILE", path.to_str().unwrap())
            .env("CALLWORKER_AUTH__KEYS_RELOAD_INTERVAL_MS", "100"),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(rotating);
    let configured = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    assert_eq!(call(&api, "GET", "/v1/calls", None).await.0, 200);

    let until = |want: (u16, Option<String>)| {
        let api = api.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let got = call(&api, "GET", "/v1/calls", None).await;
                if got == want {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "still {got:?}, waiting for {want:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    write("true");
    until(code(401, "revoked_api_key")).await;
    write("gone");
    until(code(401, "invalid_api_key")).await;
    // A broken file keeps the keys in force and is counted.
    write("false");
    until((200, None)).await;
    write("garbage");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&configured, "callworker_auth_keys_reload_failures_total", &[]).await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the broken keys file was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(&api, "GET", "/v1/calls", None).await.0, 200, "the keys in force stay");
    // Keys from the configuration were never affected.
    assert_eq!(call(&configured, "GET", "/v1/calls", None).await.0, 200);
    let _ = std::fs::remove_file(&path);
}

/// Opens a native session with `hello` and returns the close code it was refused with.
async fn refused(media_url: &str, hello: Hello) -> (u16, String) {
    match native::connect(media_url, hello).await {
        Err(ClientError::Closed { code, reason }) => (code, reason),
        Ok((_, _, welcome)) => panic!("attached (epoch {}) with a token that must be refused", welcome.epoch),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

#[tokio::test]
async fn forged_expired_replayed_and_other_call_resume_tokens_are_all_refused() {
    // Tokens live 3 s here, so expiry is quick to observe.
    let worker = Worker::start(
        WorkerOptions::named("auth-tokens").env("CALLWORKER_SECURITY__RESUME_TOKEN_TTL_MS", "3000"),
    )
    .await
    .unwrap();
    let a = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let b = ControlApi::new(&worker.base_url).with_key(OTHER_TENANT_KEY);
    let x = a.create_call(&json!({"program": echo_program()})).await.unwrap();
    let y = a.create_call(&json!({"program": echo_program()})).await.unwrap();
    let z = b.create_call(&json!({"program": echo_program()})).await.unwrap();
    let url = x.media_url.clone();
    let hello = |token: &str, epoch_seen: u64| Hello {
        epoch_seen,
        ..native::first_hello(x.call_id(), token, PCMU_8K)
    };

    let real = x.resume_token.clone();
    let mut failures = Vec::new();
    // Replay: the token is rotated by each attach; an earlier one is refused afterwards.
    let (tx, rx, first) = native::connect(&url, hello(&real, 0)).await.unwrap();
    assert_eq!(first.epoch, 1);
    native::abort(tx, rx);
    let (code, reason) = refused(&url, hello(&real, 0)).await;
    if !(code == 4401 || code == 4409) {
        failures.push(format!("replayed epoch-0 token: {code} {reason}"));
    }
    let (code, reason) = refused(&url, hello(&real, 1)).await;
    if code != 4401 {
        failures.push(format!("epoch-0 token claiming epoch 1: {code} {reason}"));
    }
    // The rotated token resumes (the call moves to epoch 2) …
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut tx, _rx, second) = loop {
        match native::connect(&url, hello(&first.resume_token, 1)).await {
            Ok(attached) => break attached,
            // The worker may not have seen the dropped socket yet.
            Err(ClientError::Closed { code: 4409, .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the rotated token did not resume: {e}"),
        }
    };
    assert_eq!(second.epoch, 2);
    assert_ne!(second.resume_token, first.resume_token, "tokens rotate on every resume");
    tx.bye().await.unwrap();
    // … and is refused once used.
    let (code, reason) = refused(&url, hello(&first.resume_token, 1)).await;
    if !(code == 4401 || code == 4409 || code == 4410) {
        failures.push(format!("replayed epoch-1 token: {code} {reason}"));
    }

    // Forged: every shape of token that was not issued for this call, tenant and epoch.
    let (expiry, sig) = real.strip_prefix("v1.").unwrap().split_once('.').unwrap();
    let mut flipped = sig.to_owned().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let mut forged = vec![
        String::new(),
        "v1".to_owned(),
        "v1..".to_owned(),
        format!("v2.{expiry}.{sig}"),
        format!("v1.{}.{sig}", expiry.parse::<u64>().unwrap() + 1),
        format!("v1.{expiry}.{flipped}"),
        format!("v1.{expiry}.{}", &sig[..sig.len() - 4]),
        format!("v1.{expiry}.{sig}AAAA"),
        format!("v1.99999999999999.{sig}"),
        "v1.99999999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        "x".repeat(200),
    ];
    for i in 0..10u8 {
        // Well-formed (43 base64url characters, 32 bytes), just not the MAC.
        let mac = "ABCDEFGHIJ".repeat(4).replace('A', &char::from(b'a' + i).to_string()) + "xyz";
        forged.push(format!("v1.{expiry}.{mac}"));
    }
    for token in &forged {
        let (code, reason) = refused(&url, hello(token, 0)).await;
        if code != 4401 {
            failures.push(format!("forged {token:?}: {code} {reason}"));
        }
    }
    // Another call's token (same tenant), and another tenant's.
    for (what, token) in [("other call", &y.resume_token), ("other tenant", &z.resume_token)] {
        let (code, reason) = refused(&url, hello(token, 0)).await;
        if code != 4401 {
            failures.push(format!("{what}: {code} {reason}"));
        }
    }
    // The right token at the wrong epoch.
    let (code, reason) = refused(&url, hello(&real, 3)).await;
    if code != 4401 {
        failures.push(format!("wrong epoch: {code} {reason}"));
    }

    // Expired: a token older than its lifetime.
    let w = a.create_call(&json!({"program": echo_program()})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let expired = Hello { ..native::first_hello(w.call_id(), &w.resume_token, PCMU_8K) };
    let (code, reason) = refused(&w.media_url, expired).await;
    if code != 4401 || !reason.contains("expired") {
        failures.push(format!("expired: {code} {reason}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let counted =
        metric(&a, "callworker_ws_messages_rejected_total", &[("reason", "invalid_resume_token")]).await;
    assert!(counted >= forged.len() as f64 + 5.0, "every refused token counted: {counted}");
}

/// POSTs `form` to `url` on the worker with an optional `X-Twilio-Signature`.
async fn twilio_post(url: &str, form: &[(&str, &str)], signature: Option<String>) -> (u16, Option<String>) {
    let mut request = reqwest::Client::new().post(url).form(form);
    if let Some(s) = signature {
        request = request.header("X-Twilio-Signature", s);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

fn params(form: &[(&str, &str)]) -> Vec<(String, String)> {
    form.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Opens a WebSocket upgrade with an optional signature; the refusal's status and code.
async fn upgrade_refusal(url: &str, signature: Option<String>) -> (u16, Option<String>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    if let Some(s) = signature {
        request.headers_mut().insert("X-Twilio-Signature", s.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value =
                response.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            (response.status().as_u16(), body["error"]["code"].as_str().map(str::to_owned))
        }
        Ok(_) => (101, None),
        Err(e) => panic!("upgrade failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn twilio_requests_without_a_valid_signature_are_refused() {
    let worker = Worker::start(WorkerOptions::named("auth-twilio")).await.unwrap();
    let api = ControlApi::new(&worker.base_url);
    let voice = format!("{}/twilio/voice", worker.base_url);
    let form = [("CallSid", "CA0001"), ("From", "+15550100"), ("To", "+15550199"), ("Direction", "inbound")];
    let token = TWILIO_AUTH_TOKEN.as_bytes();
    let missing = code(403, "twilio_signature_missing");
    let invalid = code(403, "twilio_signature_invalid");
    let mut failures = Vec::new();
    let mut check = |what: &str, got: (u16, Option<String>), want: &(u16, Option<String>)| {
        if &got != want {
            failures.push(format!("{what}: {got:?}, expected {want:?}"));
        }
    };
    check("voice unsigned", twilio_post(&voice, &form, None).await, &missing);
    check(
        "voice signed with another token",
        twilio_post(&voice, &form, Some(twilio_signature::sign(b"not-the-token", &voice, &params(&form))))
            .await,
        &invalid,
    );
    check(
        "voice signed for another URL",
        twilio_post(
            &voice,
            &form,
            Some(twilio_signature::sign(token, "https://elsewhere.example/twilio/voice", &params(&form))),
        )
        .await,
        &invalid,
    );
    let mut tampered = form;
    tampered[1] = ("From", "+15550666");
    check(
        "voice with a parameter changed after signing",
        twilio_post(&voice, &tampered, Some(twilio_signature::sign(token, &voice, &params(&form)))).await,
        &invalid,
    );
    check("voice with a malformed signature", twilio_post(&voice, &form, Some("!!!".into())).await, &invalid);
    let ended = format!("{}/twilio/stream-ended?call_id=c_0000000000000000000000ff", worker.base_url);
    check("stream-ended unsigned", twilio_post(&ended, &form, None).await, &missing);
    check(
        "stream-ended signed without its query",
        twilio_post(
            &ended,
            &form,
            Some(twilio_signature::sign(
                token,
                &format!("{}/twilio/stream-ended", worker.base_url),
                &params(&form),
            )),
        )
        .await,
        &invalid,
    );
    let media = format!("ws://127.0.0.1:{}/twilio/media", worker.port);
    check("media upgrade unsigned", upgrade_refusal(&media, None).await, &missing);
    check(
        "media upgrade signed with another token",
        upgrade_refusal(&media, Some(twilio_signature::sign(b"not-the-token", &media, &[]))).await,
        &invalid,
    );
    // A signed request that is not an upgrade passes the signature and is then refused as such.
    let plain = reqwest::Client::new()
        .get(format!("{}/twilio/media", worker.base_url))
        .header("X-Twilio-Signature", twilio_signature::sign(token, &media, &[]))
        .send()
        .await
        .unwrap();
    let body: Value = plain.json().await.unwrap();
    check(
        "signed non-upgrade",
        (400, body["error"]["code"].as_str().map(str::to_owned)),
        &code(400, "websocket_upgrade_required"),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing was created by the refused webhooks; a signed call works end to end.
    let metrics = api.metrics().await.unwrap();
    assert_eq!(metric_sum(&metrics, "callworker_calls_created_total", &[]), 0.0);
    assert!(
        metric_sum(&metrics, "callworker_auth_refused_total", &[("reason", "twilio_signature_missing")])
            >= 3.0
    );
    assert!(
        metric_sum(&metrics, "callworker_auth_refused_total", &[("reason", "twilio_signature_invalid")])
            >= 6.0
    );
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    stream.send_media(vec![0x55; 160]).await.unwrap();
    assert_eq!(next_twilio_media(&mut stream).await, vec![0x55; 160]);
    stream.stop().await.unwrap();

    // A worker with no auth token cannot verify Twilio, so it refuses Twilio outright.
    let unconfigured =
        Worker::start(WorkerOptions::named("auth-twilio-unset").env("CALLWORKER_TWILIO__AUTH_TOKEN", ""))
            .await
            .unwrap();
    let voice = format!("{}/twilio/voice", unconfigured.base_url);
    let signed = Some(twilio_signature::sign(token, &voice, &params(&form)));
    assert_eq!(twilio_post(&voice, &form, signed).await, code(403, "twilio_not_configured"));
}

#[tokio::test]
async fn browser_origins_outside_the_allow_list_are_refused() {
    let worker = Worker::start(
        WorkerOptions::named("auth-origin")
            .env("CALLWORKER_SECURITY__ALLOWED_ORIGINS", "[\"https://app.example.com\"]"),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let list = |origin: Option<&'static str>| {
        let api = api.clone();
        async move {
            let mut request = api.http().get(format!("{}/v1/calls", api.base_url()));
            if let Some(o) = origin {
                request = request.header("Origin", o);
            }
            let response = request.send().await.unwrap();
            assert!(response.headers().get("set-cookie").is_none());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["error"]["code"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(list(Some("https://evil.example")).await, code(403, "origin_not_allowed"));
    assert_eq!(list(Some("null")).await, code(403, "origin_not_allowed"));
    assert_eq!(list(Some("https://app.example.com")).await.0, 200);
    assert_eq!(list(None).await.0, 200, "no Origin: not a browser, not affected");

    // WebSocket upgrades too (before anything else is looked at).
    let created = api.create_call(&json!({"program": echo_program()})).await.unwrap();
    let upgrade = |origin: &'static str| {
        let url = created.media_url.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.as_str().into_client_request().unwrap();
            request.headers_mut().insert("Origin", origin.parse().unwrap());
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(upgrade("https://evil.example").await, 403);
    assert_eq!(upgrade("https://app.example.com").await, 101);
    assert!(metric(&api, "callworker_auth_refused_total", &[("reason", "origin_not_allowed")]).await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_call_cap_and_key_rate_limit_refuse_while_a_healthy_call_carries_on() {
    let worker = Worker::start(
        WorkerOptions::named("auth-limits")
            .env("CALLWORKER_AUTH__TENANT_CALLS_MAX", "3")
            .env("CALLWORKER_AUTH__REQUESTS_PER_SECOND", "50")
            .env("CALLWORKER_AUTH__REQUESTS_BURST", "20"),
    )
    .await
    .unwrap();
    let a = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let b = ControlApi::new(&worker.base_url).with_key(OTHER_TENANT_KEY);
    let operator = ControlApi::new(&worker.base_url).with_key(OPERATOR_KEY);
    let healthy = HealthyCall::start(&a).await;

    // Tenant "other" may have 3 live calls; the 4th is refused until one ends.
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(b.create_call(&json!({"program": echo_program()})).await.unwrap());
    }
    let response = b
        .http()
        .post(format!("{}/v1/calls", worker.base_url))
        .json(&json!({"program": echo_program()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_calls_limit", "{body}");
    // The cap is per tenant: "default" (with its healthy call) still creates.
    let extra = a.create_call(&json!({"program": echo_program()})).await.unwrap();
    b.end_call(created[0].call_id()).await.unwrap();
    b.create_call(&json!({"program": echo_program()})).await.unwrap();

    // The operator key floods: beyond its burst it gets 429 with Retry-After; other keys'
    // buckets are untouched.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let http = operator.http().clone();
        let url = format!("{}/v1/workers", worker.base_url);
        flood.spawn(async move {
            let r = http.get(url).send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, retry, body["error"]["code"].as_str().map(str::to_owned))
        });
    }
    let mut ok = 0;
    let mut limited = 0;
    while let Some(result) = flood.join_next().await {
        match result.unwrap() {
            (200, _, _) => ok += 1,
            (429, true, Some(c)) if c == "rate_limited" => limited += 1,
            other => panic!("unexpected answer in the flood: {other:?}"),
        }
    }
    assert!(ok >= 20, "the burst passes: {ok}");
    assert!(limited >= 1, "the flood is limited ({ok} passed)");
    assert_eq!(a.get_call(extra.call_id()).await.unwrap()["status"], "created", "another key is not limited");

    // An oversized body is refused before it is read into a call.
    let big = json!({"program": echo_program(), "from": "x".repeat(70_000)});
    let (status, error) = call(&a, "POST", "/v1/calls", Some(big)).await;
    assert_eq!((status, error.as_deref()), (413, Some("body_too_large")));

    let metrics = a.metrics().await.unwrap();
    assert!(metric_sum(&metrics, "callworker_limit_refused_total", &[("limit", "tenant_calls")]) >= 1.0);
    assert!(
        metric_sum(&metrics, "callworker_limit_refused_total", &[("limit", "api_rate")]) >= limited as f64
    );
    healthy.finish(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_call_cap_holds_across_workers_sharing_redis() {
    let redis = RedisServer::start().await.unwrap();
    let options = |name: &str| {
        WorkerOptions::named(name)
            .env("CALLWORKER_STORE__KIND", "redis")
            .env("CALLWORKER_STORE__REDIS_URL", &redis.url())
            .env("CALLWORKER_AUTH__TENANT_CALLS_MAX", "3")
    };
    let w1 = Worker::start(options("auth-cap-1")).await.unwrap();
    let w2 = Worker::start(options("auth-cap-2")).await.unwrap();
    let b1 = ControlApi::new(&w1.base_url).with_key(OTHER_TENANT_KEY);
    let b2 = ControlApi::new(&w2.base_url).with_key(OTHER_TENANT_KEY);
    let a2 = ControlApi::new(&w2.base_url).with_key(TENANT_KEY);
    let first = b1.create_call(&json!({"program": echo_program()})).await.unwrap();
    b1.create_call(&json!({"program": echo_program()})).await.unwrap();
    b2.create_call(&json!({"program": echo_program()})).await.unwrap();
    // Three live calls of tenant "other" across the two workers: a fourth is refused on both.
    for api in [&b1, &b2] {
        match api.create_call(&json!({"program": echo_program()})).await {
            Err(ClientError::Api { status: 429, code, .. }) => assert_eq!(code, "tenant_calls_limit"),
            other => panic!("a fourth call was not refused on {}: {other:?}", api.base_url()),
        }
    }
    // Another tenant is not affected; ending one call (on the other worker) frees a place.
    a2.create_call(&json!({"program": echo_program()})).await.unwrap();
    b2.end_call(first.call_id()).await.unwrap();
    b2.create_call(&json!({"program": echo_program()})).await.unwrap();
}
