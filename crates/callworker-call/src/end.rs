//! Why a call ended (DESIGN.md §4) and why it was resumed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The one reason every ended call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The call program finished (tone pattern done, hang-up digit pressed).
    Completed,
    /// The native client sent `bye`, or the caller hung up.
    ClientHangup,
    /// The carrier ended the call (Twilio `stop`).
    RemoteHangup,
    /// Ended through the control API.
    ApiEnded,
    /// Reached the configured maximum call duration.
    MaxDuration,
    /// Orphaned: the client never came back within the resume window.
    ResumeWindowExpired,
    /// A Twilio call could not be redirected to a live worker.
    RescueFailed,
    /// The checkpoint failed its checksum or could not be decoded.
    CheckpointCorrupt,
    /// No worker can read the checkpoint's format.
    VersionIncompatible,
    /// The state store could not be reached within the budget.
    StoreUnavailable,
    /// The memory governor had to end the call as a last resort.
    ShedMemory,
    /// A draining worker could not hand the call off in time.
    DrainTimeout,
    /// Anything else; always logged with detail.
    InternalError,
    /// Handed to another party: by a `transfer` action, or by the voice agent (the target is
    /// in the timeline). Appended: variants are positional in checkpoints.
    Transferred,
    /// The voice agent could not be reached (reconnect attempts spent) and the call had no
    /// fallback program.
    AgentUnavailable,
}

impl EndReason {
    pub const ALL: [EndReason; 15] = [
        EndReason::Completed,
        EndReason::ClientHangup,
        EndReason::RemoteHangup,
        EndReason::ApiEnded,
        EndReason::MaxDuration,
        EndReason::ResumeWindowExpired,
        EndReason::RescueFailed,
        EndReason::CheckpointCorrupt,
        EndReason::VersionIncompatible,
        EndReason::StoreUnavailable,
        EndReason::ShedMemory,
        EndReason::DrainTimeout,
        EndReason::InternalError,
        EndReason::Transferred,
        EndReason::AgentUnavailable,
    ];

    /// The snake_case name used on the wire, in metrics and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::ClientHangup => "client_hangup",
            EndReason::RemoteHangup => "remote_hangup",
            EndReason::ApiEnded => "api_ended",
            EndReason::MaxDuration => "max_duration",
            EndReason::ResumeWindowExpired => "resume_window_expired",
            EndReason::RescueFailed => "rescue_failed",
            EndReason::CheckpointCorrupt => "checkpoint_corrupt",
            EndReason::VersionIncompatible => "version_incompatible",
            EndReason::StoreUnavailable => "store_unavailable",
            EndReason::ShedMemory => "shed_memory",
            EndReason::DrainTimeout => "drain_timeout",
            EndReason::InternalError => "internal_error",
            EndReason::Transferred => "transferred",
            EndReason::AgentUnavailable => "agent_unavailable",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<EndReason> {
        EndReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this end is one an operator should be alerted about (the caller did not
    /// choose it and the program did not finish).
    pub fn is_abnormal(self) -> bool {
        !matches!(
            self,
            EndReason::Completed
                | EndReason::ClientHangup
                | EndReason::RemoteHangup
                | EndReason::ApiEnded
                | EndReason::MaxDuration
                | EndReason::Transferred
        )
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call moved to another session or worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeCause {
    /// The previous worker died or lost its connection.
    WorkerLost,
    /// The memory governor migrated the call.
    MigratedMemory,
    /// A draining worker handed the call off.
    MigratedDrain,
}

impl ResumeCause {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeCause::WorkerLost => "worker_lost",
            ResumeCause::MigratedMemory => "migrated_memory",
            ResumeCause::MigratedDrain => "migrated_drain",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_round_trip_through_their_names() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(EndReason::parse("nope"), None);
    }
}
