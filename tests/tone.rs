//! A tone call plays its pattern and reacts to DTMF: a digit is acknowledged with its DTMF
//! tone pair (measured with Goertzel on the received audio), the hang-up digit ends the call
//! with `completed` — over both protocols.
#![allow(clippy::unwrap_used)]

mod common;

use callworker_call::dsp::goertzel_power;
use callworker_client::api::ControlApi;
use callworker_client::native::ServerEvent;
use callworker_client::twilio::{StreamEvent, TwilioSimulator};
use callworker_protocol::codec::{self, Encoding};
use callworker_protocol::native::ServerControl;
use callworker_testkit::{TENANT_KEY, TWILIO_AUTH_TOKEN, Worker, WorkerOptions};
use common::*;

fn pcm(ulaw: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    codec::decode(Encoding::Pcmu, ulaw, &mut out).unwrap();
    out
}

/// Power at each frequency in 8 kHz μ-law audio.
fn powers(ulaw: &[u8], freqs: &[f64]) -> Vec<f64> {
    let samples = pcm(ulaw);
    freqs.iter().map(|f| goertzel_power(&samples, 8_000, *f)).collect()
}

#[tokio::test]
async fn native_tone_reacts_to_dtmf_and_the_hangup_digit_completes_the_call() {
    let worker = Worker::start(WorkerOptions::named("tone-native")).await.unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let (created, mut tx, mut rx, _) = native_call(&api, tone_program()).await;

    // 200 ms of the pattern: a 440 Hz tone, nothing at the DTMF frequencies.
    let (audio, _, _) = receive_audio(&mut rx, 1600).await;
    let p = powers(&audio, &[440.0, 770.0, 1336.0]);
    assert!(p[0] > 0.05 && p[1] < p[0] / 20.0 && p[2] < p[0] / 20.0, "440 Hz pattern expected: {p:?}");

    // '5' is acknowledged with 770 + 1336 Hz. Skip what was already queued before the digit.
    tx.dtmf('5').await.unwrap();
    let mut event_seen = false;
    let mut dtmf_audio = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.next().await.unwrap() {
                ServerEvent::Control(ServerControl::Event { name, detail }) if name == "dtmf_received" => {
                    assert_eq!(detail.as_deref(), Some("5"));
                    event_seen = true;
                }
                ServerEvent::Audio { payload, .. } if event_seen => {
                    let p = powers(&payload, &[770.0, 1336.0, 440.0]);
                    if p[0] > 0.01 && p[1] > 0.01 && p[2] < p[0] / 10.0 {
                        dtmf_audio.extend_from_slice(&payload);
                        if dtmf_audio.len() >= 800 {
                            break;
                        }
                    }
                }
                ServerEvent::Closed { code, reason } => panic!("closed: {code} {reason}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the DTMF acknowledgement tone (770 + 1336 Hz) was never heard");

    tx.dtmf('#').await.unwrap();
    let (code, reason) = rx.closed(WAIT).await.unwrap();
    assert_eq!(code, 1000, "{reason}");
    let call = wait_for_call(&api, created.call_id(), |c| c["status"] == "ended").await;
    assert_eq!(call["end_reason"], "completed");
    let events = api.events(created.call_id()).await.unwrap();
    let digits: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "dtmf")
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, ["5", "#"]);
    assert_eq!(metric(&api, "callworker_calls_ended_total", &[("reason", "completed")]).await, 1.0);
}

#[tokio::test]
async fn twilio_tone_reacts_to_dtmf() {
    let worker = Worker::start(
        WorkerOptions::named("tone-twilio").env(
            "CALLWORKER_CALLS__DEFAULT_PROGRAM",
            r##"{name = "tone", params = {segments = [{freqs_hz = [440], duration_ms = 1000}], hangup_digit = "#"}}"##,
        ),
    )
    .await
    .unwrap();
    let api = ControlApi::new(&worker.base_url).with_key(TENANT_KEY);
    let sim = TwilioSimulator::new(&worker.base_url).with_auth_token(TWILIO_AUTH_TOKEN);
    let mut stream = sim.place_call("+15550003333", "+15550004444").await.unwrap();

    let mut heard = Vec::new();
    while heard.len() < 1600 {
        match tokio::time::timeout(WAIT, stream.next_event()).await.unwrap().unwrap() {
            StreamEvent::Media(p) => heard.extend_from_slice(&p),
            StreamEvent::Closed { code, reason } => panic!("closed: {code} {reason}"),
            _ => {}
        }
    }
    let p = powers(&heard, &[440.0, 941.0, 1477.0]);
    assert!(p[0] > 0.05 && p[1] < p[0] / 20.0, "440 Hz pattern expected: {p:?}");

    // '#' would hang up; '9' (852 + 1477 Hz) is acknowledged.
    stream.send_dtmf('9').await.unwrap();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next_event().await.unwrap() {
                StreamEvent::Media(payload) => {
                    let p = powers(&payload, &[852.0, 1477.0, 440.0]);
                    if p[0] > 0.01 && p[1] > 0.01 && p[2] < p[0] / 10.0 {
                        return true;
                    }
                }
                StreamEvent::Closed { code, reason } => panic!("closed: {code} {reason}"),
                _ => {}
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the DTMF acknowledgement tone (852 + 1477 Hz) was never heard");

    stream.send_dtmf('#').await.unwrap();
    let (code, _) = stream.closed(WAIT).await.unwrap();
    assert_eq!(code, 1000);
    let calls = api.list_calls("status=ended").await.unwrap();
    assert_eq!(calls["calls"][0]["end_reason"], "completed");
}
