//! The test lab of the mesh: builds small worlds of real kernel objects for
//! end-to-end tests, the demo and benchmarks (design §9).
//!
//! A [`Lab`] holds a switch (a network namespace with a bridge), nodes
//! ([`Lab::add_node`]: namespaces on the switch, each with a pod bridge and
//! a cgroup for its daemon) and pods ([`Lab::add_pod`]: namespaces behind a
//! node's bridge, each with a cgroup below the node's). Programs run inside
//! them with [`Node::command`] / [`Pod::command`] and [`Lab::spawn`];
//! daemons with [`Lab::start_daemon`]. Dropping the lab removes all of it.
//!
//! Environment: `CI=true` makes [`require_privileges`] fail instead of
//! skip; `MESH_LAB_KEEP=1` keeps each lab's directory (configs, logs);
//! `MESH_NODE_BIN` / `LABTOOL_BIN` override where the binaries are found;
//! `RUST_LOG` is passed to daemons (default `info`). Leftovers of killed
//! test runs are removed by [`sweep`] (`cargo xtask lab-sweep`).
//!
//! ```no_run
//! use std::time::Duration;
//! if !mesh_tests::require_privileges() { return; }
//! let lab = mesh_tests::Lab::new("example");
//! let node = lab.add_node();
//! let pod = lab.add_pod(&node, "server");
//! let server = lab.spawn(pod.command(mesh_tests::labtool_bin()).args(["serve", "--listen", "0.0.0.0:7000"]));
//! server.wait_stdout("listening", Duration::from_secs(10));
//! ```

pub mod bench;
mod bins;
mod cgroup;
mod cmd;
mod daemon;
pub mod demo;
mod lab;
pub mod mesh;
mod netns;
pub mod observe;
mod privileges;
mod process;
mod sweep;
mod teardown;
mod topology;
mod watch;

pub use bins::{labtool_bin, mesh_node_bin};
pub use cgroup::cgroup2_mount;
pub use daemon::{Daemon, READY_LINE, READY_TIMEOUT, STOP_TIMEOUT};
pub use lab::Lab;
pub use netns::{in_netns, Netns};
pub use privileges::require_privileges;
pub use process::{ChildOutput, LabChild};
pub use sweep::sweep;
pub use topology::{Node, Pod};
pub use watch::{LineWatcher, WaitError, WaitErrorKind};
