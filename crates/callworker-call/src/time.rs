//! Time as the call sees it: wall-clock milliseconds since the Unix epoch, always passed in.
//!
//! Wall-clock (not monotonic) time is used because a call's deadlines are checkpointed and
//! read back by another worker on another host; safety never depends on it (fencing does).

use std::ops::Add;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn add_ms(self, ms: u64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(ms))
    }
}

impl Add<Duration> for UnixMillis {
    type Output = UnixMillis;
    fn add(self, d: Duration) -> UnixMillis {
        self.add_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
