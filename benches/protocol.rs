//! Hot-path costs of `callworker-protocol`, per 20 ms frame of one call.
//!
//! A worker carrying 1,000 calls handles 50 frames per second per call in each direction,
//! so every figure here is paid 50,000 times a second; multiply the median by 50,000 to get
//! the share of a core it costs.
//!
//! Run with `cargo bench -p callworker-benches --bench protocol` (`-- --quick` for a fast
//! pass).

use std::hint::black_box;

use callworker_protocol::codec::{self, Encoding};
use callworker_protocol::native;
use callworker_protocol::twilio::{self, FromTwilio, Limits, Media, ToTwilio};
use criterion::{Criterion, criterion_group, criterion_main};

/// One 20 ms frame at 8 kHz.
const FRAME_SAMPLES: usize = 160;
const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

/// A 440 Hz-ish tone with some amplitude spread, so every G.711 segment is exercised.
fn frame_pcm() -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|i| {
            let phase = i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 8_000.0;
            (phase.sin() * 20_000.0 * (1.0 + (i % 7) as f64) / 7.0) as i16
        })
        .collect()
}

fn frame_ulaw() -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(Encoding::Pcmu, &frame_pcm(), &mut out);
    out
}

fn bench_codec(c: &mut Criterion) {
    let pcm = frame_pcm();
    let ulaw = frame_ulaw();
    let mut alaw = Vec::new();
    codec::encode(Encoding::Pcma, &pcm, &mut alaw);
    let mut bytes = Vec::with_capacity(2 * FRAME_SAMPLES);
    let mut samples = Vec::with_capacity(2 * FRAME_SAMPLES);

    c.bench_function("ulaw_encode_160", |b| {
        b.iter(|| {
            bytes.clear();
            codec::encode(Encoding::Pcmu, black_box(&pcm), &mut bytes);
            black_box(&bytes);
        })
    });
    c.bench_function("ulaw_decode_160", |b| {
        b.iter(|| {
            samples.clear();
            let _ = codec::decode(Encoding::Pcmu, black_box(&ulaw), &mut samples);
            black_box(&samples);
        })
    });
    c.bench_function("alaw_encode_160", |b| {
        b.iter(|| {
            bytes.clear();
            codec::encode(Encoding::Pcma, black_box(&pcm), &mut bytes);
            black_box(&bytes);
        })
    });
    c.bench_function("alaw_decode_160", |b| {
        b.iter(|| {
            samples.clear();
            let _ = codec::decode(Encoding::Pcma, black_box(&alaw), &mut samples);
            black_box(&samples);
        })
    });
    c.bench_function("resample_8k_to_16k_20ms", |b| {
        b.iter(|| {
            samples.clear();
            let _ = codec::resample(black_box(&pcm), 8_000, 16_000, &mut samples);
            black_box(&samples);
        })
    });
}

fn bench_twilio(c: &mut Criterion) {
    let limits = Limits::default();
    let media = FromTwilio::Media(Media {
        sequence_number: 1234,
        stream_sid: STREAM_SID.to_owned(),
        track: twilio::Track::Inbound,
        chunk: 1233,
        timestamp_ms: 24_660,
        payload: frame_ulaw(),
    });
    let mut text = String::new();
    twilio::encode_from_twilio(&media, &mut text);

    c.bench_function("twilio_parse_media_160", |b| {
        b.iter(|| black_box(twilio::parse_from_twilio(black_box(&text), &limits)))
    });

    let reply = ToTwilio::Media { stream_sid: STREAM_SID.to_owned(), payload: frame_ulaw() };
    let mut out = String::with_capacity(512);
    c.bench_function("twilio_encode_media_160", |b| {
        b.iter(|| {
            out.clear();
            twilio::encode_to_twilio(black_box(&reply), &mut out);
            black_box(&out);
        })
    });
}

fn bench_native(c: &mut Criterion) {
    let payload = frame_ulaw();
    let mut frame = Vec::with_capacity(native::CLIENT_AUDIO_HEADER_BYTES + payload.len());

    c.bench_function("native_encode_client_audio_160", |b| {
        b.iter(|| {
            frame.clear();
            native::encode_client_audio(black_box(1234), black_box(&payload), &mut frame);
            black_box(&frame);
        })
    });
    frame.clear();
    native::encode_client_audio(1234, &payload, &mut frame);
    c.bench_function("native_decode_client_audio_160", |b| {
        b.iter(|| black_box(native::decode_client_audio(black_box(&frame))))
    });
}

criterion_group!(benches, bench_codec, bench_twilio, bench_native);
criterion_main!(benches);
