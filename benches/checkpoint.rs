//! Costs of the checkpoint envelope (`callworker_call::checkpoint`), per format.
//!
//! A driven call is checkpointed on every semantic transition and at least every few
//! seconds, and a takeover decodes the last checkpoint before the first audio flows, so
//! encode is paid steadily and decode sits on the resume path.
//!
//! The calls are realistic: an echo call (100 ms delay, so frames are held) and a tone call,
//! each after a minute of audio with DTMF, a `play_tone`, a resume and a Twilio leg, then
//! pressed on until the timeline is full (its default cap of 256 events), which is the
//! largest a call's checkpoint gets in steady state. Format 1 (read only, upgraded on read)
//! is measured on its golden file and on the same busy calls written in format 1.
//!
//! Sizes are printed once at start and given to criterion as byte throughput.
//!
//! Run with `cargo bench -p callworker-benches --bench checkpoint` (`-- --quick` for a fast
//! pass).

use std::hint::black_box;

use callworker_call::checkpoint::{self, HEADER_BYTES, MAGIC};
use callworker_call::program::{EchoParams, ToneParams, ToneSegment};
use callworker_call::{
    Action, Call, CallId, CallLimits, CallSpec, Direction, Input, ProgramSpec, RecordingSettings, Resume,
    ResumeCause, TenantId, Transport, TwilioLeg, UnixMillis,
};
use callworker_protocol::{AudioFormat, Encoding};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const PCMU_8K: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };
/// One 20 ms frame of 8 kHz μ-law.
const FRAME_BYTES: usize = 160;
/// Audio driven through each call before the timeline is filled: one minute.
const ACTIVE_MS: u64 = 60_000;

/// The format-1 golden file: the call the first release stored.
const GOLDEN_V1: &[u8] = include_bytes!("../crates/callworker-call/tests/golden/checkpoint-v1.bin");
/// The format-2 golden file, for a like-for-like comparison with format 1.
const GOLDEN_V2: &[u8] = include_bytes!("../crates/callworker-call/tests/golden/checkpoint-v2.bin");

fn spec(program: ProgramSpec, recording: RecordingSettings) -> CallSpec {
    CallSpec {
        tenant: TenantId::parse("acme-telecom").expect("valid tenant"),
        direction: Direction::Inbound,
        from: Some("+15550100".into()),
        to: Some("+15550199".into()),
        program,
        audio: PCMU_8K,
        limits: CallLimits::default(),
        recording,
    }
}

/// A call after a minute of activity over Twilio, with a resume, a `play_tone`, a DTMF
/// digit every two seconds, and then DTMF until its timeline is at its cap.
fn busy_call(program: ProgramSpec, recording: RecordingSettings, twilio: bool) -> Call {
    let id = CallId::parse("call_01J9ZK3T6W5Q8X2V4N7M0B1C3D").expect("valid id");
    let mut call = Call::new(id, spec(program, recording), T0).expect("valid spec");
    if twilio {
        call.twilio = Some(TwilioLeg {
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            call_sid: "CA0123456789abcdef0123456789abcdef".into(),
            stream_sid: "MZ0123456789abcdef0123456789abcdef".into(),
        });
    }
    let mut out = Vec::new();
    let at = |ms: u64| T0.add_ms(ms);
    call.handle(at(100), Input::Attached { transport: Transport::Twilio, resume: None }, &mut out);
    let payload: Vec<u8> = (0..FRAME_BYTES).map(|i| (i * 37 % 251) as u8).collect();
    let mut seq = 0;
    let mut ms = 120;
    while ms < 120 + ACTIVE_MS {
        seq += 1;
        call.handle(at(ms), Input::Audio { seq, payload: &payload }, &mut out);
        call.handle(at(ms), Input::Timeout, &mut out);
        if ms % 2_000 == 0 {
            call.handle(at(ms), Input::Dtmf { digit: '5' }, &mut out);
        }
        if ms == 20_000 {
            let tone = Action::PlayTone { freqs_hz: vec![350, 440], duration_ms: 500 };
            call.handle(at(ms), Input::Action(tone), &mut out);
        }
        if ms == 30_000 {
            call.handle(at(ms), Input::Detached { cause: None }, &mut out);
            let resume = Resume { cause: ResumeCause::WorkerLost, gap_ms: 840 };
            call.handle(
                at(ms + 840),
                Input::Attached { transport: Transport::Twilio, resume: Some(resume) },
                &mut out,
            );
        }
        if let Some(played) = seq.checked_sub(5) {
            call.handle(at(ms), Input::Played { upto_seq: played }, &mut out);
        }
        out.clear();
        ms += 20;
    }
    // Press on until the timeline is full: the largest steady-state checkpoint.
    while call.timeline.len() < call.timeline.cap() as usize {
        call.handle(at(ms), Input::Dtmf { digit: '1' }, &mut out);
        ms += 20;
    }
    out.clear();
    call
}

fn echo_call() -> Call {
    busy_call(
        ProgramSpec::Echo(EchoParams { delay_ms: 100 }),
        RecordingSettings { inbound: true, outbound: true },
        true,
    )
}

fn tone_call() -> Call {
    let segments = [(vec![440, 480], 2_000), (vec![], 4_000)]
        .into_iter()
        .map(|(freqs_hz, duration_ms)| ToneSegment { freqs_hz, duration_ms })
        .collect();
    busy_call(
        ProgramSpec::Tone(ToneParams { segments, repeat: true, hangup_digit: Some('#') }),
        RecordingSettings::default(),
        true,
    )
}

/// `call` as a format-1 checkpoint. Format 2 only appended `recording` (two bools), `twilio`
/// (an `Option`) and `detach_cause` (an `Option`) to the postcard payload, so for a call
/// with those at their defaults the format-1 payload is the format-2 payload without its
/// last four bytes. Checked by decoding it back.
fn encode_v1(call: &Call) -> Vec<u8> {
    let mut v1_call = call.clone();
    v1_call.recording = RecordingSettings::default();
    v1_call.twilio = None;
    v1_call.detach_cause = None;
    let v2 = checkpoint::encode(&v1_call);
    let payload = &v2[HEADER_BYTES..v2.len() - 4];
    assert_eq!(&v2[v2.len() - 4..], &[0, 0, 0, 0], "format 2's fields at their defaults");
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(&u32::try_from(payload.len()).expect("small payload").to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    bytes.extend_from_slice(payload);
    assert_eq!(checkpoint::format_version(&bytes), Ok(1));
    assert_eq!(checkpoint::decode(&bytes).as_ref(), Ok(&v1_call), "format 1 upgrades to the same call");
    bytes
}

fn bench_checkpoint(c: &mut Criterion) {
    let calls = [("echo", echo_call()), ("tone", tone_call())];
    for golden in [GOLDEN_V1, GOLDEN_V2] {
        checkpoint::decode(golden).expect("the golden checkpoints decode");
    }

    println!("checkpoint sizes (envelope header {HEADER_BYTES} B included):");
    println!("  golden_v1: {} B, golden_v2: {} B", GOLDEN_V1.len(), GOLDEN_V2.len());
    for (name, call) in &calls {
        println!(
            "  {name}: v2 {} B, v1 {} B (timeline {} events, {} dropped, program {})",
            checkpoint::encode(call).len(),
            encode_v1(call).len(),
            call.timeline.len(),
            call.timeline.dropped(),
            call.program_name(),
        );
    }

    let mut group = c.benchmark_group("checkpoint");
    for (name, call) in &calls {
        let v2 = checkpoint::encode(call);
        let v1 = encode_v1(call);
        group.throughput(Throughput::Bytes(v2.len() as u64));
        group.bench_function(format!("v2_encode/{name}"), |b| b.iter(|| checkpoint::encode(black_box(call))));
        group.bench_function(format!("v2_decode/{name}"), |b| b.iter(|| checkpoint::decode(black_box(&v2))));
        group.throughput(Throughput::Bytes(v1.len() as u64));
        group.bench_function(format!("v1_decode_upgrade/{name}"), |b| {
            b.iter(|| checkpoint::decode(black_box(&v1)))
        });
    }
    group.throughput(Throughput::Bytes(GOLDEN_V1.len() as u64));
    group.bench_function("v1_decode_upgrade/golden", |b| b.iter(|| checkpoint::decode(black_box(GOLDEN_V1))));
    group.throughput(Throughput::Bytes(GOLDEN_V2.len() as u64));
    group.bench_function("v2_decode/golden", |b| b.iter(|| checkpoint::decode(black_box(GOLDEN_V2))));
    group.finish();
}

criterion_group!(benches, bench_checkpoint);
criterion_main!(benches);
