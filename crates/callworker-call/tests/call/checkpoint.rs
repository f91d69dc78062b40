//! The checkpoint envelope: round trips, refusals, and the golden file of every released
//! format.

use std::path::PathBuf;

use callworker_call::checkpoint::{
    self, CHECKPOINT_BYTES_MAX, CheckpointError, FORMAT_VERSION_MAX_READ, FORMAT_VERSION_WRITE, HEADER_BYTES,
    MAGIC,
};
use callworker_call::program::{EchoParams, EchoState, ProgramState};
use callworker_call::{
    Action, Call, CallId, CallLimits, CallStatus, Direction, EventKind, Input, MediaPositions,
    RecordingSettings, ResumeCause, TenantId, Timeline, Transport, TwilioLeg, UnixMillis,
};

use crate::support::*;

fn golden_path(version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/checkpoint-v{version}.bin"))
}

/// The call frozen in `checkpoint-v1.bin`. Built field by field, not by driving the state
/// machine, so that a behaviour change cannot masquerade as a format change.
fn golden_v1_call() -> Call {
    let mut timeline = Timeline::new(16);
    let t = |ms: u64| UnixMillis(1_700_000_000_000 + ms);
    timeline.push(t(0), EventKind::Created { program: "echo".into() });
    timeline.push(t(120), EventKind::Attached { transport: Transport::Twilio });
    timeline.push(t(5_000), EventKind::Dtmf { digit: '7' });
    timeline.push(t(7_500), EventKind::Detached);
    timeline.push(
        t(8_340),
        EventKind::Resumed { transport: Transport::Native, cause: ResumeCause::WorkerLost, gap_ms: 840 },
    );
    Call {
        id: CallId::parse("call_golden-01").unwrap(),
        tenant: TenantId::parse("acme").unwrap(),
        direction: Direction::Outbound,
        from: Some("+15550100".into()),
        to: None,
        audio: PCMU_8K,
        limits: CallLimits { max_duration_ms: 3_600_000, timeline_events_max: 16, delay_frames_max: 50 },
        status: CallStatus::Active,
        created_at: t(0),
        started_at: Some(t(120)),
        ended_at: None,
        end_reason: None,
        transport: Some(Transport::Native),
        attached: true,
        media: MediaPositions {
            inbound_applied_seq: 412,
            inbound_duplicate_frames: 3,
            inbound_missing_frames: 7,
            outbound_next_seq: 400,
            outbound_played_seq: 390,
            outbound_dropped_frames: 2,
        },
        program: ProgramState::Echo(EchoState::new(EchoParams { delay_ms: 40 })),
        overlay: None,
        timeline,
        recording: RecordingSettings::default(),
        twilio: None,
        detach_cause: None,
        mute: Default::default(),
        play_queue: Default::default(),
    }
}

/// The call frozen in `checkpoint-v2.bin`: format 1's call plus every field format 2 added.
fn golden_v2_call() -> Call {
    let mut call = golden_v1_call();
    call.recording = RecordingSettings { inbound: true, outbound: false };
    call.twilio = Some(TwilioLeg {
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        call_sid: "CA0123456789abcdef0123456789abcdef".into(),
        stream_sid: "MZ0123456789abcdef0123456789abcdef".into(),
    });
    call.detach_cause = Some(ResumeCause::MigratedDrain);
    call
}

/// The call frozen in `checkpoint-v3.bin`: format 2's call plus every field format 3 added,
/// and the enum variants appended with it.
fn golden_v3_call() -> Call {
    let mut call = golden_v2_call();
    call.mute = callworker_call::Mute { inbound: true, outbound: false };
    call.play_queue = [
        callworker_call::program::ToneSegment { freqs_hz: vec![440, 480], duration_ms: 200 },
        callworker_call::program::ToneSegment { freqs_hz: vec![], duration_ms: 40 },
    ]
    .into();
    call.timeline.push(UnixMillis(1_700_000_009_000), EventKind::DtmfInjected { digit: '#' });
    call.status = CallStatus::Ended;
    call.attached = false;
    call.ended_at = Some(UnixMillis(1_700_000_009_500));
    call.end_reason = Some(callworker_call::EndReason::Transferred);
    call
}

/// Checks the golden file of one format: it decodes (upgraded) to `expected`, and, for the
/// format this build writes, encoding `expected` still gives exactly its bytes.
///
/// If the encoding check fails, the checkpoint format has changed: do NOT regenerate the
/// file. Bump `FORMAT_VERSION_WRITE` (and, one release earlier, `FORMAT_VERSION_MAX_READ`),
/// keep the old `Call` type to decode the old format and upgrade it on read, add the next
/// golden file with its own test, and keep every existing file and the decode half of its
/// test forever: workers must read every released format.
///
/// A missing golden file of the written format is created when `CALLWORKER_BLESS_GOLDEN=1`
/// is set; an existing one is never overwritten.
fn check_golden(version: u16, expected: &Call) {
    let path = golden_path(version);
    if !path.exists() && std::env::var("CALLWORKER_BLESS_GOLDEN").as_deref() == Ok("1") {
        assert_eq!(FORMAT_VERSION_WRITE, version, "bless only the format this build writes");
        std::fs::write(&path, checkpoint::encode(expected)).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e} (run once with CALLWORKER_BLESS_GOLDEN=1 to create it)", path.display())
    });
    assert_eq!(checkpoint::format_version(&golden), Ok(version));
    assert_eq!(
        &checkpoint::decode(&golden).unwrap(),
        expected,
        "golden v{version} must decode to the same call"
    );
    if FORMAT_VERSION_WRITE == version {
        assert!(
            checkpoint::encode(expected) == golden,
            "the checkpoint format changed: bump the format version and keep {} (see this test's doc)",
            path.display()
        );
    }
}

/// Format 1 is upgraded on read: the fields format 2 added take their defaults.
#[test]
fn golden_v1_decodes_upgraded() {
    check_golden(1, &golden_v1_call());
}

/// Format 2 is upgraded on read: nothing muted, nothing queued.
#[test]
fn golden_v2_decodes_upgraded() {
    check_golden(2, &golden_v2_call());
}

#[test]
fn golden_v3_decodes_and_encoding_is_unchanged() {
    check_golden(3, &golden_v3_call());
}

/// A call whose checkpoint holds every event kind, a tone program mid-DTMF-acknowledgement,
/// an active overlay and a held echo frame (after switching back).
fn busy_calls() -> Vec<Call> {
    let mut tone_call = attached(tone(&[(&[440], 60), (&[], 40)], true, Some('#')), L16_16K);
    let mut out = Vec::new();
    for (ms, input) in [
        (10, Input::Dtmf { digit: '3' }),
        (20, Input::Timeout),
        (30, Input::Action(Action::PlayTone { freqs_hz: vec![350, 440], duration_ms: 500 })),
        (40, Input::Timeout),
        (50, Input::Detached { cause: None }),
        (
            60,
            Input::Attached {
                transport: Transport::Twilio,
                resume: Some(callworker_call::Resume { cause: ResumeCause::MigratedMemory, gap_ms: 10 }),
            },
        ),
        (60, Input::Timeout),
    ] {
        tone_call.handle(at(ms), input, &mut out);
    }
    let ProgramState::Tone(state) = &tone_call.program else { panic!("tone") };
    assert!(state.is_acknowledging_dtmf());
    assert!(tone_call.overlay.is_some());

    let mut echo_call = tone_call.clone();
    for (ms, input) in [
        (70, Input::Action(Action::SwitchProgram { program: echo(100) })),
        (80, Input::Audio { seq: 1, payload: &[0x7F, 0x00, 0xFF] }),
    ] {
        echo_call.handle(at(ms), input, &mut out);
    }
    let ProgramState::Echo(state) = &echo_call.program else { panic!("echo") };
    assert_eq!(state.held_frames(), 1);

    let mut ended = echo_call.clone();
    ended.handle(at(90), Input::Action(Action::Hangup), &mut out);
    let names: std::collections::BTreeSet<&str> = ended.timeline.events().map(|e| e.kind.name()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["action_applied", "attached", "created", "detached", "dtmf", "ended", "program_switched", "resumed"],
        "every event kind"
    );
    vec![tone_call, echo_call, ended]
}

#[test]
fn busy_calls_round_trip_through_the_envelope_and_json() {
    for call in busy_calls() {
        let bytes = checkpoint::encode(&call);
        assert_eq!(checkpoint::format_version(&bytes), Ok(FORMAT_VERSION_WRITE));
        assert_eq!(checkpoint::decode(&bytes).unwrap(), call);
        let json = serde_json::to_string(&call).unwrap();
        assert_eq!(serde_json::from_str::<Call>(&json).unwrap(), call);
    }
}

#[test]
fn a_resumed_call_continues_exactly() {
    // Drive one call straight through, and a copy that is checkpointed and restored midway:
    // both must produce the same outputs.
    let inputs = |ms: u64| {
        if ms.is_multiple_of(100) { Input::Dtmf { digit: '1' } } else { Input::Timeout }
    };
    let mut straight = attached(tone(&[(&[440], 60), (&[880], 40)], true, None), PCMU_8K);
    let mut resumed = straight.clone();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for ms in (0..1_000).step_by(20) {
        straight.handle(at(ms), inputs(ms), &mut a);
        if ms == 500 {
            resumed = checkpoint::decode(&checkpoint::encode(&resumed)).unwrap();
        }
        resumed.handle(at(ms), inputs(ms), &mut b);
    }
    assert_eq!(a, b);
    assert_eq!(straight, resumed);
}

fn envelope(version: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn decode_refuses_damaged_and_unknown_checkpoints() {
    let good = checkpoint::encode(&golden_v1_call());
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let too_new = FORMAT_VERSION_MAX_READ + 1;
    let cases: Vec<(&str, Vec<u8>, CheckpointError)> = vec![
        ("empty", vec![], CheckpointError::BadLength),
        ("magic prefix only", b"CW".to_vec(), CheckpointError::BadLength),
        ("wrong magic", with(&|b| b[0] = b'X'), CheckpointError::BadMagic),
        ("short non-magic", b"XY".to_vec(), CheckpointError::BadMagic),
        ("header cut", good[..HEADER_BYTES - 1].to_vec(), CheckpointError::BadLength),
        ("payload cut", good[..good.len() - 1].to_vec(), CheckpointError::BadLength),
        ("trailing byte", with(&|b| b.push(0)), CheckpointError::BadLength),
        ("length field lies", with(&|b| b[9] ^= 1), CheckpointError::BadLength),
        ("oversized", envelope(1, &vec![0; CHECKPOINT_BYTES_MAX]), CheckpointError::BadLength),
        ("payload bit flip", with(&|b| *b.last_mut().unwrap() ^= 0x10), CheckpointError::ChecksumMismatch),
        ("crc bit flip", with(&|b| b[12] ^= 1), CheckpointError::ChecksumMismatch),
        (
            // Newer format with a bad checksum and garbage payload: still TooNew, because a
            // newer format is not corrupt, just unreadable here.
            "too new",
            with(&|b| {
                b[4..6].copy_from_slice(&too_new.to_be_bytes());
                b[12] ^= 1;
            }),
            CheckpointError::TooNew { found: too_new, max: FORMAT_VERSION_MAX_READ },
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(checkpoint::decode(&bytes), Err(expected), "{name}");
    }
    for (name, payload) in [("garbage", &[0xFFu8; 12][..]), ("empty payload", &[][..])] {
        assert!(
            matches!(checkpoint::decode(&envelope(1, payload)), Err(CheckpointError::Decode(_))),
            "{name}"
        );
    }
    let mut trailing = postcard_payload(&good);
    trailing.push(0);
    assert!(matches!(checkpoint::decode(&envelope(1, &trailing)), Err(CheckpointError::Decode(_))));
}

fn postcard_payload(envelope: &[u8]) -> Vec<u8> {
    envelope[HEADER_BYTES..].to_vec()
}

#[test]
fn format_version_reads_only_the_header() {
    let cases: Vec<(Vec<u8>, Result<u16, CheckpointError>)> = vec![
        (envelope(1, b"not postcard"), Ok(1)),
        (envelope(7, b""), Ok(7)),
        (b"CWCK\x00\x02".to_vec(), Err(CheckpointError::BadLength)),
        (b"JSON{}{}{}{}{}".to_vec(), Err(CheckpointError::BadMagic)),
    ];
    for (bytes, expected) in cases {
        assert_eq!(checkpoint::format_version(&bytes), expected, "{bytes:?}");
    }
}
