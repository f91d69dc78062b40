//! Which memory cgroup this process is in, and where its files are.
//!
//! [`find_memory_cgroup`] is a pure function of the text of `/proc/self/cgroup` and
//! `/proc/self/mountinfo`; the file formats of each cgroup version are parsed in [`v1`] and
//! [`v2`]. Nothing here assumes `/sys/fs/cgroup/memory.max` is ours: on a host, or in a
//! container without a cgroup namespace, the process sits deep in the tree, and reading the
//! root's files would measure the whole machine.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SignalError;

pub mod v1;
pub mod v2;

/// Which cgroup hierarchy holds the memory controller for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// Legacy hierarchies, one per controller group (`N:memory:/path`, mount type `cgroup`).
    V1,
    /// The unified hierarchy (`0::/path`, mount type `cgroup2`).
    V2,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "cgroup v1",
            CgroupVersion::V2 => "cgroup v2",
        })
    }
}

/// This process's memory cgroup: its version and the directory holding its `memory.*` files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMemory {
    pub version: CgroupVersion,
    /// Absolute path of the cgroup's directory in this mount namespace, e.g.
    /// `/sys/fs/cgroup` in a container with a cgroup namespace, or
    /// `/sys/fs/cgroup/memory/system.slice/callworker.service` on a v1 host.
    pub dir: PathBuf,
}

/// The keys of `memory.stat` the governor reads, named the same for both versions.
///
/// v1 values come from the hierarchical `total_*` keys when present (they include child
/// cgroups, as v2's keys always do), else from the plain keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryStat {
    /// Page cache not recently used: the kernel reclaims it first, so it is subtracted from
    /// usage to get the working set. v2 `inactive_file`, v1 `total_inactive_file`. Required.
    pub inactive_file_bytes: u64,
    /// Recently used page cache. v2 `active_file`, v1 `total_active_file`.
    pub active_file_bytes: Option<u64>,
    /// Anonymous memory (heap, stacks): the floor that only freeing or OOM removes without
    /// swap. v2 `anon`, v1 `total_rss` (anonymous and swap cache).
    pub anon_bytes: Option<u64>,
    /// All page cache. v2 `file`, v1 `total_cache`.
    pub file_bytes: Option<u64>,
    /// v1 only: `hierarchical_memory_limit`, the smallest `memory.limit_in_bytes` on the path
    /// from this cgroup to the root, exactly as read (the "unlimited" sentinel included;
    /// see [`v1::limit_from_raw`]). Always `None` for v2, where ancestors are read one by one.
    pub hierarchical_limit_raw: Option<u64>,
}

/// Find this process's memory cgroup from the text of `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
///
/// - A v1 line whose controller list contains `memory` wins: a controller is bound to one
///   hierarchy only, so on a hybrid host (v1 controllers plus a v2 mount at
///   `/sys/fs/cgroup/unified`, like this project's development machines) memory is v1.
/// - Otherwise the v2 line `0::/path` is used with a `cgroup2` mount. Whether the memory
///   controller is enabled there cannot be seen from these two files;
///   [`crate::discover`] checks that `memory.current` exists.
/// - The cgroup path is made relative to the mount's root (field 4 of mountinfo), because a
///   mount may show only part of the tree: a Docker container without a cgroup namespace
///   sees `4:memory:/docker/<id>` and a mount whose root is `/docker/<id>`, so its files
///   are at the mount point itself. When several mounts show the cgroup, the last one
///   listed wins, since a later mount on the same point hides an earlier one.
/// - Fallback, when no mount's root contains the path: the last candidate mount whose root
///   *ends with* the cgroup path. Both files are rendered relative to the reader's cgroup
///   namespace, so they should agree, but real hosts disagree: `0::/` next to a cgroup2
///   mount with root `/kubepods/…`, or nested containers (Kubernetes in Docker) showing
///   `4:memory:/kubepods/pod…/<id>` next to a mount root `/docker/<node>/kubepods/pod…/<id>`.
///   In both the mount shows this process's cgroup seen from an outer namespace, so its
///   files are at the mount point. Roots containing `..` (a mount showing an ancestor of
///   the namespace root) never match: the process's directory under them is unknown.
///
/// Returns `Ok(None)` when the process is in no memory cgroup (no v1 `memory` line and no
/// v2 line), and [`SignalError::NotMounted`] when it is in one that no mount shows.
/// Unparsable lines are skipped; this never panics.
pub fn find_memory_cgroup(
    proc_self_cgroup: &str,
    mountinfo: &str,
) -> Result<Option<CgroupMemory>, SignalError> {
    let Some((version, cgroup_path)) = memory_cgroup_path(proc_self_cgroup) else {
        return Ok(None);
    };
    let candidates: Vec<Mount> =
        mountinfo.lines().filter_map(Mount::parse).filter(|mount| mount.holds_memory(version)).collect();

    let resolved = candidates
        .iter()
        .rev()
        .find_map(|mount| relative_to_root(&cgroup_path, &mount.root).map(|rel| (mount, rel)))
        .map(|(mount, rel)| join_relative(&mount.mount_point, &rel));
    let fallback = || {
        candidates
            .iter()
            .rev()
            .find(|mount| root_ends_with(&mount.root, &cgroup_path))
            .map(|mount| mount.mount_point.clone())
    };
    match resolved.or_else(fallback) {
        Some(dir) => Ok(Some(CgroupMemory { version, dir })),
        None => Err(SignalError::NotMounted { version, cgroup_path }),
    }
}

/// The memory cgroup's version and path from `/proc/self/cgroup`, v1 `memory` first.
fn memory_cgroup_path(proc_self_cgroup: &str) -> Option<(CgroupVersion, PathBuf)> {
    let mut unified = None;
    for line in proc_self_cgroup.lines() {
        // `hierarchy-id:controller-list:path`; the path may itself contain ':' (systemd
        // slice names such as `…slice:cri-containerd:<id>`), so split at most twice.
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let path = Path::new(path);
        if !path.is_absolute() {
            continue;
        }
        if controllers.split(',').any(|c| c == "memory") {
            return Some((CgroupVersion::V1, path.to_path_buf()));
        }
        if id == "0" && controllers.is_empty() && unified.is_none() {
            unified = Some(path.to_path_buf());
        }
    }
    unified.map(|path| (CgroupVersion::V2, path))
}

/// The fields of one `/proc/self/mountinfo` line that matter here (see `proc(5)`):
/// `id parent maj:min root mount-point options [optional…] - fstype source super-options`.
#[derive(Debug)]
struct Mount<'a> {
    root: PathBuf,
    mount_point: PathBuf,
    fs_type: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    fn parse(line: &'a str) -> Option<Mount<'a>> {
        let mut fields = line.split_ascii_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        // Skip mount options and the variable number of optional fields up to "-".
        fields.find(|field| *field == "-")?;
        let fs_type = fields.next()?;
        let _source = fields.next()?;
        let super_options = fields.next().unwrap_or("");
        let root = unescape_octal(root);
        let mount_point = unescape_octal(mount_point);
        if !root.is_absolute() || !mount_point.is_absolute() {
            return None;
        }
        Some(Mount { root, mount_point, fs_type, super_options })
    }

    fn holds_memory(&self, version: CgroupVersion) -> bool {
        match version {
            CgroupVersion::V2 => self.fs_type == "cgroup2",
            CgroupVersion::V1 => {
                self.fs_type == "cgroup" && self.super_options.split(',').any(|option| option == "memory")
            }
        }
    }
}

/// `cgroup_path` relative to a mount's `root`, component by component (`/ab` is not under
/// `/a`), or `None` when it is not under it or either contains `..`.
fn relative_to_root(cgroup_path: &Path, root: &Path) -> Option<PathBuf> {
    if has_parent_dir(cgroup_path) || has_parent_dir(root) {
        return None;
    }
    cgroup_path.strip_prefix(root).ok().map(Path::to_path_buf)
}

/// Whether a mount's `root` ends with `cgroup_path`, component by component (`/` is a
/// suffix of every root); never when either contains `..`.
fn root_ends_with(root: &Path, cgroup_path: &Path) -> bool {
    if has_parent_dir(cgroup_path) || has_parent_dir(root) {
        return false;
    }
    let Ok(tail) = cgroup_path.strip_prefix("/") else {
        return false;
    };
    root.ends_with(tail)
}

fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|component| component == Component::ParentDir)
}

/// `base` joined with `rel`, without the trailing `/` that joining an empty path adds.
fn join_relative(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { base.to_path_buf() } else { base.join(rel) }
}

/// Decode the kernel's octal escapes in mountinfo paths: space, tab, newline and backslash
/// are written as `\040`, `\011`, `\012`, `\134`. A backslash not followed by three octal
/// digits of a byte value is kept as is. Works on bytes, so non-UTF-8 names survive.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 4) {
            Some([b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) => {
                Some(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'))
            }
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    bytes_to_path(out)
}

#[cfg(unix)]
fn bytes_to_path(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_octal(r"/sys/fs/my\040cgroups"), PathBuf::from("/sys/fs/my cgroups"));
        assert_eq!(unescape_octal(r"/a\011b\012c\134d"), PathBuf::from("/a\tb\nc\\d"));
        // Not escapes: too short, not octal, above 0o377.
        assert_eq!(unescape_octal(r"/a\04"), PathBuf::from(r"/a\04"));
        assert_eq!(unescape_octal(r"/a\089"), PathBuf::from(r"/a\089"));
        assert_eq!(unescape_octal(r"/a\777"), PathBuf::from(r"/a\777"));
        assert_eq!(unescape_octal("\\"), PathBuf::from("\\"));
    }

    #[test]
    fn relative_paths_are_component_wise() {
        let rel = |p: &str, r: &str| relative_to_root(Path::new(p), Path::new(r));
        assert_eq!(rel("/a/b", "/"), Some(PathBuf::from("a/b")));
        assert_eq!(rel("/a/b", "/a"), Some(PathBuf::from("b")));
        assert_eq!(rel("/a", "/a"), Some(PathBuf::new()));
        assert_eq!(rel("/ab", "/a"), None);
        assert_eq!(rel("/", "/a"), None);
        assert_eq!(rel("/../x", "/"), None);
        assert_eq!(rel("/x", "/.."), None);
    }

    #[test]
    fn root_suffixes_are_component_wise() {
        let ends = |r: &str, p: &str| root_ends_with(Path::new(r), Path::new(p));
        assert!(ends("/kubepods/pod1/abc", "/"));
        assert!(ends("/docker/node/kubepods/pod1/abc", "/kubepods/pod1/abc"));
        assert!(ends("/kubepods/pod1/abc", "/kubepods/pod1/abc"));
        assert!(!ends("/docker/node/kubepods/pod1/xabc", "/abc/"));
        assert!(!ends("/docker/node/kubepods/pod1/xabc", "/abc"));
        assert!(!ends("/../..", "/"));
    }

    /// What the kernel's `seq_path`/`mangle_path` does to " \t\n\\".
    fn escape_like_kernel(path: &str) -> String {
        let mut out = String::new();
        for c in path.chars() {
            match c {
                ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn unescape_inverts_kernel_escaping(path in "/[a-z \t\n\\\\é:.-]{0,40}") {
            prop_assert_eq!(unescape_octal(&escape_like_kernel(&path)), PathBuf::from(path));
        }

        #[test]
        fn unescape_never_panics(field in "\\PC{0,60}") {
            let _ = unescape_octal(&field);
        }
    }
}
