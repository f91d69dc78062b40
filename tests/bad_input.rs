//! Bad input of every kind gets a specific WebSocket close code and a metric, and never
//! disturbs a healthy call running on the same worker at the same time.
#![allow(clippy::unwrap_used)]

mod common;

use callworker_client::api::ControlApi;
use callworker_client::audio::test_pattern;
use callworker_client::native::{self, NativeReceiver};
use callworker_client::twilio::{StreamEvent, TwilioSimulator, TwilioStream};
use callworker_protocol::native::{ClientControl, Hello};
use callworker_testkit::{TENANT_KEY, TWILIO_AUTH_TOKEN, Worker, WorkerOptions};
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// (case, (close code, reason) observed, close code expected, transport, metric reason expected)
type Outcome = (&'static str, (u16, String), u16, &'static str, &'static str);

/// Sends `msgs` on a raw socket and returns the close code and reason (a Twilio media URL
/// is opened with a valid `X-Twilio-Signature`).
async fn raw_close(url: &str, msgs: Vec<Message>) -> (u16, String) {
    let (mut tx, mut rx) = if url.contains("/twilio/") {
        let sim = TwilioSimulator::new("http://unused").with_auth_token(TWILIO_AUTH_TOKEN);
        sim.connect_raw(url).await.unwrap()
    } else {
        native::connect_raw(url).await.unwrap()
    };
    for m in msgs {
        if tx.send_raw(m).await.is_err() {
            break;
        }
    }
    rx.closed(WAIT).await.unwrap()
}

async fn stream_close(stream: &mut TwilioStream) -> (u16, String) {
    stream.closed(WAIT).await.unwrap()
}

async fn twilio_stream(worker: &Worker) -> TwilioStream {
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    sim.open_stream(&format!("ws://127.0.0.1:{}/twilio/media", worker.port), "CAbad", Default::default())
        .await
        .unwrap()
}

fn text(s: &str) -> Message {
    Message::Text(s.to_owned().into())
}

fn hello_json(call_id: &str, token: &str, version: u16) -> Message {
    let hello = ClientControl::Hello(Hello { version: 1, ..native::first_hello(call_id, token, PCMU_8K) });
    let mut s = callworker_protocol::native::encode_client_control(&hello);
    if version != 1 {
        s = s.replace("\"version\":1", &format!("\"version\":{version}"));
    }
    text(&s)
}

#[tokio::test]
async fn every_bad_input_is_refused_specifically_while_a_healthy_call_carries_on() {
    // A short handshake timeout so that refusal is quick to observe.
    let worker = Worker::start(
        WorkerOptions::named("bad-input").env("CALLWORKER_LIMITS__HANDSHAKE_TIMEOUT_MS", "1500"),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let twilio_url = format!("ws://127.0.0.1:{}/twilio/media", worker.port);
    let native_url = format!("ws://127.0.0.1:{}/v1/media", worker.port);

    // The healthy call: native echo for the whole test, checked byte for byte at the end.
    let healthy = HealthyCall::start(&api).await;

    let mut results: Vec<Outcome> = Vec::new();

    // --- Twilio endpoint ---
    results.push((
        "twilio malformed JSON",
        raw_close(&twilio_url, vec![text("{nope")]).await,
        4400,
        "twilio",
        "malformed_json",
    ));
    results.push((
        "twilio binary frame",
        raw_close(&twilio_url, vec![Message::Binary(vec![1, 2, 3].into())]).await,
        1003,
        "twilio",
        "binary_frame",
    ));
    let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
    let media = r#"{"event":"media","sequenceNumber":"1","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"AAAA"}}"#;
    results.push((
        "twilio media before start",
        raw_close(&twilio_url, vec![text(connected), text(media)]).await,
        4422,
        "twilio",
        "media_before_start",
    ));
    let oversized = format!(r#"{{"event":"media","padding":"{}"}}"#, "x".repeat(70_000));
    results.push((
        "twilio oversized message",
        raw_close(&twilio_url, vec![text(&oversized)]).await,
        1009,
        "twilio",
        "message_too_large",
    ));

    // Unknown event: ignored (Twilio may add events) and counted; the stream carries on.
    let mut stream = twilio_stream(&worker).await;
    stream.send_raw(text(r#"{"event":"hologram","sequenceNumber":"2","streamSid":"x"}"#)).await.unwrap();
    stream.send_media(test_pattern(99, 160)).await.unwrap();
    let echoed = loop {
        match tokio::time::timeout(WAIT, stream.next_event()).await.unwrap().unwrap() {
            StreamEvent::Media(p) => break p,
            StreamEvent::Closed { code, reason } => {
                panic!("unknown event closed the stream: {code} {reason}")
            }
            _ => {}
        }
    };
    assert_eq!(echoed, test_pattern(99, 160));
    assert_eq!(
        metric(&api, "callworker_ws_messages_rejected_total", &[("reason", "unknown_event")]).await,
        1.0
    );
    // Bad base64 in media (the simulator numbered start 1 and the media above 2).
    stream
        .send_raw(text(&format!(
            r#"{{"event":"media","sequenceNumber":"3","streamSid":"{}","media":{{"track":"inbound","chunk":"2","timestamp":"20","payload":"@@@@"}}}}"#,
            stream.stream_sid
        )))
        .await
        .unwrap();
    results.push(("twilio bad base64", stream_close(&mut stream).await, 4400, "twilio", "invalid_base64"));

    // A sequence number that skips ahead.
    let mut stream = twilio_stream(&worker).await;
    stream
        .send_raw(text(&format!(r#"{{"event":"dtmf","sequenceNumber":"7","streamSid":"{}","dtmf":{{"track":"inbound_track","digit":"1"}}}}"#, stream.stream_sid)))
        .await
        .unwrap();
    results.push(("twilio sequence gap", stream_close(&mut stream).await, 4422, "twilio", "sequence_gap"));

    // A flood beyond the per-connection message rate (200/s, one second of burst).
    let mut stream = twilio_stream(&worker).await;
    for _ in 0..400 {
        if stream.send_media(vec![0xFF; 160]).await.is_err() {
            break;
        }
    }
    results.push(("twilio message flood", stream_close(&mut stream).await, 4429, "twilio", "rate_limited"));

    // A flood of bytes in few messages (24 × 12 kB of audio: far beyond 256 kB/s, far below
    // 200 messages/s).
    let mut stream = twilio_stream(&worker).await;
    for _ in 0..24 {
        if stream.send_media(vec![0xFF; 12_000]).await.is_err() {
            break;
        }
    }
    results.push(("twilio byte flood", stream_close(&mut stream).await, 4429, "twilio", "rate_limited"));

    // A socket that never says hello is closed at the handshake timeout.
    results.push((
        "native handshake timeout",
        raw_close(&native_url, vec![]).await,
        4408,
        "native",
        "handshake_timeout",
    ));

    // permessage-deflate is never negotiated (compression would let a small frame expand
    // into a large message past the size bound's cheap checks).
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = native_url.as_str().into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits".parse().unwrap(),
        );
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), 101);
        assert!(
            response.headers().get("sec-websocket-extensions").is_none(),
            "no extension is negotiated: {:?}",
            response.headers()
        );
        drop(ws);
    }

    // --- native endpoint ---
    let victim = api.create_call(&json!({"program": echo_program()})).await.unwrap();
    results.push((
        "native unknown call id",
        raw_close(&native_url, vec![hello_json("c_0000000000000000000000ff", &victim.resume_token, 1)]).await,
        4404,
        "native",
        "call_not_found",
    ));
    results.push((
        "native wrong protocol version",
        raw_close(&native_url, vec![hello_json(victim.call_id(), &victim.resume_token, 9)]).await,
        4426,
        "native",
        "unsupported_version",
    ));
    results.push((
        "native forged resume token",
        raw_close(
            &native_url,
            vec![hello_json(
                victim.call_id(),
                "v1.99999999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                1,
            )],
        )
        .await,
        4401,
        "native",
        "invalid_resume_token",
    ));
    results.push((
        "native malformed JSON",
        raw_close(&native_url, vec![text("{\"type\":")]).await,
        4400,
        "native",
        "malformed_json",
    ));
    results.push((
        "native audio before hello",
        raw_close(&native_url, vec![Message::Binary(vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF].into())]).await,
        4422,
        "native",
        "audio_before_hello",
    ));
    // An attached session that skips sequence numbers.
    let (mut tx, mut rx, _) = native::connect(
        &victim.media_url,
        native::first_hello(victim.call_id(), &victim.resume_token, PCMU_8K),
    )
    .await
    .unwrap();
    tx.send_audio(1, &[0xFF; 160]).await.unwrap();
    tx.send_audio(5, &[0xFF; 160]).await.unwrap();
    results.push(("native sequence gap", closed(&mut rx).await, 4422, "native", "sequence_gap"));
    // An oversized binary frame on an attached session (the call resumes with its token).
    let victim2 = api.create_call(&json!({"program": echo_program()})).await.unwrap();
    let (mut tx, mut rx, _) = native::connect(
        &victim2.media_url,
        native::first_hello(victim2.call_id(), &victim2.resume_token, PCMU_8K),
    )
    .await
    .unwrap();
    let _ = tx.send_raw(Message::Binary(vec![1u8; 70_000].into())).await;
    results.push(("native oversized frame", closed(&mut rx).await, 1009, "native", "message_too_large"));

    // Every refusal: its specific close code and a counted reason.
    let metrics = api.metrics().await.unwrap();
    let mut failures = Vec::new();
    for (case, (code, reason), want_code, transport, want_reason) in &results {
        if code != want_code {
            failures.push(format!("{case}: close {code} ({reason}), expected {want_code}"));
        }
        let counted = callworker_client::api::metric_sum(
            &metrics,
            "callworker_ws_messages_rejected_total",
            &[("transport", transport), ("reason", want_reason)],
        );
        if counted < 1.0 {
            failures.push(format!(
                "{case}: no callworker_ws_messages_rejected_total{{reason=\"{want_reason}\"}}"
            ));
        }
    }
    // The abuse limits are also counted by limit.
    for limit in ["ws_message_rate", "ws_byte_rate", "ws_message_size", "handshake_timeout"] {
        let counted = callworker_client::api::metric_sum(
            &metrics,
            "callworker_limit_refused_total",
            &[("limit", limit)],
        );
        if counted < 1.0 {
            failures.push(format!("no callworker_limit_refused_total{{limit=\"{limit}\"}}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The healthy call never noticed.
    healthy.finish(&api).await;
}

async fn closed(rx: &mut NativeReceiver) -> (u16, String) {
    rx.closed(WAIT).await.unwrap()
}
