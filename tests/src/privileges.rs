//! Whether this process may build labs: root, able to create a network
//! namespace and a cgroup. Checked once per process.

use std::sync::OnceLock;

use crate::cgroup::cgroup2_mount;
use crate::netns::Netns;

/// Checks that labs can be built here. If not: with `CI=true` it panics
/// (privileged tests must fail in CI, not pass by skipping); otherwise it
/// prints `SKIP: <reason>` to stderr and returns false, and the test should
/// return.
pub fn require_privileges() -> bool {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    match RESULT.get_or_init(probe) {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and lab tests cannot run: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            false
        }
    }
}

fn probe() -> Result<(), String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err("lab tests need root (network namespaces, cgroups, BPF)".into());
    }
    let cg2 = std::fs::read_to_string("/proc/mounts")
        .ok()
        .filter(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2")))
        .map(|_| cgroup2_mount())
        .ok_or("no cgroup2 file system is mounted")?;
    let probe_name = format!("mesh-probe-{}", std::process::id());
    let cg = cg2.join(&probe_name);
    std::fs::create_dir(&cg).map_err(|e| format!("cannot create a cgroup in {}: {e}", cg2.display()))?;
    let _ = std::fs::remove_dir(&cg);
    crate::cmd::try_run("ip", ["netns", "add", &probe_name])
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    Netns::delete(&probe_name).map_err(|e| format!("cannot delete a network namespace: {e}"))?;
    Ok(())
}
