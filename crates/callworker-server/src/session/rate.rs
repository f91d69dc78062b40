//! Per-connection inbound rate bounds: a token bucket for messages and one for bytes, each
//! refilled continuously at its per-second rate with one second of burst.

use std::time::Instant;

#[derive(Debug, Clone)]
struct Bucket {
    rate_per_s: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate_per_s: u32) -> Bucket {
        Bucket { rate_per_s: f64::from(rate_per_s), tokens: f64::from(rate_per_s) }
    }

    fn refill(&mut self, elapsed_s: f64) {
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.rate_per_s);
    }
}

/// Which bound was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateExceeded {
    Messages,
    Bytes,
}

/// Message and byte rate limiter for one connection.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    messages: Bucket,
    bytes: Bucket,
    last: Instant,
}

impl RateLimiter {
    pub fn new(messages_per_s: u32, bytes_per_s: u32, now: Instant) -> RateLimiter {
        RateLimiter { messages: Bucket::new(messages_per_s), bytes: Bucket::new(bytes_per_s), last: now }
    }

    /// Charges one message of `bytes` at `now`.
    pub fn charge(&mut self, bytes: usize, now: Instant) -> Result<(), RateExceeded> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.messages.refill(elapsed);
        self.bytes.refill(elapsed);
        self.messages.tokens -= 1.0;
        self.bytes.tokens -= bytes as f64;
        if self.messages.tokens < 0.0 {
            return Err(RateExceeded::Messages);
        }
        if self.bytes.tokens < 0.0 {
            return Err(RateExceeded::Bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_steady_stream_within_the_rate_passes_and_a_flood_is_caught() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(100, 1_000_000, t0);
        // 50 messages/s for 10 s (Twilio's media rate) never trips a 100/s bound.
        for i in 0..500u64 {
            assert_eq!(r.charge(400, t0 + Duration::from_millis(i * 20)), Ok(()));
        }
        // 200 messages in the same instant exceed the 100-message burst.
        let t1 = t0 + Duration::from_secs(20);
        let flood = (0..200).map(|_| r.charge(10, t1)).find(|x| x.is_err());
        assert_eq!(flood, Some(Err(RateExceeded::Messages)));
    }

    #[test]
    fn byte_rate_is_bounded_separately() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1_000, 10_000, t0);
        assert_eq!(r.charge(9_000, t0), Ok(()));
        assert_eq!(r.charge(2_000, t0), Err(RateExceeded::Bytes));
    }
}
