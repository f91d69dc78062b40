//! The dependency rules of ARCHITECTURE.md ("Dependency rules"), checked against what cargo
//! actually resolves (`cargo metadata`) and against the manifests and sources themselves.
//!
//! Each rule is one test, so a failure names the rule it broke; every assertion message
//! names the crate (or file) that broke it. These tests start no worker and need no
//! network: `cargo metadata` reads the workspace and the local registry cache.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

const PROTOCOL: &str = "callworker-protocol";
const CALL: &str = "callworker-call";
const STORE: &str = "callworker-store";
const SERVER: &str = "callworker-server";
const TESTKIT: &str = "callworker-testkit";

/// Runtime, storage and HTTP crates the sans-IO crates must never pull in, directly or
/// through another normal dependency.
const IO_CRATES: &[&str] = &["tokio", "redis", "axum", "hyper", "tokio-tungstenite", "reqwest"];
/// Crates that make a crate an HTTP server; only the worker may know them.
const HTTP_SERVER_CRATES: &[&str] = &["axum", "hyper", "tower-http"];

/// The workspace root: this package lives in `<root>/tests`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the workspace root exists")
}

/// `cargo metadata --format-version 1` of the workspace, run once per test binary.
fn metadata() -> &'static Value {
    static METADATA: OnceLock<Value> = OnceLock::new();
    METADATA.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1"])
            .current_dir(workspace_root())
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
    })
}

/// A package of the workspace, as cargo sees it.
struct Member<'a> {
    name: &'a str,
    manifest_path: PathBuf,
    /// Direct dependencies as declared: (package name, kind: "normal" | "dev" | "build").
    deps: Vec<(&'a str, &'a str)>,
    package: &'a Value,
}

fn members() -> Vec<Member<'static>> {
    let meta = metadata();
    let ids: HashSet<&str> =
        meta["workspace_members"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let members: Vec<Member> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| ids.contains(p["id"].as_str().unwrap()))
        .map(|p| Member {
            name: p["name"].as_str().unwrap(),
            manifest_path: PathBuf::from(p["manifest_path"].as_str().unwrap()),
            deps: p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (d["name"].as_str().unwrap(), d["kind"].as_str().unwrap_or("normal")))
                .collect(),
            package: p,
        })
        .collect();
    for expected in [PROTOCOL, CALL, STORE, SERVER, TESTKIT] {
        assert!(members.iter().any(|m| m.name == expected), "workspace member {expected} is missing");
    }
    members
}

fn member<'a>(members: &'a [Member<'static>], name: &str) -> &'a Member<'static> {
    members.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no workspace member {name}"))
}

fn is_workspace_crate(name: &str, members: &[Member]) -> bool {
    members.iter().any(|m| m.name == name)
}

#[test]
fn protocol_depends_on_no_workspace_crate() {
    let members = members();
    let protocol = member(&members, PROTOCOL);
    let bad: Vec<_> = protocol
        .deps
        .iter()
        .filter(|(name, _)| is_workspace_crate(name, &members))
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect();
    assert!(
        bad.is_empty(),
        "rule \"protocol depends on no workspace crate\" broken by {PROTOCOL}: it depends on {bad:?}"
    );
}

#[test]
fn call_depends_only_on_protocol_among_workspace_crates() {
    let members = members();
    let call = member(&members, CALL);
    let bad: Vec<_> = call
        .deps
        .iter()
        .filter(|(name, _)| is_workspace_crate(name, &members) && *name != PROTOCOL)
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect();
    assert!(
        bad.is_empty(),
        "rule \"call depends only on protocol among workspace crates\" broken by {CALL}: it depends on {bad:?}"
    );
}

/// Every package reachable from `root` through normal (non-dev, non-build) dependency
/// edges of the resolved graph, with the path that reaches it.
fn normal_closure(root: &str) -> HashMap<String, Vec<String>> {
    let meta = metadata();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("cargo metadata has a resolve graph")
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = names
        .iter()
        .find(|(id, name)| **name == root && nodes.contains_key(*id))
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{root} is not in the resolve graph"));
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut stack = vec![(root_id, vec![root.to_owned()])];
    let mut visited = HashSet::new();
    while let Some((id, path)) = stack.pop() {
        if !visited.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            if !normal {
                continue;
            }
            let dep_id = dep["pkg"].as_str().unwrap();
            let name = names[dep_id].to_owned();
            let mut dep_path = path.clone();
            dep_path.push(name.clone());
            seen.entry(name).or_insert_with(|| dep_path.clone());
            stack.push((dep_id, dep_path));
        }
    }
    seen
}

#[test]
fn protocol_and_call_never_pull_in_io_crates() {
    for root in [PROTOCOL, CALL] {
        let closure = normal_closure(root);
        for banned in IO_CRATES {
            if let Some(path) = closure.get(*banned) {
                panic!(
                    "rule \"protocol and call never depend on tokio/redis/axum/hyper/tokio-tungstenite/reqwest\" \
                     broken by {root}: it reaches {banned} through {}",
                    path.join(" -> ")
                );
            }
        }
    }
}

#[test]
fn only_store_names_redis() {
    for m in members() {
        if m.name == STORE {
            continue;
        }
        let bad: Vec<_> = m.deps.iter().filter(|(name, _)| *name == "redis").collect();
        assert!(
            bad.is_empty(),
            "rule \"only {STORE} names redis\" broken by {}: it depends on {bad:?}",
            m.name
        );
    }
}

#[test]
fn only_server_knows_axum_and_http_servers() {
    for m in members() {
        if m.name == SERVER {
            continue;
        }
        let bad: Vec<_> = m.deps.iter().filter(|(name, _)| HTTP_SERVER_CRATES.contains(name)).collect();
        assert!(
            bad.is_empty(),
            "rule \"only {SERVER} depends on axum/hyper/tower-http\" broken by {}: it depends on {bad:?}",
            m.name
        );
    }
}

#[test]
fn testkit_is_only_a_dev_dependency() {
    // Every package cargo knows, not just members: nothing may ship with the testkit in it.
    for p in metadata()["packages"].as_array().unwrap() {
        for d in p["dependencies"].as_array().unwrap() {
            let kind = d["kind"].as_str().unwrap_or("normal");
            assert!(
                d["name"] != TESTKIT || kind == "dev",
                "rule \"{TESTKIT} appears only in dev-dependencies\" broken by {}: it is a {kind} dependency",
                p["name"].as_str().unwrap()
            );
        }
    }
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_binaries_install_a_global_allocator() {
    let root = workspace_root();
    let members = members();
    let bin_sources: BTreeSet<PathBuf> = members
        .iter()
        .flat_map(|m| m.package["targets"].as_array().unwrap())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| PathBuf::from(t["src_path"].as_str().unwrap()).canonicalize().unwrap())
        .collect();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        rust_files(&entry.unwrap().path().join("src"), &mut files);
    }
    rust_files(&root.join("benches"), &mut files);
    assert!(!files.is_empty(), "found no Rust sources under crates/*/src and benches/");
    let mut hits = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // The attribute itself, not a mention of it in a comment.
        if text.lines().any(|l| l.trim_start().starts_with("#[global_allocator]")) {
            hits += 1;
            let canonical = file.canonicalize().unwrap();
            assert!(
                bin_sources.contains(&canonical),
                "rule \"only binaries install #[global_allocator]\" broken by {}: it is not the main file of a bin target",
                file.strip_prefix(&root).unwrap_or(&file).display()
            );
        }
    }
    // The worker binary does install one (jemalloc feeds the memory governor); if this
    // scan found none, it is not looking where the sources are.
    assert!(hits >= 1, "expected the worker's main.rs to install #[global_allocator]");
}

#[test]
fn every_member_takes_dependency_versions_from_the_workspace() {
    for m in members() {
        let text = std::fs::read_to_string(&m.manifest_path).unwrap();
        let manifest: toml::Table = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", m.manifest_path.display()));
        // Plain sections and `[target.'cfg(..)'.*dependencies]` alike.
        let mut sections: Vec<(String, &toml::Table)> = Vec::new();
        for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(t) = manifest.get(key).and_then(toml::Value::as_table) {
                sections.push((key.to_owned(), t));
            }
        }
        if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
            for (cfg, table) in targets {
                for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
                    if let Some(t) = table.get(key).and_then(toml::Value::as_table) {
                        sections.push((format!("target.{cfg}.{key}"), t));
                    }
                }
            }
        }
        for (section, deps) in sections {
            for (dep, spec) in deps {
                let inherited = spec
                    .as_table()
                    .and_then(|t| t.get("workspace"))
                    .and_then(toml::Value::as_bool)
                    .unwrap_or(false);
                assert!(
                    inherited,
                    "rule \"every version once, in [workspace.dependencies]\" broken by {}: [{section}] {dep} does not use `workspace = true`",
                    m.name
                );
            }
        }
    }
}
