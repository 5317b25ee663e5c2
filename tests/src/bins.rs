//! Finding the binaries the lab runs: `mesh-node` (the daemon, built by its
//! own package) and `labtool` (this package's test client/server).

use std::path::PathBuf;

/// `mesh-node`: `$MESH_NODE_BIN`, else `target/<profile>/mesh-node` beside
/// the running test executable. Panics if it is not there.
pub fn mesh_node_bin() -> PathBuf {
    find_bin(
        "mesh-node",
        "MESH_NODE_BIN",
        "build it first: cargo build -p mesh-node (cargo xtask test does this)",
    )
}

/// `labtool`: `$LABTOOL_BIN`, else `target/<profile>/labtool`. Panics if it
/// is not there.
pub fn labtool_bin() -> PathBuf {
    find_bin(
        "labtool",
        "LABTOOL_BIN",
        "build it first: cargo build -p mesh-tests --bin labtool (cargo test -p mesh-tests does this)",
    )
}

pub(crate) fn find_bin(name: &str, env: &str, hint: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "${env} is {}, which is not a file",
            path.display()
        );
        return path;
    }
    let path = profile_dir().join(name);
    assert!(path.is_file(), "{name} not found at {}: {hint}", path.display());
    path
}

/// `target/<profile>`: test executables live in its `deps/` (or
/// `examples/`), binaries such as xtask in it directly.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the current executable");
    let dir = exe.parent().expect("the executable has a parent dir");
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}
