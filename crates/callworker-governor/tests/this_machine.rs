//! Runs discovery and one sample on the machine the tests run on, and prints what it
//! found. Run with `-- --nocapture` to see it. Never fails for lack of a memory cgroup
//! (a laptop, macOS, a sandbox without /sys); does fail if one is found and cannot be read,
//! or reads as empty.

use callworker_governor::{SignalError, discover, read_sample, read_system_pressure};

#[test]
fn discover_and_sample_this_machine() {
    match discover() {
        Ok(Some(cg)) => {
            println!("this machine: memory cgroup found: {} at {}", cg.version, cg.dir.display());
            let sample = read_sample(&cg).unwrap_or_else(|e| panic!("found {cg:?} but cannot read it: {e}"));
            println!("this machine: sample = {sample:#?}");
            println!(
                "this machine: usage {} MiB, working set {} MiB, limit {}, high {}, effective (no config) {}",
                sample.usage_bytes >> 20,
                sample.working_set_bytes >> 20,
                mib_or_unlimited(sample.limit_bytes),
                mib_or_unlimited(sample.high_bytes),
                mib_or_unlimited(sample.effective_limit_bytes(None)),
            );
            assert!(sample.usage_bytes > 0, "a cgroup holding this test process must charge some memory");
            assert!(sample.working_set_bytes <= sample.usage_bytes);
        }
        Ok(None) => {
            println!("this machine: no memory cgroup (no /proc/self/cgroup, or no memory controller)")
        }
        Err(e @ SignalError::NotMounted { .. }) => {
            println!("this machine: in a memory cgroup that no mount shows: {e}")
        }
        Err(e) => panic!("this machine: discovery failed: {e}"),
    }
    match read_system_pressure() {
        Ok(Some(pressure)) => println!("this machine: /proc/pressure/memory = {pressure:?}"),
        Ok(None) => println!("this machine: no PSI (/proc/pressure/memory missing or psi=0)"),
        Err(e) => panic!("this machine: /proc/pressure/memory unreadable: {e}"),
    }
}

fn mib_or_unlimited(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unlimited".to_owned(), |b| format!("{} MiB", b >> 20))
}
