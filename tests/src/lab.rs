//! [`Lab`]: one test's world of kernel objects (a switch namespace with a
//! bridge, a cgroup subtree, a temp dir) and the processes it started.
//! Nodes and pods are added in `topology.rs`, daemons in `daemon.rs`, and
//! everything is torn down in `teardown.rs`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::{fs, io};

use crate::cgroup::{self, cgroup2_mount};
use crate::cmd::ip_in;
use crate::netns::Netns;
use crate::process::{self, ChildCell, ChildOutput, LabChild, OutputLogs};
use crate::sweep;
use crate::topology::{Node, Pod};

/// Lab temp dirs are `<LAB_TMP_ROOT>/mesh-lab-<prefix>`.
pub(crate) const LAB_TMP_ROOT: &str = "/tmp";
/// Lab cgroups, temp dirs and pin dirs all start with this.
pub(crate) const LAB_NAME_PREFIX: &str = "mesh-lab-";
/// Where the lab puts BPF pin directories (bpffs).
pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Name of the file in the lab dir that records the owning process, so
/// `sweep` leaves live labs alone.
pub(crate) const OWNER_FILE: &str = "owner";

/// One test's world. Names are unique per lab, so labs of tests running in
/// parallel never meet; dropping the lab (also while panicking) removes
/// everything it created.
pub struct Lab {
    pub(crate) prefix: String,
    pub(crate) test_name: String,
    pub(crate) dir: PathBuf,
    pub(crate) cgroup: PathBuf,
    pub(crate) switch: Netns,
    pub(crate) state: Mutex<LabState>,
    pub(crate) torn_down: AtomicBool,
}

#[derive(Default)]
pub(crate) struct LabState {
    /// Every namespace created, switch first, so teardown finds them even
    /// if setting one up failed half-way.
    pub(crate) netns: Vec<String>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) pods: Vec<Pod>,
    pub(crate) children: Vec<Arc<ChildCell>>,
    pub(crate) pin_dirs: Vec<PathBuf>,
    pub(crate) spawned: usize,
    /// Daemons started so far per node index, for log file names.
    pub(crate) daemon_generations: HashMap<usize, u32>,
}

impl Lab {
    /// Creates an empty lab: a switch namespace `<prefix>-sw` with a bridge
    /// `br0`, the cgroup `<cgroup2>/mesh-lab-<prefix>` and the directory
    /// `/tmp/mesh-lab-<prefix>/`. Panics if any of it fails (after cleaning
    /// up what was made).
    pub fn new(test_name: &str) -> Lab {
        let (prefix, dir, cgroup) = reserve_names();
        let owner = format!(
            "{} {}\n",
            std::process::id(),
            sweep::process_start_time(std::process::id()).unwrap_or(0)
        );
        let lab = Lab {
            switch: Netns::new(format!("{prefix}-sw")),
            prefix,
            test_name: test_name.to_string(),
            dir,
            cgroup,
            state: Mutex::new(LabState::default()),
            torn_down: AtomicBool::new(false),
        };
        lab.write_file(OWNER_FILE, &owner);
        lab.write_file("lab.txt", &format!("test {test_name}\nprefix {}\n", lab.prefix));
        // From here on a panic drops `lab`, which removes what exists so far.
        let sw = lab.create_netns(&mut lab.lock(), lab.switch.name());
        ip_in(sw.name(), &["link", "set", "lo", "up"]);
        ip_in(
            sw.name(),
            &["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"],
        );
        ip_in(sw.name(), &["link", "set", "br0", "up"]);
        lab
    }

    /// The short unique prefix of every name in this lab (`m` + 5 hex).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The lab's directory for configs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's cgroup (`<cgroup2>/mesh-lab-<prefix>`); nodes are below it.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The namespace holding the bridge that connects the nodes.
    pub fn switch_netns(&self) -> &Netns {
        &self.switch
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.clone()
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.lock().pods.clone()
    }

    /// Starts `cmd` (typically from [`Node::command`] or [`Pod::command`])
    /// with stdin from /dev/null and its stdout and stderr followed by
    /// watchers that log to `<dir>/<name>.stdout.log` / `.stderr.log`. The
    /// lab kills it at teardown if the [`LabChild`] has not already.
    pub fn spawn(&self, cmd: &mut Command) -> LabChild {
        let name = {
            let mut state = self.lock();
            state.spawned += 1;
            format!("{:02}-{}", state.spawned, short_name(cmd))
        };
        self.spawn_named(&name, cmd)
    }

    /// Like [`spawn`](Self::spawn), with the name used for its log files.
    pub fn spawn_named(&self, name: &str, cmd: &mut Command) -> LabChild {
        let logs = OutputLogs::Separate {
            stdout: self.dir.join(format!("{name}.stdout.log")),
            stderr: self.dir.join(format!("{name}.stderr.log")),
        };
        self.spawn_with_logs(name, cmd, logs)
    }

    pub(crate) fn spawn_with_logs(&self, name: &str, cmd: &mut Command, logs: OutputLogs) -> LabChild {
        self.check_alive();
        let child = process::spawn(cmd, name, logs);
        let mut state = self.lock();
        // Children whose LabChild is gone have been killed and reaped.
        state.children.retain(|c| Arc::strong_count(c) > 1);
        state.children.push(child.cell());
        child
    }

    /// Runs `cmd` to completion (see [`spawn`](Self::spawn)) and returns its
    /// status and output; panics if it runs longer than `timeout`.
    #[track_caller]
    pub fn run(&self, cmd: &mut Command, timeout: Duration) -> ChildOutput {
        self.spawn(cmd).wait_output(timeout)
    }

    /// Registers a BPF pin directory for removal at teardown.
    pub fn register_pin_dir(&self, path: impl Into<PathBuf>) {
        self.lock().pin_dirs.push(path.into());
    }

    /// A pin directory for `node`'s daemon, `/sys/fs/bpf/mesh-lab-<prefix>-node<n>`
    /// (not created; registered for removal). Mounts bpffs on `/sys/fs/bpf`
    /// first if nothing is mounted there, since a directory can only be made
    /// on bpffs.
    pub fn bpf_pin_dir(&self, node: &Node) -> PathBuf {
        ensure_bpffs();
        let path = PathBuf::from(BPFFS_ROOT).join(format!("{LAB_NAME_PREFIX}{}-{}", self.prefix, node.name));
        self.register_pin_dir(&path);
        path
    }

    /// Writes a file in the lab dir and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LabState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_alive(&self) {
        assert!(
            !self.torn_down.load(Ordering::SeqCst),
            "lab {} was torn down",
            self.prefix
        );
    }

    /// Creates a namespace and records it for teardown.
    pub(crate) fn create_netns(&self, state: &mut LabState, name: &str) -> Netns {
        self.check_alive();
        let ns = Netns::create(name);
        state.netns.push(name.to_string());
        ns
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("test_name", &self.test_name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Picks an unused prefix and claims it by creating the lab dir and cgroup
/// (mkdir is atomic, so two labs never get the same one).
fn reserve_names() -> (String, PathBuf, PathBuf) {
    let cg2 = cgroup2_mount();
    for _ in 0..1000 {
        let prefix = candidate_prefix();
        if Netns::new(format!("{prefix}-sw")).exists() {
            continue;
        }
        let dir = PathBuf::from(LAB_TMP_ROOT).join(format!("{LAB_NAME_PREFIX}{prefix}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create lab dir {}: {e}", dir.display()),
        }
        let cg = cg2.join(format!("{LAB_NAME_PREFIX}{prefix}"));
        match cgroup::create(&cg) {
            Ok(()) => return (prefix, dir, cg),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    panic!("cannot create lab cgroup {}: {e}", cg.display());
                }
            }
        }
    }
    panic!("no free lab prefix found: run `cargo xtask lab-sweep`");
}

/// `m` and 5 hex digits from pid, a counter and the clock: short enough
/// for interface and namespace names.
fn candidate_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::process::id().hash(&mut h);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    format!("m{:05x}", h.finish() & 0xf_ffff)
}

/// `labtool-serve` for `.../labtool serve ...`: a readable log file name.
fn short_name(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let word =
        |s: &str| !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let mut name: String = program
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if let Some(first) = cmd.get_args().next().and_then(|a| a.to_str()) {
        if word(first) {
            name = format!("{name}-{first}");
        }
    }
    if name.is_empty() {
        name = "child".into();
    }
    name
}

/// Mounts bpffs on `/sys/fs/bpf` unless one is mounted there already.
fn ensure_bpffs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if is_bpffs(Path::new(BPFFS_ROOT)) {
            return;
        }
        crate::cmd::run("mount", ["-t", "bpf", "bpf", BPFFS_ROOT]);
    });
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::BPF_FS_MAGIC
    }
}
