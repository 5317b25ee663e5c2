//! Lab operations for xtask: `mesh-lab demo`, `mesh-lab sweep [--check]` and
//! `mesh-lab bench [--quick]`.
//!
//! They live here rather than in xtask because they need the lab library, which needs
//! mesh-node, whose build needs bpf-linker: xtask itself must build on a machine where
//! `cargo xtask setup` has not run yet.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mesh-lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The two-node demo on the embedded default (standalone mode).
    Demo,
    /// The benchmark suite (docs/benchmarks.md); reports under `--out`.
    Bench {
        /// About two minutes: fewer and shorter rounds.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
        /// The commit measured, for the report.
        #[arg(long, default_value = "unknown")]
        commit: String,
        /// Only these scenarios (e.g. `--only S1 --only S4`).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Remove leftovers of labs whose owner process is gone.
    Sweep {
        /// Exit with 1 if anything had to be removed (tests leaked it).
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Demo => match mesh_tests::demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Bench {
            quick,
            out,
            commit,
            only,
        } => {
            let plan = if quick {
                mesh_tests::bench::Plan::quick()
            } else {
                mesh_tests::bench::Plan::full()
            };
            let opts = mesh_tests::bench::Options {
                plan,
                out_dir: out,
                commit,
                only,
            };
            match mesh_tests::bench::run(&opts) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Sweep { check } => {
            let removed = mesh_tests::sweep(None);
            for r in &removed {
                eprintln!("lab-sweep: removed {r}");
            }
            if check && !removed.is_empty() {
                eprintln!(
                    "lab-sweep: tests left {} objects behind (their guards leak)",
                    removed.len()
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}
