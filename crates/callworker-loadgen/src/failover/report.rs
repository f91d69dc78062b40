//! The `failover` report: per-call outcomes turned into run-wide counts and resume-time
//! quantiles (HdrHistogram), as a table for people or JSON for machines, and the pass/fail
//! [`verdict`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::call::CallOutcome;

/// Largest value the histograms resolve (1 h in µs); larger samples are clamped to it.
const HISTOGRAM_US_MAX: u64 = 3_600_000_000;
/// Significant digits kept (0.1 % resolution).
const HISTOGRAM_SIGFIG: u8 = 3;
/// Calls listed by name in the table when something went wrong (JSON lists every call).
const TABLE_CALLS_LISTED_MAX: usize = 10;

/// Quantiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Quantiles {
    /// Quantiles of `samples_us` (microseconds).
    pub fn of(samples_us: impl IntoIterator<Item = u64>) -> Quantiles {
        let mut h: Histogram<u64> = Histogram::new_with_bounds(1, HISTOGRAM_US_MAX, HISTOGRAM_SIGFIG)
            .expect("constant histogram bounds are valid");
        for us in samples_us {
            h.saturating_record(us);
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        if h.is_empty() {
            return Quantiles { count: 0, p50_ms: 0.0, p90_ms: 0.0, p99_ms: 0.0, max_ms: 0.0 };
        }
        Quantiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub mode: &'static str,
    pub workers: Vec<String>,
    pub victim: String,
    pub victim_pid: Option<u32>,
    /// `sigkill`, `sigterm` or `drop_connections`.
    pub fault: &'static str,
    pub calls_planned: u32,
    pub before_s: f64,
    pub after_s: f64,
    pub frames_per_call: u64,
}

/// A call together with its times.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    #[serde(flatten)]
    pub outcome: CallOutcome,
    pub resume_ms: Option<f64>,
    pub welcome_ms: Option<f64>,
    pub detect_ms: Option<f64>,
    /// Whether the call counts as dropped (see [`Report::calls_dropped`]).
    pub dropped: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub info: RunInfo,
    pub elapsed_s: f64,
    /// How late the fault was injected after its scheduled instant.
    pub fault_late_ms: f64,
    pub calls_set_up: u64,
    pub calls_failed_setup: u64,
    /// Calls that lost their session before the fault (not caused by it).
    pub calls_disconnected_before_fault: u64,
    /// Calls that received echoed audio from a new epoch after the fault.
    pub calls_resumed: u64,
    /// Set up, and never resumed or ended other than by our hang-up.
    pub calls_dropped: u64,
    /// How calls ended for the client (`hung_up` is the good one).
    pub end_causes: BTreeMap<String, u64>,
    /// Media URL of each call's last session.
    pub resumed_on: BTreeMap<String, u64>,
    /// Fault → first echoed frame of a new epoch: audio processed on the new worker.
    pub resume: Quantiles,
    /// Fault → `Resumed` (the new session's `welcome`).
    pub welcome: Quantiles,
    /// The client's own `Resumed.gap_ms`: session lost → `welcome`.
    pub client_gap: Quantiles,
    /// Fault → `Disconnected` (the client noticed).
    pub detect: Quantiles,
    pub resumes: u64,
    pub resume_attempts_max: u32,
    pub frames_sent: u64,
    pub frames_acked: u64,
    /// Frames sent that no ack covered by hang-up, and the calls that lost any.
    pub audio_lost_frames: u64,
    pub calls_with_audio_lost: u64,
    pub frames_replayed: u64,
    /// Frames the client no longer held on resume and sent as silence (lossy resumes).
    pub silence_frames: u64,
    pub echoed_frames: u64,
    pub echo_duplicates: u64,
    pub echo_gaps: u64,
    pub echo_missing_tail: u64,
    pub echo_mismatched: u64,
    pub duplicates_dropped: u64,
    pub stale_epoch_dropped: u64,
    pub events_dropped: u64,
    pub failed_attempts: u64,
    pub recordings_checked: u64,
    pub recording_mismatches: u64,
    pub send_late_max_ms: f64,
    pub calls: Vec<CallReport>,
}

fn since_ms(fault_at: Option<Instant>, at: Option<Instant>) -> Option<f64> {
    let (fault_at, at) = (fault_at?, at?);
    Some(at.saturating_duration_since(fault_at).as_secs_f64() * 1_000.0)
}

fn us(ms: f64) -> u64 {
    (ms * 1_000.0).round() as u64
}

impl Report {
    /// Builds the report; `fault_at` is when the fault was injected (`None`: it never was).
    pub fn build(
        info: RunInfo,
        elapsed_s: f64,
        fault_at: Option<Instant>,
        fault_late_ms: f64,
        outcomes: Vec<CallOutcome>,
    ) -> Report {
        let calls: Vec<CallReport> = outcomes
            .into_iter()
            .map(|o| {
                let i = o.instants;
                let before_fault =
                    |at: Option<Instant>| matches!((at, fault_at), (Some(a), Some(f)) if a < f);
                // A resume the fault did not cause says nothing about the fault.
                let early = before_fault(i.disconnected);
                let resume_ms = if early { None } else { since_ms(fault_at, i.first_new_audio) };
                let welcome_ms = if early { None } else { since_ms(fault_at, i.resumed) };
                let detect_ms = if early { None } else { since_ms(fault_at, i.disconnected) };
                // Without a fault a call need not have moved; it must still end by its hang-up.
                let moved = fault_at.is_none() || i.first_new_audio.is_some();
                let dropped = o.set_up() && (!moved || !o.hung_up());
                CallReport { outcome: o, resume_ms, welcome_ms, detect_ms, dropped }
            })
            .collect();
        let set_up: Vec<&CallReport> = calls.iter().filter(|c| c.outcome.set_up()).collect();
        let sum = |f: fn(&CallOutcome) -> u64| set_up.iter().map(|c| f(&c.outcome)).sum::<u64>();
        let mut end_causes = BTreeMap::new();
        let mut resumed_on = BTreeMap::new();
        for c in &set_up {
            *end_causes.entry(c.outcome.end.clone()).or_insert(0) += 1;
            if let Some(url) = &c.outcome.last_media_url {
                *resumed_on.entry(url.clone()).or_insert(0) += 1;
            }
        }
        let disconnected_early = set_up
            .iter()
            .filter(|c| matches!((c.outcome.instants.disconnected, fault_at), (Some(a), Some(f)) if a < f))
            .count() as u64;
        Report {
            info,
            elapsed_s,
            fault_late_ms,
            calls_set_up: set_up.len() as u64,
            calls_failed_setup: (calls.len() - set_up.len()) as u64,
            calls_disconnected_before_fault: disconnected_early,
            calls_resumed: set_up
                .iter()
                .filter(|c| {
                    c.resume_ms.is_some()
                        || (fault_at.is_none() && c.outcome.instants.first_new_audio.is_some())
                })
                .count() as u64,
            calls_dropped: set_up.iter().filter(|c| c.dropped).count() as u64,
            end_causes,
            resumed_on,
            resume: Quantiles::of(set_up.iter().filter_map(|c| c.resume_ms).map(us)),
            welcome: Quantiles::of(set_up.iter().filter_map(|c| c.welcome_ms).map(us)),
            client_gap: Quantiles::of(
                set_up
                    .iter()
                    .filter(|c| c.welcome_ms.is_some())
                    .filter_map(|c| c.outcome.gap_ms)
                    .map(|ms| ms * 1_000),
            ),
            detect: Quantiles::of(set_up.iter().filter_map(|c| c.detect_ms).map(us)),
            resumes: sum(|o| o.resumes),
            resume_attempts_max: set_up.iter().filter_map(|c| c.outcome.resume_attempts).max().unwrap_or(0),
            frames_sent: sum(|o| o.frames_sent),
            frames_acked: sum(|o| o.acked_upto_seq.min(o.frames_sent)),
            audio_lost_frames: sum(|o| o.audio_lost_frames),
            calls_with_audio_lost: set_up.iter().filter(|c| c.outcome.audio_lost_frames > 0).count() as u64,
            frames_replayed: sum(|o| o.frames_replayed),
            silence_frames: sum(|o| o.silence_frames),
            echoed_frames: sum(|o| o.echoed_frames),
            echo_duplicates: sum(|o| o.echo_duplicates),
            echo_gaps: sum(|o| o.echo_gaps),
            echo_missing_tail: sum(|o| o.echo_missing_tail),
            echo_mismatched: sum(|o| o.echo_mismatched),
            duplicates_dropped: sum(|o| o.duplicates_dropped),
            stale_epoch_dropped: sum(|o| o.stale_epoch_dropped),
            events_dropped: sum(|o| o.events_dropped),
            failed_attempts: sum(|o| o.failed_attempts),
            recordings_checked: set_up.iter().filter(|c| c.outcome.recording.checked()).count() as u64,
            recording_mismatches: set_up.iter().filter(|c| c.outcome.recording.mismatch().is_some()).count()
                as u64,
            send_late_max_ms: set_up.iter().map(|c| c.outcome.send_late_max_ms).fold(0.0, f64::max),
            calls,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let i = &self.info;
        let pid = i.victim_pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "callworker-loadgen {}: {} native echo calls on {}{pid}, {} after {:.1} s, {:.1} s after; {} workers",
            i.mode,
            i.calls_planned,
            i.victim,
            i.fault,
            i.before_s,
            i.after_s,
            i.workers.len()
        );
        let rows: [(&str, String); 12] = [
            (
                "calls",
                format!(
                    "set up {}  failed setup {}  resumed {}  dropped {}",
                    self.calls_set_up, self.calls_failed_setup, self.calls_resumed, self.calls_dropped
                ),
            ),
            ("ended", counts(&self.end_causes)),
            ("resume ms", quantiles(&self.resume)),
            ("welcome ms", quantiles(&self.welcome)),
            ("client gap ms", quantiles(&self.client_gap)),
            ("detect ms", quantiles(&self.detect)),
            (
                "inbound",
                format!(
                    "sent {}  acked {}  lost {} (in {} calls)  replayed {}  silence {}",
                    self.frames_sent,
                    self.frames_acked,
                    self.audio_lost_frames,
                    self.calls_with_audio_lost,
                    self.frames_replayed,
                    self.silence_frames
                ),
            ),
            (
                "echo",
                format!(
                    "frames {}  duplicates {}  gaps {}  missing tail {}  mismatched {}",
                    self.echoed_frames,
                    self.echo_duplicates,
                    self.echo_gaps,
                    self.echo_missing_tail,
                    self.echo_mismatched
                ),
            ),
            (
                "client",
                format!(
                    "resumes {} (attempts max {})  failed attempts {}  dup dropped {}  stale epoch {}  events dropped {}",
                    self.resumes,
                    self.resume_attempts_max,
                    self.failed_attempts,
                    self.duplicates_dropped,
                    self.stale_epoch_dropped,
                    self.events_dropped
                ),
            ),
            (
                "recordings",
                format!("checked {}  mismatched {}", self.recordings_checked, self.recording_mismatches),
            ),
            ("resumed on", counts(&self.resumed_on)),
            (
                "timing",
                format!(
                    "fault late {:.2} ms  send late max {:.2} ms  elapsed {:.1} s",
                    self.fault_late_ms, self.send_late_max_ms, self.elapsed_s
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(t, "  {name:<14}{value}");
        }
        if self.calls_disconnected_before_fault > 0 {
            let _ = writeln!(
                t,
                "  {:<14}{} calls lost their session before the fault (not measured)",
                "early", self.calls_disconnected_before_fault
            );
        }
        let troubled: Vec<&CallReport> = self
            .calls
            .iter()
            .filter(|c| {
                let o = &c.outcome;
                c.dropped
                    || !o.set_up()
                    || o.error.is_some()
                    || o.audio_lost_frames > 0
                    || o.recording.mismatch().is_some()
            })
            .collect();
        for c in troubled.iter().take(TABLE_CALLS_LISTED_MAX) {
            let o = &c.outcome;
            let mut what = Vec::new();
            if let Some(e) = &o.setup_error {
                what.push(format!("setup failed: {e}"));
            }
            if let Some(e) = &o.error {
                what.push(e.clone());
            }
            if o.set_up() && c.resume_ms.is_none() {
                what.push("never resumed".to_owned());
            }
            if o.audio_lost_frames > 0 {
                what.push(format!("{} frames unacked", o.audio_lost_frames));
            }
            if let Some(why) = o.recording.mismatch() {
                what.push(format!("recording: {why}"));
            }
            let _ = writeln!(
                t,
                "  ! call {} {} ended {}: {}",
                o.index,
                o.id.as_deref().unwrap_or("-"),
                o.end,
                what.join("; ")
            );
        }
        if troubled.len() > TABLE_CALLS_LISTED_MAX {
            let _ = writeln!(t, "  ! … and {} more (see --json)", troubled.len() - TABLE_CALLS_LISTED_MAX);
        }
        t
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter().map(|(k, n)| format!("{k}×{n}")).collect::<Vec<_>>().join("  ")
}

fn quantiles(q: &Quantiles) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (n={})",
        q.p50_ms, q.p90_ms, q.p99_ms, q.max_ms, q.count
    )
}

/// Whether the run passed: every call set up and resumed, none dropped, no caller audio
/// lost, every checked recording exact and every echoed byte exact. Echo duplicates and
/// gaps are reported but do not fail the run. `Err` says why, in one line.
pub fn verdict(r: &Report) -> Result<(), String> {
    let mut why = Vec::new();
    if r.calls_failed_setup > 0 {
        why.push(format!("{} of {} calls failed to set up", r.calls_failed_setup, r.calls.len()));
    }
    if r.calls_dropped > 0 {
        why.push(format!("{} calls dropped", r.calls_dropped));
    }
    if r.audio_lost_frames > 0 {
        why.push(format!(
            "{} caller frames never acknowledged ({} calls)",
            r.audio_lost_frames, r.calls_with_audio_lost
        ));
    }
    if r.recording_mismatches > 0 {
        why.push(format!("{} recordings differ from the audio sent", r.recording_mismatches));
    }
    if r.echo_mismatched > 0 {
        why.push(format!("{} echoed frames differ from any frame sent", r.echo_mismatched));
    }
    if why.is_empty() { Ok(()) } else { Err(why.join("; ")) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::call::RecordingCheck;
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            mode: "failover",
            workers: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            victim: "http://127.0.0.1:1".into(),
            victim_pid: Some(42),
            fault: "sigkill",
            calls_planned: 3,
            before_s: 1.0,
            after_s: 1.0,
            frames_per_call: 100,
        }
    }

    fn resumed(index: u32, fault: Instant, resume_ms: u64) -> CallOutcome {
        let mut o = CallOutcome::new(index);
        o.frames_sent = 100;
        o.acked_upto_seq = 100;
        o.end = "hung_up".into();
        o.gap_ms = Some(resume_ms / 2);
        o.instants.disconnected = Some(fault + Duration::from_millis(1));
        o.instants.resumed = Some(fault + Duration::from_millis(resume_ms / 2));
        o.instants.first_new_audio = Some(fault + Duration::from_millis(resume_ms));
        o.last_media_url = Some("ws://127.0.0.1:2/v1/media".into());
        o
    }

    #[test]
    fn resume_times_are_measured_from_the_fault_and_a_clean_run_passes() {
        let fault = Instant::now();
        let calls = (0..10).map(|i| resumed(i, fault, 100 * (u64::from(i) + 1))).collect();
        let r = Report::build(info(), 3.0, Some(fault), 0.1, calls);
        assert_eq!((r.calls_set_up, r.calls_resumed, r.calls_dropped), (10, 10, 0));
        assert_eq!(r.resume.count, 10);
        assert!((r.resume.p50_ms - 500.0).abs() < 1.0, "{:?}", r.resume);
        assert!((r.resume.p90_ms - 900.0).abs() < 1.0, "{:?}", r.resume);
        assert!((r.resume.max_ms - 1_000.0).abs() < 1.0, "{:?}", r.resume);
        assert!((r.client_gap.max_ms - 500.0).abs() < 1.0, "{:?}", r.client_gap);
        assert_eq!(r.resumed_on.get("ws://127.0.0.1:2/v1/media"), Some(&10));
        assert_eq!(verdict(&r), Ok(()));
        let table = r.table();
        assert!(table.contains("resumed 10  dropped 0"), "{table}");
        assert!(table.contains("hung_up×10"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mode"], "failover");
        assert_eq!(json["calls"][0]["index"], 0);
        assert!(json["calls"][0]["resume_ms"].as_f64().is_some());
        assert_eq!(json["calls"][0]["recording"], "not_checked");
    }

    #[test]
    fn dropped_calls_lost_audio_and_bad_recordings_fail_the_run() {
        let fault = Instant::now();
        let mut never = resumed(0, fault, 100);
        never.instants.first_new_audio = None;
        let mut gave_up = resumed(1, fault, 100);
        gave_up.end = "gave_up".into();
        let mut lossy = resumed(2, fault, 100);
        lossy.audio_lost_frames = 3;
        lossy.recording = RecordingCheck::Mismatch("1 frames differ, the first is seq 3".into());
        let mut failed = CallOutcome::new(3);
        failed.setup_error = Some("create the call: 503".into());
        let mut early = resumed(4, fault, 100);
        early.instants.disconnected = Some(fault - Duration::from_millis(5));
        let r = Report::build(info(), 3.0, Some(fault), 0.1, vec![never, gave_up, lossy, failed, early]);
        assert_eq!((r.calls_set_up, r.calls_failed_setup, r.calls_dropped), (4, 1, 2));
        assert_eq!((r.calls_resumed, r.calls_disconnected_before_fault), (2, 1));
        assert_eq!((r.audio_lost_frames, r.recording_mismatches, r.recordings_checked), (3, 1, 1));
        let why = verdict(&r).unwrap_err();
        assert!(why.starts_with("1 of 5 calls failed to set up; 2 calls dropped; 3 caller frames"), "{why}");
        let table = r.table();
        assert!(table.contains("never resumed"), "{table}");
        assert!(table.contains("recording: 1 frames differ"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["calls"][2]["recording"]["mismatch"], "1 frames differ, the first is seq 3");
        assert!(table.contains("1 calls lost their session before the fault"), "{table}");
    }

    #[test]
    fn empty_quantiles_are_zero() {
        let q = Quantiles::of([]);
        assert_eq!(q.count, 0);
        assert_eq!(q.max_ms, 0.0);
    }
}
