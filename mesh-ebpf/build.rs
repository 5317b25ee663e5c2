use std::env;

/// Rebuild when bpf-linker changes: it is not a cargo dependency, so cargo cannot see it.
fn main() {
    let linker = which::which("bpf-linker")
        .unwrap_or_else(|err| panic!("bpf-linker not found ({err}); run `cargo xtask setup` to install it"));
    println!("cargo:rerun-if-changed={}", linker.display());
    let _ = env::var("OUT_DIR");
}
