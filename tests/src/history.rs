//! A history checker for the chaos suite (`tests/chaos.rs`): what every client observed,
//! with timestamps, plus the server-side facts read at the end, checked against the
//! invariants a caller relies on.
//!
//! The chaos suite records one [`CallHistory`] per call while the faults run: each
//! [`Observed`] entry says when (ms since the run began), on which client session, what the
//! client saw (a `welcome` epoch, server audio with its `(epoch, seq)`, an ack, a lost
//! session, the end). A *session* is one connection as the client sees it: for the native
//! protocol the epoch of its `welcome`; for a Twilio stream, the stream's number (1, 2, …)
//! in the order the client opened them. At the end it adds [`ServerFacts`] per call (status,
//! end reason, epoch, timeline, recordings) and [`FleetFacts`] (metrics summed over the
//! workers, calls still live), and [`check`] answers a [`Report`]: the violations, and the
//! figures.
//!
//! Invariants checked, per call:
//!
//! - **One owner at a time.** Once audio from a newer session was delivered, no audio from
//!   an older one is (an older owner still driving the call would show as audio from two
//!   sessions interleaved). [`Report::max_concurrent_owners`] is the largest number of
//!   sessions whose audio intervals (first to last frame delivered) overlap at one instant,
//!   over all calls: 1 when ownership moved cleanly.
//! - **Epochs only increase.** Each `welcome` carries a higher epoch than the one before;
//!   audio carries the epoch of the session it arrived on; server audio `seq` grows
//!   strictly within a session (a new owner may send again what an old one sent but never
//!   checkpointed; clients drop those by `seq`); the store's final epoch is above every epoch a client was welcomed with (the
//!   end bumps it).
//! - **Recordings are continuous.** The inbound recording is byte for byte the audio the
//!   client sent: no gap, no duplicate, no reordering. Where the outbound track is recorded
//!   and the program echoes, it equals the inbound one.
//! - **Every call ended, once, with a reason.** The store says `ended` with a reason, the
//!   timeline holds at most one `ended` event, the client saw exactly one end and it was the
//!   last thing it saw; across the fleet, ends counted equal calls (none ended twice, none
//!   left), and no call is left live.
//!
//! Kept free of I/O and dependencies so that it is unit-tested on made-up histories below,
//! each breaking one invariant.

use std::collections::BTreeMap;
use std::fmt;

/// Which protocol a call's client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Native,
    Twilio,
}

/// One thing a client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A session began: native `welcome` (with its epoch), or a Twilio stream opened (no
    /// epoch on the wire).
    Welcome { epoch: Option<u64> },
    /// Server audio delivered to the application, with the native `(epoch, seq)` when the
    /// protocol carries them.
    Audio { epoch: Option<u64>, seq: Option<u64> },
    /// Client audio up to `upto_seq` acknowledged as durable.
    Acked { upto_seq: u64 },
    /// The session was lost (`code` as the client saw it); a resume may follow.
    Lost { code: u16 },
    /// The call ended for this client; `clean` when the client ended it itself (hang-up)
    /// or the server said goodbye, rather than giving up.
    Ended { cause: String, clean: bool },
}

/// One observation: when (ms since the run began), on which session, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub at_ms: u64,
    pub session: u64,
    pub what: What,
}

/// What the store and the API say about a call at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    pub status: String,
    pub end_reason: Option<String>,
    pub epoch: u64,
    /// `ended` events in the call's timeline.
    pub ended_events: usize,
    /// The inbound recording's audio bytes.
    pub recording_inbound: Vec<u8>,
    /// The outbound recording's audio bytes, when the outbound track is recorded and the
    /// program echoes (so it must equal the inbound one).
    pub recording_outbound_echo: Option<Vec<u8>>,
}

/// One call's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHistory {
    pub call_id: String,
    pub transport: Transport,
    pub observed: Vec<Observed>,
    /// Every byte of audio the client sent, in order.
    pub sent: Vec<u8>,
    /// The end reason a clean end must carry (`client_hangup`, `remote_hangup`).
    pub expected_end_reason: String,
    pub server: Option<ServerFacts>,
}

/// Facts about the whole fleet, summed over its workers at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetFacts {
    /// `callworker_fenced_writes_total`.
    pub fenced_writes: u64,
    /// `callworker_calls_ended_total` plus the reaper's `ended` actions.
    pub ends_counted: u64,
    /// Calls the store still lists as live (`created` or `active`).
    pub calls_left_live: u64,
    /// `callworker_calls_resumed_total`.
    pub resumes: u64,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub calls: usize,
    /// Calls that did not end as their client meant them to (gave up, refused, or ended
    /// by the server with another reason than the expected one).
    pub dropped: usize,
    pub fenced_writes: u64,
    pub resumes: u64,
    /// Sessions lost as the clients saw them.
    pub sessions_lost: u64,
    pub max_concurrent_owners: usize,
    pub audio_frames_delivered: u64,
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "calls={} dropped={} fenced_writes={} resumes={} sessions_lost={} max_concurrent_owners={} \
             audio_frames={} violations={}",
            self.calls,
            self.dropped,
            self.fenced_writes,
            self.resumes,
            self.sessions_lost,
            self.max_concurrent_owners,
            self.audio_frames_delivered,
            self.violations.len()
        )
    }
}

/// Checks every call's history and the fleet's facts (see the module docs).
pub fn check(calls: &[CallHistory], fleet: &FleetFacts) -> Report {
    let mut report = Report {
        calls: calls.len(),
        fenced_writes: fleet.fenced_writes,
        resumes: fleet.resumes,
        ..Report::default()
    };
    for call in calls {
        let mut v = Vec::new();
        check_call(call, &mut report, &mut v);
        report.violations.extend(v.into_iter().map(|m| format!("{}: {m}", call.call_id)));
    }
    if fleet.calls_left_live > 0 {
        report.violations.push(format!("{} calls left live in the store", fleet.calls_left_live));
    }
    if fleet.ends_counted != calls.len() as u64 {
        report.violations.push(format!(
            "{} ends counted across the fleet for {} calls",
            fleet.ends_counted,
            calls.len()
        ));
    }
    report
}

fn check_call(call: &CallHistory, report: &mut Report, v: &mut Vec<String>) {
    // Sessions: when each began and the epoch it was welcomed with.
    let mut welcomed: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut last_welcome_epoch: Option<u64> = None;
    let mut newest_audio_session: Option<u64> = None;
    let mut last_seq: BTreeMap<u64, u64> = BTreeMap::new();
    // Per session: first and last audio delivery (ms).
    let mut intervals: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut ends = 0;
    let mut clean_end = false;
    let mut previous_at = 0;
    for (i, o) in call.observed.iter().enumerate() {
        if o.at_ms < previous_at {
            v.push(format!("observation {i} goes back in time"));
        }
        previous_at = o.at_ms;
        if ends > 0 {
            v.push(format!("{:?} observed after the end", o.what));
        }
        match &o.what {
            What::Welcome { epoch } => {
                if welcomed.insert(o.session, *epoch).is_some() {
                    v.push(format!("session {} welcomed twice", o.session));
                }
                if let Some(e) = epoch {
                    if let Some(last) = last_welcome_epoch
                        && *e <= last
                    {
                        v.push(format!("welcome epoch {e} after epoch {last}: epochs must only increase"));
                    }
                    last_welcome_epoch = Some(*e);
                }
            }
            What::Audio { epoch, seq } => {
                report.audio_frames_delivered += 1;
                match welcomed.get(&o.session) {
                    None => v.push(format!("audio on session {} before its welcome", o.session)),
                    Some(welcome_epoch) => {
                        if let (Some(a), Some(w)) = (epoch, welcome_epoch)
                            && a != w
                        {
                            v.push(format!("audio of epoch {a} on the session welcomed at epoch {w}"));
                        }
                    }
                }
                if let Some(newest) = newest_audio_session
                    && o.session < newest
                {
                    v.push(format!(
                        "two owners: audio from session {} at {} ms after session {newest} had delivered",
                        o.session, o.at_ms
                    ));
                }
                newest_audio_session = Some(newest_audio_session.map_or(o.session, |n| n.max(o.session)));
                if let Some(s) = seq
                    && let Some(last) = last_seq.insert(o.session, *s)
                    && *s <= last
                {
                    v.push(format!("server audio seq {s} after {last} in session {}", o.session));
                }
                let entry = intervals.entry(o.session).or_insert((o.at_ms, o.at_ms));
                entry.1 = o.at_ms;
            }
            What::Acked { .. } => {}
            What::Lost { .. } => report.sessions_lost += 1,
            What::Ended { clean, .. } => {
                ends += 1;
                clean_end = *clean;
            }
        }
    }
    report.max_concurrent_owners = report.max_concurrent_owners.max(max_overlap(&intervals));
    if ends != 1 {
        v.push(format!("the client saw {ends} ends (one expected)"));
    }
    let Some(server) = &call.server else {
        v.push("no server facts".to_owned());
        report.dropped += 1;
        return;
    };
    let ended_as_meant = server.end_reason.as_deref() == Some(call.expected_end_reason.as_str());
    if !(clean_end && ended_as_meant) {
        report.dropped += 1;
    }
    if server.status != "ended" || server.end_reason.is_none() {
        v.push(format!("not ended with a reason: status {} reason {:?}", server.status, server.end_reason));
    }
    if server.ended_events > 1 {
        v.push(format!("{} ended events in the timeline", server.ended_events));
    }
    if let Some(last) = last_welcome_epoch
        && server.epoch <= last
    {
        v.push(format!("store epoch {} not above the last welcomed epoch {last}", server.epoch));
    }
    if let Some(at) = first_difference(&server.recording_inbound, &call.sent) {
        v.push(format!(
            "inbound recording differs from the audio sent at byte {at} (recorded {} bytes, sent {})",
            server.recording_inbound.len(),
            call.sent.len()
        ));
    }
    if let Some(out) = &server.recording_outbound_echo
        && let Some(at) = first_difference(out, &server.recording_inbound)
    {
        v.push(format!(
            "outbound (echo) recording differs from the inbound one at byte {at} ({} vs {} bytes)",
            out.len(),
            server.recording_inbound.len()
        ));
    }
}

/// Where two byte strings first differ (`None` when equal).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len())))
}

/// The largest number of intervals that overlap at one instant.
fn max_overlap(intervals: &BTreeMap<u64, (u64, u64)>) -> usize {
    // Starts sort before ends at the same instant: touching intervals overlap.
    let mut points: Vec<(u64, i8)> = intervals.values().flat_map(|&(s, e)| [(s, -1), (e, 1)]).collect();
    points.sort_unstable();
    let (mut now, mut max) = (0i64, 0i64);
    for (_, kind) in points {
        now -= i64::from(kind);
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_ms: u64, session: u64, what: What) -> Observed {
        Observed { at_ms, session, what }
    }

    fn welcome(at: u64, epoch: u64) -> Observed {
        obs(at, epoch, What::Welcome { epoch: Some(epoch) })
    }

    fn audio(at: u64, epoch: u64, seq: u64) -> Observed {
        obs(at, epoch, What::Audio { epoch: Some(epoch), seq: Some(seq) })
    }

    fn end(at: u64, session: u64) -> Observed {
        obs(at, session, What::Ended { cause: "HungUp".into(), clean: true })
    }

    /// A clean call: welcome at 1, audio, lost, resumed at 2, audio, hang-up; recorded
    /// exactly.
    fn good() -> CallHistory {
        CallHistory {
            call_id: "c1".into(),
            transport: Transport::Native,
            observed: vec![
                welcome(0, 1),
                audio(10, 1, 1),
                audio(30, 1, 2),
                obs(40, 1, What::Lost { code: 1006 }),
                welcome(90, 2),
                audio(100, 2, 3),
                end(200, 2),
            ],
            sent: b"abcdef".to_vec(),
            expected_end_reason: "client_hangup".into(),
            server: Some(ServerFacts {
                status: "ended".into(),
                end_reason: Some("client_hangup".into()),
                epoch: 3,
                ended_events: 1,
                recording_inbound: b"abcdef".to_vec(),
                recording_outbound_echo: Some(b"abcdef".to_vec()),
            }),
        }
    }

    fn fleet(calls: u64) -> FleetFacts {
        FleetFacts { fenced_writes: 0, ends_counted: calls, calls_left_live: 0, resumes: 1 }
    }

    fn violations(call: CallHistory) -> Vec<String> {
        check(&[call], &fleet(1)).violations
    }

    #[test]
    fn a_clean_history_passes_with_one_owner_at_a_time() {
        let report = check(&[good()], &fleet(1));
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(
            (report.calls, report.dropped, report.max_concurrent_owners, report.sessions_lost),
            (1, 0, 1, 1)
        );
        assert_eq!(report.audio_frames_delivered, 3);
    }

    #[test]
    fn audio_from_an_older_session_after_a_newer_one_is_two_owners() {
        let mut call = good();
        // Twilio-like: no epochs, sessions by stream number; stream 1 delivers after 2 did.
        call.transport = Transport::Twilio;
        call.observed = vec![
            obs(0, 1, What::Welcome { epoch: None }),
            obs(10, 1, What::Audio { epoch: None, seq: None }),
            obs(20, 2, What::Welcome { epoch: None }),
            obs(30, 2, What::Audio { epoch: None, seq: None }),
            obs(40, 1, What::Audio { epoch: None, seq: None }),
            end(50, 2),
        ];
        let report = check(&[call], &fleet(1));
        assert!(report.violations.iter().any(|v| v.contains("two owners")), "{:?}", report.violations);
        assert_eq!(report.max_concurrent_owners, 2);
    }

    #[test]
    fn epochs_that_do_not_increase_are_reported() {
        let mut call = good();
        call.observed[4] = welcome(90, 1);
        call.observed[4].session = 5;
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("epochs must only increase")), "{v:?}");

        let mut call = good();
        call.observed[5] = audio(100, 1, 3);
        call.observed[5].session = 2;
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("audio of epoch 1 on the session welcomed at epoch 2")), "{v:?}");

        let mut call = good();
        call.observed.insert(6, audio(110, 2, 3));
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("seq 3 after 3 in session 2")), "{v:?}");
        // A new owner may send again a seq an old one sent: clients drop it by seq.
        let mut call = good();
        call.observed[5] = audio(100, 2, 2);
        assert_eq!(violations(call), Vec::<String>::new());

        let mut call = good();
        call.server.as_mut().unwrap().epoch = 2;
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("store epoch 2")), "{v:?}");
    }

    #[test]
    fn a_recording_gap_duplicate_or_echo_mismatch_is_reported() {
        for (recorded, at) in [(&b"abdef"[..], 2), (&b"abcdeff"[..], 6), (&b"abcfed"[..], 3)] {
            let mut call = good();
            call.server.as_mut().unwrap().recording_inbound = recorded.to_vec();
            call.server.as_mut().unwrap().recording_outbound_echo = None;
            let v = violations(call);
            assert!(v.iter().any(|v| v.contains(&format!("at byte {at}"))), "{recorded:?}: {v:?}");
        }
        let mut call = good();
        call.server.as_mut().unwrap().recording_outbound_echo = Some(b"abcdefab".to_vec());
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("outbound (echo) recording differs")), "{v:?}");
    }

    #[test]
    fn a_call_not_ended_once_with_a_reason_is_reported() {
        let mut call = good();
        call.server.as_mut().unwrap().status = "active".into();
        call.server.as_mut().unwrap().end_reason = None;
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("not ended with a reason")), "{v:?}");

        let mut call = good();
        call.server.as_mut().unwrap().ended_events = 2;
        assert!(violations(call).iter().any(|v| v.contains("2 ended events")));

        let mut call = good();
        call.observed.push(end(300, 2));
        let v = violations(call);
        assert!(v.iter().any(|v| v.contains("2 ends")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("after the end")), "{v:?}");

        let report = check(&[good()], &FleetFacts { ends_counted: 2, calls_left_live: 1, ..fleet(1) });
        assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
    }

    #[test]
    fn a_call_that_gave_up_or_ended_otherwise_counts_as_dropped() {
        let mut gave_up = good();
        gave_up.observed[6] = obs(200, 2, What::Ended { cause: "GaveUp".into(), clean: false });
        let mut reaped = good();
        reaped.server.as_mut().unwrap().end_reason = Some("resume_window_expired".into());
        let report = check(&[good(), gave_up, reaped], &fleet(3));
        assert_eq!(report.dropped, 2);
        assert!(
            report.violations.is_empty(),
            "dropping is a figure, not a violation: {:?}",
            report.violations
        );
    }
}
