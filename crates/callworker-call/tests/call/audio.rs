//! What a caller hears: tone frames, their pacing and frequencies, DTMF reactions, overlays.

use callworker_call::dsp::goertzel_power;
use callworker_call::{Action, CallStatus, EndReason, Input, Output, Transport};

use crate::support::*;

/// Power of each frequency in `pcm` at `rate`.
fn powers(pcm: &[i16], rate: u32, freqs: &[f64]) -> Vec<f64> {
    freqs.iter().map(|&f| goertzel_power(pcm, rate, f)).collect()
}

#[test]
fn tone_frames_have_the_call_format_and_frame_size() {
    // (format, bytes per 20 ms frame)
    let cases = [(PCMU_8K, 160), (L16_16K, 640)];
    for (format, frame_bytes) in cases {
        let mut call = attached(tone(&[(&[440], 1_000)], true, None), format);
        let out = run_frames(&mut call, 0, 200);
        let frames = audio_of(&out);
        assert_eq!(frames.len(), 10);
        assert!(frames.iter().all(|(_, p)| p.len() == frame_bytes), "{format:?}");
        assert_eq!(frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        let pcm = pcm_of(&out, format);
        if format == L16_16K {
            assert_eq!(pcm.len(), 320 * 10, "320 samples per frame at 16 kHz");
        }
    }
}

#[test]
fn tone_output_contains_the_configured_frequency() {
    for format in [PCMU_8K, L16_16K] {
        let mut call = attached(tone(&[(&[1_000], 1_000)], true, None), format);
        let pcm = pcm_of(&run_frames(&mut call, 0, 400), format);
        let p = powers(&pcm, format.sample_rate_hz, &[1_000.0, 440.0, 1_500.0]);
        assert!(p[0] > 0.05, "{format:?}: 1 kHz power {}", p[0]);
        assert!(p[1] < 0.001 && p[2] < 0.001, "{format:?}: other powers {p:?}");
    }
}

#[test]
fn tone_is_phase_continuous_across_frames() {
    let mut call = attached(tone(&[(&[440], 1_000)], true, None), L16_16K);
    let pcm = pcm_of(&run_frames(&mut call, 0, 200), L16_16K);
    // A 440 Hz sine at about 10 kSa peak moves at most ~1.8 kSa per sample at 16 kHz; a
    // phase reset at a frame boundary would show as a larger jump.
    let max_step = pcm.windows(2).map(|w| (i32::from(w[1]) - i32::from(w[0])).abs()).max().unwrap();
    assert!(max_step < 2_000, "largest step {max_step}");
}

#[test]
fn dtmf_is_acknowledged_with_its_pair_then_the_pattern_restarts() {
    let program = tone(&[(&[440], 100), (&[], 100)], true, Some('#'));
    let mut call = attached(program, PCMU_8K);
    run_frames(&mut call, 0, 60);
    let out = step(&mut call, at(60), Input::Dtmf { digit: '5' });
    assert_eq!(out.len(), 2, "notify and checkpoint");
    let ack = run_frames(&mut call, 60, 260);
    let pcm = pcm_of(&ack, PCMU_8K);
    assert_eq!(pcm.len(), 1_600, "200 ms of DTMF");
    let p = powers(&pcm, 8_000, &[770.0, 1_336.0, 440.0]);
    assert!(p[0] > 0.01 && p[1] > 0.01, "DTMF 5 pair powers {p:?}");
    assert!(p[2] < 0.001, "the pattern is replaced while acknowledging: {p:?}");
    // Then the pattern restarts at segment 0: 100 ms of 440 Hz.
    let pcm = pcm_of(&run_frames(&mut call, 260, 360), PCMU_8K);
    let p = powers(&pcm, 8_000, &[440.0, 770.0]);
    assert!(p[0] > 0.05 && p[1] < 0.001, "pattern restarted: {p:?}");
}

#[test]
fn hangup_digit_ends_the_call_completed() {
    let mut call = attached(tone(&[(&[440], 100)], true, Some('#')), PCMU_8K);
    let out = step(&mut call, at(10), Input::Dtmf { digit: '#' });
    assert_eq!(out[..2].len(), 2);
    assert_eq!(out[2..], [Output::Checkpoint, Output::End(EndReason::Completed)]);
    assert_eq!(call.status, CallStatus::Ended);
}

#[test]
fn pattern_without_repeat_ends_completed_after_its_last_frame() {
    let mut call = attached(tone(&[(&[440], 40), (&[], 20)], false, None), PCMU_8K);
    let out = run_frames(&mut call, 0, 60);
    assert_eq!(audio_of(&out).len(), 3);
    assert_eq!(call.status, CallStatus::Active, "the last frame still has its 20 ms to play");
    let out = step(&mut call, at(60), Input::Timeout);
    assert_eq!(out, [Output::Checkpoint, Output::End(EndReason::Completed)]);
}

#[test]
fn pattern_with_repeat_loops() {
    let mut call = attached(tone(&[(&[440], 20), (&[], 20)], true, None), PCMU_8K);
    let out = run_frames(&mut call, 0, 2_000);
    assert_eq!(audio_of(&out).len(), 100);
    assert_eq!(call.status, CallStatus::Active);
}

#[test]
fn a_late_timeout_emits_at_most_ten_frames_and_counts_the_rest() {
    let mut call = attached(tone(&[(&[440], 1_000)], true, None), PCMU_8K);
    // 1 s late: 51 frames are due (0, 20, …, 1000).
    let out = step(&mut call, at(1_000), Input::Timeout);
    assert_eq!(audio_of(&out).len(), 10);
    assert_eq!(call.media.outbound_dropped_frames, 41);
    assert_eq!(call.poll_timeout(), Some(at(1_020)));
}

#[test]
fn detach_pauses_the_pattern_and_attach_resumes_it() {
    let mut call = attached(tone(&[(&[440], 100), (&[880], 100)], true, None), PCMU_8K);
    run_frames(&mut call, 0, 60);
    step(&mut call, at(60), Input::Detached { cause: None });
    // Ten minutes later, the pattern continues where it was: 2 more frames of 440 Hz.
    let later = 600_000;
    step(&mut call, at(later), Input::Attached { transport: Transport::Native, resume: None });
    let out = run_frames(&mut call, later, later + 40);
    let p = powers(&pcm_of(&out, PCMU_8K), 8_000, &[440.0, 880.0]);
    assert!(p[0] > 0.05 && p[1] < 0.001, "{p:?}");
    let out = run_frames(&mut call, later + 40, later + 140);
    let p = powers(&pcm_of(&out, PCMU_8K), 8_000, &[440.0, 880.0]);
    assert!(p[1] > 0.05 && p[0] < 0.001, "{p:?}");
    assert_eq!(call.media.outbound_dropped_frames, 0);
}

#[test]
fn overlay_replaces_echo_audio_for_its_duration() {
    let mut call = attached(echo(0), PCMU_8K);
    step(&mut call, at(0), Input::Action(Action::PlayTone { freqs_hz: vec![1_000], duration_ms: 60 }));
    let mut out = Vec::new();
    for i in 0..6u64 {
        let seq = i + 1;
        call.handle(at(20 * i), Input::Timeout, &mut out);
        call.handle(at(20 * i), Input::Audio { seq, payload: &[0x7F; 160] }, &mut out);
    }
    let frames = audio_of(&out);
    let seqs: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    let echoed = frames.iter().filter(|(_, p)| p == &vec![0x7F; 160]).count();
    assert_eq!(echoed, 3, "three overlay frames, then the echo is back");
    let tone_pcm = pcm_of(&out[..], PCMU_8K);
    assert!(goertzel_power(&tone_pcm[..480], 8_000, 1_000.0) > 0.05);
    assert!(call.overlay.is_none());
}

#[test]
fn overlay_replaces_tone_program_audio_and_the_program_keeps_its_clock() {
    let mut call = attached(tone(&[(&[440], 1_000)], true, None), PCMU_8K);
    step(&mut call, at(0), Input::Action(Action::PlayTone { freqs_hz: vec![1_000], duration_ms: 100 }));
    let out = run_frames(&mut call, 0, 100);
    let frames = audio_of(&out);
    assert_eq!(frames.len(), 5, "one frame per 20 ms, never doubled");
    let p = powers(&pcm_of(&out, PCMU_8K), 8_000, &[1_000.0, 440.0]);
    assert!(p[0] > 0.05 && p[1] < 0.001, "{p:?}");
    let out = run_frames(&mut call, 100, 200);
    assert_eq!(audio_of(&out).len(), 5);
    let p = powers(&pcm_of(&out, PCMU_8K), 8_000, &[1_000.0, 440.0]);
    assert!(p[1] > 0.05 && p[0] < 0.001, "{p:?}");
}

/// After a resume, the tone pattern continues from what the caller heard (the last played
/// position), not from what the previous session had generated.
#[test]
fn a_resumed_tone_replays_what_was_sent_but_never_played() {
    let segment = |call: &callworker_call::Call| match &call.program {
        callworker_call::ProgramState::Tone(s) => s.segment_index(),
        _ => panic!("tone"),
    };
    // Two 5-frame segments, repeating.
    let mut call = attached(tone(&[(&[440], 100), (&[880], 100)], true, None), PCMU_8K);
    let sent = audio_of(&run_frames(&mut call, 0, 140));
    assert_eq!(sent.len(), 7, "frames 1-5 of 440 Hz, 6-7 of 880 Hz");
    assert_eq!(segment(&call), 1);
    step(&mut call, at(140), Input::Played { upto_seq: 3 });
    step(&mut call, at(150), Input::Detached { cause: None });
    let resume = callworker_call::Resume { cause: callworker_call::ResumeCause::WorkerLost, gap_ms: 50 };
    step(&mut call, at(200), Input::Attached { transport: Transport::Twilio, resume: Some(resume) });
    assert_eq!(segment(&call), 0, "stepped back to frame 4 of the first segment");
    let out = run_frames(&mut call, 200, 240);
    let replayed = audio_of(&out);
    assert_eq!(replayed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [8, 9], "new sequence numbers");
    // The sine stays phase-continuous, so compare what is heard: 440 Hz, not 880 Hz.
    let p = powers(&pcm_of(&out, PCMU_8K), 8_000, &[440.0, 880.0]);
    assert!(p[0] > 100.0 * p[1], "the replayed frames are the first segment's 440 Hz: {p:?}");
    assert_eq!(segment(&call), 1);

    // A first attach (no resume) never steps back.
    let mut fresh = new_call(tone(&[(&[440], 100), (&[880], 100)], true, None), PCMU_8K);
    step(&mut fresh, T0, Input::Attached { transport: Transport::Native, resume: None });
    assert_eq!(segment(&fresh), 0);
}
