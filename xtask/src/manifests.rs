//! Offline validation of `manifests/` (no API server runs on CI machines):
//! `kubernetes-validate` (PyPI) checks every object, strictly (unknown fields are errors),
//! against the OpenAPI schemas of a current Kubernetes release. Installed by `cargo xtask
//! setup` into a virtualenv under the target directory.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{root, run, target_dir};

const VALIDATOR_VERSION: &str = "1.37.0";
/// The Kubernetes release the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.34";

fn venv() -> PathBuf {
    target_dir().join("tools/kubernetes-validate")
}

fn validator() -> PathBuf {
    venv().join("bin/kubernetes-validate")
}

/// Installs the validator when missing (idempotent, fast when present).
pub fn install() -> Result<()> {
    if validator().is_file() {
        return Ok(());
    }
    let venv = venv();
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        &format!("kubernetes-validate=={VALIDATOR_VERSION}"),
    ]))
}

/// Validates every Kubernetes object of `manifests/` (the kustomization is kustomize's
/// own file, not an object).
pub fn check() -> Result<()> {
    let dir = root().join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no manifests in {}", dir.display());
    }
    if !validator().is_file() {
        bail!("kubernetes-validate is not installed: run `cargo xtask setup`");
    }
    run(Command::new(validator())
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files))
    .context("manifests/ failed offline validation")?;
    eprintln!(
        "xtask: {} manifest files valid against Kubernetes {KUBERNETES_VERSION}",
        files.len()
    );
    Ok(())
}
