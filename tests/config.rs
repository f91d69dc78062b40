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
