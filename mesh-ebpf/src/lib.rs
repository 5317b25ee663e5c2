#![no_std]
// This file exists so that `mesh-node` can take a build-dependency on this crate, which
// makes cargo rebuild the daemon when the kernel programs change. The programs
// themselves are in `main.rs`.
