//! mesh-node: the per-node daemon of the mesh.
//!
//! Config sources (`config`) build the state store (`state`); the datapath (`ebpf`)
//! loads the kernel programs and keeps their maps in step with the state; the listeners
//! (`proxy`) carry captured connections; `app` wires them together.
pub mod app;
pub mod config;
pub mod ebpf;
pub mod identity;
pub mod proxy;
pub mod state;
