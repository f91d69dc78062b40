//! Table-driven tests over real-shaped files in `tests/fixtures/{v1,v2}/`.

use std::fs;
use std::path::{Path, PathBuf};

use callworker_governor::cgroup::{v1, v2};
use callworker_governor::{
    CgroupMemory, CgroupVersion, MemoryEvents, OomControl, Pressure, SignalError, find_memory_cgroup,
    parse_pressure, read_sample,
};

const MIB: u64 = 1 << 20;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Outcome expected from `find_memory_cgroup` on a fixture pair.
enum Expect {
    Found(CgroupVersion, &'static str),
    NotMounted(CgroupVersion),
}

#[test]
fn discovery_from_proc_files() {
    use CgroupVersion::{V1, V2};
    use Expect::*;
    let table: &[(&str, Expect)] = &[
        // v2, Kubernetes with a cgroup namespace: `0::/`, cgroup2 at /sys/fs/cgroup, root `/`.
        ("v2/k8s-cgroupns", Found(V2, "/sys/fs/cgroup")),
        // v2, no cgroup namespace: the mount root is the container's own cgroup path.
        ("v2/k8s-hostns", Found(V2, "/sys/fs/cgroup")),
        // v2, `0::/` but the mount root is `/kubepods/…`: the files disagree; the fallback
        // takes the mount whose root ends with the path.
        ("v2/k8s-root-mismatch", Found(V2, "/sys/fs/cgroup")),
        // v2 host: a systemd user service deep in the tree.
        (
            "v2/host-systemd",
            Found(
                V2,
                "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/callworker.service",
            ),
        ),
        // `\040` in the mount point, a literal space in the cgroup name.
        ("v2/escaped", Found(V2, "/run/my cgroups/system.slice/call worker.service")),
        // Mount root outside the cgroup namespace (`/../../..`): our directory is unknown.
        ("v2/outside-namespace", NotMounted(V2)),
        // v1 Docker without a cgroup namespace: `7:memory:/docker/<id>`, root `/docker/<id>`.
        ("v1/docker", Found(V1, "/sys/fs/cgroup/memory")),
        // v1 Kubernetes: same shape with /kubepods/burstable/pod…/<id>.
        ("v1/k8s", Found(V1, "/sys/fs/cgroup/memory")),
        // v1 Kubernetes inside Docker (kind): the mount root has the node's /docker/<id> prefix.
        ("v1/k8s-in-docker", Found(V1, "/sys/fs/cgroup/memory")),
        // This project's development machine: hybrid, memory on v1, the process in a child cgroup.
        (
            "v1/host-this-machine",
            Found(V1, "/sys/fs/cgroup/memory/process_api/40273dc159383ae341c9481e0cb169b4"),
        ),
        // v1 host under systemd (hybrid with /sys/fs/cgroup/unified): v1 memory wins.
        ("v1/host-systemd", Found(V1, "/sys/fs/cgroup/memory/system.slice/callworker.service")),
        // The memory controller is used but no cgroup filesystem is mounted.
        ("v1/no-memory-mount", NotMounted(V1)),
        // Memory controller disabled on a hybrid host: only the unified line remains, and
        // `discover` later finds no memory.current there.
        ("v1/no-memory-controller", Found(V2, "/sys/fs/cgroup/unified/system.slice/callworker.service")),
    ];
    for (dir, expect) in table {
        let got = find_memory_cgroup(
            &read(&format!("{dir}/proc_self_cgroup")),
            &read(&format!("{dir}/proc_self_mountinfo")),
        );
        match (expect, &got) {
            (Found(version, path), Ok(Some(found))) => {
                assert_eq!(found, &CgroupMemory { version: *version, dir: PathBuf::from(path) }, "{dir}")
            }
            (NotMounted(version), Err(SignalError::NotMounted { version: got_version, .. })) => {
                assert_eq!(got_version, version, "{dir}")
            }
            _ => panic!("{dir}: unexpected {got:?}"),
        }
    }
}

#[test]
fn discovery_without_a_memory_cgroup() {
    // No cgroup support at all, or v1 without the memory controller and no unified line.
    for proc_self_cgroup in ["", "\n", "3:cpu,cpuacct:/\n2:pids:/\n1:name=systemd:/\n"] {
        let mountinfo = read("v1/host-systemd/proc_self_mountinfo");
        assert!(matches!(find_memory_cgroup(proc_self_cgroup, &mountinfo), Ok(None)), "{proc_self_cgroup:?}");
    }
    // The unified line without any cgroup2 mount: in a cgroup that no mount shows.
    let got = find_memory_cgroup("0::/user.slice\n", "");
    assert!(matches!(got, Err(SignalError::NotMounted { version: CgroupVersion::V2, .. })), "{got:?}");
    let message = got.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("/user.slice") && message.contains("cgroup v2"), "{message}");
}

#[test]
fn v2_file_parsers() {
    let c = "v2/files/container";
    assert_eq!(v2::parse_max(&read(&format!("{c}/memory.max"))), Ok(Some(512 * MIB)));
    assert_eq!(v2::parse_max(&read(&format!("{c}/memory.high"))), Ok(None));
    assert_eq!(v2::parse_current(&read(&format!("{c}/memory.current"))), Ok(163_078_144));
    let stat = v2::parse_stat(&read(&format!("{c}/memory.stat"))).expect("container memory.stat");
    assert_eq!(stat.inactive_file_bytes, 33_701_888);
    assert_eq!(stat.active_file_bytes, Some(12_087_296));
    assert_eq!(stat.anon_bytes, Some(110_858_240));
    assert_eq!(stat.file_bytes, Some(45_789_184));
    assert_eq!(stat.hierarchical_limit_raw, None);
    assert_eq!(
        v2::parse_events(&read(&format!("{c}/memory.events"))),
        Ok(MemoryEvents { low: 0, high: 0, max: 17, oom: 2, oom_kill: 1 })
    );
}

#[test]
fn v1_file_parsers() {
    let table: &[(&str, Option<u64>, u64)] = &[
        ("v1/files/limited", Some(512 * MIB), 50_331_648),
        ("v1/files/unlimited", None, 68_968_448),
        ("v1/files/flat", None, 29_360_128),
        ("v1/files/oom-killed", Some(256 * MIB), 655_360),
    ];
    for (dir, limit, inactive_file) in table {
        assert_eq!(
            v1::parse_limit(&read(&format!("{dir}/memory.limit_in_bytes")), None),
            Ok(*limit),
            "{dir}"
        );
        let stat = v1::parse_stat(&read(&format!("{dir}/memory.stat"))).expect(dir);
        assert_eq!(stat.inactive_file_bytes, *inactive_file, "{dir}");
    }
    let limited = v1::parse_stat(&read("v1/files/limited/memory.stat")).expect("limited");
    assert_eq!(limited.anon_bytes, Some(125_829_120));
    assert_eq!(limited.file_bytes, Some(67_108_864));
    assert_eq!(limited.hierarchical_limit_raw, Some(512 * MIB));
    // The v1 "unlimited" sentinel as this machine prints it.
    let unlimited = v1::parse_stat(&read("v1/files/unlimited/memory.stat")).expect("unlimited");
    assert_eq!(unlimited.hierarchical_limit_raw, Some(9_223_372_036_854_771_712));
    assert_eq!(v1::limit_from_raw(9_223_372_036_854_771_712, None), None);
    assert_eq!(
        v1::parse_oom_control(&read("v1/files/oom-killed/memory.oom_control")),
        Ok(OomControl { oom_kill_disable: false, under_oom: true, oom_kill: 3 })
    );
    // Pre-4.13 kernels have no oom_kill line.
    assert_eq!(v1::parse_oom_control(&read("v1/files/flat/memory.oom_control")).map(|o| o.oom_kill), Ok(0));
}

#[test]
fn psi_files() {
    assert_eq!(parse_pressure(&read("v1/proc_pressure_memory")), Ok(Pressure::default()));
    assert_eq!(
        parse_pressure(&read("v2/proc_pressure_memory_busy")),
        Ok(Pressure {
            some_avg10_pct: 12.47,
            some_avg60_pct: 8.02,
            some_avg300_pct: 2.31,
            some_total_us: 912_345_678,
            full_avg10_pct: 4.10,
            full_avg60_pct: 2.88,
            full_avg300_pct: 0.75,
            full_total_us: 401_234_567,
        })
    );
    let cgroup = parse_pressure(&read("v2/files/container/memory.pressure")).expect("cgroup PSI");
    assert_eq!((cgroup.some_avg10_pct, cgroup.full_avg10_pct), (1.53, 0.91));
}

/// Expected fields of a sample read from a fixture cgroup directory.
struct SampleCase {
    dir: &'static str,
    version: CgroupVersion,
    limit_bytes: Option<u64>,
    high_bytes: Option<u64>,
    usage_bytes: u64,
    working_set_bytes: u64,
    oom_kill_count: u64,
    has_pressure: bool,
}

#[test]
fn samples_from_fixture_directories() {
    use CgroupVersion::{V1, V2};
    let table = [
        SampleCase {
            dir: "v2/files/container",
            version: V2,
            limit_bytes: Some(512 * MIB),
            high_bytes: None,
            usage_bytes: 163_078_144,
            working_set_bytes: 163_078_144 - 33_701_888,
            oom_kill_count: 1,
            has_pressure: true,
        },
        // The service says `max`; the slice above it has the limit and `memory.high`.
        // inactive_file exceeds usage here: the working set saturates at 0.
        SampleCase {
            dir: "v2/files/host/user.slice/callworker.service",
            version: V2,
            limit_bytes: Some(4096 * MIB),
            high_bytes: Some(3072 * MIB),
            usage_bytes: 50 * MIB,
            working_set_bytes: 0,
            oom_kill_count: 0,
            has_pressure: false,
        },
        SampleCase {
            dir: "v1/files/limited",
            version: V1,
            limit_bytes: Some(512 * MIB),
            high_bytes: None,
            usage_bytes: 192 * MIB,
            working_set_bytes: 192 * MIB - 48 * MIB,
            oom_kill_count: 0,
            has_pressure: false,
        },
        // Own limit unlimited, an ancestor's applies through hierarchical_memory_limit.
        SampleCase {
            dir: "v1/files/flat",
            version: V1,
            limit_bytes: Some(2048 * MIB),
            high_bytes: None,
            usage_bytes: 70 * MIB,
            working_set_bytes: 70 * MIB - 28 * MIB,
            oom_kill_count: 0,
            has_pressure: false,
        },
        SampleCase {
            dir: "v1/files/oom-killed",
            version: V1,
            limit_bytes: Some(256 * MIB),
            high_bytes: None,
            usage_bytes: 268_304_384,
            working_set_bytes: 268_304_384 - 655_360,
            oom_kill_count: 3,
            has_pressure: false,
        },
    ];
    for case in &table {
        let cg = CgroupMemory { version: case.version, dir: fixture(case.dir) };
        let sample = read_sample(&cg).unwrap_or_else(|e| panic!("{}: {e}", case.dir));
        assert_eq!(sample.version, case.version, "{}", case.dir);
        assert_eq!(sample.limit_bytes, case.limit_bytes, "{}", case.dir);
        assert_eq!(sample.high_bytes, case.high_bytes, "{}", case.dir);
        assert_eq!(sample.usage_bytes, case.usage_bytes, "{}", case.dir);
        assert_eq!(sample.working_set_bytes, case.working_set_bytes, "{}", case.dir);
        assert_eq!(sample.oom_kill_count, case.oom_kill_count, "{}", case.dir);
        assert_eq!(sample.pressure.is_some(), case.has_pressure, "{}", case.dir);
        assert_eq!(sample.events.is_some(), case.version == V2, "{}", case.dir);
        assert_eq!(sample.oom_control.is_some(), case.version == V1, "{}", case.dir);
    }

    // The unlimited v1 cgroup copied from this machine: no limit, so only a configured one applies.
    let cg = CgroupMemory { version: V1, dir: fixture("v1/files/unlimited") };
    let sample = read_sample(&cg).expect("unlimited v1 sample");
    assert_eq!(sample.limit_bytes, None);
    assert_eq!(sample.effective_limit_bytes(None), None);
    assert_eq!(sample.effective_limit_bytes(Some(1024 * MIB)), Some(1024 * MIB));
    assert!(sample.working_set_bytes <= sample.usage_bytes);
}

#[test]
fn read_errors_name_the_file() {
    // A v1 directory read as v2: memory.current is missing.
    let cg = CgroupMemory { version: CgroupVersion::V2, dir: fixture("v1/files/limited") };
    let err = read_sample(&cg).expect_err("v1 files are not v2 files");
    assert!(matches!(err, SignalError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("v1/files/limited/memory.current"), "{err}");

    // Read as v1, a v2 directory lacks memory.usage_in_bytes.
    let cg = CgroupMemory { version: CgroupVersion::V1, dir: fixture("v2/files/container") };
    let err = read_sample(&cg).expect_err("v2 files are not v1 files");
    assert!(err.to_string().contains("memory.usage_in_bytes"), "{err}");

    // A file that is there but malformed: the parse error names it and quotes the text.
    let cg = CgroupMemory { version: CgroupVersion::V2, dir: fixture("v2/files/broken") };
    let err = read_sample(&cg).expect_err("memory.current holds a word");
    assert!(matches!(err, SignalError::Parse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("broken/memory.current") && message.contains("163078144 bytes"), "{message}");
}

#[test]
fn signal_types_are_serde() {
    fn serde_both_ways<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    serde_both_ways::<callworker_governor::MemorySample>();
    serde_both_ways::<CgroupMemory>();
}
