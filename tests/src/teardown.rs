//! Removing a lab, in an order that lets each step succeed: processes first
//! (so nothing holds the cgroups or namespaces), then cgroups, namespaces,
//! pin dirs and the temp dir. Errors are reported on stderr, never panicked:
//! this runs in `Drop`, possibly while a test is already panicking.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cgroup;
use crate::lab::Lab;
use crate::netns::Netns;
use crate::process::REAP_TIMEOUT;

/// How long to wait for the lab cgroup to empty after `cgroup.kill`.
const CGROUP_EMPTY_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each log printed when a lab is dropped by a panicking test.
const LOG_TAIL_LINES: usize = 60;

impl Lab {
    /// Removes everything the lab created. Idempotent; [`Drop`] calls it.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let (children, netns, pin_dirs) = {
            let mut state = self.lock();
            (
                std::mem::take(&mut state.children),
                std::mem::take(&mut state.netns),
                std::mem::take(&mut state.pin_dirs),
            )
        };
        let mut problems = Vec::new();
        for child in children {
            if let Err(e) = child.kill_and_reap(REAP_TIMEOUT) {
                problems.push(e);
            }
        }
        if let Err(e) = cgroup::destroy(&self.cgroup, CGROUP_EMPTY_TIMEOUT) {
            problems.push(e);
        }
        for name in netns.iter().rev() {
            if let Err(e) = Netns::delete(name) {
                problems.push(e);
            }
        }
        for dir in &pin_dirs {
            if let Err(e) = remove_pin_dir(dir) {
                problems.push(format!("removing pin dir {}: {e}", dir.display()));
            }
        }
        if std::thread::panicking() {
            self.print_logs();
        }
        if std::env::var("MESH_LAB_KEEP").is_ok_and(|v| v == "1") {
            eprintln!(
                "mesh-lab {}: kept {} (MESH_LAB_KEEP=1)",
                self.prefix,
                self.dir.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", self.dir.display()));
            }
        }
        for p in problems {
            eprintln!("mesh-lab {} teardown: {p}", self.prefix);
        }
    }

    /// Prints the tail of every log in the lab dir, so a failed test's
    /// output shows what its processes said.
    fn print_logs(&self) {
        eprintln!(
            "mesh-lab {} (test {}): logs in {} (set MESH_LAB_KEEP=1 to keep them)",
            self.prefix,
            self.test_name,
            self.dir.display()
        );
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!("--- {} ({} lines) ---", path.display(), lines.len());
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes a pin directory on bpffs (which supports unlink and rmdir). If
/// bpffs was mounted on the directory itself, it is unmounted first.
pub(crate) fn remove_pin_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
            // SAFETY: umount2 only reads the NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error());
            }
            fs::remove_dir_all(dir)
        }
        Err(e) => Err(e),
    }
}
