//! Builders and helpers shared by the call tests.

use callworker_call::program::{EchoParams, ToneParams, ToneSegment};
use callworker_call::{
    Call, CallEvent, CallId, CallLimits, CallSpec, Direction, EventKind, Input, Output, ProgramSpec,
    TenantId, Transport, UnixMillis,
};
use callworker_protocol::{AudioFormat, Encoding};

pub const T0: UnixMillis = UnixMillis(1_700_000_000_000);

pub const PCMU_8K: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };

pub const L16_16K: AudioFormat = AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 };

pub fn at(ms: u64) -> UnixMillis {
    T0.add_ms(ms)
}

pub fn spec(program: ProgramSpec, audio: AudioFormat) -> CallSpec {
    CallSpec {
        tenant: TenantId::parse("acme").unwrap(),
        direction: Direction::Inbound,
        from: Some("+15550100".into()),
        to: Some("+15550199".into()),
        program,
        audio,
        limits: CallLimits::default(),
        recording: Default::default(),
    }
}

pub fn echo(delay_ms: u32) -> ProgramSpec {
    ProgramSpec::Echo(EchoParams { delay_ms })
}

pub fn tone(segments: &[(&[u32], u32)], repeat: bool, hangup_digit: Option<char>) -> ProgramSpec {
    ProgramSpec::Tone(ToneParams {
        segments: segments
            .iter()
            .map(|(freqs_hz, duration_ms)| ToneSegment {
                freqs_hz: freqs_hz.to_vec(),
                duration_ms: *duration_ms,
            })
            .collect(),
        repeat,
        hangup_digit,
    })
}

pub fn new_call(program: ProgramSpec, audio: AudioFormat) -> Call {
    Call::new(CallId::parse("c1").unwrap(), spec(program, audio), T0).unwrap()
}

/// A call attached (native transport) at `T0`.
pub fn attached(program: ProgramSpec, audio: AudioFormat) -> Call {
    let mut call = new_call(program, audio);
    step(&mut call, T0, Input::Attached { transport: Transport::Native, resume: None });
    call
}

pub fn step(call: &mut Call, now: UnixMillis, input: Input<'_>) -> Vec<Output> {
    let mut out = Vec::new();
    call.handle(now, input, &mut out);
    out
}

/// Audio payloads of `out`, with their sequence numbers.
pub fn audio_of(out: &[Output]) -> Vec<(u64, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Audio { seq, payload } => Some((*seq, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Drives timeouts from `from_ms` to `to_ms` (exclusive) in 20 ms steps; returns all outputs.
pub fn run_frames(call: &mut Call, from_ms: u64, to_ms: u64) -> Vec<Output> {
    let mut out = Vec::new();
    let mut t = from_ms;
    while t < to_ms {
        call.handle(at(t), Input::Timeout, &mut out);
        t += 20;
    }
    out
}

pub fn last_event(call: &Call) -> &CallEvent {
    call.timeline.events().last().unwrap()
}

pub fn kinds(call: &Call) -> Vec<EventKind> {
    call.timeline.events().map(|e| e.kind.clone()).collect()
}

/// Decodes every audio frame of `out` to PCM in `format`.
pub fn pcm_of(out: &[Output], format: AudioFormat) -> Vec<i16> {
    let mut pcm = Vec::new();
    for (_, payload) in audio_of(out) {
        callworker_protocol::codec::decode(format.encoding, &payload, &mut pcm).unwrap();
    }
    pcm
}
