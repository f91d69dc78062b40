//! Property tests: random input sequences at increasing virtual times, with the crate's
//! invariants (lib.rs) checked after every step.

use callworker_call::{
    Action, Call, CallId, CallStatus, EndReason, EventKind, Input, MediaPositions, MuteDirection, Output,
    ProgramSpec, Resume, ResumeCause, Transport, checkpoint,
};
use proptest::prelude::*;

use crate::support::*;

/// An owned [`Input`] (inputs borrow their audio payload).
#[derive(Debug, Clone)]
enum Op {
    Attach(Option<u64>),
    Detach,
    /// Sequence number relative to the last applied one (negative: duplicate).
    Audio(i8, Vec<u8>),
    Dtmf(char),
    Played(u64),
    Action(Action),
    End(EndReason),
    Timeout,
}

fn program() -> impl Strategy<Value = ProgramSpec> {
    prop_oneof![
        prop_oneof![Just(0u32), Just(40), Just(200)].prop_map(echo),
        (any::<bool>(), prop::option::of(prop_oneof![Just('#'), Just('9')]))
            .prop_map(|(repeat, digit)| tone(&[(&[440], 60), (&[], 40), (&[697, 1209], 20)], repeat, digit)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let digit = prop::sample::select(vec!['1', '5', '9', '#', '*', 'A', 'x']);
    let action = prop_oneof![
        (prop::collection::vec(1u32..5_000, 0..3), 0u32..200)
            .prop_map(|(freqs_hz, duration_ms)| Action::PlayTone { freqs_hz, duration_ms }),
        program().prop_map(|program| Action::SwitchProgram { program }),
        Just(Action::Hangup),
        prop::collection::vec((prop::collection::vec(1u32..5_000, 0..3), 0u32..100), 0..4).prop_map(
            |segments| {
                Action::Play {
                    segments: segments
                        .into_iter()
                        .map(|(freqs_hz, duration_ms)| callworker_call::program::ToneSegment {
                            freqs_hz,
                            duration_ms,
                        })
                        .collect(),
                }
            }
        ),
        prop::sample::select(vec!["1", "9#", "x", "", "*A5"])
            .prop_map(|d| Action::InjectDtmf { digits: d.into() }),
        prop::sample::select(vec![MuteDirection::Inbound, MuteDirection::Outbound, MuteDirection::Both])
            .prop_flat_map(|direction| prop_oneof![
                Just(Action::Mute { direction }),
                Just(Action::Unmute { direction })
            ]),
        prop::sample::select(vec!["+15550100", "sip:a@b", "nope"])
            .prop_map(|to| Action::Transfer { to: to.into() }),
    ];
    prop_oneof![
        3 => prop::option::of(0u64..5_000).prop_map(Op::Attach),
        2 => Just(Op::Detach),
        12 => (-3i8..4, prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(d, p)| Op::Audio(d, p)),
        2 => digit.prop_map(Op::Dtmf),
        2 => (0u64..40).prop_map(Op::Played),
        1 => action.prop_map(Op::Action),
        1 => prop::sample::select(EndReason::ALL.to_vec()).prop_map(Op::End),
        10 => Just(Op::Timeout),
    ]
}

fn to_input(op: &Op, media: MediaPositions) -> Input<'_> {
    match op {
        Op::Attach(gap) => Input::Attached {
            transport: Transport::Native,
            resume: gap.map(|gap_ms| Resume { cause: ResumeCause::WorkerLost, gap_ms }),
        },
        Op::Detach => Input::Detached { cause: None },
        Op::Audio(delta, payload) => {
            Input::Audio { seq: media.inbound_applied_seq.saturating_add_signed(i64::from(*delta)), payload }
        }
        Op::Dtmf(digit) => Input::Dtmf { digit: *digit },
        Op::Played(back) => Input::Played { upto_seq: media.outbound_next_seq.saturating_sub(*back % 3) },
        Op::Action(a) => Input::Action(a.clone()),
        Op::End(r) => Input::End(*r),
        Op::Timeout => Input::Timeout,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(
        program in program(),
        ops in prop::collection::vec((op(), 0u64..120), 1..120),
        timeline_cap in 1u32..12,
    ) {
        let mut s = spec(program, PCMU_8K);
        s.limits.max_duration_ms = 4_000;
        s.limits.timeline_events_max = timeline_cap;
        s.limits.delay_frames_max = 4;
        let mut call = Call::new(CallId::parse("prop").unwrap(), s, T0).unwrap();
        let mut now = T0;
        let mut last_out_seq = 0u64;
        let mut ends_seen = 0;
        for (op, advance_ms) in &ops {
            now = now.add_ms(*advance_ms);
            // A timeout is usually delivered at the deadline the call asked for, as the actor
            // does (when that is near; otherwise late, at `now`).
            if let (Op::Timeout, Some(deadline)) = (op, call.poll_timeout())
                && deadline > now
                && deadline.since(now) <= 200
            {
                now = deadline;
            }
            let before = call.clone();
            let mut out = Vec::new();
            call.handle(now, to_input(op, before.media), &mut out);

            if before.status == CallStatus::Ended {
                prop_assert!(out.is_empty(), "ended call produced {out:?}");
                prop_assert_eq!(&call, &before);
            }
            prop_assert!(call.media.inbound_applied_seq >= before.media.inbound_applied_seq);
            for o in &out {
                match o {
                    Output::Audio { seq, .. } => {
                        prop_assert_eq!(*seq, last_out_seq + 1);
                        last_out_seq = *seq;
                    }
                    Output::End(reason) => {
                        ends_seen += 1;
                        prop_assert_eq!(Some(*reason), call.end_reason);
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(call.media.outbound_next_seq, last_out_seq + 1);
            prop_assert!(call.media.outbound_played_seq < call.media.outbound_next_seq);
            prop_assert!(call.timeline.len() <= timeline_cap as usize);
            let ended_events = call.timeline.events().filter(|e| matches!(e.kind, EventKind::Ended { .. })).count();
            if call.status == CallStatus::Ended {
                prop_assert_eq!(ends_seen, 1);
                prop_assert!(call.end_reason.is_some() && call.ended_at.is_some() && !call.attached);
                prop_assert_eq!(ended_events, 1, "the Ended event is the newest, never dropped");
                prop_assert_eq!(call.poll_timeout(), None);
            } else {
                prop_assert_eq!(ends_seen, 0);
                prop_assert_eq!(ended_events, 0);
                prop_assert!(call.end_reason.is_none());
                prop_assert!(call.poll_timeout().is_some());
            }
            if call.timeline.len() == timeline_cap as usize {
                prop_assert!(call.timeline.dropped() >= before.timeline.dropped());
            }
            let bytes = checkpoint::encode(&call);
            prop_assert_eq!(&checkpoint::decode(&bytes).unwrap(), &call);
        }
    }
}
