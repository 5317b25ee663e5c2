//! Children of a lab: [`LabChild`] owns a spawned process and the watchers of
//! its output; it kills and reaps the process when dropped. The lab keeps a
//! second handle so its teardown can do the same for children a test leaked.
//!
//! Waiting uses a pidfd (readable when the process exits) so waits can have a
//! deadline without polling, and all reaping happens under one lock so a pid
//! is never signalled after it was reaped (and possibly reused).

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cmd::command_line;
use crate::watch::LineWatcher;

/// How long teardown waits for a SIGKILLed child before giving up on it.
pub(crate) const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`LabChild::wait_output`] waits for the output to end after the
/// process exited (a grandchild may still hold the pipes).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The process, shared by the [`LabChild`] and the lab's teardown.
pub(crate) struct ChildCell {
    name: String,
    pid: u32,
    child: Mutex<Child>,
}

impl ChildCell {
    fn lock(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps the process if it has exited.
    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        self.lock().try_wait().ok().flatten()
    }

    /// Sends `signal` unless the process has already been reaped. Returns
    /// whether it was sent.
    pub(crate) fn signal(&self, signal: i32) -> bool {
        let mut child = self.lock();
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        // SAFETY: kill(2) has no memory effects; the child is not reaped
        // (we hold the lock that every reaper takes), so the pid is still ours.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) == 0 }
    }

    /// Waits up to `timeout` for the process to exit and reaps it.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let pidfd = {
            let mut child = self.lock();
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            pidfd_open(self.pid)
        };
        match pidfd {
            Ok(fd) => {
                poll_readable(&fd, deadline);
                self.try_wait()
            }
            // No pidfd (very old kernel): fall back to checking on a timer.
            Err(_) => loop {
                if let Some(status) = self.try_wait() {
                    return Some(status);
                }
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            },
        }
    }

    /// SIGKILL, then wait (bounded) and reap.
    pub(crate) fn kill_and_reap(&self, timeout: Duration) -> Result<ExitStatus, String> {
        // Child::kill is a no-op on a child that was already reaped.
        if let Err(e) = self.lock().kill() {
            return Err(format!("kill {} (pid {}): {e}", self.name, self.pid));
        }
        self.wait_timeout(timeout).ok_or_else(|| {
            format!(
                "{} (pid {}) still alive {timeout:?} after SIGKILL",
                self.name, self.pid
            )
        })
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `fd` is readable or `deadline` passes.
fn poll_readable(fd: &OwnedFd, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
}

/// Where a child's output is logged.
pub(crate) enum OutputLogs {
    /// stdout and stderr apart, each with its own watcher and file.
    Separate { stdout: PathBuf, stderr: PathBuf },
    /// Both into one watcher and file (a daemon's log).
    Combined(PathBuf),
}

/// Spawns `cmd` with stdin from /dev/null and stdout/stderr piped into
/// watchers. Panics if it cannot be started.
pub(crate) fn spawn(cmd: &mut Command, name: &str, logs: OutputLogs) -> LabChild {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", command_line(cmd)));
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let (stdout, stderr) = match logs {
        OutputLogs::Separate { stdout, stderr } => (
            LineWatcher::watch(format!("{name} stdout"), out, Some(&stdout)),
            LineWatcher::watch(format!("{name} stderr"), err, Some(&stderr)),
        ),
        OutputLogs::Combined(log) => {
            let both = LineWatcher::start(name, vec![Box::new(out), Box::new(err)], Some(&log));
            (both.clone(), both)
        }
    };
    LabChild {
        cell: Arc::new(ChildCell {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
        }),
        command: command_line(cmd),
        stdout,
        stderr,
    }
}

/// A process started by a lab. Dropping it kills (SIGKILL) and reaps it.
pub struct LabChild {
    cell: Arc<ChildCell>,
    command: String,
    stdout: LineWatcher,
    stderr: LineWatcher,
}

/// What a finished child did.
#[derive(Clone)]
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing the output, unless the child exited with status 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "child failed: {self}");
        self
    }
}

impl fmt::Display for ChildOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for ChildOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl LabChild {
    pub(crate) fn cell(&self) -> Arc<ChildCell> {
        self.cell.clone()
    }

    pub fn pid(&self) -> u32 {
        self.cell.pid
    }

    /// The name used in log file names and messages.
    pub fn name(&self) -> &str {
        &self.cell.name
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// Its standard output, line by line.
    pub fn stdout(&self) -> &LineWatcher {
        &self.stdout
    }

    /// Its standard error, line by line (for a daemon, the same watcher as
    /// [`stdout`](Self::stdout): both streams together).
    pub fn stderr(&self) -> &LineWatcher {
        &self.stderr
    }

    /// Waits for a stdout line containing `needle` and returns it; panics
    /// with the output on timeout or if the output ends first.
    #[track_caller]
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.stdout.wait_for(needle, timeout).unwrap_or_else(|e| {
            panic!(
                "{e}\n--- stderr of {} ---\n{}",
                self.cell.name,
                self.stderr.text()
            )
        })
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) unless the process was reaped.
    pub fn signal(&self, signal: i32) -> bool {
        self.cell.signal(signal)
    }

    /// SIGKILL and reap. Panics if it does not die within a few seconds.
    pub fn kill(&self) -> ExitStatus {
        self.cell
            .kill_and_reap(REAP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The exit status, if it has exited (it is reaped then).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.cell.try_wait()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.cell.wait_timeout(timeout)
    }

    /// Waits up to `timeout` for it to exit, then for its output to end, and
    /// returns status and output. On timeout it is killed and this panics
    /// with what it printed.
    #[track_caller]
    pub fn wait_output(&self, timeout: Duration) -> ChildOutput {
        let Some(status) = self.wait_timeout(timeout) else {
            let _ = self.cell.kill_and_reap(REAP_TIMEOUT);
            panic!(
                "`{}` did not exit within {timeout:?}\n--- stdout ---\n{}--- stderr ---\n{}",
                self.command,
                self.stdout.text(),
                self.stderr.text()
            );
        };
        // A grandchild may have inherited the pipes; then take what is there.
        let _ = self.stdout.wait_eof(OUTPUT_DRAIN_TIMEOUT);
        let _ = self.stderr.wait_eof(OUTPUT_DRAIN_TIMEOUT);
        ChildOutput {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if let Err(e) = self.cell.kill_and_reap(REAP_TIMEOUT) {
            eprintln!("mesh-lab: {e}");
        }
    }
}

impl fmt::Debug for LabChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabChild")
            .field("name", &self.cell.name)
            .field("pid", &self.cell.pid)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}
