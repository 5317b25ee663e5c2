//! Removing what labs of earlier runs left behind (a test binary that was
//! SIGKILLed cannot run its `Drop`): processes in lab namespaces, lab
//! cgroups, lab namespaces, lab pin dirs and lab temp dirs. Labs whose
//! owning process is still alive are left alone.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroup::{self, cgroup2_mount};
use crate::lab::{BPFFS_ROOT, LAB_NAME_PREFIX, LAB_TMP_ROOT, OWNER_FILE};
use crate::netns::{self, Netns};
use crate::teardown::remove_pin_dir;

/// Removes leftovers of labs whose owner process is gone, restricted to
/// prefixes starting with `prefix_filter` if given. Returns a line per
/// thing removed (or that could not be removed, marked `FAILED`).
pub fn sweep(prefix_filter: Option<&str>) -> Vec<String> {
    let live = live_prefixes();
    let wanted = |prefix: &str| {
        is_lab_prefix(prefix) && !live.contains(prefix) && prefix_filter.is_none_or(|f| prefix.starts_with(f))
    };
    let mut report = Vec::new();
    let mut note = |what: String, result: Result<(), String>| match result {
        Ok(()) => report.push(what),
        Err(e) => report.push(format!("FAILED {what}: {e}")),
    };

    let namespaces: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| netns_prefix(n).is_some_and(wanted))
        .collect();
    // Orphaned daemons and servers keep running in a deleted namespace, so
    // they go first.
    for (pid, comm, ns) in processes_in(&namespaces) {
        // SAFETY: kill(2) has no memory effects.
        let ok = unsafe { libc::kill(pid, libc::SIGKILL) } == 0;
        note(
            format!("process {pid} ({comm}) in netns {ns}"),
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error().to_string())
            },
        );
    }
    for dir in lab_entries(&cgroup2_mount(), &wanted) {
        let result = cgroup::destroy(&dir, Duration::from_secs(10));
        note(format!("cgroup {}", dir.display()), result);
    }
    for ns in &namespaces {
        note(format!("netns {ns}"), Netns::delete(ns));
    }
    for dir in lab_entries(Path::new(BPFFS_ROOT), &wanted) {
        let result = remove_pin_dir(&dir).map_err(|e| e.to_string());
        note(format!("pin dir {}", dir.display()), result);
    }
    for dir in lab_entries(Path::new(LAB_TMP_ROOT), &wanted) {
        let result = fs::remove_dir_all(&dir).map_err(|e| e.to_string());
        note(format!("dir {}", dir.display()), result);
    }
    report
}

/// `m` followed by 5 lowercase hex digits.
fn is_lab_prefix(s: &str) -> bool {
    s.len() == 6
        && s.starts_with('m')
        && s[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The lab prefix of a lab namespace name (`<p>-sw`, `<p>-n<k>`,
/// `<p>-n<k>-<pod>`).
fn netns_prefix(name: &str) -> Option<&str> {
    let (prefix, rest) = name.split_once('-')?;
    let node = rest.strip_prefix('n').map(|r| r.split('-').next().unwrap_or(""));
    let is_lab = rest == "sw" || node.is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()));
    (is_lab && is_lab_prefix(prefix)).then_some(prefix)
}

/// The lab prefix in `mesh-lab-<p>` or `mesh-lab-<p>-<anything>`.
fn entry_prefix(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(LAB_NAME_PREFIX)?;
    let prefix = rest.split('-').next()?;
    is_lab_prefix(prefix).then_some(prefix)
}

/// Entries `mesh-lab-<p>*` of `dir` whose prefix is wanted.
fn lab_entries(dir: &Path, wanted: &impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().and_then(entry_prefix).is_some_and(wanted))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Prefixes of labs whose owner (pid and start time in the lab dir's owner
/// file) is still running.
fn live_prefixes() -> HashSet<String> {
    let mut live = HashSet::new();
    let Ok(entries) = fs::read_dir(LAB_TMP_ROOT) else {
        return live;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(prefix) = name.to_str().and_then(entry_prefix) else {
            continue;
        };
        let Ok(owner) = fs::read_to_string(entry.path().join(OWNER_FILE)) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(|f| f.parse::<u64>().ok());
        if let (Some(Some(pid)), Some(Some(start))) = (fields.next(), fields.next()) {
            if process_start_time(pid as u32) == Some(start) {
                live.insert(prefix.to_string());
            }
        }
    }
    live
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot):
/// with the pid it names one process even after pids wrap.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens; fields after
    // the last ')' start at field 3.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Processes whose network namespace is one of `names`: (pid, comm, netns).
fn processes_in(names: &[String]) -> Vec<(i32, String, String)> {
    let targets: Vec<((u64, u64), &String)> = names
        .iter()
        .filter_map(|n| {
            let m = fs::metadata(Netns::new(n.as_str()).path()).ok()?;
            Some(((m.dev(), m.ino()), n))
        })
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.filter_map(|e| e.ok()) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(m) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if let Some((_, ns)) = targets.iter().find(|(id, _)| *id == (m.dev(), m.ino())) {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string(), ns.to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_lab_names_only() {
        assert_eq!(netns_prefix("m1a2b3-sw"), Some("m1a2b3"));
        assert_eq!(netns_prefix("m1a2b3-n12"), Some("m1a2b3"));
        assert_eq!(netns_prefix("m1a2b3-n2-client-a"), Some("m1a2b3"));
        assert_eq!(netns_prefix("m1a2b3-nx"), None);
        assert_eq!(netns_prefix("myhost-sw"), None);
        assert_eq!(netns_prefix("m1A2b3-sw"), None);
        assert_eq!(entry_prefix("mesh-lab-m00fff"), Some("m00fff"));
        assert_eq!(entry_prefix("mesh-lab-m00fff-node1"), Some("m00fff"));
        assert_eq!(entry_prefix("mesh-lab-other"), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id()).is_some());
    }
}
