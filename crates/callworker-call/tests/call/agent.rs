//! The agent program: what the call does with the agent leg's messages, and what it keeps
//! across a resume.

use callworker_call::program::{AgentInput, AgentParams, EchoParams, Secret};
use callworker_call::{
    EndReason, EventKind, Input, Output, ProgramSpec, ProgramState, Resume, ResumeCause, Transport,
    checkpoint,
};
use callworker_protocol::agent::{FromAgent, ToAgent, TranscriptRole};

use crate::support::*;

fn agent(fallback: Option<ProgramSpec>) -> ProgramSpec {
    ProgramSpec::Agent(AgentParams {
        url: Some("ws://127.0.0.1:9/agent".into()),
        token: Some(Secret::new("t0ken")),
        context: Some("ctx".into()),
        transcript_entries_max: Some(4),
        transcript_bytes_max: None,
        playback_frames_max: Some(8),
        fallback: fallback.map(Box::new),
    })
}

fn to_agent(out: &[Output]) -> Vec<ToAgent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Agent(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn msg(m: FromAgent) -> Input<'static> {
    Input::Agent(AgentInput::Message(m))
}

fn transcript(role: TranscriptRole, text: &str) -> Input<'static> {
    msg(FromAgent::Transcript { index: None, role, text: text.into() })
}

fn state(call: &callworker_call::Call) -> &callworker_call::program::AgentState {
    match &call.program {
        ProgramState::Agent(s) => s,
        other => panic!("not an agent: {other:?}"),
    }
}

#[test]
fn caller_audio_and_dtmf_go_to_the_agent_only_while_its_leg_is_up() {
    let mut call = attached(agent(None), PCMU_8K);
    let out = step(&mut call, at(10), Input::Audio { seq: 1, payload: &[1; 160] });
    assert!(to_agent(&out).is_empty(), "no leg yet: {out:?}");
    let out = step(&mut call, at(20), Input::Agent(AgentInput::Connected));
    assert!(out.contains(&Output::Checkpoint), "connecting is a transition");
    assert_eq!(
        call.timeline.events().last().unwrap().kind,
        EventKind::Agent { event: "connected".into(), detail: None }
    );
    let out = step(&mut call, at(30), Input::Audio { seq: 2, payload: &[2; 160] });
    assert_eq!(to_agent(&out), [ToAgent::Audio(vec![2; 160])]);
    let out = step(&mut call, at(40), Input::Dtmf { digit: '5' });
    assert_eq!(to_agent(&out), [ToAgent::Dtmf { digit: '5' }]);
    let out = step(&mut call, at(50), Input::Agent(AgentInput::Lost { reason: "closed".into() }));
    assert!(out.contains(&Output::Checkpoint));
    let out = step(&mut call, at(60), Input::Audio { seq: 3, payload: &[3; 160] });
    assert!(to_agent(&out).is_empty());
}

#[test]
fn agent_audio_is_framed_paced_and_its_marks_answered_once_heard() {
    let mut call = attached(agent(None), PCMU_8K);
    step(&mut call, at(0), Input::Agent(AgentInput::Connected));
    // 2.5 frames of audio in two pieces, then a mark.
    let audio: Vec<u8> = (0..400).map(|i| (i % 251) as u8).collect();
    assert!(audio_of(&step(&mut call, at(100), Input::Agent(AgentInput::Audio(&audio[..250])))).is_empty());
    step(&mut call, at(101), Input::Agent(AgentInput::Audio(&audio[250..])));
    let out = step(&mut call, at(102), msg(FromAgent::Mark { name: "m1".into() }));
    assert!(to_agent(&out).is_empty(), "not heard yet");
    assert_eq!(state(&call).playback_frames(), 3);
    // Paced: one frame per 20 ms from the first audio.
    let out = run_frames(&mut call, 100, 160);
    let frames = audio_of(&out);
    assert_eq!(frames.len(), 3);
    let played: Vec<u8> = frames.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(played, audio, "byte for byte, the tail as a short frame");
    let last_seq = frames.last().unwrap().0;
    // The client played all but the last frame: the mark waits.
    let out = step(&mut call, at(200), Input::Played { upto_seq: last_seq - 1 });
    assert!(to_agent(&out).is_empty());
    let out = step(&mut call, at(220), Input::Played { upto_seq: last_seq });
    assert_eq!(to_agent(&out), [ToAgent::Mark { name: "m1".into(), cleared: false }]);
    assert!(out.contains(&Output::Checkpoint));
    assert_eq!(state(&call).last_mark(), Some("m1"));
    // A mark with nothing queued is answered at once.
    let out = step(&mut call, at(240), msg(FromAgent::Mark { name: "m2".into() }));
    assert_eq!(to_agent(&out), [ToAgent::Mark { name: "m2".into(), cleared: false }]);
}

#[test]
fn agent_audio_beyond_the_playback_bound_drops_the_oldest_and_counts() {
    let mut call = attached(agent(None), PCMU_8K);
    let audio: Vec<u8> = (0..10u8).flat_map(|f| [f; 160]).collect();
    step(&mut call, at(0), Input::Agent(AgentInput::Audio(&audio)));
    assert_eq!(state(&call).playback_frames(), 8);
    assert_eq!(state(&call).playback_bytes(), 8 * 160);
    assert_eq!(call.media.outbound_dropped_frames, 2);
    let played: Vec<u8> = audio_of(&run_frames(&mut call, 0, 200)).into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(played, audio[2 * 160..], "the newest eight frames play");
}

#[test]
fn clear_discards_unplayed_agent_audio_and_reports_its_marks_cleared() {
    let mut call = attached(agent(None), PCMU_8K);
    step(&mut call, at(0), Input::Agent(AgentInput::Connected));
    step(&mut call, at(0), Input::Agent(AgentInput::Audio(&[7; 1600])));
    step(&mut call, at(0), msg(FromAgent::Mark { name: "long".into() }));
    let out = step(&mut call, at(10), msg(FromAgent::Clear {}));
    assert!(out.contains(&Output::Clear));
    assert_eq!(to_agent(&out), [ToAgent::Mark { name: "long".into(), cleared: true }]);
    assert_eq!(state(&call).playback_frames(), 0);
    assert!(audio_of(&run_frames(&mut call, 20, 200)).is_empty());
}

#[test]
fn the_transcript_is_bounded_deduplicated_and_each_entry_checkpointed() {
    let mut call = attached(agent(None), PCMU_8K);
    step(&mut call, at(0), Input::Agent(AgentInput::Connected));
    for i in 0..6 {
        let out = step(&mut call, at(i), transcript(TranscriptRole::Caller, &format!("line {i}")));
        assert!(out.contains(&Output::Checkpoint), "entry {i} is durable at once");
    }
    let out = step(
        &mut call,
        at(9),
        msg(FromAgent::Transcript { index: Some(2), role: TranscriptRole::Agent, text: "dup".into() }),
    );
    assert!(!out.contains(&Output::Checkpoint), "a duplicate changes nothing");
    let t = state(&call).transcript();
    assert_eq!(
        t.entries().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["line 2", "line 3", "line 4", "line 5"]
    );
    assert_eq!((t.dropped(), t.duplicates(), t.next_index()), (2, 1, 6));
    let out = step(&mut call, at(10), msg(FromAgent::EndOfTurn {}));
    assert!(out.contains(&Output::Checkpoint));
    assert_eq!(state(&call).turns(), 1);
}

#[test]
fn a_resumed_call_restarts_its_agent_with_the_transcript_and_without_stale_audio() {
    let mut call = attached(agent(None), PCMU_8K);
    step(&mut call, at(0), Input::Agent(AgentInput::Connected));
    step(&mut call, at(1), transcript(TranscriptRole::Agent, "hello"));
    step(&mut call, at(2), transcript(TranscriptRole::Caller, "hi"));
    step(&mut call, at(3), msg(FromAgent::EndOfTurn {}));
    step(&mut call, at(4), Input::Agent(AgentInput::Audio(&[9; 800])));
    step(&mut call, at(5), msg(FromAgent::Mark { name: "reply".into() }));
    let first = callworker_call::program::agent::start_message(&new_call(agent(None), PCMU_8K)).unwrap();
    let ToAgent::Start(first) = first else { panic!() };
    assert!(!first.resume);
    assert_eq!(first.context.as_deref(), Some("ctx"));

    // The worker dies; another decodes the last checkpoint and attaches.
    let mut resumed = checkpoint::decode(&checkpoint::encode(&call)).unwrap();
    assert_eq!(state(&resumed).playback_frames(), 0, "unplayed agent audio is not checkpointed");
    let resume = Resume { cause: ResumeCause::WorkerLost, gap_ms: 900 };
    step(&mut resumed, at(1_000), Input::Attached { transport: Transport::Native, resume: Some(resume) });
    assert!(!state(&resumed).is_connected());
    let Some(ToAgent::Start(start)) = callworker_call::program::agent::start_message(&resumed) else {
        panic!()
    };
    assert!(start.resume);
    assert_eq!(start.turns, 1);
    assert_eq!(start.transcript_next_index, 2);
    let lines: Vec<_> = start.transcript.iter().map(|l| (l.index, l.role, l.text.as_str())).collect();
    assert_eq!(lines, [(0, TranscriptRole::Agent, "hello"), (1, TranscriptRole::Caller, "hi")]);
    assert_eq!(start.last_mark, None, "the reply was never heard");
    step(&mut resumed, at(1_010), Input::Agent(AgentInput::Connected));
    assert_eq!(
        resumed.timeline.events().last().unwrap().kind,
        EventKind::Agent { event: "resumed".into(), detail: None }
    );
    // Marks now line up with the new session's audio.
    step(&mut resumed, at(1_020), Input::Agent(AgentInput::Audio(&[4; 160])));
    step(&mut resumed, at(1_020), msg(FromAgent::Mark { name: "again".into() }));
    let frames = audio_of(&run_frames(&mut resumed, 1_020, 1_060));
    assert_eq!(frames.len(), 1);
    let out = step(&mut resumed, at(1_100), Input::Played { upto_seq: frames[0].0 });
    assert_eq!(to_agent(&out), [ToAgent::Mark { name: "again".into(), cleared: false }]);
}

#[test]
fn the_agent_ends_or_transfers_the_call_and_a_lost_agent_falls_back() {
    let mut call = attached(agent(None), PCMU_8K);
    let out = step(&mut call, at(5), msg(FromAgent::Transfer { target: "+15550123".into() }));
    assert!(out.contains(&Output::End(EndReason::Transferred)));
    assert!(
        kinds(&call)
            .contains(&EventKind::Agent { event: "transfer".into(), detail: Some("+15550123".into()) })
    );

    let mut call = attached(agent(None), PCMU_8K);
    let out = step(&mut call, at(5), msg(FromAgent::Hangup { reason: Some("done".into()) }));
    assert!(out.contains(&Output::End(EndReason::Completed)));

    let mut call = attached(agent(None), PCMU_8K);
    let out = step(&mut call, at(5), Input::Agent(AgentInput::Failed { reason: "connect_failed".into() }));
    assert!(out.contains(&Output::End(EndReason::AgentUnavailable)));
    assert!(
        kinds(&call)
            .contains(&EventKind::Agent { event: "failed".into(), detail: Some("connect_failed".into()) })
    );

    let echo = ProgramSpec::Echo(EchoParams { delay_ms: 0 });
    let mut call = attached(agent(Some(echo)), PCMU_8K);
    let out = step(&mut call, at(5), Input::Agent(AgentInput::Failed { reason: "connect_timeout".into() }));
    assert!(!out.iter().any(|o| matches!(o, Output::End(_))), "{out:?}");
    assert_eq!(call.program_name(), "echo");
    // Agent news after the switch is ignored.
    assert!(step(&mut call, at(6), msg(FromAgent::Hangup { reason: None })).is_empty());
}

#[test]
fn agent_input_to_a_detached_call_is_ignored() {
    let mut call = attached(agent(None), PCMU_8K);
    step(&mut call, at(1), Input::Detached { cause: None });
    assert!(step(&mut call, at(2), msg(FromAgent::Hangup { reason: None })).is_empty());
    assert_eq!(call.end_reason, None);
}
