//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the same check the
//! cargo-fuzz target runs (the crates' `fuzzing` modules), on stable, so CI covers the corpora
//! without nightly. A panic in a check is a violated property; each test names every file
//! that broke one. A missing or empty corpus directory fails the test: a replay of nothing
//! must not pass. How to run the fuzzers and grow the corpora: `fuzz/README.md`.
#![allow(clippy::unwrap_used)]

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use callworker_call::{CallId, Epoch, TenantId};
use callworker_server::fuzzing as server_fuzzing;
use callworker_server::token::Tokens;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Every file of the target's corpus, sorted by name; panics if there is none.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus directory {} holds no file", dir.display());
    files
}

/// Runs `check` on every file of the target's corpus; fails naming each file that panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus(target);
    let failed: Vec<String> = files
        .iter()
        .filter(|(_, bytes)| panic::catch_unwind(AssertUnwindSafe(|| check(bytes))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files broke a property: {failed:#?}",
        failed.len(),
        files.len()
    );
    println!("{target}: replayed {} corpus files", files.len());
}

#[test]
fn twilio_message_corpus() {
    replay("twilio_message", callworker_protocol::fuzzing::twilio_message);
}

#[test]
fn native_frame_corpus() {
    replay("native_frame", callworker_protocol::fuzzing::native_frame);
}

#[test]
fn checkpoint_decode_corpus() {
    replay("checkpoint_decode", callworker_call::fuzzing::checkpoint_decode);
}

#[test]
fn resume_token_verify_corpus() {
    replay("resume_token_verify", server_fuzzing::resume_token_verify);
}

#[test]
fn twilio_signature_corpus() {
    replay("twilio_signature", callworker_protocol::fuzzing::twilio_signature);
}

/// The token corpus must hold a real token for the fuzzer to mutate (a corpus of strings
/// that never verify would never test the "accepted means issued" property).
#[test]
fn resume_token_corpus_holds_the_issued_token() {
    let tokens = Tokens::new(server_fuzzing::FUZZ_SECRET.to_vec(), server_fuzzing::FUZZ_TTL);
    let issued = tokens.issue(
        &CallId::parse(server_fuzzing::DEFAULT_CALL_ID).unwrap(),
        &TenantId::parse(server_fuzzing::DEFAULT_TENANT).unwrap(),
        Epoch(server_fuzzing::DEFAULT_EPOCH),
        server_fuzzing::FUZZ_NOW,
    );
    assert!(
        corpus("resume_token_verify").iter().any(|(_, bytes)| bytes == issued.as_bytes()),
        "no file in {} is the token the check issues ({issued})",
        corpus_dir("resume_token_verify").display()
    );
}
