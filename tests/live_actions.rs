//! Control-API actions on live calls, wherever they run: a real `redis-server`, two or three
//! real workers sharing it, real clients.
//!
//! A call is carried by the worker its media session reached (its owner). An action sent
//! to any other worker is forwarded there once, signed worker to worker; what the client
//! hears and sees proves that the owner applied it. The actions follow the call across a
//! `kill -9` of its worker, mute is part of the checkpointed state, and the forwarding
//! header cannot be forged by a client nor make a request bounce between workers.

#![allow(clippy::unwrap_used)]

mod common;
mod fleet;

use std::sync::Arc;
use std::time::Duration;

use callworker_client::ClientError;
use callworker_client::api::ControlApi;
use callworker_client::native::{self, ServerEvent};
use callworker_client::resilient::{CallEvent, EndCause};
use callworker_client::twilio::{TwilioSimulator, Twiml};
use callworker_protocol::codec::ULAW_SILENCE;
use callworker_protocol::native::ServerControl;
use callworker_testkit::{OPERATOR_KEY, OTHER_TENANT_KEY, TWILIO_AUTH_TOKEN};
use common::*;
use fleet::*;
use serde_json::{Value, json};

/// The error code of a refused API call.
fn code_of(result: Result<Value, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A frame that is not silence, unique to `seq`.
fn voice(seq: u64) -> Vec<u8> {
    (0..FRAME_BYTES).map(|i| ((seq * 13 + i as u64) % 200) as u8 + 20).collect()
}

/// Waits for server audio on a resilient call until `pred` holds for a frame (bounded).
async fn audio_until(
    events: &mut tokio::sync::mpsc::Receiver<CallEvent>,
    mut pred: impl FnMut(&[u8]) -> bool,
) -> Vec<CallEvent> {
    until(events, WAIT, |e| matches!(e, CallEvent::Audio { payload, .. } if pred(payload))).await
}

/// An action to another worker than the call's: the owner applies it. The client hears the
/// tone, the switch, and the hang-up comes as the owner's `bye`, at once; the forwarding
/// worker counts the forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_sent_to_another_worker_is_applied_by_the_owner() {
    let fleet = Fleet::start("act-fwd", 2, &[]).await;
    let (owner, other) = (fleet.api(0), fleet.api(1));
    let created = owner.create_call(&json!({"program": echo_program()})).await.unwrap();
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    let id = created.call_id();

    let view =
        other.action(id, &json!({"type": "play_tone", "freqs_hz": [440], "duration_ms": 400})).await.unwrap();
    assert_eq!((view["status"].as_str(), view["attached"].as_bool()), (Some("active"), Some(true)), "{view}");
    // The echo sends nothing until the caller speaks: audio now is the owner's overlay.
    audio_until(&mut events, |p| p.iter().any(|&b| b != ULAW_SILENCE)).await;

    let tone = json!({"name": "tone", "params": {"segments": [{"freqs_hz": [620], "duration_ms": 200}]}});
    let view = other.action(id, &json!({"type": "switch_program", "program": tone})).await.unwrap();
    assert_eq!(view["program"], "tone", "{view}");
    until(&mut events, WAIT, |e| matches!(e, CallEvent::Clear)).await;

    // The cost of the hop, for the record (no bound asserted: speed goals live in benches).
    let short = json!({"type": "play_tone", "freqs_hz": [], "duration_ms": 20});
    let mut median_ms = Vec::new();
    for api in [&owner, &other] {
        let mut took = Vec::new();
        for _ in 0..20 {
            let started = std::time::Instant::now();
            api.action(id, &short).await.unwrap();
            took.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        median_ms.push(took[took.len() / 2]);
    }
    println!(
        "action round trip, median of 20: on the owner {:.2} ms, forwarded {:.2} ms",
        median_ms[0], median_ms[1]
    );

    let view = other.action(id, &json!({"type": "hangup"})).await.unwrap();
    assert_eq!((view["status"].as_str(), view["end_reason"].as_str()), (Some("ended"), Some("api_ended")));
    let seen = until(&mut events, WAIT, |e| matches!(e, CallEvent::Ended(_))).await;
    assert!(
        matches!(seen.last(), Some(CallEvent::Ended(EndCause::ServerBye { reason })) if reason == "api_ended"),
        "the owner said goodbye itself: {:?}",
        seen.last()
    );
    drop(call);
    assert_eq!(metric(&other, "callworker_actions_forwarded_total", &[("outcome", "applied")]).await, 23.0);
    assert_eq!(
        metric(&owner, "callworker_actions_forwarded_total", &[]).await,
        0.0,
        "the owner forwarded nothing"
    );
    let events = events_of(&owner, id).await;
    let applied: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "action_applied")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(applied.len(), 43, "three actions and 40 timed ones: {events:?}");
    assert_eq!(applied[..2], ["play_tone", "switch_program"]);
    assert_eq!(applied.last(), Some(&"hangup"));
}

/// `kill -9` of the call's worker: the client resumes elsewhere and the next actions reach
/// the new owner through any worker. `mute` is part of the call's state: the caller still
/// hears silence after the failover, until `unmute`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_follow_the_call_after_kill_9_and_mute_survives_the_failover() {
    let mut fleet = Fleet::start("act-kill9", 3, &[]).await;
    let created = fleet.api(0).create_call(&json!({"program": echo_program()})).await.unwrap();
    let id = created.call_id().to_owned();
    // Owner: worker 0. On loss the client tries worker 1, then 2.
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    let call = Arc::new(call);
    let sender = {
        let call = call.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for seq in 1..=1_500 {
                tick.tick().await;
                if call.send_audio(&voice(seq)).await.is_err() {
                    break;
                }
            }
        })
    };
    audio_until(&mut events, |p| p.iter().any(|&b| b != ULAW_SILENCE)).await;
    let view = fleet.api(1).action(&id, &json!({"type": "mute", "direction": "outbound"})).await.unwrap();
    assert_eq!(view["mute"], json!({"inbound": false, "outbound": true}), "{view}");
    // Frames already queued may still arrive; then only silence.
    audio_until(&mut events, |p| p == [ULAW_SILENCE; FRAME_BYTES]).await;
    // Let a checkpoint carry the mute, then kill the owner.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.workers[0].kill();
    let seen = until(&mut events, Duration::from_secs(15), |e| matches!(e, CallEvent::Resumed { .. })).await;
    for event in &seen {
        if let CallEvent::Audio { payload, .. } = event {
            assert!(payload.iter().all(|&b| b == ULAW_SILENCE), "only silence once muted");
        }
    }
    // The new owner carries the mute: everything the caller hears is silence.
    let mut silent = 0;
    tokio::time::timeout(WAIT, async {
        while silent < 25 {
            match events.recv().await {
                Some(CallEvent::Audio { payload, .. }) => {
                    assert!(payload.iter().all(|&b| b == ULAW_SILENCE), "mute survived the failover");
                    silent += 1;
                }
                Some(_) => {}
                None => panic!("the call stopped"),
            }
        }
    })
    .await
    .expect("audio keeps flowing after the resume");
    let media_url = call.session().media_url;
    let new_owner = (1..3).find(|&i| media_url.contains(&format!(":{}/", fleet.workers[i].port))).unwrap();
    let bystander = 3 - new_owner;
    let view = fleet.api(bystander).get_call(&id).await.unwrap();
    assert_eq!(view["mute"]["outbound"], true, "the checkpoint carries the mute: {view}");
    // Unmute through the worker that does not carry the call: forwarded to the new owner.
    let view =
        fleet.api(bystander).action(&id, &json!({"type": "unmute", "direction": "both"})).await.unwrap();
    assert_eq!(view["mute"], json!({"inbound": false, "outbound": false}), "{view}");
    assert!(view["epoch"].as_u64().unwrap() >= 2, "{view}");
    audio_until(&mut events, |p| p.iter().any(|&b| b != ULAW_SILENCE)).await;
    let forwarded = |i: usize| {
        let api = fleet.api(i);
        async move { metric(&api, "callworker_actions_forwarded_total", &[("outcome", "applied")]).await }
    };
    // Worker 1 forwarded the mute to worker 0; the bystander forwarded the unmute.
    assert_eq!(forwarded(1).await, if bystander == 1 { 2.0 } else { 1.0 });
    assert_eq!(forwarded(2).await, if bystander == 2 { 1.0 } else { 0.0 });
    sender.abort();
    let _ = sender.await;
    let call = Arc::into_inner(call).expect("the sender let go of the call");
    assert_eq!(call.hangup().await, EndCause::HungUp);
}

/// A call whose worker died and whose client did not come back: actions answer 409
/// `call_not_attached` with `Retry-After` (or 503 `owner_unreachable` while the dead
/// owner's lease still runs), never a success; a hang-up ends it through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_worker_died_answers_call_not_attached_and_can_be_hung_up() {
    let mut fleet = Fleet::start("act-dead", 3, &[]).await;
    let api = fleet.api(1);
    let (created, tx, rx, _) = native_call(&fleet.api(0), echo_program()).await;
    let id = created.call_id().to_owned();
    fleet.workers[0].kill();
    let url = format!("{}/v1/calls/{id}/actions", api.base_url());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = api
            .http()
            .post(&url)
            .json(&json!({"type": "mute", "direction": "inbound"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
        assert_eq!(retry_after.as_deref(), Some("1"), "{status} {body}");
        if (status, code.as_str()) == (409, "call_not_attached") {
            break;
        }
        assert_eq!((status, code.as_str()), (503, "owner_unreachable"), "{body}");
        assert!(tokio::time::Instant::now() < deadline, "the dead owner's lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = api.action(&id, &json!({"type": "hangup"})).await.unwrap();
    assert_eq!(view["end_reason"], "api_ended", "{view}");
    native::abort(tx, rx);

    // A hang-up does not wait for a dead owner's entry to lapse: right after a kill, while
    // the other actions answer owner_unreachable or call_not_attached, it ends the call.
    let (created, tx, rx, _) = native_call(&fleet.api(2), echo_program()).await;
    fleet.workers[2].kill();
    let url = format!("{}/v1/calls/{}/actions", api.base_url(), created.call_id());
    let response =
        api.http().post(&url).json(&json!({"type": "mute", "direction": "both"})).send().await.unwrap();
    let status = response.status().as_u16();
    assert!(status == 503 || status == 409, "a dead owner: {status}");
    let view = api.action(created.call_id(), &json!({"type": "hangup"})).await.unwrap();
    assert_eq!(view["end_reason"], "api_ended", "{view}");
    native::abort(tx, rx);
}

/// `inject_dtmf` through a non-owner drives the owner's program as key presses would: the
/// tone program's hang-up digit ends the call `completed`, and the timeline records the
/// digits with source `api`. Bad digits are refused before anything is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_dtmf_drives_the_program_on_the_owner() {
    let fleet = Fleet::start("act-dtmf", 2, &[]).await;
    let (owner, other) = (fleet.api(0), fleet.api(1));
    let (created, _tx, mut rx, _) = native_call(&owner, tone_program()).await;
    let id = created.call_id();
    for bad in ["", "12x", &"1".repeat(33)] {
        let result = other.action(id, &json!({"type": "inject_dtmf", "digits": bad})).await;
        assert_eq!(code_of(result), (400, "invalid_action".to_owned()), "{bad:?}");
    }
    let view = other.action(id, &json!({"type": "inject_dtmf", "digits": "4#"})).await.unwrap();
    assert_eq!(
        (view["status"].as_str(), view["end_reason"].as_str()),
        (Some("ended"), Some("completed")),
        "{view}"
    );
    let bye = tokio::time::timeout(WAIT, async {
        loop {
            match rx.next().await {
                Some(ServerEvent::Control(ServerControl::Bye { reason })) => return reason,
                Some(_) => {}
                None => panic!("closed without bye"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(bye, "completed");
    let events = events_of(&owner, id).await;
    let injected: Vec<&Value> = events.iter().filter(|e| e["type"] == "dtmf").collect();
    assert_eq!(injected.len(), 2, "{events:?}");
    for (event, digit) in injected.iter().zip(["4", "#"]) {
        assert_eq!(
            (event["digit"].as_str(), event["source"].as_str()),
            (Some(digit), Some("api")),
            "{event}"
        );
    }
    assert_eq!(metric(&other, "callworker_actions_forwarded_total", &[("outcome", "applied")]).await, 1.0);
}

/// `transfer` of a native call: the client is told where to (`event transfer`), then `bye
/// transferred`. A Twilio call on a fleet without Twilio REST credentials cannot be
/// transferred (409 `transfer_unavailable`) and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_call_is_transferred_and_a_twilio_call_needs_rest_credentials() {
    let fleet = Fleet::start("act-xfer", 2, &[]).await;
    let (owner, other) = (fleet.api(0), fleet.api(1));
    let created = owner.create_call(&json!({"program": echo_program()})).await.unwrap();
    let (call, mut events) = connect(fleet.media_urls(0), &created).await;
    let id = created.call_id();
    for bad in ["15550100", "+1", "tel:+15550100", "sip:a b@example.com"] {
        let result = other.action(id, &json!({"type": "transfer", "to": bad})).await;
        assert_eq!(code_of(result), (400, "invalid_action".to_owned()), "{bad:?}");
    }
    let view =
        other.action(id, &json!({"type": "transfer", "to": "sip:desk@pbx.example.com"})).await.unwrap();
    assert_eq!(view["end_reason"], "transferred", "{view}");
    let seen = until(&mut events, WAIT, |e| matches!(e, CallEvent::Ended(_))).await;
    assert!(
        seen.iter().any(|e| matches!(e, CallEvent::Event { name, detail } if name == "transfer" && detail.as_deref() == Some("sip:desk@pbx.example.com"))),
        "{seen:?}"
    );
    assert!(
        matches!(seen.last(), Some(CallEvent::Ended(EndCause::ServerBye { reason })) if reason == "transferred"),
        "{:?}",
        seen.last()
    );
    drop(call);
    assert_eq!(metric(&owner, "callworker_calls_ended_total", &[("reason", "transferred")]).await, 1.0);

    let sim = TwilioSimulator::new(&fleet.workers[0].base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let call_id = stream.action.clone().unwrap().split("call_id=").nth(1).unwrap().to_owned();
    stream.send_media(vec![0x21; FRAME_BYTES]).await.unwrap();
    assert_eq!(next_twilio_media(&mut stream).await, vec![0x21; FRAME_BYTES]);
    let result = other.action(&call_id, &json!({"type": "transfer", "to": "+15550123"})).await;
    assert_eq!(code_of(result), (409, "transfer_unavailable".to_owned()));
    stream.send_media(vec![0x22; FRAME_BYTES]).await.unwrap();
    assert_eq!(next_twilio_media(&mut stream).await, vec![0x22; FRAME_BYTES], "the call goes on");
    assert_eq!(other.get_call(&call_id).await.unwrap()["status"], "active");
    stream.stop().await.unwrap();
}

/// `transfer` of a Twilio call through a worker that does not carry it: the owner redirects
/// the Twilio call to `<Dial>` through the REST API (a stand-in records the request), then
/// ends the call `transferred`; Twilio stopping the stream afterwards changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_call_is_transferred_through_the_rest_api() {
    let (rest_port, mut requests) = rest_recorder().await;
    let rest_url = format!("http://127.0.0.1:{rest_port}");
    let fleet = Fleet::start(
        "act-twxfer",
        2,
        &[
            ("CALLWORKER_TWILIO__ACCOUNT_SID", "ACtest"),
            ("CALLWORKER_TWILIO__AUTH_TOKEN", TWILIO_AUTH_TOKEN),
            ("CALLWORKER_TWILIO__REST_API_BASE_URL", &rest_url),
        ],
    )
    .await;
    let sim = TwilioSimulator::new(&fleet.workers[0].base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let call_id = stream.action.clone().unwrap().split("call_id=").nth(1).unwrap().to_owned();
    stream.send_media(vec![0x21; FRAME_BYTES]).await.unwrap();
    assert_eq!(next_twilio_media(&mut stream).await, vec![0x21; FRAME_BYTES]);

    let view = fleet.api(1).action(&call_id, &json!({"type": "transfer", "to": "+15550123"})).await.unwrap();
    assert_eq!(view["end_reason"], "transferred", "{view}");
    let request =
        tokio::time::timeout(WAIT, requests.recv()).await.expect("the REST API was called").unwrap();
    let expected_path = format!(
        "POST /2010-04-01/Accounts/{}/Calls/{}.json ",
        "AC00000000000000000000000000000000", stream.call_sid
    );
    assert!(request.request_line.starts_with(&expected_path), "{request:?}");
    assert!(request.authorization.as_deref().is_some_and(|a| a.starts_with("Basic ")), "{request:?}");
    let twiml = form_decode(request.body.strip_prefix("Twiml=").expect("a Twiml parameter"));
    assert_eq!(twiml, "<Response><Dial><Number>+15550123</Number></Dial></Response>");
    // The owner closes its stream once the end is durable; Twilio would stop it anyway.
    let (code, reason) = stream.closed(WAIT).await.unwrap();
    assert_eq!(code, 1000, "{reason}");
    let view = fleet.api(0).get_call(&call_id).await.unwrap();
    assert_eq!((view["status"].as_str(), view["end_reason"].as_str()), (Some("ended"), Some("transferred")));
    assert_eq!(
        metric(&fleet.api(0), "callworker_twilio_rest_requests_total", &[("outcome", "redirected")]).await,
        1.0
    );
    // Twilio asking the action URL now gets a hang-up (the call is over here).
    let action = stream.action.clone().unwrap();
    assert!(
        matches!(sim.stream_ended(&action, &stream.call_sid).await.unwrap(), Twiml::Hangup),
        "ended calls hang up"
    );
}

/// Ended calls answer 409 `call_ended`; unknown calls and other tenants' calls 404, the
/// same through any worker (authorization comes before any forwarding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_unknown_and_other_tenants_calls_are_refused_wherever_they_are_sent() {
    let fleet = Fleet::start("act-refuse", 2, &[]).await;
    let (owner, other) = (fleet.api(0), fleet.api(1));
    let (created, mut tx, mut rx, _) = native_call(&owner, echo_program()).await;
    let id = created.call_id();
    let stranger = ControlApi::new(&fleet.workers[1].base_url).with_key(OTHER_TENANT_KEY);
    let result = stranger.action(id, &json!({"type": "hangup"})).await;
    assert_eq!(code_of(result), (404, "call_not_found".to_owned()), "another tenant's call is not found");
    let result = other.action("c_000000000000000000000000", &json!({"type": "hangup"})).await;
    assert_eq!(code_of(result), (404, "call_not_found".to_owned()));
    assert_eq!(metric(&other, "callworker_actions_forwarded_total", &[]).await, 0.0, "nothing was forwarded");
    tx.send_audio(1, &voice(1)).await.unwrap();
    let (echoed, _, _) = receive_audio(&mut rx, FRAME_BYTES).await;
    assert_eq!(echoed, voice(1), "the call was not disturbed");
    tx.bye().await.unwrap();
    wait_for_call(&other, id, |c| c["status"] == "ended").await;
    for api in [&owner, &other] {
        let result =
            api.action(id, &json!({"type": "play_tone", "freqs_hz": [440], "duration_ms": 100})).await;
        assert_eq!(code_of(result), (409, "call_ended".to_owned()));
    }
}

/// The forwarding header: a client that sends one (made up, or signed with a wrong key,
/// or a genuine one replayed to another worker) is refused with 403 and counted; and a
/// genuinely forwarded action that reaches a worker no longer carrying the call answers 409
/// `call_owner_moved` instead of being forwarded again, so no request ever loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_are_refused_and_forwarded_actions_never_hop_twice() {
    use callworker_call::{CallId, TenantId, UnixMillis, WorkerId};
    use callworker_server::auth::Caller;
    use callworker_server::config::{DEV_TOKEN_SECRET, Role};
    use callworker_server::forward::{FORWARD_HEADER, sign};

    let fleet = Fleet::start("act-forge", 3, &[]).await;
    let created = fleet.api(0).create_call(&json!({"program": echo_program()})).await.unwrap();
    let (call, _events) = connect(fleet.media_urls(0), &created).await;
    let id = created.call_id();
    let operator = ControlApi::new(&fleet.workers[0].base_url).with_key(OPERATOR_KEY);
    let registry = tokio::time::timeout(WAIT, async {
        loop {
            let url = format!("{}/v1/workers", operator.base_url());
            let registry: Value = operator.http().get(url).send().await.unwrap().json().await.unwrap();
            if registry["workers"].as_array().is_some_and(|w| w.len() == 3) {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every worker registers");
    let id_of = |i: usize| {
        let entry = registry["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["address"] == fleet.workers[i].base_url.as_str())
            .unwrap_or_else(|| panic!("worker {i} advertises its address: {registry}"));
        WorkerId::parse(entry["worker_id"].as_str().unwrap()).unwrap()
    };
    let (w0, w1, w2) = (id_of(0), id_of(1), id_of(2));
    let body = br#"{"type":"hangup"}"#;
    let caller = Caller {
        key_id: Arc::from("test-default"),
        role: Role::Tenant,
        tenant: Some(TenantId::parse("default").unwrap()),
    };
    let now = UnixMillis(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
    );
    let call_id = CallId::parse(id).unwrap();
    let send = |worker: usize, header: String| {
        let url = format!("{}/v1/calls/{id}/actions", fleet.workers[worker].base_url);
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header(FORWARD_HEADER, header)
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    let forged = [
        "v1.garbage".to_owned(),
        sign(b"not-the-fleet-secret-but-32-bytes-long!!", now, &w0, &w1, &call_id, &caller, body),
        // Genuine, but made for worker 2 and replayed to worker 1.
        sign(DEV_TOKEN_SECRET.as_bytes(), now, &w0, &w2, &call_id, &caller, body),
        // Genuine, but for another body.
        sign(DEV_TOKEN_SECRET.as_bytes(), now, &w0, &w1, &call_id, &caller, b"{}"),
        // Genuine, but a minute old.
        sign(DEV_TOKEN_SECRET.as_bytes(), UnixMillis(now.0 - 60_000), &w0, &w1, &call_id, &caller, body),
    ];
    for header in forged {
        assert_eq!(send(1, header.clone()).await, (403, "forward_signature_invalid".to_owned()), "{header}");
    }
    let refused =
        metric(&fleet.api(1), "callworker_auth_refused_total", &[("reason", "forward_signature_invalid")])
            .await;
    assert_eq!(refused, 5.0);
    // A genuine forward to worker 2, which does not carry the call (worker 0 does): it
    // answers call_owner_moved and forwards nothing.
    let genuine = sign(DEV_TOKEN_SECRET.as_bytes(), now, &w1, &w2, &call_id, &caller, body);
    assert_eq!(send(2, genuine).await, (409, "call_owner_moved".to_owned()));
    assert_eq!(metric(&fleet.api(2), "callworker_actions_forwarded_total", &[]).await, 0.0);
    assert_eq!(metric(&fleet.api(2), "callworker_action_forward_failures_total", &[]).await, 0.0);
    let view = fleet.api(0).get_call(id).await.unwrap();
    assert_eq!(view["status"], "active", "nothing reached the call: {view}");
    // The same genuine forward to worker 0, which carries the call, is applied there.
    let genuine = sign(DEV_TOKEN_SECRET.as_bytes(), now, &w1, &w0, &call_id, &caller, body);
    assert_eq!(send(0, genuine).await, (200, String::new()));
    let view = fleet.api(2).get_call(id).await.unwrap();
    assert_eq!(view["end_reason"], "api_ended", "{view}");
    drop(call);
}
