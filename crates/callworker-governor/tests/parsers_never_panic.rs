//! Property tests: every parser returns (Ok or Err) on any input, never panics, and the
//! arithmetic keeps its invariants.

use callworker_governor::cgroup::{v1, v2};
use callworker_governor::{effective_limit_bytes, find_memory_cgroup, parse_pressure, working_set_bytes};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Text that looks like cgroup and proc files: digits, keys, separators, escapes, and a
/// sprinkle of arbitrary characters, so the parsers' deeper branches are reached.
fn file_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("max".to_owned()),
            Just("-".to_owned()),
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            Just(":".to_owned()),
            Just("/".to_owned()),
            Just("=".to_owned()),
            Just("\\040".to_owned()),
            Just("0::".to_owned()),
            Just("memory".to_owned()),
            Just("cgroup2".to_owned()),
            Just("cgroup".to_owned()),
            Just("inactive_file".to_owned()),
            Just("total_inactive_file".to_owned()),
            Just("oom_kill".to_owned()),
            Just("some avg10=".to_owned()),
            Just("full avg10=".to_owned()),
            "[0-9]{1,25}",
            "[0-9]{1,3}\\.[0-9]{2}",
            "\\PC{0,8}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![file_like(), "\\PC{0,200}", any::<String>()]
}

proptest! {
    // Failing cases are kept next to this file (`parsers_never_panic.regressions`) and
    // replayed first on the next run.
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn file_parsers_never_panic(text in any_text(), host_ram in any::<Option<u64>>()) {
        let _ = v2::parse_max(&text);
        let _ = v2::parse_current(&text);
        let _ = v2::parse_stat(&text);
        let _ = v2::parse_events(&text);
        let _ = v1::parse_limit(&text, host_ram);
        let _ = v1::parse_usage(&text);
        let _ = v1::parse_stat(&text);
        let _ = v1::parse_oom_control(&text);
        let _ = parse_pressure(&text);
    }

    #[test]
    fn discovery_never_panics(cgroup in any_text(), mountinfo in any_text()) {
        let _ = find_memory_cgroup(&cgroup, &mountinfo);
    }

    /// Whatever the inputs, a resolved directory is absolute and never climbs with `..`.
    #[test]
    fn resolved_dirs_stay_inside_their_mount(
        path in "(/[a-z.]{1,6}){0,4}",
        root in "(/[a-z.]{1,6}){0,4}",
        mount_point in "/[a-z]{1,6}",
    ) {
        let path = if path.is_empty() { "/".to_owned() } else { path };
        let root = if root.is_empty() { "/".to_owned() } else { root };
        let mountinfo = format!("31 22 0:27 {root} {mount_point} rw - cgroup2 cgroup2 rw\n");
        if let Ok(Some(found)) = find_memory_cgroup(&format!("0::{path}\n"), &mountinfo) {
            prop_assert!(found.dir.is_absolute());
            prop_assert!(found.dir.starts_with(&mount_point));
            prop_assert!(!found.dir.components().any(|c| c == std::path::Component::ParentDir));
        }
    }

    #[test]
    fn working_set_never_exceeds_usage(usage in any::<u64>(), inactive in any::<u64>()) {
        prop_assert!(working_set_bytes(usage, inactive) <= usage);
    }

    #[test]
    fn effective_limit_is_a_lower_bound_of_every_set_limit(
        cgroup in any::<Option<u64>>(), high in any::<Option<u64>>(), configured in any::<Option<u64>>(),
    ) {
        let effective = effective_limit_bytes(cgroup, high, configured);
        prop_assert_eq!(effective.is_none(), cgroup.is_none() && high.is_none() && configured.is_none());
        for limit in [cgroup, high, configured].into_iter().flatten() {
            prop_assert!(effective.is_some_and(|e| e <= limit));
        }
        prop_assert!(effective.is_none_or(|e| [cgroup, high, configured].contains(&Some(e))));
    }

    /// Any value a v1 limit file can hold is either a real limit below 2^62 or unlimited.
    #[test]
    fn v1_limits_below_the_sentinel_are_kept(raw in any::<u64>()) {
        let limit = v1::limit_from_raw(raw, None);
        prop_assert_eq!(limit.is_some(), raw < v1::UNLIMITED_BYTES_MIN);
    }
}
