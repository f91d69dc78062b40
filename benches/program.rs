//! Cost of one call-program step: [`Call::handle`] with one input, per 20 ms frame of one call.
//!
//! The driver calls `handle` for every inbound frame and every timer deadline, so as in
//! `protocol.rs`, multiply a median by 50,000 to get the share of a core that 1,000 calls
//! spend on it. Each iteration advances the call's clock by one frame (20 ms) and feeds
//! the next sequence number, so every step does the work of a live call (no duplicate
//! drops, no idle timers); outputs go to a reused `Vec`, as in the driver.
//!
//! - `echo_audio/delay0`: an inbound frame played straight back (one `Output::Audio`).
//! - `echo_audio_timeout/delay100`: an inbound frame held for 100 ms, then the `Timeout`
//!   that releases the frame held five frames ago: the two steps one frame costs.
//! - `tone_timeout/*`: the frame timer producing one generated frame (sine synthesis and
//!   encoding), single and dual tone.
//! - `dtmf/*`: a DTMF digit: timeline entry (full timeline, so the oldest is dropped),
//!   `Notify` and `Checkpoint` outputs, and for the tone program the acknowledgement.
//! - `ivr_audio/inband_dtmf+vad`: an inbound frame to an IVR whose prompt plays in a menu
//!   with voice barge-in: μ-law decode, the in-band DTMF detector (Goertzel at 8
//!   frequencies per half window) and the energy VAD, on quiet noise that triggers
//!   neither (the steady-state cost every IVR call pays per frame).
//!
//! Run with `cargo bench -p callworker-benches --bench program` (`-- --quick` for a fast
//! pass).

use std::hint::black_box;

use callworker_call::program::{
    EchoParams, IvrBargeIn, IvrChoice, IvrMenu, IvrParams, PromptSegment, ToneParams, ToneSegment,
};
use callworker_call::{
    Call, CallId, CallLimits, CallSpec, Direction, Input, Output, ProgramSpec, RecordingSettings, TenantId,
    Transport, UnixMillis,
};
use callworker_protocol::{AudioFormat, Encoding};
use criterion::{Criterion, criterion_group, criterion_main};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const PCMU_8K: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };
const L16_16K: AudioFormat = AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 };
/// One 20 ms frame, in milliseconds.
const FRAME_MS: u64 = 20;
/// One 20 ms frame of 8 kHz μ-law.
const FRAME_BYTES: usize = 160;
/// Long enough that no benchmark run reaches the call's maximum duration (a hundred years
/// of 20 ms frames), which would end the call and leave nothing to measure.
const MAX_DURATION_MS: u64 = 100 * 365 * 24 * 3_600_000;

/// A call attached at `T0` over the native transport.
fn attached(program: ProgramSpec, audio: AudioFormat) -> Call {
    let spec = CallSpec {
        tenant: TenantId::parse("acme").expect("valid tenant"),
        direction: Direction::Inbound,
        from: Some("+15550100".into()),
        to: Some("+15550199".into()),
        program,
        audio,
        limits: CallLimits { max_duration_ms: MAX_DURATION_MS, ..CallLimits::default() },
        recording: RecordingSettings::default(),
    };
    let mut call = Call::new(CallId::parse("c1").expect("valid id"), spec, T0).expect("valid spec");
    let mut out = Vec::new();
    call.handle(T0, Input::Attached { transport: Transport::Native, resume: None }, &mut out);
    call
}

fn echo(delay_ms: u32) -> ProgramSpec {
    ProgramSpec::Echo(EchoParams { delay_ms })
}

fn tone(freqs_hz: &[u32]) -> ProgramSpec {
    ProgramSpec::Tone(ToneParams {
        segments: vec![ToneSegment { freqs_hz: freqs_hz.to_vec(), duration_ms: 60_000 }],
        repeat: true,
        hangup_digit: Some('#'),
    })
}

/// A call's clock and inbound sequence, advanced one frame per step.
struct Clock {
    frame: u64,
}

impl Clock {
    fn next(&mut self) -> (UnixMillis, u64) {
        self.frame += 1;
        (T0.add_ms(self.frame * FRAME_MS), self.frame)
    }
}

fn audio_frames(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Audio { .. })).count()
}

fn bench_echo(c: &mut Criterion) {
    let payload: Vec<u8> = (0..FRAME_BYTES).map(|i| (i * 37 % 251) as u8).collect();
    let mut group = c.benchmark_group("program");

    let mut call = attached(echo(0), PCMU_8K);
    let mut clock = Clock { frame: 0 };
    let mut out = Vec::with_capacity(8);
    group.bench_function("echo_audio/delay0", |b| {
        b.iter(|| {
            out.clear();
            let (now, seq) = clock.next();
            call.handle(now, Input::Audio { seq, payload: black_box(&payload) }, &mut out);
            black_box(&out);
        })
    });
    assert_eq!(audio_frames(&out), 1, "echo without delay plays each frame at once");

    let mut call = attached(echo(100), PCMU_8K);
    let mut clock = Clock { frame: 0 };
    let delay_step = |call: &mut Call, clock: &mut Clock, out: &mut Vec<Output>| {
        let (now, seq) = clock.next();
        call.handle(now, Input::Audio { seq, payload: black_box(&payload) }, out);
        call.handle(now, Input::Timeout, out);
    };
    // Fill the delay line first (100 ms = 5 frames), so every step releases one frame.
    for _ in 0..5 {
        delay_step(&mut call, &mut clock, &mut out);
    }
    group.bench_function("echo_audio_timeout/delay100", |b| {
        b.iter(|| {
            out.clear();
            delay_step(&mut call, &mut clock, &mut out);
            black_box(&out);
        })
    });
    assert_eq!(audio_frames(&out), 1, "one frame released per frame received");
    group.finish();
}

fn bench_tone(c: &mut Criterion) {
    let mut group = c.benchmark_group("program");
    let mut out = Vec::with_capacity(8);
    for (name, freqs_hz, audio) in [
        ("tone_timeout/440hz_pcmu8k", &[440][..], PCMU_8K),
        ("tone_timeout/350+440hz_pcmu8k", &[350, 440][..], PCMU_8K),
        ("tone_timeout/440hz_l16_16k", &[440][..], L16_16K),
    ] {
        let mut call = attached(tone(freqs_hz), audio);
        // The clock started at T0 with a frame due then; each step is the next deadline.
        let mut clock = Clock { frame: 0 };
        call.handle(T0, Input::Timeout, &mut out);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let (now, _) = clock.next();
                call.handle(now, Input::Timeout, &mut out);
                black_box(&out);
            })
        });
        assert_eq!(audio_frames(&out), 1, "{name}: one generated frame per timeout");
    }
    group.finish();
}

fn bench_dtmf(c: &mut Criterion) {
    let mut group = c.benchmark_group("program");
    let mut out = Vec::with_capacity(8);
    for (name, program) in [("dtmf/echo", echo(0)), ("dtmf/tone", tone(&[440]))] {
        let mut call = attached(program, PCMU_8K);
        let mut clock = Clock { frame: 0 };
        // Fill the timeline first: in a long call every new event drops the oldest.
        while call.timeline.len() < call.timeline.cap() as usize {
            let (now, _) = clock.next();
            call.handle(now, Input::Dtmf { digit: '5' }, &mut out);
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let (now, _) = clock.next();
                call.handle(now, Input::Dtmf { digit: black_box('5') }, &mut out);
                black_box(&out);
            })
        });
        assert!(out.iter().any(|o| matches!(o, Output::Checkpoint)), "{name}: a digit asks for a checkpoint");
    }
    group.finish();
}

/// An IVR whose one menu plays a minute-long prompt that the caller's voice may interrupt.
fn ivr_with_barge_in() -> ProgramSpec {
    let menu = IvrMenu {
        prompt: vec![PromptSegment { freqs_hz: vec![440], duration_ms: 60_000, wav: None }],
        options: [('1', IvrChoice::Hangup)].into_iter().collect(),
        collect: None,
        timeout_ms: 5_000,
        retries: 2,
        on_failure: IvrChoice::Hangup,
        barge_in: Some(IvrBargeIn { threshold_dbfs: -35, min_speech_ms: 120, hangover_ms: 80, then: None }),
    };
    ProgramSpec::Ivr(IvrParams::inline("main".into(), [("main".to_owned(), menu)].into_iter().collect()))
}

fn bench_ivr(c: &mut Criterion) {
    let mut group = c.benchmark_group("program");
    // Quiet noise (about -45 dBFS): neither a key nor speech.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let pcm: Vec<i16> = (0..FRAME_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 400) as i16 - 200
        })
        .collect();
    let mut payload = Vec::new();
    callworker_protocol::codec::encode(Encoding::Pcmu, &pcm, &mut payload);
    let mut call = attached(ivr_with_barge_in(), PCMU_8K);
    let mut clock = Clock { frame: 0 };
    let mut out = Vec::with_capacity(8);
    group.bench_function("ivr_audio/inband_dtmf+vad", |b| {
        b.iter(|| {
            out.clear();
            let (now, seq) = clock.next();
            call.handle(now, Input::Audio { seq, payload: black_box(&payload) }, &mut out);
            black_box(&out);
        })
    });
    assert!(out.is_empty(), "quiet noise neither navigates nor barges in: {out:?}");
    group.finish();
}

criterion_group!(benches, bench_echo, bench_tone, bench_dtmf, bench_ivr);
criterion_main!(benches);
