//! `cargo xtask setup`: everything a fresh machine needs to build and test the mesh,
//! installed only when missing, so a second run takes well under a second.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// Debian packages used by the tests, the demo and the benchmark (iperf3, sockperf,
/// haproxy, stunnel4 and socat are its load and baselines; the font draws its chart).
const PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "curl",
    "python3",
    "socat",
    "tcpdump",
    "bpftool",
    // promtool checks the metrics scrape in the observability tests.
    "prometheus",
    // The virtualenv of kubernetes-validate (manifests/ checks).
    "python3-venv",
    "iperf3",
    "sockperf",
    "haproxy",
    "stunnel4",
    "fonts-dejavu-core",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    crate::manifests::install()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8(o.stdout)?.trim())),
        _ => {
            eprintln!("setup: installing the nightly toolchain");
            run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
            let o = Command::new("rustc")
                .args(["+nightly", "--print", "sysroot"])
                .output()?;
            Ok(PathBuf::from(String::from_utf8(o.stdout)?.trim()))
        }
    }
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// bpf-linker must link against the nightly's own LLVM (a plain `cargo install` fails):
/// point LLVM_PREFIX at a directory whose lib/libLLVM.so is the nightly's library.
fn bpf_linker() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    // bpf-linker loads the nightly's libLLVM, which rustup puts on the library path when
    // rustc runs it; do the same to ask it for its version.
    let installed = Command::new(cargo_home().join("bin/bpf-linker"))
        .arg("--version")
        .env("LD_LIBRARY_PATH", sysroot.join("lib"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    let (lib, major) = find_libllvm(&sysroot.join("lib"))?;
    let prefix = cargo_home().join("mesh-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        lib.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix))
}

/// `libLLVM.so.<major>.<minor>-rust-…` in the nightly's lib dir, and its major version.
fn find_libllvm(dir: &Path) -> Result<(PathBuf, String)> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major: String = version.chars().take_while(char::is_ascii_digit).collect();
            if !major.is_empty() {
                return Ok((dir.join(&name), major));
            }
        }
    }
    bail!(
        "no libLLVM.so.<version> in {}; is the nightly toolchain complete?",
        dir.display()
    )
}
