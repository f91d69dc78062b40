//! Admission: decided *before* a WebSocket upgrade or a call creation, so a worker that
//! cannot carry more calls says so with 503 + `Retry-After` instead of accepting and failing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use callworker_governor::Level;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorKind};
use crate::metrics as m;

/// Seconds a refused client is told to wait before retrying.
pub const RETRY_AFTER_S: u32 = 1;

/// Media-session slots and the draining flag.
#[derive(Debug)]
pub struct Admission {
    /// One permit per media session this worker may carry (`limits.calls_max`); a session
    /// holds its permit until it closes.
    sessions: Arc<Semaphore>,
    draining: AtomicBool,
    /// The memory governor's level ([`Level::number`]).
    memory_level: AtomicU8,
}

impl Admission {
    pub fn new(calls_max: usize) -> Admission {
        Admission {
            sessions: Arc::new(Semaphore::new(calls_max)),
            draining: AtomicBool::new(false),
            memory_level: AtomicU8::new(Level::Normal.number()),
        }
    }

    fn refused(reason: &'static str, message: &str) -> Error {
        metrics::counter!(m::ADMISSION_REFUSED, "reason" => reason).increment(1);
        Error::new(ErrorKind::Overloaded, reason, message).retry_after(RETRY_AFTER_S)
    }

    /// Whether new calls are admitted right now (`/readyz`), and why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        if self.sessions.available_permits() == 0 {
            return Err("at_capacity");
        }
        if !self.memory_level().admits_new_calls() {
            return Err("memory_pressure");
        }
        Ok(())
    }

    /// The memory governor's current level.
    pub fn memory_level(&self) -> Level {
        let n = self.memory_level.load(Ordering::Acquire);
        Level::ALL.into_iter().find(|l| l.number() == n).unwrap_or(Level::Normal)
    }

    /// Set by the memory governor.
    pub fn set_memory_level(&self, level: Level) {
        self.memory_level.store(level.number(), Ordering::Release);
    }

    /// Admits a new call (creation, not yet media).
    pub fn admit_call(&self) -> Result<(), Error> {
        self.check().map_err(|reason| Admission::refused(reason, "this worker is not admitting calls"))
    }

    /// Takes a media-session slot, held until the session ends.
    pub fn admit_session(&self) -> Result<OwnedSemaphorePermit, Error> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Admission::refused("draining", "this worker is draining"));
        }
        if !self.memory_level().admits_resumes() {
            return Err(Admission::refused("memory_pressure", "this worker is shedding memory"));
        }
        self.sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Admission::refused("at_capacity", "this worker carries its maximum number of calls"))
    }

    /// Stops admitting for good (shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
