//! Builds the kernel programs (`mesh-ebpf`) for the BPF target and leaves the object in
//! OUT_DIR, where `src/ebpf` embeds it with `include_bytes_aligned!`; generates the mesh
//! CA's gRPC code (`proto/ca.proto`, included by `src/ca`).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    compile_protos()?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "mesh-ebpf")
        .ok_or_else(|| anyhow!("mesh-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("mesh-ebpf manifest has no parent"))?;
    // The nested cargo's progress lines would each become a `cargo:warning`; keep only
    // its diagnostics.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Generates the CA service's messages, client and server into OUT_DIR. protox parses the
/// .proto in Rust, so a build machine needs no `protoc`.
fn compile_protos() -> anyhow::Result<()> {
    const PROTO: &str = "proto/ca.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"]).context("compile proto/ca.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("generate the CA's gRPC code")
}
