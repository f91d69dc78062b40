//! The IVR on a real worker: a named definition from a directory of TOML files and a WAV
//! prompt, navigated by DTMF tones in the caller's audio (in-band, native protocol), and
//! interrupted by the caller's voice (barge-in) over both protocols. Failover of IVR calls
//! is in `failover.rs`; a bad definition stopping the worker in `config.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::native::{NativeReceiver, NativeSender, ServerEvent};
use callworker_client::twilio::{StreamEvent, TwilioSimulator};
use callworker_protocol::native::ServerControl;
use callworker_testkit::{TENANT_KEY, TWILIO_AUTH_TOKEN, Worker, WorkerOptions};
use common::*;
use serde_json::Value;

async fn worker(name: &str, defs: &IvrDefinitions, extra: &[(&str, &str)]) -> Worker {
    let mut options = WorkerOptions::named(name).env("CALLWORKER_IVR__DIR", defs.dir());
    for (k, v) in extra {
        options = options.env(k, v);
    }
    Worker::start(options).await.unwrap()
}

/// Sends client audio frames `first..first + n` made by `frame(i)`, paced at 20 ms, while
/// collecting what the server sends meanwhile.
async fn send_paced(
    tx: &mut NativeSender,
    rx: &mut NativeReceiver,
    first_seq: u64,
    frames: Vec<Vec<u8>>,
    seen: &mut Vec<ServerEvent>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (i, f) in frames.iter().enumerate() {
        tick.tick().await;
        tx.send_audio(first_seq + i as u64, f).await.unwrap();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), rx.next()).await {
            seen.push(e);
        }
    }
}

/// Polls the call's timeline until `pred` holds for one event (bounded by [`WAIT`]).
async fn wait_for_event(api: &ControlApi, call_id: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = events_of(api, call_id).await;
        if events.iter().any(&pred) {
            return events;
        }
        assert!(tokio::time::Instant::now() < deadline, "event never recorded: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key press as audio: 100 ms of its DTMF pair, then 100 ms of silence.
fn key_press(digit: char) -> Vec<Vec<u8>> {
    (0..10).map(|i| dtmf_audio_frame((i < 5).then_some(digit), i)).collect()
}

/// A caller who only has a phone's audio path: "1" to the account menu, then "4", "2", "#"
/// as tones. Each press is detected once, navigates like a signalled digit, and is
/// recorded as `dtmf_detected`; the collected digits are "42".
#[tokio::test]
async fn in_band_dtmf_navigates_a_named_ivr_on_native_audio() {
    let defs = IvrDefinitions::write("inband");
    let worker = worker("ivr-inband", &defs, &[]).await;
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (created, mut tx, mut rx, _) = native_call(&api, ivr_definition_program()).await;
    // The prompt is the recorded one, byte for byte.
    let (audio, _, seqs) = receive_audio(&mut rx, 160 * 5).await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let expected: Vec<u8> = (0..5).flat_map(ivr_prompt_frame).collect();
    assert!(audio == expected, "the first frames are the WAV prompt's");

    let mut seen = Vec::new();
    let mut frames = key_press('1');
    for d in ['4', '2', '#'] {
        frames.extend(key_press(d));
    }
    frames.extend((0..5).map(|i| dtmf_audio_frame(None, i)));
    send_paced(&mut tx, &mut rx, 1, frames, &mut seen).await;

    let events = wait_for_event(&api, created.call_id(), |e| e["type"] == "digits_collected").await;
    let detected: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "dtmf_detected")
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(detected, ["1", "4", "2", "#"], "one digit per key press: {events:?}");
    let collected = events.iter().find(|e| e["type"] == "digits_collected").unwrap();
    assert_eq!((collected["menu"].as_str(), collected["digits"].as_str()), (Some("account"), Some("42")));
    assert!(events.iter().any(|e| e["type"] == "menu_entered" && e["menu"] == "account"));
    assert!(!events.iter().any(|e| e["type"] == "dtmf"), "nothing was signalled: {events:?}");
    let notified = seen
        .iter()
        .filter(|e| matches!(e, ServerEvent::Control(ServerControl::Event { name, .. }) if name == "dtmf_detected"))
        .count();
    assert!(notified >= 1, "the client is told about detected digits");
    let detected_metric =
        metric(&api, "callworker_ivr_dtmf_detected_total", &[("transport", "native")]).await;
    assert_eq!(detected_metric, 4.0);
    tx.bye().await.unwrap();
    wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
}

/// A Twilio stream that sends no `dtmf` events (the key tones are only in the audio): the
/// same in-band detection navigates the call.
#[tokio::test]
async fn in_band_dtmf_navigates_a_twilio_call_without_dtmf_events() {
    let defs = IvrDefinitions::write("inband-twilio");
    let program = r#"{name = "ivr", params = {definition = "main-menu"}}"#;
    let worker = worker("ivr-inband-twilio", &defs, &[("CALLWORKER_CALLS__DEFAULT_PROGRAM", program)]).await;
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let call_id = stream.action.clone().unwrap().split("call_id=").nth(1).unwrap().to_owned();
    let mut frames = Vec::new();
    for d in ['1', '7', '#'] {
        frames.extend(key_press(d));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for f in frames {
        tick.tick().await;
        stream.send_media(f).await.unwrap();
    }
    let events = wait_for_event(&api, &call_id, |e| e["type"] == "digits_collected").await;
    let detected: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "dtmf_detected")
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(detected, ["1", "7", "#"], "{events:?}");
    let collected = events.iter().find(|e| e["type"] == "digits_collected").unwrap();
    assert_eq!(collected["digits"], "7");
    assert_eq!(metric(&api, "callworker_ivr_dtmf_detected_total", &[("transport", "twilio")]).await, 3.0);
    stream.stop().await.unwrap();
    wait_for_call(&api, &call_id, |c| c["status"] == "ended").await;
}

/// The caller speaks over the `talk` prompt: the server clears the queued prompt, records
/// how much of it the caller had heard (the position they reported as played), and takes
/// the menu's barge-in choice (the account menu, whose prompt follows).
#[tokio::test]
async fn the_callers_voice_barges_in_on_a_native_prompt() {
    let defs = IvrDefinitions::write("barge-native");
    let worker = worker("ivr-barge", &defs, &[]).await;
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (created, mut tx, mut rx, _) = native_call(&api, ivr_definition_program()).await;
    // "9" to the talk menu (6 s of 440 Hz that speech may interrupt).
    receive_audio(&mut rx, 160).await;
    tx.dtmf('9').await.unwrap();
    wait_for_event(&api, created.call_id(), |e| e["type"] == "menu_entered" && e["menu"] == "talk").await;
    // Take in a few frames of the talk prompt and report them played.
    let mut talk_seqs = Vec::new();
    tokio::time::timeout(WAIT, async {
        while talk_seqs.len() < 15 {
            match rx.next().await.unwrap() {
                ServerEvent::Audio { seq, payload, .. } => {
                    // The talk prompt is a 440 Hz tone, unlike the recorded main prompt.
                    if payload != ivr_prompt_frame((seq - 1) as usize % IVR_PROMPT_FRAMES) {
                        talk_seqs.push(seq);
                    }
                }
                ServerEvent::Closed { code, reason } => panic!("closed: {code} {reason}"),
                ServerEvent::Control(_) => {}
            }
        }
    })
    .await
    .unwrap();
    let played = talk_seqs[9];
    tx.played(played).await.unwrap();
    // Wait until the worker has applied the played report (it is in the call's state).
    wait_for_call(&api, created.call_id(), |c| c["media"]["outbound_played_seq"] == played).await;

    let mut seen = Vec::new();
    send_paced(&mut tx, &mut rx, 1, (0..10).map(noise_audio_frame).collect(), &mut seen).await;
    let events =
        wait_for_event(&api, created.call_id(), |e| e["type"] == "barge_in" && e["by"] == "speech").await;
    assert!(
        events.iter().any(|e| e["type"] == "barge_in" && e["by"] == "dtmf" && e["menu"] == "main"),
        "the '9' interrupted the main prompt: {events:?}"
    );
    let barge = events.iter().find(|e| e["type"] == "barge_in" && e["by"] == "speech").unwrap();
    assert_eq!(barge["menu"], "talk");
    assert_eq!(barge["by"], "speech");
    assert_eq!(barge["played_upto_seq"], played, "{barge}");
    assert_eq!(barge["prompt_frames_heard"], played - talk_seqs[0] + 1, "{barge}");
    assert!(
        events.iter().any(|e| e["type"] == "menu_entered" && e["menu"] == "account"),
        "the barge-in choice was taken: {events:?}"
    );
    // The clear reached the client, after the last talk frame it was sent.
    let mut cleared = seen.iter().any(|e| matches!(e, ServerEvent::Control(ServerControl::Clear)));
    tokio::time::timeout(WAIT, async {
        while !cleared {
            if let Some(ServerEvent::Control(ServerControl::Clear)) = rx.next().await {
                cleared = true;
            }
        }
    })
    .await
    .expect("clear arrives");
    assert_eq!(
        metric(&api, "callworker_ivr_barge_ins_total", &[("transport", "native")]).await,
        2.0,
        "the '9' that interrupted the main prompt, then the voice"
    );
    tx.bye().await.unwrap();
}

/// The same over Twilio Media Streams: speech during the talk prompt makes the worker send
/// Twilio `clear`; what was heard comes from the marks Twilio echoed as the audio played.
#[tokio::test]
async fn the_callers_voice_barges_in_on_a_twilio_prompt() {
    let defs = IvrDefinitions::write("barge-twilio");
    let program = r#"{name = "ivr", params = {definition = "main-menu"}}"#;
    let worker = worker(
        "ivr-barge-twilio",
        &defs,
        &[("CALLWORKER_CALLS__DEFAULT_PROGRAM", program), ("CALLWORKER_TWILIO__MARK_INTERVAL_FRAMES", "1")],
    )
    .await;
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550100", "+15550199").await.unwrap();
    let call_id = stream.action.clone().unwrap().split("call_id=").nth(1).unwrap().to_owned();
    next_twilio_media(&mut stream).await;
    let dtmf_at = std::time::Instant::now();
    stream.send_dtmf('9').await.unwrap();
    wait_for_event(&api, &call_id, |e| e["type"] == "menu_entered" && e["menu"] == "talk").await;
    // Let half a second of the talk prompt play (Twilio echoes a mark per frame).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..10 {
        tick.tick().await;
        stream.send_media(noise_audio_frame(i)).await.unwrap();
    }
    let events = wait_for_event(&api, &call_id, |e| e["type"] == "barge_in" && e["by"] == "speech").await;
    let barge = events.iter().find(|e| e["type"] == "barge_in" && e["by"] == "speech").unwrap();
    let heard = barge["prompt_frames_heard"].as_u64().unwrap();
    // Twilio plays in real time: at least the half second waited, and never more than the
    // time since the talk menu could have started.
    let most = dtmf_at.elapsed().as_millis() as u64 / 20 + 1;
    assert!((10..=most).contains(&heard), "{heard} frames heard, at most {most}: {barge}");
    assert!(events.iter().any(|e| e["type"] == "menu_entered" && e["menu"] == "account"), "{events:?}");
    let saw_clear = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next_event().await {
                Some(StreamEvent::Clear) => return,
                Some(StreamEvent::Closed { code, reason }) => panic!("closed: {code} {reason}"),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
    })
    .await;
    assert!(saw_clear.is_ok(), "Twilio got a clear");
    stream.stop().await.unwrap();
    wait_for_call(&api, &call_id, |c| c["status"] == "ended").await;
}
