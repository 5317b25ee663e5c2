//! Making sure the pin directory is on a BPF file system, mounting bpffs at
//! /sys/fs/bpf when the host has not (as Cilium's agent does).
use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> std::io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Ensures `pin_dir` can be created on bpffs, mounting /sys/fs/bpf if needed.
pub fn ensure(pin_dir: &Path) -> Result<(), String> {
    let mut existing = pin_dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .ok_or_else(|| format!("{} has no existing parent", pin_dir.display()))?;
    }
    if is_bpffs(existing).map_err(|e| format!("statfs {}: {e}", existing.display()))? {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if pin_dir.starts_with(default) && existing == default {
        let target = CString::new(DEFAULT_BPFFS).expect("no NUL");
        let fstype = CString::new("bpf").expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "{DEFAULT_BPFFS} is not a bpf file system and mounting one failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        tracing::info!("mounted bpffs at {DEFAULT_BPFFS}");
        return Ok(());
    }
    Err(format!(
        "{} is not on a bpf file system; choose bpf.pinDir under a bpffs mount such as {DEFAULT_BPFFS}",
        pin_dir.display()
    ))
}
