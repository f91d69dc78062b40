//! An invalid configuration is reported in one line and the worker exits with code 64
//! before binding anything; a valid one passes `--check-config`.
#![allow(clippy::unwrap_used)]

use callworker_testkit::run_worker_command;

#[test]
fn invalid_configuration_exits_64_with_a_one_line_reason() {
    let (code, out) = run_worker_command(&["--check-config"], &[]).unwrap();
    assert_eq!(code, Some(0), "{out}");
    for (key, value, needle) in [
        ("CALLWORKER_LIMITS__CALLS_MAX", "0", "limits.calls_max"),
        ("CALLWORKER_SERVER__PUBLIC_URL", "ftp://x", "server.public_url"),
        ("CALLWORKER_NOPE__KEY", "1", "nope"),
    ] {
        let (code, out) = run_worker_command(&[], &[(key, value)]).unwrap();
        assert_eq!(code, Some(64), "{key}={value}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
        assert!(out.contains(needle), "{key}={value}: {out}");
    }
    let (code, out) = run_worker_command(&["--env", "no-such-env"], &[]).unwrap();
    assert_eq!(code, Some(64), "{out}");
}

/// The Kubernetes ConfigMap is generated from a copy of `config/default.toml` (kustomize
/// cannot read files outside its tree); the copy must not drift. `scripts/lint-deploy
/// --update` refreshes it.
#[test]
fn the_kubernetes_copy_of_the_default_config_is_identical() {
    let root = callworker_testkit::workspace_root();
    let original = std::fs::read(root.join("config/default.toml")).unwrap();
    let copy = std::fs::read(root.join("k8s/base/default.toml")).unwrap();
    assert!(
        original == copy,
        "k8s/base/default.toml differs from config/default.toml: run scripts/lint-deploy --update"
    );
}

/// IVR definitions are read and checked at start: a bad WAV prompt, a menu naming a prompt
/// that does not exist, or a default program naming an unknown definition stop the worker
/// with code 64 and one line naming the file; good files pass.
#[test]
fn bad_ivr_definitions_stop_the_worker_with_code_64() {
    let dir = std::env::temp_dir().join(format!("cw-ivr-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let menu = "start = \"m\"\n[prompts]\nhi = \"hi.wav\"\n[menus.m]\nprompt = [{ wav = \"hi\" }]\n";
    std::fs::write(dir.join("greeting.toml"), menu).unwrap();
    let env_dir = dir.to_str().unwrap();
    std::fs::write(dir.join("hi.wav"), b"RIFF\x04\x00\x00\x00WAVE").unwrap();
    let (code, out) = run_worker_command(&["--check-config"], &[("CALLWORKER_IVR__DIR", env_dir)]).unwrap();
    assert_eq!(code, Some(64), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    assert!(out.contains("greeting.toml") && out.contains("no data chunk"), "{out}");

    let wav = callworker_server::wav::encode(
        callworker_protocol::AudioFormat {
            encoding: callworker_protocol::Encoding::Pcmu,
            sample_rate_hz: 8_000,
        },
        &[0x55; 1_600],
    );
    std::fs::write(dir.join("hi.wav"), wav).unwrap();
    let (code, out) = run_worker_command(&["--check-config"], &[("CALLWORKER_IVR__DIR", env_dir)]).unwrap();
    assert_eq!(code, Some(0), "{out}");
    let program = ("CALLWORKER_CALLS__DEFAULT_PROGRAM", r#"{name = "ivr", params = {definition = "nope"}}"#);
    let (code, out) =
        run_worker_command(&["--check-config"], &[("CALLWORKER_IVR__DIR", env_dir), program]).unwrap();
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("calls.default_program") && out.contains("nope"), "{out}");
    std::fs::write(dir.join("other.toml"), "start = \"m\"\n[menus.m]\nprompt = [{ wav = \"missing\" }]\n")
        .unwrap();
    let (code, out) = run_worker_command(&["--check-config"], &[("CALLWORKER_IVR__DIR", env_dir)]).unwrap();
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("other.toml") && out.contains("no prompt named \"missing\""), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
