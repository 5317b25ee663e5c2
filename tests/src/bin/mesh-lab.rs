//! Lab operations for xtask: `mesh-lab demo` and `mesh-lab sweep [--check]`.
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
