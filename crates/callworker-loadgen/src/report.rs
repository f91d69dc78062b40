//! Run-wide statistics and their output: HdrHistograms fed by every call, per-call
//! summaries, the aggregate [`Report`] (a table for people, JSON for machines) and the
//! pass/fail [`verdict`].
//!
//! Histograms are shared by all calls behind one lock; a call records into its own
//! fixed-size [`Samples`] batch and takes the lock once per [`SAMPLES_BATCH`] samples, so
//! the per-frame path neither allocates nor contends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value the histograms resolve (1 h in µs); larger samples are clamped to it.
const HISTOGRAM_US_MAX: u64 = 3_600_000_000;
/// Significant digits kept by the histograms (0.1 % resolution).
const HISTOGRAM_SIGFIG: u8 = 3;
/// Samples a call buffers before taking the shared lock.
pub const SAMPLES_BATCH: usize = 128;
/// Smallest delivered ratio (echoed bytes / sent bytes) that passes.
pub const DELIVERED_RATIO_MIN: f64 = 0.99;
/// Calls listed by name in the table when they failed or closed abnormally (the JSON
/// report lists every call).
const TABLE_CALLS_LISTED_MAX: usize = 10;

/// The run's histograms, in microseconds.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Receive instant − scheduled send instant of the frame holding the last byte received.
    pub echo_lag_us: Histogram<u64>,
    /// The same, for native calls only and for Twilio calls only.
    pub echo_lag_native_us: Histogram<u64>,
    pub echo_lag_twilio_us: Histogram<u64>,
    /// Actual − scheduled send instant of every frame.
    pub send_lateness_us: Histogram<u64>,
    /// Call creation (or voice webhook) until the media session is established.
    pub setup_us: Histogram<u64>,
}

impl Histograms {
    pub fn new() -> Histograms {
        let h = || {
            Histogram::new_with_bounds(1, HISTOGRAM_US_MAX, HISTOGRAM_SIGFIG)
                .expect("constant histogram bounds are valid")
        };
        Histograms {
            echo_lag_us: h(),
            echo_lag_native_us: h(),
            echo_lag_twilio_us: h(),
            send_lateness_us: h(),
            setup_us: h(),
        }
    }
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms::new()
    }
}

/// [`Histograms`] shared by every call task of a run.
#[derive(Debug, Default)]
pub struct SharedHistograms {
    inner: Mutex<Histograms>,
}

impl SharedHistograms {
    fn lock(&self) -> MutexGuard<'_, Histograms> {
        // Recording is a handful of counter increments; a panic mid-way cannot leave
        // anything worse than one sample short, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record_setup_us(&self, us: u64) {
        self.lock().setup_us.saturating_record(us);
    }

    /// A copy of the histograms as they are now.
    pub fn snapshot(&self) -> Histograms {
        self.lock().clone()
    }
}

/// One call's not-yet-recorded samples: fixed arrays, flushed into the shared histograms
/// when full and when dropped (so a call cut short still counts what it measured).
#[derive(Debug)]
pub struct Samples {
    shared: Arc<SharedHistograms>,
    protocol: Protocol,
    lag_us: [u64; SAMPLES_BATCH],
    lag_len: usize,
    lateness_us: [u64; SAMPLES_BATCH],
    lateness_len: usize,
}

impl Samples {
    pub fn new(shared: Arc<SharedHistograms>, protocol: Protocol) -> Samples {
        Samples {
            shared,
            protocol,
            lag_us: [0; SAMPLES_BATCH],
            lag_len: 0,
            lateness_us: [0; SAMPLES_BATCH],
            lateness_len: 0,
        }
    }

    pub fn echo_lag_us(&mut self, us: u64) {
        self.lag_us[self.lag_len] = us;
        self.lag_len += 1;
        if self.lag_len == SAMPLES_BATCH {
            self.flush();
        }
    }

    pub fn send_lateness_us(&mut self, us: u64) {
        self.lateness_us[self.lateness_len] = us;
        self.lateness_len += 1;
        if self.lateness_len == SAMPLES_BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.lag_len == 0 && self.lateness_len == 0 {
            return;
        }
        let mut guard = self.shared.lock();
        let h = &mut *guard;
        let by_protocol = match self.protocol {
            Protocol::Native => &mut h.echo_lag_native_us,
            Protocol::Twilio => &mut h.echo_lag_twilio_us,
        };
        for &us in &self.lag_us[..self.lag_len] {
            h.echo_lag_us.saturating_record(us);
            by_protocol.saturating_record(us);
        }
        for &us in &self.lateness_us[..self.lateness_len] {
            h.send_lateness_us.saturating_record(us);
        }
        self.lag_len = 0;
        self.lateness_len = 0;
    }
}

impl Drop for Samples {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Which protocol a simulated call speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Native,
    Twilio,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Twilio => "twilio",
        }
    }
}

/// What one call did and saw.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub index: u32,
    pub protocol: Protocol,
    /// The call id (native) or the simulated CallSid (Twilio), once known.
    pub id: Option<String>,
    /// Creation (or voice webhook) until `welcome` received (native) or `start` handed to
    /// the socket (Twilio, which has no answer to `start`).
    pub setup_ms: Option<f64>,
    /// Why the call could not be set up (it then sent nothing).
    pub setup_error: Option<String>,
    pub frames_sent: u64,
    /// Audio messages received (a re-chunking server may send more or fewer than frames).
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// 160-byte frames of the sent stream whose echo differed in any byte.
    pub mismatched_frames: u64,
    /// Bytes received beyond everything sent at the time (audio the server made up).
    pub excess_bytes: u64,
    /// Echoes that arrived later than the window of kept send instants (not measured).
    pub lags_beyond_window: u64,
    pub echo_lag_max_ms: f64,
    /// Native `ack`s received and the highest sequence number they covered.
    pub acks_received: u64,
    pub acked_upto_seq: u64,
    /// Twilio marks the simulator played and echoed.
    pub marks_played: u64,
    /// The close code the server sent (1006: the connection dropped without one); `None`
    /// when no close arrived in time.
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    /// The first thing that went wrong after setup (send failed, server error, no close).
    pub error: Option<String>,
}

impl CallSummary {
    pub fn new(index: u32, protocol: Protocol) -> CallSummary {
        CallSummary {
            index,
            protocol,
            id: None,
            setup_ms: None,
            setup_error: None,
            frames_sent: 0,
            messages_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            mismatched_frames: 0,
            excess_bytes: 0,
            lags_beyond_window: 0,
            echo_lag_max_ms: 0.0,
            acks_received: 0,
            acked_upto_seq: 0,
            marks_played: 0,
            close_code: None,
            close_reason: None,
            error: None,
        }
    }

    /// Keeps the first error only: later ones are usually its consequences.
    pub fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    pub fn set_up(&self) -> bool {
        self.setup_error.is_none() && self.setup_ms.is_some()
    }

    /// The label of an abnormal end: the close code when it is not 1000, `no_close` when
    /// none arrived. `None` for a normal close or a call that never set up.
    pub fn abnormal_close(&self) -> Option<String> {
        if !self.set_up() {
            return None;
        }
        match self.close_code {
            Some(1000) => None,
            Some(code) => Some(code.to_string()),
            None => Some("no_close".to_owned()),
        }
    }

    /// Echoed bytes: received minus what the server made up.
    pub fn bytes_echoed(&self) -> u64 {
        self.bytes_received.saturating_sub(self.excess_bytes)
    }
}

/// Quantiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        let ms = |us: u64| us as f64 / 1_000.0;
        if h.is_empty() {
            return Quantiles { count: 0, p50_ms: 0.0, p99_ms: 0.0, p999_ms: 0.0, max_ms: 0.0 };
        }
        Quantiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub mode: &'static str,
    pub target: String,
    pub program: &'static str,
    pub protocol: &'static str,
    pub calls_planned: u32,
    pub duration_s: f64,
    pub ramp_s: f64,
    pub frames_per_call: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub info: RunInfo,
    pub elapsed_s: f64,
    pub calls_native: u64,
    pub calls_twilio: u64,
    /// Set up and closed by the server with 1000.
    pub calls_ok: u64,
    pub calls_failed_setup: u64,
    /// Abnormal ends by close code (`no_close`: none within the bound).
    pub abnormal_closes: BTreeMap<String, u64>,
    pub frames_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_echoed: u64,
    /// Echoed bytes / sent bytes (0 when nothing was sent).
    pub delivered_ratio: f64,
    pub mismatched_frames: u64,
    pub excess_bytes: u64,
    pub lags_beyond_window: u64,
    pub acks_received: u64,
    pub marks_played: u64,
    pub echo_lag: Quantiles,
    pub echo_lag_native: Quantiles,
    pub echo_lag_twilio: Quantiles,
    pub setup: Quantiles,
    pub send_lateness: Quantiles,
    pub calls: Vec<CallSummary>,
}

impl Report {
    pub fn build(info: RunInfo, elapsed_s: f64, calls: Vec<CallSummary>, h: &Histograms) -> Report {
        let sum = |f: fn(&CallSummary) -> u64| calls.iter().map(f).sum::<u64>();
        let count = |f: fn(&CallSummary) -> bool| calls.iter().filter(|c| f(c)).count() as u64;
        let mut abnormal_closes = BTreeMap::new();
        for label in calls.iter().filter_map(CallSummary::abnormal_close) {
            *abnormal_closes.entry(label).or_insert(0) += 1;
        }
        let bytes_sent = sum(|c| c.bytes_sent);
        let bytes_echoed = sum(CallSummary::bytes_echoed);
        Report {
            info,
            elapsed_s,
            calls_native: count(|c| c.protocol == Protocol::Native),
            calls_twilio: count(|c| c.protocol == Protocol::Twilio),
            calls_ok: count(|c| c.set_up() && c.close_code == Some(1000)),
            calls_failed_setup: count(|c| !c.set_up()),
            abnormal_closes,
            frames_sent: sum(|c| c.frames_sent),
            messages_received: sum(|c| c.messages_received),
            bytes_sent,
            bytes_echoed,
            delivered_ratio: if bytes_sent == 0 { 0.0 } else { bytes_echoed as f64 / bytes_sent as f64 },
            mismatched_frames: sum(|c| c.mismatched_frames),
            excess_bytes: sum(|c| c.excess_bytes),
            lags_beyond_window: sum(|c| c.lags_beyond_window),
            acks_received: sum(|c| c.acks_received),
            marks_played: sum(|c| c.marks_played),
            echo_lag: Quantiles::of(&h.echo_lag_us),
            echo_lag_native: Quantiles::of(&h.echo_lag_native_us),
            echo_lag_twilio: Quantiles::of(&h.echo_lag_twilio_us),
            setup: Quantiles::of(&h.setup_us),
            send_lateness: Quantiles::of(&h.send_lateness_us),
            calls,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let i = &self.info;
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "callworker-loadgen {}: {} {} calls ({} native, {} twilio) × {:.1} s, ramp {:.1} s, program {}, target {}",
            i.mode,
            i.calls_planned,
            i.protocol,
            self.calls_native,
            self.calls_twilio,
            i.duration_s,
            i.ramp_s,
            i.program,
            i.target
        );
        let abnormal = if self.abnormal_closes.is_empty() {
            "none".to_owned()
        } else {
            self.abnormal_closes.iter().map(|(code, n)| format!("{code}×{n}")).collect::<Vec<_>>().join(" ")
        };
        let rows: [(&str, String); 11] = [
            (
                "calls",
                format!(
                    "placed {}  ok {}  failed setup {}  abnormal closes: {abnormal}",
                    self.calls.len(),
                    self.calls_ok,
                    self.calls_failed_setup
                ),
            ),
            (
                "frames",
                format!(
                    "sent {}  received {} messages  delivered {:.2} % ({} of {} bytes)",
                    self.frames_sent,
                    self.messages_received,
                    self.delivered_ratio * 100.0,
                    self.bytes_echoed,
                    self.bytes_sent
                ),
            ),
            (
                "byte-exact",
                format!("mismatched frames {}  excess bytes {}", self.mismatched_frames, self.excess_bytes),
            ),
            ("echo lag ms", quantiles(&self.echo_lag, true)),
            ("  native", quantiles(&self.echo_lag_native, true)),
            ("  twilio", quantiles(&self.echo_lag_twilio, true)),
            ("setup ms", quantiles(&self.setup, false)),
            (
                "send late ms",
                format!(
                    "p99 {:.2}  max {:.2}  (n={})",
                    self.send_lateness.p99_ms, self.send_lateness.max_ms, self.send_lateness.count
                ),
            ),
            ("native acks", self.acks_received.to_string()),
            ("twilio marks", format!("{} played", self.marks_played)),
            ("elapsed", format!("{:.1} s", self.elapsed_s)),
        ];
        for (name, value) in rows {
            // Per-protocol lag rows only say something new in a mixed run.
            let split = name.starts_with("  ");
            if split && (self.calls_native == 0 || self.calls_twilio == 0) {
                continue;
            }
            let _ = writeln!(t, "  {name:<13}{value}");
        }
        if self.lags_beyond_window > 0 {
            let _ = writeln!(
                t,
                "  {:<13}{} echoes beyond the send window",
                "unmeasured", self.lags_beyond_window
            );
        }
        let troubled: Vec<&CallSummary> = self
            .calls
            .iter()
            .filter(|c| !c.set_up() || c.abnormal_close().is_some() || c.error.is_some())
            .collect();
        for c in troubled.iter().take(TABLE_CALLS_LISTED_MAX) {
            let what = c
                .setup_error
                .as_deref()
                .map(|e| format!("setup failed: {e}"))
                .or_else(|| c.error.clone())
                .unwrap_or_default();
            let close = match (c.close_code, &c.close_reason) {
                (Some(code), Some(reason)) if !reason.is_empty() => format!("closed {code} ({reason})"),
                (Some(code), _) => format!("closed {code}"),
                (None, _) if c.set_up() => "no close".to_owned(),
                (None, _) => String::new(),
            };
            let line = format!(
                "  ! call {} {} {}: {what} {close}",
                c.index,
                c.protocol.as_str(),
                c.id.as_deref().unwrap_or("-")
            );
            let _ = writeln!(t, "{}", line.trim_end());
        }
        if troubled.len() > TABLE_CALLS_LISTED_MAX {
            let _ = writeln!(t, "  ! … and {} more (see --json)", troubled.len() - TABLE_CALLS_LISTED_MAX);
        }
        t
    }
}

fn quantiles(q: &Quantiles, tail: bool) -> String {
    if tail {
        format!(
            "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
            q.p50_ms, q.p99_ms, q.p999_ms, q.max_ms, q.count
        )
    } else {
        format!("p50 {:.2}  p99 {:.2}  max {:.2}  (n={})", q.p50_ms, q.p99_ms, q.max_ms, q.count)
    }
}

/// Whether the run passed: every call set up, every echoed byte exact, nothing made up,
/// and at least [`DELIVERED_RATIO_MIN`] of the audio delivered. `Err` says why, in one line.
pub fn verdict(r: &Report) -> Result<(), String> {
    let mut why = Vec::new();
    if r.calls_failed_setup > 0 {
        why.push(format!("{} of {} calls failed to set up", r.calls_failed_setup, r.calls.len()));
    }
    if r.mismatched_frames > 0 {
        why.push(format!("{} echoed frames differed from the audio sent", r.mismatched_frames));
    }
    if r.excess_bytes > 0 {
        why.push(format!("{} bytes came back that were never sent", r.excess_bytes));
    }
    if r.delivered_ratio < DELIVERED_RATIO_MIN {
        why.push(format!(
            "delivered {:.2} % of the audio sent (minimum {:.0} %)",
            r.delivered_ratio * 100.0,
            DELIVERED_RATIO_MIN * 100.0
        ));
    }
    if why.is_empty() { Ok(()) } else { Err(why.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            mode: "calls",
            target: "http://127.0.0.1:1".into(),
            program: "echo",
            protocol: "mixed",
            calls_planned: 3,
            duration_s: 1.0,
            ramp_s: 0.0,
            frames_per_call: 50,
        }
    }

    fn ok_call(index: u32, protocol: Protocol) -> CallSummary {
        let mut c = CallSummary::new(index, protocol);
        c.setup_ms = Some(1.0);
        c.frames_sent = 50;
        c.bytes_sent = 8_000;
        c.messages_received = 50;
        c.bytes_received = 8_000;
        c.close_code = Some(1000);
        c
    }

    #[test]
    fn aggregates_calls_and_passes_a_clean_run() {
        let calls = vec![ok_call(0, Protocol::Native), ok_call(1, Protocol::Twilio)];
        let r = Report::build(info(), 1.0, calls, &Histograms::new());
        assert_eq!((r.calls_native, r.calls_twilio, r.calls_ok, r.calls_failed_setup), (1, 1, 2, 0));
        assert_eq!((r.frames_sent, r.bytes_sent, r.bytes_echoed), (100, 16_000, 16_000));
        assert_eq!(r.delivered_ratio, 1.0);
        assert!(r.abnormal_closes.is_empty());
        assert_eq!(verdict(&r), Ok(()));
        let table = r.table();
        assert!(table.contains("delivered 100.00 %"), "{table}");
        assert!(table.contains("    native     p50") && table.contains("    twilio     p50"), "{table}");
        let native_only = Report::build(info(), 1.0, vec![ok_call(0, Protocol::Native)], &Histograms::new());
        assert!(!native_only.table().contains("    native"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["calls_ok"], 2);
        assert_eq!(json["mode"], "calls");
    }

    #[test]
    fn delivered_ratio_excludes_made_up_bytes_and_fails_below_the_minimum() {
        let mut short = ok_call(0, Protocol::Native);
        short.bytes_received = 7_000; // 1,000 bytes lost
        let mut extra = ok_call(1, Protocol::Twilio);
        extra.bytes_received = 8_320;
        extra.excess_bytes = 320;
        let r = Report::build(info(), 1.0, vec![short, extra], &Histograms::new());
        assert_eq!(r.bytes_echoed, 15_000);
        assert!((r.delivered_ratio - 0.9375).abs() < 1e-9);
        let why = verdict(&r).unwrap_err();
        assert!(why.contains("delivered 93.75 %"), "{why}");
        assert!(why.contains("320 bytes came back"), "{why}");
        assert!(!why.contains('\n'));
    }

    #[test]
    fn setup_failures_and_abnormal_closes_are_counted_apart() {
        let mut failed = CallSummary::new(0, Protocol::Native);
        failed.setup_error = Some("API answered 503".into());
        let mut dropped = ok_call(1, Protocol::Native);
        dropped.close_code = Some(1006);
        let mut silent = ok_call(2, Protocol::Twilio);
        silent.close_code = None;
        let mut limited = ok_call(3, Protocol::Twilio);
        limited.close_code = Some(4429);
        let mut mismatched = ok_call(4, Protocol::Native);
        mismatched.mismatched_frames = 2;
        let calls = vec![failed, dropped, silent, limited, mismatched];
        let r = Report::build(info(), 1.0, calls, &Histograms::new());
        assert_eq!((r.calls_ok, r.calls_failed_setup), (1, 1));
        let closes: Vec<(&str, u64)> = r.abnormal_closes.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(closes, [("1006", 1), ("4429", 1), ("no_close", 1)]);
        let why = verdict(&r).unwrap_err();
        assert!(why.starts_with("1 of 5 calls failed to set up; 2 echoed frames differed"), "{why}");
        let table = r.table();
        assert!(table.contains("abnormal closes: 1006×1 4429×1 no_close×1"), "{table}");
        assert!(table.contains("setup failed: API answered 503"), "{table}");
    }

    #[test]
    fn nothing_sent_is_zero_delivered() {
        let r = Report::build(info(), 0.0, vec![], &Histograms::new());
        assert_eq!(r.delivered_ratio, 0.0);
        assert!(verdict(&r).is_err());
        assert_eq!(r.echo_lag.count, 0);
    }

    #[test]
    fn samples_batch_into_the_shared_histograms_and_flush_on_drop() {
        let shared = Arc::new(SharedHistograms::default());
        let mut s = Samples::new(shared.clone(), Protocol::Twilio);
        for us in 1..=SAMPLES_BATCH as u64 + 2 {
            s.echo_lag_us(us * 1_000);
        }
        s.send_lateness_us(250);
        // A full batch went through; the rest waits.
        assert_eq!(shared.snapshot().echo_lag_us.len(), SAMPLES_BATCH as u64);
        drop(s);
        let h = shared.snapshot();
        assert_eq!(h.echo_lag_us.len(), SAMPLES_BATCH as u64 + 2);
        assert_eq!(h.send_lateness_us.len(), 1);
        assert_eq!(h.echo_lag_twilio_us.len(), SAMPLES_BATCH as u64 + 2);
        assert_eq!(h.echo_lag_native_us.len(), 0);
        shared.record_setup_us(3_000);
        let q = Quantiles::of(&shared.snapshot().echo_lag_us);
        assert!((q.max_ms - 130.0).abs() < 0.2, "{q:?}");
        assert!((q.p50_ms - 65.0).abs() < 0.2, "{q:?}");
        assert_eq!(Quantiles::of(&shared.snapshot().setup_us).count, 1);
    }
}
