//! When to try again: the resume schedule of `docs/protocol.md` §4.4, and a token bucket
//! that paces audio sends so a replay burst stays under the server's message-rate bound.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Default for [`ReconnectPolicy::attempts_max`].
pub const DEFAULT_ATTEMPTS_MAX: u32 = 10;
/// Default for [`ReconnectPolicy::resume_window`].
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(30);
/// Default for [`ReconnectPolicy::backoff_step`]: 300 ms gives §4.4's 0, 300, 1200, 2700 ms.
pub const DEFAULT_BACKOFF_STEP: Duration = Duration::from_millis(300);
/// Default for [`ReconnectPolicy::backoff_max`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default for [`ReconnectPolicy::jitter`].
pub const DEFAULT_JITTER: f64 = 0.2;
/// Default for [`ReconnectPolicy::attempt_timeout`] (the server's own handshake timeout).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a lost session is resumed (`docs/protocol.md` §4.4).
///
/// Attempt `n` of a resume (0-based) waits `backoff_step × n²` first, capped at
/// `backoff_max` and spread by ± `jitter` so that the clients of a dead worker do not all
/// arrive at the next one in the same instant: 0 ms, then about 300, 1200, 2700 ms … with
/// the defaults. After a `migrate` the first attempt waits `reconnect_after_ms` instead.
/// A resume gives up after `attempts_max` attempts or once `resume_window` has passed
/// since the session was lost, whichever comes first; the call then ends for this client.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Attempts per resume (the first connection included when connecting). At least 1.
    pub attempts_max: u32,
    /// Time from losing a session until the resume gives up, attempts included.
    pub resume_window: Duration,
    /// Unit of the quadratic backoff.
    pub backoff_step: Duration,
    /// Longest wait between two attempts (before jitter).
    pub backoff_max: Duration,
    /// Relative spread of each wait, in 0.0–1.0: a wait `d` becomes uniform in
    /// `d × (1 ± jitter)`.
    pub jitter: f64,
    /// Bound on one attempt: TCP connect, WebSocket upgrade, `hello` → `welcome`.
    pub attempt_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            attempts_max: DEFAULT_ATTEMPTS_MAX,
            resume_window: DEFAULT_RESUME_WINDOW,
            backoff_step: DEFAULT_BACKOFF_STEP,
            backoff_max: DEFAULT_BACKOFF_MAX,
            jitter: DEFAULT_JITTER,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (0-based) without jitter.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let factor = attempt.saturating_mul(attempt);
        self.backoff_step.saturating_mul(factor).min(self.backoff_max)
    }

    /// The wait before attempt `attempt` (0-based), jittered with `rng`. The first attempt
    /// never waits.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal_delay(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if nominal.is_zero() || jitter == 0.0 {
            return nominal;
        }
        nominal.mul_f64(rng.random_range(1.0 - jitter..=1.0 + jitter))
    }
}

/// Paces audio sends: `rate_per_s` frames a second with a burst of `burst` frames.
///
/// Why: the server closes a connection that sends more than its message-rate bound (200 a
/// second with one second of burst by default, close 4429, which is final). Live audio
/// needs 50 a second; a replay after a resume can be hundreds of frames, so it is sent as a
/// burst and then at the rate's surplus over live audio.
#[derive(Debug, Clone)]
pub struct SendPacer {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl SendPacer {
    pub fn new(rate_per_s: u32, burst: u32, now: Instant) -> SendPacer {
        let burst = f64::from(burst.max(1));
        SendPacer { rate_per_s: f64::from(rate_per_s.max(1)), burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
    }

    /// Takes one send if one is available at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next send becomes available (after a failed [`SendPacer::try_take`]).
    pub fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate_per_s)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn nominal_schedule_follows_protocol_4_4() {
        let policy = ReconnectPolicy::default();
        let ms: Vec<u128> = (0..8).map(|n| policy.nominal_delay(n).as_millis()).collect();
        assert_eq!(ms, [0, 300, 1200, 2700, 4800, 5000, 5000, 5000]);
        assert_eq!(policy.nominal_delay(u32::MAX), DEFAULT_BACKOFF_MAX, "no overflow");
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let policy = ReconnectPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..8 {
            let nominal = policy.nominal_delay(attempt).as_secs_f64();
            let mut seen = Vec::new();
            for _ in 0..200 {
                let d = policy.delay(attempt, &mut rng).as_secs_f64();
                assert!(d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9, "{attempt}: {d}");
                seen.push(d);
            }
            if attempt == 0 {
                assert!(seen.iter().all(|&d| d == 0.0), "the first retry is immediate");
            } else {
                let min = seen.iter().copied().fold(f64::MAX, f64::min);
                let max = seen.iter().copied().fold(0.0, f64::max);
                assert!(max - min > nominal * 0.2, "jitter spreads the waits: {min}..{max}");
            }
        }
        let exact = ReconnectPolicy { jitter: 0.0, ..ReconnectPolicy::default() };
        assert_eq!(exact.delay(2, &mut rng), Duration::from_millis(1200));
    }

    #[test]
    fn pacer_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut pacer = SendPacer::new(100, 10, t0);
        assert_eq!((0..20).filter(|_| pacer.try_take(t0)).count(), 10);
        assert_eq!(pacer.next_at(), t0 + Duration::from_millis(10));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| pacer.try_take(t1)).count(), 10, "10 refilled in 100 ms");
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| pacer.try_take(t2)).count(), 10, "never more than the burst");
    }
}
