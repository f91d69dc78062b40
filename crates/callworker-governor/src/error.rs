//! Errors of the signal layer: [`ParseError`] says what was wrong with a file's text,
//! [`SignalError`] adds which file (or which discovery step) it was.

use std::io;
use std::path::PathBuf;

use crate::cgroup::CgroupVersion;

/// Longest excerpt of offending input quoted in an error. Cgroup files are small, but a
/// corrupt or unexpected file must not turn into a multi-kilobyte log line.
pub(crate) const EXCERPT_CHARS_MAX: usize = 48;

/// What was wrong with the text of one cgroup or PSI file. Parsers are pure, so this does
/// not name the file; [`SignalError::Parse`] does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The file held nothing but whitespace.
    #[error("empty file")]
    Empty,
    /// A single-value file did not hold an unsigned integer (or `max` where allowed).
    #[error("expected an unsigned integer, found {found:?}")]
    NotAnInteger { found: String },
    /// A key the caller needs is absent.
    #[error("missing key {key:?}")]
    MissingKey { key: &'static str },
    /// A key is present but its value is not what the format promises.
    #[error("key {key:?} has bad value {found:?}")]
    BadValue { key: &'static str, found: String },
    /// None of the keys this file is known to hold appeared: probably the wrong file.
    #[error("none of the expected keys ({expected}) found")]
    NoKnownKeys { expected: &'static str },
}

/// Failure to read the memory signals: always names the file or the discovery step.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The file could not be read (missing, permission, I/O error, not UTF-8).
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was larger than [`crate::TEXT_BYTES_MAX`]; no cgroup or proc file we read
    /// is anywhere near that, so this is the wrong file.
    #[error("read {}: larger than {limit_bytes} bytes", path.display())]
    TooLarge { path: PathBuf, limit_bytes: u64 },
    /// The file was read but its text did not parse.
    #[error("parse {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    /// `/proc/self/cgroup` places this process in a memory cgroup (v1 `memory` line, or the
    /// v2 `0::` line), but no mount in `/proc/self/mountinfo` makes that cgroup visible:
    /// no cgroup filesystem is mounted, or only one showing a different part of the tree.
    #[error(
        "memory cgroup {} ({version}) is not visible under any cgroup mount in /proc/self/mountinfo",
        cgroup_path.display()
    )]
    NotMounted { version: CgroupVersion, cgroup_path: PathBuf },
}

/// `text` cut to [`EXCERPT_CHARS_MAX`] characters (on a char boundary), for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
