//! Running `mesh-node` on a lab node: how it is started (config file, log
//! file, environment), when it counts as up (its `mesh-node ready` line),
//! and stopping or killing it. A node may run several daemons one after the
//! other (restart tests); each gets a generation number and its own log.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::bins::mesh_node_bin;
use crate::lab::Lab;
use crate::process::{LabChild, OutputLogs, REAP_TIMEOUT};
use crate::topology::Node;
use crate::watch::LineWatcher;

/// The line (on stdout or stderr) that says the daemon is ready.
pub const READY_LINE: &str = "mesh-node ready";
/// How long [`Lab::start_daemon`] waits for [`READY_LINE`].
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Daemon::stop`] waits after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `mesh-node run` process on a node. Dropping it kills it.
#[derive(Debug)]
pub struct Daemon {
    node: Node,
    generation: u32,
    config_path: PathBuf,
    log_path: PathBuf,
    child: LabChild,
}

impl Lab {
    /// Writes `config_yaml` to `<dir>/node<n>.yaml`, runs
    /// `mesh-node run --config <file>` in the node's namespace (cwd: the lab
    /// dir, `RUST_LOG` defaulting to `info`, `NO_COLOR=1`), logs both output
    /// streams to `<dir>/node<n>-daemon[-<generation>].log` and waits for
    /// [`READY_LINE`]. Panics with the log if it exits or is not ready
    /// within [`READY_TIMEOUT`].
    #[track_caller]
    pub fn start_daemon(&self, node: &Node, config_yaml: &str) -> Daemon {
        self.start_daemon_with(node, config_yaml, |_| {})
    }

    /// Like [`start_daemon`](Self::start_daemon); `configure` may add
    /// arguments or environment to the command before it starts.
    #[track_caller]
    pub fn start_daemon_with(
        &self,
        node: &Node,
        config_yaml: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        let generation = {
            let mut state = self.lock();
            let g = state.daemon_generations.entry(node.index).or_insert(0);
            *g += 1;
            *g
        };
        let config_path = self.write_file(&format!("{}.yaml", node.name), config_yaml);
        let name = match generation {
            1 => format!("{}-daemon", node.name),
            g => format!("{}-daemon-{g}", node.name),
        };
        let log_path = self.dir.join(format!("{name}.log"));
        let mut cmd = node.command(mesh_node_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&self.dir)
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        configure(&mut cmd);
        let child = self.spawn_with_logs(&name, &mut cmd, OutputLogs::Combined(log_path.clone()));
        if let Err(e) = child.stdout().wait_for(READY_LINE, READY_TIMEOUT) {
            let status = child.cell().kill_and_reap(REAP_TIMEOUT);
            panic!(
                "mesh-node on {} (generation {generation}) did not become ready ({}): {e}\nlog: {}",
                node.name,
                status.map_or_else(|e| e, |s| s.to_string()),
                log_path.display()
            );
        }
        Daemon {
            node: node.clone(),
            generation,
            config_path,
            log_path,
            child,
        }
    }

    /// Kills `old` if it is still running and starts a new daemon on its
    /// node with the current contents of its config file.
    #[track_caller]
    pub fn restart_daemon(&self, old: Daemon) -> Daemon {
        old.kill();
        let config = std::fs::read_to_string(&old.config_path)
            .unwrap_or_else(|e| panic!("{}: {e}", old.config_path.display()));
        self.start_daemon(&old.node, &config)
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// 1 for the first daemon started on this node in this lab, then 2, ...
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The YAML file it was started with (edit it to test reloads).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything it printed so far (stdout and stderr together).
    pub fn logs(&self) -> String {
        self.child.stdout().text()
    }

    /// Its output as a watcher, to wait for other log lines.
    pub fn output(&self) -> &LineWatcher {
        self.child.stdout()
    }

    /// Waits for a log line containing `needle`; panics with the log on
    /// timeout or exit.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.output()
            .wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("{}: {e}", self.node.name))
    }

    /// Whether it has not exited yet.
    pub fn is_running(&self) -> bool {
        self.child.try_wait().is_none()
    }

    /// SIGKILL and reap (a crash, as far as the daemon can tell).
    pub fn kill(&self) -> ExitStatus {
        self.child.kill()
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] for it to exit; returns
    /// its exit status. Panics with the log if it does not exit in time.
    #[track_caller]
    pub fn stop(&self) -> ExitStatus {
        self.stop_within(STOP_TIMEOUT)
    }

    /// Like [`stop`](Self::stop) with another deadline.
    #[track_caller]
    pub fn stop_within(&self, timeout: Duration) -> ExitStatus {
        self.child.signal(libc::SIGTERM);
        match self.child.wait_timeout(timeout) {
            Some(status) => status,
            None => {
                let _ = self.child.cell().kill_and_reap(REAP_TIMEOUT);
                panic!(
                    "mesh-node on {} did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.node.name,
                    self.logs()
                );
            }
        }
    }
}
