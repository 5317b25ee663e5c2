//! Orchestration: `cargo xtask setup | test | demo | lab-sweep`.
//!
//! The ordinary build is plain cargo (mesh-node's build.rs builds the kernel programs);
//! xtask installs what that build and the tests need, and runs the suites and the demo.
mod demo;
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
            demo::run()
        }
        Cmd::LabSweep => {
            sweep();
            Ok(())
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

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The daemon and the lab's helper programs, which the tests and the demo run.
fn build() -> Result<()> {
    run(cargo().args(["build", "-p", "mesh-node", "-p", "mesh-tests", "--bins"]))
}

fn sweep() {
    for removed in mesh_tests::sweep(None) {
        eprintln!("lab-sweep: removed {removed}");
    }
}

fn test(args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    setup::setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    build()?;
    sweep();
    let result = run(cargo().arg("test").args(args));
    let leftovers = mesh_tests::sweep(None);
    eprintln!("xtask test: finished in {:.0?}", started.elapsed());
    result?;
    if !leftovers.is_empty() {
        bail!("tests left objects behind (their guards leak): {leftovers:?}");
    }
    Ok(())
}
