//! cgroup v2 directories of a lab: finding the cgroup2 mount, creating,
//! killing (`cgroup.kill`), waiting until empty (`cgroup.events`) and removing
//! a subtree bottom-up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The cgroup2 mount point, read from `/proc/mounts` (the first mount of
/// type `cgroup2`). Panics if there is none.
pub fn cgroup2_mount() -> PathBuf {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let mounts = fs::read_to_string("/proc/mounts").ok()?;
            find_cgroup2(&mounts)
        })
        .clone()
        .expect("no cgroup2 file system in /proc/mounts: the lab needs cgroup v2")
}

fn find_cgroup2(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_src, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes `cmd` move itself into the cgroup at `dir` before exec.
pub(crate) fn enter_on_exec(cmd: &mut Command, dir: &Path) {
    let procs = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("cannot open {}/cgroup.procs: {e}", dir.display()));
    // SAFETY: runs in the forked child before exec; write(2) is
    // async-signal-safe and io::Error::last_os_error does not allocate.
    // Writing "0" to cgroup.procs moves the writing process.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Kills every process in the subtree (`cgroup.kill`, Linux 5.14+).
pub(crate) fn kill(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("cgroup.kill"), "1")
}

/// Whether `cgroup.events` says the subtree has no live process.
fn is_unpopulated(events: &mut File) -> io::Result<bool> {
    let mut text = String::new();
    events.rewind()?;
    events.read_to_string(&mut text)?;
    Ok(text.lines().any(|l| l.trim() == "populated 0"))
}

/// Waits until the subtree is empty. `cgroup.events` signals changes with
/// POLLPRI, so this sleeps in poll(2) rather than re-reading on a timer.
pub(crate) fn wait_unpopulated(dir: &Path, timeout: Duration) -> Result<(), String> {
    let path = dir.join("cgroup.events");
    let mut events = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if is_unpopulated(&mut events).map_err(|e| format!("{}: {e}", path.display()))? {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{} still populated after {timeout:?}", dir.display()));
        }
        let mut pfd = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd that lives across the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

/// Removes the cgroup at `dir` and all its descendants, deepest first.
/// A directory that is already gone is fine.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("rmdir {}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Kills everything in the subtree, waits for it to empty and removes it.
pub(crate) fn destroy(dir: &Path, timeout: Duration) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    let mut problems = Vec::new();
    if let Err(e) = kill(dir) {
        problems.push(format!("cgroup.kill in {}: {e}", dir.display()));
    }
    if let Err(e) = wait_unpopulated(dir, timeout) {
        problems.push(e);
    }
    if let Err(e) = remove_tree(dir) {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Creates one cgroup directory (its parent must exist).
pub(crate) fn create(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_mounts() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/un\\040ified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            find_cgroup2(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/un ified"))
        );
        assert_eq!(find_cgroup2("proc /proc proc rw 0 0\n"), None);
    }
}
