//! Builds the kernel programs (`mesh-ebpf`) for the BPF target and leaves the object in
//! OUT_DIR, where `src/ebpf` embeds it with `include_bytes_aligned!`; generates the gRPC
//! code of the mesh CA (`proto/ca.proto`, included by `src/ca`) and of the admin API
//! (`proto/admin.proto`, included by `src/admin`).
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

/// Generates the gRPC messages, clients and servers of the mesh CA (`proto/ca.proto`) and
/// of the daemon's admin API (`proto/admin.proto`) into OUT_DIR. protox parses the .proto
/// files in Rust, so a build machine needs no `protoc`.
fn compile_protos() -> anyhow::Result<()> {
    const PROTOS: [&str; 2] = ["proto/ca.proto", "proto/admin.proto"];
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"]).context("compile proto/*.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("generate the gRPC code")
}
