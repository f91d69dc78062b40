//! The IVR program through the call: DTMF navigation, barge-in, the timeline, a switch to
//! another program, and a resume from a checkpoint at the prompt position the caller heard.

use callworker_call::{
    EventKind, Input, Output, ProgramSpec, ProgramState, Resume, ResumeCause, Transport, checkpoint,
};
use serde_json::json;

use crate::support::*;

fn ivr() -> ProgramSpec {
    serde_json::from_value(json!({
        "name": "ivr",
        "params": {
            "start": "main",
            "menus": {
                "main": {
                    "prompt": [{"freqs_hz": [440], "duration_ms": 200}, {"freqs_hz": [880], "duration_ms": 200}],
                    "options": {"1": {"menu": "pin"}, "2": {"program": {"name": "echo", "params": {"delay_ms": 0}}}},
                    "timeout_ms": 2000
                },
                "pin": {
                    "prompt": [{"freqs_hz": [620], "duration_ms": 100}],
                    "collect": {"max_digits": 4, "terminator": "#", "then": {"menu": "main"}}
                }
            }
        }
    }))
    .unwrap()
}

fn menu(call: &callworker_call::Call) -> (String, Option<(u32, u32)>) {
    match &call.program {
        ProgramState::Ivr(s) => (s.menu().to_owned(), s.prompt_position()),
        other => panic!("not an IVR: {other:?}"),
    }
}

fn events(call: &callworker_call::Call) -> Vec<EventKind> {
    call.timeline.events().map(|e| e.kind.clone()).collect()
}

#[test]
fn a_caller_navigates_by_dtmf_and_resumes_where_they_heard_the_prompt() {
    let mut call = attached(ivr(), PCMU_8K);
    // 10 frames of the 20-frame main prompt are sent; the caller heard 6 of them.
    let sent = audio_of(&run_frames(&mut call, 0, 200));
    assert_eq!(sent.len(), 10);
    step(&mut call, at(200), Input::Played { upto_seq: 6 });
    // Barge in with "1": the prompt stops, queued audio is cleared, the pin menu starts.
    let out = step(&mut call, at(210), Input::Dtmf { digit: '1' });
    assert!(out.contains(&Output::Clear), "{out:?}");
    assert!(out.contains(&Output::Checkpoint), "a menu change is durable at once: {out:?}");
    assert_eq!(menu(&call), ("pin".to_owned(), Some((0, 0))));
    let pin_prompt = audio_of(&run_frames(&mut call, 220, 300));
    assert_eq!(pin_prompt.len(), 4);
    let last_seq = pin_prompt.last().unwrap().0;
    // Two digits in, then the worker dies: the last checkpoint is all that is left.
    for d in ['4', '2'] {
        step(&mut call, at(320), Input::Dtmf { digit: d });
    }
    step(&mut call, at(330), Input::Played { upto_seq: last_seq });
    let bytes = checkpoint::encode(&call);

    let mut resumed = checkpoint::decode(&bytes).unwrap();
    let resume = Resume { cause: ResumeCause::WorkerLost, gap_ms: 300 };
    step(&mut resumed, at(2_000), Input::Attached { transport: Transport::Twilio, resume: Some(resume) });
    assert_eq!(menu(&resumed), ("pin".to_owned(), None), "still collecting, nothing replayed");
    for d in ['7', '#'] {
        step(&mut resumed, at(2_100), Input::Dtmf { digit: d });
    }
    let ProgramState::Ivr(s) = &resumed.program else { panic!() };
    assert_eq!(s.collected()["pin"], "427", "digits from both workers");
    assert_eq!(menu(&resumed), ("main".to_owned(), Some((0, 0))));
    let kinds = events(&resumed);
    assert!(kinds.contains(&EventKind::MenuEntered { menu: "pin".into() }), "{kinds:?}");
    assert!(kinds.contains(&EventKind::DigitsCollected { menu: "pin".into(), digits: "427".into() }));

    // In the main menu again: 12 of 20 frames sent, 9 heard, then a failover.
    let sent = audio_of(&run_frames(&mut resumed, 2_100, 2_340));
    assert_eq!(sent.len(), 12);
    step(&mut resumed, at(2_340), Input::Played { upto_seq: sent[8].0 });
    let bytes = checkpoint::encode(&resumed);
    let mut again = checkpoint::decode(&bytes).unwrap();
    let resume = Resume { cause: ResumeCause::WorkerLost, gap_ms: 200 };
    step(&mut again, at(5_000), Input::Attached { transport: Transport::Native, resume: Some(resume) });
    assert_eq!(menu(&again), ("main".to_owned(), Some((0, 9))), "the caller continues from frame 10");
    let rest = audio_of(&run_frames(&mut again, 5_000, 5_240));
    assert_eq!(rest.len(), 11, "frames 10-20 of the prompt, then the wait");

    // "2" switches the call to echo.
    let out = step(&mut again, at(5_300), Input::Dtmf { digit: '2' });
    assert!(out.contains(&Output::Clear));
    assert_eq!(again.program_name(), "echo");
    assert!(events(&again).contains(&EventKind::ProgramSwitched { program: "echo".into() }));
}

#[test]
fn an_unanswered_menu_ends_the_call_completed_after_its_retries() {
    let mut call = attached(ivr(), PCMU_8K);
    // Prompt 400 ms + 2 s wait, three times (retries = 2), then on_failure = hang up.
    let out = run_frames(&mut call, 0, 7_300);
    assert!(out.contains(&Output::End(callworker_call::EndReason::Completed)), "ended");
    assert_eq!(audio_of(&out).len(), 60, "the prompt played three times");
}

/// The resumed prompt is the same audio, byte for byte, from the first frame the caller
/// did not hear; frames numbered after those the client already holds.
#[test]
fn a_resumed_prompt_sends_exactly_the_unheard_frames_again() {
    let mut call = attached(ivr(), PCMU_8K);
    let sent = audio_of(&run_frames(&mut call, 0, 200));
    step(&mut call, at(200), Input::Played { upto_seq: 4 });
    let mut resumed = checkpoint::decode(&checkpoint::encode(&call)).unwrap();
    let resume = Resume { cause: ResumeCause::WorkerLost, gap_ms: 100 };
    step(&mut resumed, at(1_000), Input::Attached { transport: Transport::Native, resume: Some(resume) });
    // The client had received 15 frames from the dead worker (5 more than the checkpoint).
    resumed.skip_outbound_seq_past(15);
    let again = audio_of(&run_frames(&mut resumed, 1_000, 1_120));
    assert_eq!(again[0].0, 16, "numbered after what the client holds");
    let payloads: Vec<&Vec<u8>> = again.iter().map(|(_, p)| p).collect();
    let expected: Vec<&Vec<u8>> = sent[4..10].iter().map(|(_, p)| p).collect();
    assert_eq!(payloads, expected, "prompt frames 4..10 again, byte for byte");
}

/// A digit detected in the caller's audio is recorded and navigates; voice is ignored in a
/// menu without barge-in; a barge-in records what the caller had heard.
#[test]
fn in_band_digits_and_barge_in_reach_the_timeline() {
    use callworker_call::dsp::{ToneGenerator, dtmf_freqs_hz};
    let mut call = attached(ivr(), PCMU_8K);
    run_frames(&mut call, 0, 200);
    step(&mut call, at(200), Input::Played { upto_seq: 7 });
    let (low, high) = dtmf_freqs_hz('1').unwrap();
    let mut out = Vec::new();
    for i in 0..8u64 {
        let mut pcm = Vec::new();
        if i < 5 {
            let mut g = ToneGenerator::new();
            g.skip(&[low, high], 8_000, i * 160);
            g.fill(&[low, high], 8_000, 160, &mut pcm);
        } else {
            pcm.resize(160, 0);
        }
        let mut payload = Vec::new();
        callworker_protocol::codec::encode(callworker_protocol::Encoding::Pcmu, &pcm, &mut payload);
        out.extend(step(&mut call, at(200 + 20 * i), Input::Audio { seq: i + 1, payload: &payload }));
    }
    assert!(out.contains(&Output::Clear), "{out:?}");
    assert!(out.contains(&Output::Notify { name: "dtmf_detected", detail: Some("1".into()) }));
    let kinds = events(&call);
    assert!(kinds.contains(&EventKind::DtmfDetected { digit: '1' }), "{kinds:?}");
    assert!(
        kinds.contains(&EventKind::BargeIn {
            menu: "main".into(),
            by: "dtmf".into(),
            played_upto_seq: 7,
            prompt_frames_heard: 7,
        }),
        "10 frames sent, 7 heard: {kinds:?}"
    );
    assert_eq!(menu(&call).0, "pin");
}
