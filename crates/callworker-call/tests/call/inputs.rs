//! One table per input: the outputs and state changes each input must produce.

use callworker_call::program::SpecError;
use callworker_call::{
    Action, Call, CallId, CallStatus, EndReason, EventKind, Input, Output, Resume, ResumeCause, Transport,
};
use callworker_protocol::{AudioFormat, Encoding};

use crate::support::*;

#[test]
fn new_validates_the_spec_and_starts_created() {
    let call = new_call(echo(0), PCMU_8K);
    assert_eq!(call.status, CallStatus::Created);
    assert_eq!(call.media.outbound_next_seq, 1);
    assert_eq!(call.program_name(), "echo");
    assert_eq!(kinds(&call), [EventKind::Created { program: "echo".into() }]);
    assert_eq!(call.poll_timeout(), Some(call.max_duration_at()));
    assert!(!call.attached && call.started_at.is_none() && call.overlay.is_none());

    let bad_audio = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 44_100 };
    let cases = [
        (spec(echo(9_999), PCMU_8K), "invalid parameter"),
        (spec(tone(&[], true, None), PCMU_8K), "invalid parameter"),
        (spec(echo(0), bad_audio), "unsupported audio"),
    ];
    for (spec, expected) in cases {
        let err = Call::new(CallId::parse("c1").unwrap(), spec, T0).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{err}");
    }
    let err = Call::new(CallId::parse("c1").unwrap(), spec(echo(0), bad_audio), T0).unwrap_err();
    assert!(matches!(err, SpecError::UnsupportedAudio(_)));
}

#[test]
fn attached_and_detached() {
    let mut call = new_call(tone(&[(&[440], 1_000)], true, None), PCMU_8K);
    let out = step(&mut call, at(100), Input::Attached { transport: Transport::Twilio, resume: None });
    assert_eq!(out, [Output::Checkpoint]);
    assert_eq!(call.status, CallStatus::Active);
    assert_eq!(call.started_at, Some(at(100)));
    assert!(call.attached);
    assert_eq!(call.transport, Some(Transport::Twilio));
    assert_eq!(last_event(&call).kind, EventKind::Attached { transport: Transport::Twilio });
    assert_eq!(call.poll_timeout(), Some(at(100)), "the tone clock starts at attach");

    let out = step(&mut call, at(200), Input::Detached { cause: None });
    assert_eq!(out, [Output::Checkpoint]);
    assert!(!call.attached);
    assert_eq!(last_event(&call).kind, EventKind::Detached);
    assert_eq!(call.poll_timeout(), Some(call.max_duration_at()), "no frames while detached");
    assert_eq!(step(&mut call, at(250), Input::Timeout), [], "no audio while detached");

    let events = call.timeline.len();
    assert_eq!(step(&mut call, at(300), Input::Detached { cause: None }), [], "detach twice is a no-op");
    assert_eq!(call.timeline.len(), events);

    let resume = Resume { cause: ResumeCause::MigratedDrain, gap_ms: 700 };
    let out =
        step(&mut call, at(900), Input::Attached { transport: Transport::Native, resume: Some(resume) });
    assert_eq!(out, [Output::Checkpoint]);
    assert_eq!(call.started_at, Some(at(100)), "started_at is the first attach");
    assert_eq!(call.transport, Some(Transport::Native));
    assert_eq!(
        last_event(&call).kind,
        EventKind::Resumed { transport: Transport::Native, cause: ResumeCause::MigratedDrain, gap_ms: 700 }
    );
    assert_eq!(call.poll_timeout(), Some(at(900)));
}

#[test]
fn audio_applies_each_sequence_number_once() {
    // (sequence numbers fed, applied, duplicates, missing, frames echoed)
    let cases: [(&[u64], u64, u64, u64, usize); 7] = [
        (&[1, 2, 3], 3, 0, 0, 3),
        (&[1, 1, 2, 2], 2, 2, 0, 2),
        (&[1, 5], 5, 0, 3, 2),
        (&[3, 2, 1], 3, 2, 2, 1),
        (&[0], 0, 1, 0, 0),
        (&[1, 4, 3, 5], 5, 1, 2, 3),
        (&[10, 10, 9, 11], 11, 2, 9, 2),
    ];
    for (seqs, applied, duplicates, missing, echoed) in cases {
        let mut call = attached(echo(0), PCMU_8K);
        let mut frames = 0;
        for (i, &seq) in seqs.iter().enumerate() {
            let out = step(&mut call, at(20 * i as u64), Input::Audio { seq, payload: &[seq as u8; 160] });
            frames += audio_of(&out).len();
        }
        let m = call.media;
        assert_eq!(
            (m.inbound_applied_seq, m.inbound_duplicate_frames, m.inbound_missing_frames, frames),
            (applied, duplicates, missing, echoed),
            "seqs {seqs:?}"
        );
        assert_eq!(m.outbound_next_seq, 1 + echoed as u64);
    }
}

#[test]
fn audio_while_detached_counts_but_plays_nothing() {
    let mut call = new_call(echo(0), PCMU_8K);
    assert_eq!(step(&mut call, T0, Input::Audio { seq: 1, payload: &[1; 160] }), []);
    assert_eq!(call.media.inbound_applied_seq, 1);
    assert_eq!(call.media.outbound_next_seq, 1);
}

#[test]
fn echo_returns_payload_byte_for_byte() {
    let mut call = attached(echo(0), PCMU_8K);
    let payloads: [Vec<u8>; 4] = [vec![0x7F; 160], (0..=255).collect(), vec![0xFF, 0x00, 0x7F, 0x80], vec![]];
    for (i, payload) in payloads.iter().enumerate() {
        let seq = i as u64 + 1;
        let out = step(&mut call, at(20 * seq), Input::Audio { seq, payload });
        assert_eq!(out, [Output::Audio { seq, payload: payload.clone() }]);
    }
}

#[test]
fn echo_delay_holds_frames_and_drops_oldest_when_full() {
    let mut spec = spec(echo(100), PCMU_8K);
    spec.limits.delay_frames_max = 3;
    let mut call = Call::new(CallId::parse("c1").unwrap(), spec, T0).unwrap();
    step(&mut call, T0, Input::Attached { transport: Transport::Native, resume: None });
    for seq in 1..=5u64 {
        let out = step(&mut call, at(seq), Input::Audio { seq, payload: &[seq as u8] });
        assert_eq!(out, [], "held, not played");
    }
    assert_eq!(call.media.outbound_dropped_frames, 2, "frames 1 and 2 dropped");
    assert_eq!(call.poll_timeout(), Some(at(103)));
    assert_eq!(step(&mut call, at(102), Input::Timeout), []);
    let out = step(&mut call, at(104), Input::Timeout);
    assert_eq!(audio_of(&out), [(1, vec![3]), (2, vec![4])]);
    let out = step(&mut call, at(200), Input::Timeout);
    assert_eq!(audio_of(&out), [(3, vec![5])]);
    assert_eq!(call.poll_timeout(), Some(call.max_duration_at()));
}

#[test]
fn dtmf_records_notifies_and_checkpoints() {
    let cases =
        [('5', true), ('#', true), ('*', true), ('D', true), ('x', false), ('d', false), (' ', false)];
    for (digit, valid) in cases {
        let mut call = attached(echo(0), PCMU_8K);
        let events = call.timeline.len();
        let out = step(&mut call, at(10), Input::Dtmf { digit });
        if valid {
            assert_eq!(
                out,
                [
                    Output::Notify { name: "dtmf_received", detail: Some(digit.to_string()) },
                    Output::Checkpoint
                ]
            );
            assert_eq!(last_event(&call).kind, EventKind::Dtmf { digit });
            assert_eq!(last_event(&call).at, at(10));
        } else {
            assert_eq!(out, [], "{digit:?} ignored");
            assert_eq!(call.timeline.len(), events);
        }
    }
}

#[test]
fn played_only_moves_forward_and_only_over_sent_audio() {
    // (played reports, expected played position); 3 frames were sent (next seq 4).
    let cases: [(&[u64], u64); 5] = [(&[1], 1), (&[3, 2], 3), (&[4], 0), (&[2, 99], 2), (&[0], 0)];
    for (reports, expected) in cases {
        let mut call = attached(echo(0), PCMU_8K);
        for seq in 1..=3 {
            step(&mut call, at(seq), Input::Audio { seq, payload: &[0] });
        }
        for &upto_seq in reports {
            assert_eq!(step(&mut call, at(50), Input::Played { upto_seq }), []);
        }
        assert_eq!(call.media.outbound_played_seq, expected, "reports {reports:?}");
    }
}

#[test]
fn actions() {
    // PlayTone: recorded, checkpointed, overlay installed.
    let mut call = attached(echo(0), PCMU_8K);
    let out =
        step(&mut call, at(5), Input::Action(Action::PlayTone { freqs_hz: vec![440], duration_ms: 50 }));
    assert_eq!(out, [Output::Checkpoint]);
    assert_eq!(last_event(&call).kind, EventKind::ActionApplied { action: "play_tone".into() });
    assert_eq!(call.overlay.as_ref().map(|o| o.frames_left()), Some(3), "50 ms rounds up to 3 frames");

    // SwitchProgram: recorded twice, clears queued audio, checkpointed.
    let mut call = attached(echo(0), PCMU_8K);
    let program = tone(&[(&[440], 20)], true, None);
    let out = step(&mut call, at(5), Input::Action(Action::SwitchProgram { program }));
    assert_eq!(out, [Output::Clear, Output::Checkpoint]);
    assert_eq!(call.program_name(), "tone");
    let n = call.timeline.len();
    let tail: Vec<_> = kinds(&call).into_iter().skip(n - 2).collect();
    assert_eq!(
        tail,
        [
            EventKind::ActionApplied { action: "switch_program".into() },
            EventKind::ProgramSwitched { program: "tone".into() }
        ]
    );
    assert_eq!(call.poll_timeout(), Some(at(5)), "the new program's clock runs from the switch");

    // Hangup: ends with api_ended.
    let mut call = attached(echo(0), PCMU_8K);
    let out = step(&mut call, at(5), Input::Action(Action::Hangup));
    assert_eq!(out, [Output::Checkpoint, Output::End(EndReason::ApiEnded)]);
    let n = call.timeline.len();
    let tail: Vec<_> = kinds(&call).into_iter().skip(n - 2).collect();
    assert_eq!(
        tail,
        [
            EventKind::ActionApplied { action: "hangup".into() },
            EventKind::Ended { reason: EndReason::ApiEnded }
        ]
    );

    // Invalid actions change nothing.
    let invalid = [
        Action::PlayTone { freqs_hz: vec![5_000], duration_ms: 100 },
        Action::PlayTone { freqs_hz: vec![440], duration_ms: 0 },
        Action::SwitchProgram { program: echo(60_000) },
    ];
    for action in invalid {
        let mut call = attached(echo(0), PCMU_8K);
        let before = call.clone();
        assert_eq!(step(&mut call, at(5), Input::Action(action.clone())), [], "{action:?}");
        assert_eq!(call, before);
    }
}

#[test]
fn end_happens_exactly_once_and_then_everything_is_ignored() {
    for reason in EndReason::ALL {
        let mut call = attached(tone(&[(&[440], 20)], true, None), PCMU_8K);
        let out = step(&mut call, at(30), Input::End(reason));
        assert_eq!(out, [Output::Checkpoint, Output::End(reason)]);
        assert_eq!(call.status, CallStatus::Ended);
        assert_eq!(call.end_reason, Some(reason));
        assert_eq!(call.ended_at, Some(at(30)));
        assert!(!call.attached);
        assert_eq!(last_event(&call).kind, EventKind::Ended { reason });
        assert_eq!(call.poll_timeout(), None);

        let frozen = call.clone();
        let later = [
            Input::End(EndReason::InternalError),
            Input::Attached { transport: Transport::Native, resume: None },
            Input::Detached { cause: None },
            Input::Audio { seq: 9, payload: &[1] },
            Input::Dtmf { digit: '1' },
            Input::Played { upto_seq: 0 },
            Input::Action(Action::Hangup),
            Input::Timeout,
        ];
        for input in later {
            assert_eq!(step(&mut call, at(40), input.clone()), [], "{input:?}");
        }
        assert_eq!(call, frozen);
    }
}

#[test]
fn timeout_ends_at_max_duration_measured_from_creation() {
    let mut s = spec(echo(0), PCMU_8K);
    s.limits.max_duration_ms = 1_000;
    let mut call = Call::new(CallId::parse("c1").unwrap(), s, T0).unwrap();
    assert_eq!(call.poll_timeout(), Some(at(1_000)));
    step(&mut call, at(500), Input::Attached { transport: Transport::Native, resume: None });
    assert_eq!(call.poll_timeout(), Some(at(1_000)), "not from the attach");
    assert_eq!(step(&mut call, at(999), Input::Timeout), []);
    let out = step(&mut call, at(1_000), Input::Timeout);
    assert_eq!(out, [Output::Checkpoint, Output::End(EndReason::MaxDuration)]);
    assert_eq!(call.end_reason, Some(EndReason::MaxDuration));
}

#[test]
fn timeout_before_anything_is_due_does_nothing() {
    for mut call in [new_call(echo(0), PCMU_8K), attached(echo(0), PCMU_8K), attached(echo(40), PCMU_8K)] {
        let before = call.clone();
        assert_eq!(step(&mut call, at(10), Input::Timeout), []);
        assert_eq!(call, before);
    }
}

#[test]
fn poll_timeout_takes_the_earliest_timer() {
    let mut call = attached(tone(&[(&[440], 1_000)], true, None), PCMU_8K);
    assert_eq!(call.poll_timeout(), Some(T0));
    step(&mut call, at(0), Input::Timeout);
    assert_eq!(call.poll_timeout(), Some(at(20)));
    step(&mut call, at(5), Input::Action(Action::PlayTone { freqs_hz: vec![440], duration_ms: 40 }));
    assert_eq!(call.poll_timeout(), Some(at(5)), "overlay clock starts at the action");
    step(&mut call, at(5), Input::Detached { cause: None });
    assert_eq!(call.poll_timeout(), Some(call.max_duration_at()));
}

/// `play`: the segments play in order over the program, whole frames each, then the
/// program's audio returns.
#[test]
fn play_sequences_tones_over_the_program() {
    use callworker_call::program::ToneSegment;
    let mut call = attached(tone(&[(&[], 20)], true, None), PCMU_8K);
    let segments = vec![
        ToneSegment { freqs_hz: vec![440], duration_ms: 40 },
        ToneSegment { freqs_hz: vec![], duration_ms: 20 },
        ToneSegment { freqs_hz: vec![620], duration_ms: 20 },
    ];
    let out = step(&mut call, at(0), Input::Action(Action::Play { segments }));
    assert_eq!(out, [Output::Checkpoint]);
    assert_eq!(last_event(&call).kind, EventKind::ActionApplied { action: "play".into() });
    assert_eq!(call.play_queue.len(), 2, "the first segment plays, two wait");
    // Drive a few frames past the sequence: 2 + 1 + 1 overlay frames, then the program.
    let mut out = Vec::new();
    let mut t = 0;
    while t <= 200 {
        let due = call.poll_timeout().unwrap();
        t = due.since(T0);
        call.handle(due, Input::Timeout, &mut out);
        if call.overlay.is_none() && call.play_queue.is_empty() && t >= 100 {
            break;
        }
    }
    let frames = audio_of(&out);
    assert!(frames.len() >= 5, "{} frames", frames.len());
    let seqs: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "numbered without gaps");
    let silence = vec![callworker_protocol::codec::ULAW_SILENCE; 160];
    assert_ne!(frames[0].1, silence, "440 Hz first");
    assert_ne!(frames[1].1, silence);
    assert_eq!(frames[2].1, silence, "then the silent segment");
    assert_ne!(frames[3].1, silence, "then 620 Hz");
    assert_ne!(frames[3].1, frames[0].1);
    assert_eq!(frames[4].1, silence, "then the program (a silent tone pattern) again");
    assert!(call.play_queue.is_empty() && call.overlay.is_none());
    // A `play_tone` replaces a sequence entirely.
    step(
        &mut call,
        at(300),
        Input::Action(Action::Play {
            segments: vec![ToneSegment { freqs_hz: vec![440], duration_ms: 20 }; 3],
        }),
    );
    step(&mut call, at(301), Input::Action(Action::PlayTone { freqs_hz: vec![350], duration_ms: 20 }));
    assert!(call.play_queue.is_empty(), "play_tone drops what a play had queued");
}

/// `inject_dtmf` drives the program as key presses would, recorded with source `api`; a
/// hang-up digit ends the call and the digits after it are not delivered.
#[test]
fn injected_dtmf_reaches_the_program_and_the_timeline() {
    let mut call = attached(tone(&[(&[440], 1000)], true, Some('#')), PCMU_8K);
    let out = step(&mut call, at(5), Input::Action(Action::InjectDtmf { digits: "12#9".into() }));
    assert!(out.contains(&Output::End(EndReason::Completed)), "{out:?}");
    let tail: Vec<_> = kinds(&call).into_iter().skip(2).collect();
    assert_eq!(
        tail,
        [
            EventKind::ActionApplied { action: "inject_dtmf".into() },
            EventKind::DtmfInjected { digit: '1' },
            EventKind::DtmfInjected { digit: '2' },
            EventKind::DtmfInjected { digit: '#' },
            EventKind::Ended { reason: EndReason::Completed },
        ]
    );
    let json = serde_json::to_value(call.timeline.events().nth(3).unwrap()).unwrap();
    assert_eq!(json, serde_json::json!({"at": at(5).0, "type": "dtmf", "digit": "1", "source": "api"}));
}

/// `mute`: inbound, the program hears silence; outbound, the caller hears silence with the
/// numbering unchanged; `unmute` restores each way independently.
#[test]
fn mute_silences_each_way_independently() {
    use callworker_call::MuteDirection;
    let voice = vec![0x12u8; 160];
    let silence = vec![callworker_protocol::codec::ULAW_SILENCE; 160];
    let mut call = attached(echo(0), PCMU_8K);
    step(&mut call, at(1), Input::Action(Action::Mute { direction: MuteDirection::Inbound }));
    assert!(call.mute.inbound && !call.mute.outbound);
    let out = step(&mut call, at(20), Input::Audio { seq: 1, payload: &voice });
    assert_eq!(audio_of(&out), [(1, silence.clone())], "the echo heard silence");
    step(&mut call, at(21), Input::Action(Action::Mute { direction: MuteDirection::Both }));
    step(&mut call, at(22), Input::Action(Action::Unmute { direction: MuteDirection::Inbound }));
    assert!(!call.mute.inbound && call.mute.outbound);
    let out = step(&mut call, at(40), Input::Audio { seq: 2, payload: &voice });
    assert_eq!(audio_of(&out), [(2, silence.clone())], "the caller hears silence");
    step(&mut call, at(41), Input::Action(Action::Unmute { direction: MuteDirection::Outbound }));
    let out = step(&mut call, at(60), Input::Audio { seq: 3, payload: &voice });
    assert_eq!(audio_of(&out), [(3, voice.clone())]);
    // L16 silence is zeros.
    let mut call = attached(echo(0), L16_16K);
    step(&mut call, at(1), Input::Action(Action::Mute { direction: MuteDirection::Outbound }));
    let out = step(&mut call, at(20), Input::Audio { seq: 1, payload: &[7u8; 640] });
    assert_eq!(audio_of(&out), [(1, vec![0u8; 640])]);
}

/// `transfer`: the client is told where to (`Notify transfer`), then the call ends with
/// `transferred`.
#[test]
fn transfer_notifies_then_ends_transferred() {
    let mut call = attached(echo(0), PCMU_8K);
    let out = step(&mut call, at(5), Input::Action(Action::Transfer { to: "+15550100".into() }));
    assert_eq!(
        out,
        [
            Output::Notify { name: "transfer", detail: Some("+15550100".into()) },
            Output::Checkpoint,
            Output::End(EndReason::Transferred)
        ]
    );
    assert_eq!(call.end_reason, Some(EndReason::Transferred));
}
