//! An echo call returns the caller's audio byte for byte, in order, over both protocols;
//! hang-ups end the call with the right reason, visible in the API and in /metrics.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::audio::{FrameClock, test_pattern};
use callworker_client::native::ServerEvent;
use callworker_client::twilio::{StreamEvent, TwilioSimulator, Twiml};
use callworker_protocol::native::ServerControl;
use callworker_testkit::{TENANT_KEY, TWILIO_AUTH_TOKEN, Worker, WorkerOptions};
use common::*;

const FRAMES: u64 = 100;
const FRAME_BYTES: usize = 160;

#[tokio::test]
async fn native_echo_is_byte_exact_in_order_and_acked_after_checkpoints() {
    let worker = Worker::start(WorkerOptions::named("echo-native")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (created, mut tx, mut rx, welcome) = native_call(&api, echo_program()).await;
    assert_eq!(welcome.epoch, 1, "the first attach takes epoch 0 → 1");
    assert_eq!(welcome.resume_from_seq, 1);
    assert!(!welcome.resumed);

    let sent = test_pattern(7, FRAME_BYTES * FRAMES as usize);
    assert!(sent.contains(&0x7F) && sent.contains(&0xFF), "the pattern covers both μ-law zeros");
    let sender = async {
        let mut clock = FrameClock::start();
        for (i, frame) in sent.chunks(FRAME_BYTES).enumerate() {
            clock.tick().await;
            tx.send_audio(i as u64 + 1, frame).await.unwrap();
        }
        tx
    };
    let (mut tx, (received, controls, seqs)) = tokio::join!(sender, receive_audio(&mut rx, sent.len()));
    assert_eq!(received, sent, "echo must return every byte, in order");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "server audio seqs are consecutive");
    assert_eq!(seqs.first(), Some(&1));

    // Acks arrive only from checkpoints; within a few checkpoint intervals they cover all.
    let mut acked = controls
        .iter()
        .filter_map(|c| if let ServerControl::Ack { upto_seq } = c { Some(*upto_seq) } else { None })
        .max()
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked < FRAMES {
        assert!(tokio::time::Instant::now() < deadline, "acks stopped at {acked}");
        match tokio::time::timeout(WAIT, rx.next()).await.unwrap() {
            Some(ServerEvent::Control(ServerControl::Ack { upto_seq })) => {
                assert!(upto_seq >= acked, "acks are cumulative");
                acked = upto_seq;
            }
            Some(ServerEvent::Closed { code, reason }) => panic!("closed: {code} {reason}"),
            _ => {}
        }
    }

    tx.bye().await.unwrap();
    let mut bye_reason = None;
    let close = tokio::time::timeout(WAIT, async {
        while let Some(event) = rx.next().await {
            match event {
                ServerEvent::Control(ServerControl::Bye { reason }) => bye_reason = Some(reason),
                ServerEvent::Closed { code, reason } => return (code, reason),
                _ => {}
            }
        }
        panic!("no close");
    })
    .await
    .unwrap();
    assert_eq!(bye_reason.as_deref(), Some("client_hangup"));
    assert_eq!(close.0, 1000, "{close:?}");

    let call = wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(call["end_reason"], "client_hangup");
    assert_eq!(call["media"]["inbound_applied_seq"], FRAMES);
    assert_eq!(call["media"]["outbound_next_seq"], FRAMES + 1);
    assert_eq!(metric(&api, "callworker_calls_ended_total", &[("reason", "client_hangup")]).await, 1.0);
    assert_eq!(metric(&api, "callworker_frames_in_total", &[("transport", "native")]).await, FRAMES as f64);
    let events = api.events(created.call_id()).await.unwrap();
    let kinds: Vec<&str> =
        events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert!(kinds.contains(&"attached"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"ended"));
}

#[tokio::test]
async fn twilio_echo_is_byte_exact_marks_are_answered_and_stop_ends_the_call() {
    let worker = Worker::start(WorkerOptions::named("echo-twilio")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550001111", "+15550002222").await.unwrap();
    let action = stream.action.clone().expect("TwiML names a <Connect action>");

    let sent = test_pattern(11, FRAME_BYTES * FRAMES as usize);
    let mut clock = FrameClock::start();
    let mut received = Vec::new();
    let mut marks = Vec::new();
    let mut next_frame = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while received.len() < sent.len() {
        assert!(tokio::time::Instant::now() < deadline, "echo stalled at {} bytes", received.len());
        tokio::select! {
            _ = clock.tick(), if next_frame < FRAMES as usize => {
                let frame = &sent[next_frame * FRAME_BYTES..(next_frame + 1) * FRAME_BYTES];
                stream.send_media(frame.to_vec()).await.unwrap();
                next_frame += 1;
            }
            event = stream.next_event() => match event.unwrap() {
                StreamEvent::Media(payload) => received.extend_from_slice(&payload),
                StreamEvent::MarkPlayed(name) => marks.push(name),
                StreamEvent::Clear => {}
                StreamEvent::Closed { code, reason } => panic!("closed early: {code} {reason}"),
            }
        }
    }
    assert_eq!(received, sent, "echo must return every byte, in order");

    // Marks come back once their audio has played (~20 ms per frame after it arrived).
    let deadline = tokio::time::Instant::now() + WAIT;
    while marks.len() < (FRAMES / 10) as usize {
        assert!(tokio::time::Instant::now() < deadline, "only {} marks answered", marks.len());
        if let Ok(Some(StreamEvent::MarkPlayed(name))) =
            tokio::time::timeout(Duration::from_millis(500), stream.next_event()).await
        {
            marks.push(name);
        }
    }
    assert_eq!(marks.last().map(String::as_str), Some("s:100"));

    let calls = api.list_calls("status=active").await.unwrap();
    let call_id = calls["calls"][0]["call_id"].as_str().unwrap().to_owned();
    let call = wait_for_call(&api, &call_id, |c| c["media"]["outbound_played_seq"] == 100).await;
    assert_eq!(call["from"], "+15550001111");
    assert_eq!(call["transport"], "twilio");

    stream.stop().await.unwrap();
    let (code, _) = stream.closed(WAIT).await.unwrap();
    assert_eq!(code, 1000);
    let call = wait_for_call(&api, &call_id, |c| c["status"] == "ended").await;
    assert_eq!(call["end_reason"], "remote_hangup");
    // Twilio then requests the <Connect action>: an ended call hangs up.
    assert_eq!(sim.stream_ended(&action, &stream.call_sid).await.unwrap(), Twiml::Hangup);
    assert_eq!(metric(&api, "callworker_calls_ended_total", &[("reason", "remote_hangup")]).await, 1.0);
    assert_eq!(metric(&api, "callworker_frames_in_total", &[("transport", "twilio")]).await, FRAMES as f64);
}

#[tokio::test]
async fn a_static_twiml_stream_without_parameters_starts_a_call_with_the_default_program() {
    let worker = Worker::start(WorkerOptions::named("echo-static")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let url = format!("ws://127.0.0.1:{}/twilio/media", worker.port);
    let mut stream = sim.open_stream(&url, "CAstatic", Default::default()).await.unwrap();
    let frame = test_pattern(3, FRAME_BYTES);
    stream.send_media(frame.clone()).await.unwrap();
    let echoed = next_twilio_media(&mut stream).await;
    assert_eq!(echoed, frame);
    let calls = api.list_calls("").await.unwrap();
    assert_eq!(calls["calls"].as_array().unwrap().len(), 1);
    assert_eq!(calls["calls"][0]["program"], "echo");
    assert_eq!(calls["calls"][0]["status"], "active");
    assert_eq!(metric(&api, "callworker_calls_created_total", &[("via", "twilio")]).await, 1.0);
}
