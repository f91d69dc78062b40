//! Audio pacing and test signals.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};

/// Duration of one media frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// A real-time 20 ms clock. Ticks are scheduled from the start instant, never from when the
/// previous tick was handled, so a late tick is reported as late (no coordinated omission):
/// [`FrameClock::tick`] returns the instant the frame *should* have been sent.
#[derive(Debug)]
pub struct FrameClock {
    interval: Interval,
}

impl FrameClock {
    pub fn start() -> FrameClock {
        FrameClock::start_at(Instant::now())
    }

    pub fn start_at(at: Instant) -> FrameClock {
        let mut interval = interval_at(at, FRAME);
        // Late ticks fire back to back until caught up: every frame is sent, late ones are
        // measured as late.
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        FrameClock { interval }
    }

    /// Waits for the next frame slot and returns when it was due.
    pub async fn tick(&mut self) -> Instant {
        self.interval.tick().await
    }
}

/// Deterministic pseudo-random μ-law bytes (xorshift), covering every byte value including
/// 0x7F and 0xFF, so byte-exact echo is tested on the awkward codes too.
pub fn test_pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
