//! Helpers shared by the end-to-end tests (included with `mod common;`).
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use callworker_client::api::{ControlApi, CreatedCall, metric_sum};
use callworker_client::native::{self, NativeReceiver, NativeSender, ServerEvent};
use callworker_client::twilio::{StreamEvent, TwilioStream};
use callworker_protocol::native::{ServerControl, Welcome};
use callworker_protocol::{AudioFormat, Encoding};
use serde_json::{Value, json};

/// Bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub const PCMU_8K: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };

pub fn echo_program() -> Value {
    json!({"name": "echo", "params": {"delay_ms": 0}})
}

pub fn tone_program() -> Value {
    json!({"name": "tone", "params": {"segments": [{"freqs_hz": [440], "duration_ms": 1000}], "hangup_digit": "#"}})
}

/// Creates a call through the API and connects a native session to it.
pub async fn native_call(
    api: &ControlApi,
    program: Value,
) -> (CreatedCall, NativeSender, NativeReceiver, Welcome) {
    let created = api.create_call(&json!({ "program": program })).await.unwrap();
    let hello = native::first_hello(created.call_id(), &created.resume_token, PCMU_8K);
    let (tx, rx, welcome) = native::connect(&created.media_url, hello).await.unwrap();
    (created, tx, rx, welcome)
}

/// Collects server audio until `bytes` have arrived (bounded by [`WAIT`]); also returns the
/// control messages seen meanwhile.
pub async fn receive_audio(rx: &mut NativeReceiver, bytes: usize) -> (Vec<u8>, Vec<ServerControl>, Vec<u64>) {
    let mut audio = Vec::new();
    let mut controls = Vec::new();
    let mut seqs = Vec::new();
    tokio::time::timeout(WAIT, async {
        while audio.len() < bytes {
            match rx.next().await {
                Some(ServerEvent::Audio { seq, payload, .. }) => {
                    seqs.push(seq);
                    audio.extend_from_slice(&payload);
                }
                Some(ServerEvent::Control(c)) => controls.push(c),
                Some(ServerEvent::Closed { code, reason }) => panic!("closed early: {code} {reason}"),
                None => panic!("receiver ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} of {bytes} bytes", audio.len()));
    (audio, controls, seqs)
}

/// Reads the worker's metrics and sums one series.
pub async fn metric(api: &ControlApi, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&api.metrics().await.unwrap(), name, labels)
}

/// Polls `GET /v1/calls/{id}` until `pred` holds (bounded by [`WAIT`]).
pub async fn wait_for_call(api: &ControlApi, call_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for_call_within(api, call_id, WAIT, pred).await
}

/// [`wait_for_call`] with its own bound.
pub async fn wait_for_call_within(
    api: &ControlApi,
    call_id: &str,
    wait: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let call = api.get_call(call_id).await.unwrap();
        if pred(&call) {
            return call;
        }
        assert!(tokio::time::Instant::now() < deadline, "call never reached the expected state: {call}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next audio a Twilio stream receives (bounded by [`WAIT`]); panics if it closes first.
pub async fn next_twilio_media(stream: &mut TwilioStream) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.next_event().await {
                Some(StreamEvent::Media(audio)) => return audio,
                Some(StreamEvent::Closed { code, reason }) => panic!("closed: {code} {reason}"),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
    })
    .await
    .expect("audio within the wait")
}

/// A native echo call that streams a test pattern every 20 ms for as long as a test runs,
/// and at [`HealthyCall::finish`] proves it was undisturbed: closed only by its own `bye`,
/// echo byte-exact and complete, ended `client_hangup`.
pub struct HealthyCall {
    pub call_id: String,
    stop: tokio::sync::oneshot::Sender<()>,
    sender: tokio::task::JoinHandle<(NativeSender, Vec<u8>)>,
    receiver: tokio::task::JoinHandle<Received>,
}

/// What the healthy call's receiver saw: the audio, and the close code and reason.
type Received = (Vec<u8>, Option<(u16, String)>);

impl HealthyCall {
    pub async fn start(api: &ControlApi) -> HealthyCall {
        use callworker_client::audio::{FrameClock, test_pattern};
        let (created, mut tx, mut rx, _) = native_call(api, echo_program()).await;
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sender = tokio::spawn(async move {
            let mut clock = FrameClock::start();
            let mut sent = Vec::new();
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = clock.tick() => {
                        seq += 1;
                        let frame = test_pattern(seq, 160);
                        tx.send_audio(seq, &frame).await.unwrap();
                        sent.extend_from_slice(&frame);
                    }
                }
            }
            (tx, sent)
        });
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut closed = None;
            while let Some(event) = rx.next().await {
                match event {
                    ServerEvent::Audio { payload, .. } => got.extend_from_slice(&payload),
                    ServerEvent::Closed { code, reason } => {
                        closed = Some((code, reason));
                        break;
                    }
                    ServerEvent::Control(_) => {}
                }
            }
            (got, closed)
        });
        HealthyCall { call_id: created.call_id().to_owned(), stop, sender, receiver }
    }

    /// Lets the call run a little longer, hangs up and checks it was never disturbed.
    pub async fn finish(self, api: &ControlApi) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = self.stop.send(());
        let (mut tx, sent) = self.sender.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.bye().await.unwrap();
        let (got, closed_with) = self.receiver.await.unwrap();
        assert_eq!(closed_with.map(|c| c.0), Some(1000), "the healthy call closed only on its own bye");
        assert!(sent.len() >= 160 * 25, "the healthy call ran through the whole test");
        assert_eq!(got, sent, "the healthy call's echo stayed byte-exact and complete");
        let call = wait_for_call(api, &self.call_id, |c| c["status"] == "ended").await;
        assert_eq!(call["end_reason"], "client_hangup");
    }
}

/// 20 ms of 8 kHz μ-law.
pub const FRAME_BYTES: usize = 160;

/// A frame of audio unique to (call, seq), so any gap, duplicate or reordering in a
/// recording shows.
pub fn frame(call: usize, seq: u64) -> Vec<u8> {
    (0..FRAME_BYTES).map(|i| ((call as u64 * 31 + seq * 7 + i as u64) % 251) as u8).collect()
}

/// The audio of a call's inbound recording (the data chunk of its WAV).
pub async fn recording(api: &ControlApi, call_id: &str) -> Vec<u8> {
    recording_track(api, call_id, "inbound").await
}

/// The audio of one track (`inbound`, `outbound`) of a call's recording.
pub async fn recording_track(api: &ControlApi, call_id: &str, track: &str) -> Vec<u8> {
    let url = format!("{}/v1/calls/{call_id}/recording?track={track}", api.base_url());
    let response = api.http().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{track} recording of {call_id}");
    let wav = response.bytes().await.unwrap();
    // RIFF header, fmt (18 bytes for μ-law), fact, then data: find the data chunk.
    let at = wav.windows(4).position(|w| w == b"data").expect("a data chunk");
    let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
    wav[at + 8..at + 8 + len].to_vec()
}

/// A call's timeline events.
pub async fn events_of(api: &ControlApi, call_id: &str) -> Vec<Value> {
    api.events(call_id).await.unwrap()["events"].as_array().unwrap().clone()
}

/// Frames of the recorded main-menu prompt in [`IvrDefinitions`] (2 s).
pub const IVR_PROMPT_FRAMES: usize = 100;

/// Frame `i` of the recorded main-menu prompt, exactly as the worker sends it to a μ-law
/// 8 kHz call: the WAV file is μ-law at 8 kHz, so the worker's decode → resample → encode
/// gives the file's bytes back (no byte is 0x7F, μ-law's second zero code).
pub fn ivr_prompt_frame(i: usize) -> Vec<u8> {
    (0..160)
        .map(|k| {
            let b = ((i * 31 + k * 17) % 251) as u8 + 1;
            if b == 0x7F { 0x7E } else { b }
        })
        .collect()
}

/// A directory with the IVR definition `main-menu`, removed when dropped:
///
/// - `main`: the recorded prompt (`welcome.wav`, [`IVR_PROMPT_FRAMES`] frames), then "1"
///   goes to `account`, "9" to `talk`, "0" hangs up.
/// - `account`: a 400 ms 620 Hz prompt, then up to 4 digits ended by "#", back to `main`.
/// - `talk`: a 6 s 440 Hz prompt the caller's voice interrupts (barge-in), then `account`.
pub struct IvrDefinitions {
    pub dir: std::path::PathBuf,
}

impl IvrDefinitions {
    pub fn write(name: &str) -> IvrDefinitions {
        let dir = std::env::temp_dir().join(format!("cw-ivr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let audio: Vec<u8> = (0..IVR_PROMPT_FRAMES).flat_map(ivr_prompt_frame).collect();
        std::fs::write(dir.join("welcome.wav"), mulaw_wav(&audio)).unwrap();
        std::fs::write(
            dir.join("main-menu.toml"),
            r##"
start = "main"

[prompts]
welcome = "welcome.wav"

[menus.main]
prompt = [{ wav = "welcome" }]
options = { "1" = { menu = "account" }, "9" = { menu = "talk" }, "0" = { hangup = true } }
timeout_ms = 30000

[menus.account]
prompt = [{ freqs_hz = [620], duration_ms = 400 }]
collect = { max_digits = 4, terminator = "#", inter_digit_timeout_ms = 30000, then = { menu = "main" } }
timeout_ms = 30000

[menus.talk]
prompt = [{ freqs_hz = [440], duration_ms = 6000 }]
options = { "1" = { menu = "account" } }
timeout_ms = 30000
barge_in = { threshold_dbfs = -35, min_speech_ms = 100, hangover_ms = 60, then = { menu = "account" } }
"##,
        )
        .unwrap();
        IvrDefinitions { dir }
    }

    pub fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for IvrDefinitions {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A mono μ-law 8 kHz WAV file holding `audio`.
pub fn mulaw_wav(audio: &[u8]) -> Vec<u8> {
    callworker_server::wav::encode(PCMU_8K, audio)
}

/// The program that runs the `main-menu` definition.
pub fn ivr_definition_program() -> Value {
    json!({"name": "ivr", "params": {"definition": "main-menu"}})
}

/// 20 ms of μ-law: the DTMF pair of `digit` when `Some`, silence otherwise; `index` is the
/// frame's place in the tone (for a continuous phase).
pub fn dtmf_audio_frame(digit: Option<char>, index: u64) -> Vec<u8> {
    let mut pcm = Vec::new();
    match digit.and_then(callworker_call::dsp::dtmf_freqs_hz) {
        Some((low, high)) => {
            let mut g = callworker_call::dsp::ToneGenerator::new();
            g.skip(&[low, high], 8_000, index * 160);
            g.fill(&[low, high], 8_000, 160, &mut pcm);
        }
        None => pcm.resize(160, 0),
    }
    let mut out = Vec::new();
    callworker_protocol::codec::encode(Encoding::Pcmu, &pcm, &mut out);
    out
}

/// 20 ms of loud noise (speech-like energy, about -17 dBFS), μ-law; `seed` varies it.
pub fn noise_audio_frame(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let pcm: Vec<i16> = (0..160)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % 16_000) as i32 - 8_000) as i16
        })
        .collect();
    let mut out = Vec::new();
    callworker_protocol::codec::encode(Encoding::Pcmu, &pcm, &mut out);
    out
}
