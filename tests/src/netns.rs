//! Named network namespaces (`/run/netns/<name>`, as `ip netns` makes them):
//! creating and deleting them, running a closure inside one from the test
//! process, and building commands that run inside one.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::cmd;

/// Where `ip netns` keeps its bind mounts.
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";

/// `ip netns add` sets up the `/run/netns` mount on first use; two of those
/// racing can stack mounts, so this process makes them one at a time.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace. Cheap to clone; it does not own the namespace
/// (the [`crate::Lab`] does).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Refers to an existing namespace by name (nothing is checked).
    pub fn new(name: impl Into<String>) -> Self {
        Netns { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Opens the namespace file, for `setns`.
    pub fn open(&self) -> io::Result<File> {
        File::open(self.path())
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and
    /// returns its result. Sockets created inside `f` stay in the namespace
    /// and may be used from any thread afterwards. A panic in `f` is
    /// propagated.
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = self
            .open()
            .unwrap_or_else(|e| panic!("cannot open netns {}: {e}", self.path().display()));
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                // setns(CLONE_NEWNET) changes only the calling thread, which
                // is why this runs on a thread of its own that then ends.
                if let Err(e) = setns_net(&file) {
                    panic!("setns into netns {} failed: {e}", self.name);
                }
                f()
            });
            handle
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// A command that runs `program` inside this namespace (its cgroup is
    /// left unchanged).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let file = self
            .open()
            .unwrap_or_else(|e| panic!("cannot open netns {}: {e}", self.path().display()));
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec; it only
        // calls setns(2), which is async-signal-safe, and builds an io::Error
        // from errno, which does not allocate.
        unsafe {
            cmd.pre_exec(move || setns_net(&file));
        }
        cmd
    }

    /// `ip netns add <name>`; panics on failure.
    pub(crate) fn create(name: &str) -> Netns {
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        cmd::run("ip", ["netns", "add", name]);
        Netns::new(name)
    }

    /// `ip netns del <name>`; a namespace that is already gone is fine.
    pub(crate) fn delete(name: &str) -> Result<(), String> {
        let ns = Netns::new(name);
        if !ns.exists() {
            return Ok(());
        }
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        cmd::try_run("ip", ["netns", "del", name]).map(drop)
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Runs `f` inside the named namespace; see [`Netns::run`].
pub fn in_netns<T, F>(name: &str, f: F) -> T
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    Netns::new(name).run(f)
}

/// Moves the calling thread into the network namespace `file` refers to.
/// Async-signal-safe, so it may be called from `pre_exec`.
pub(crate) fn setns_net(file: &File) -> io::Result<()> {
    // SAFETY: setns only reads the fd, which `file` keeps open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names of the namespaces in `/run/netns`.
pub(crate) fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
