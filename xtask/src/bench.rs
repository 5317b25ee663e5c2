//! `cargo xtask bench [--quick] [--only S1 ...]`: setup, a release build of the daemon
//! and the lab's programs (the benchmark measures what users run), then `mesh-lab bench`,
//! which writes its reports under `target/bench/`.
use std::process::Command;

use anyhow::Result;

use crate::{cargo, root, run, setup, target_dir};

pub fn bench(quick: bool, only: &[String]) -> Result<()> {
    setup::setup()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "mesh-node",
        "-p",
        "mesh-tests",
        "--bins",
    ]))?;
    let target = target_dir();
    let mut cmd = Command::new(target.join("release/mesh-lab"));
    cmd.arg("bench")
        .arg("--out")
        .arg(target.join("bench"))
        .args(["--commit", &commit()]);
    if quick {
        cmd.arg("--quick");
    }
    for o in only {
        cmd.args(["--only", o]);
    }
    run(&mut cmd)
}

/// The short commit id, with `-dirty` when the work tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let id = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{id}-dirty"),
        _ => id,
    }
}
