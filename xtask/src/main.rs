//! Orchestration: `cargo xtask setup | test | demo | bench | lab-sweep`.
//!
//! The ordinary build is plain cargo (mesh-node's build.rs builds the kernel programs);
//! xtask installs what that build and the tests need, and runs the suites and the demo.
//! It depends on no workspace crate, so it builds on a fresh machine before `setup` has
//! installed bpf-linker; lab work is delegated to the `mesh-lab` binary of `tests/`.
mod bench;
mod manifests;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain parts and Debian packages (idempotent).
    Setup,
    /// Setup, format and lint checks, build, then every test (what CI runs).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run the two-node demo on the embedded default (standalone mode).
    Demo,
    /// Setup, release build, and the benchmark suite against its baselines
    /// (docs/benchmarks.md); reports in target/bench/.
    Bench {
        /// About two minutes: fewer and shorter rounds.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios, e.g. `--only S1 --only S4`.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Remove leftovers of test labs (namespaces, cgroups, pins, temp dirs).
    LabSweep,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => {
            setup::setup()?;
            build()?;
            mesh_lab(&["demo"])
        }
        Cmd::Bench { quick, only } => bench::bench(quick, &only),
        Cmd::LabSweep => {
            setup::setup()?;
            build()?;
            mesh_lab(&["sweep"])
        }
    }
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The workspace root, wherever xtask was started from.
fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// The daemon and the lab's programs (labtool, mesh-lab), which tests and demo run.
fn build() -> Result<()> {
    run(cargo().args(["build", "-p", "mesh-node", "-p", "mesh-tests", "--bins"]))
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), Into::into)
}

fn mesh_lab(args: &[&str]) -> Result<()> {
    run(Command::new(target_dir().join("debug/mesh-lab")).args(args))
}

fn test(args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    setup::setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    manifests::check()?;
    build()?;
    mesh_lab(&["sweep"])?;
    let result = run(cargo().arg("test").args(args));
    let leaks = mesh_lab(&["sweep", "--check"]);
    eprintln!("xtask test: finished in {:.0?}", started.elapsed());
    result?;
    leaks
}
