//! cgroup v2 facts: where the hierarchy is mounted, cgroup ids, and our own cgroup.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A cgroup v2 id, as `bpf_get_current_cgroup_id()` returns it (the directory's inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CgroupId(pub u64);

/// The cgroup2 mount point, read from /proc/mounts (never assumed).
pub fn cgroup2_mount() -> std::io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cgroup2 file system is mounted (see /proc/mounts)",
            )
        })
}

/// Resolves a configured cgroup path: absolute paths must lie under the mount, relative
/// ones are taken relative to it.
pub fn resolve(mount: &Path, configured: &Path) -> Result<PathBuf, String> {
    let path = if configured.is_absolute() {
        configured.to_path_buf()
    } else {
        mount.join(configured)
    };
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{} must not contain '..'", configured.display()));
    }
    if !path.starts_with(mount) {
        return Err(format!(
            "{} is not under the cgroup2 mount {}",
            path.display(),
            mount.display()
        ));
    }
    Ok(path)
}

pub fn cgroup_id(path: &Path) -> std::io::Result<CgroupId> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() || !path.join("cgroup.procs").exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a cgroup v2 directory",
        ));
    }
    Ok(CgroupId(meta.ino()))
}

/// The cgroup this process runs in, as a path under `mount`.
pub fn own_cgroup(mount: &Path) -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup v2 entry in /proc/self/cgroup",
        )
    })?;
    Ok(mount.join(rel.trim_start_matches('/')))
}
