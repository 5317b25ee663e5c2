//! mesh-node: the per-node daemon of the mesh.
//!
//! Config sources (`config`) build the state store (`state`); the datapath (`ebpf`)
//! loads the kernel programs and keeps their maps in step with the state; the listeners
//! (`proxy`) carry captured connections; `app` wires them together.
pub mod admin;
pub mod app;
pub mod ca;
pub mod config;
pub mod ebpf;
pub mod explain;
pub mod hbone;
pub mod identity;
mod labelled_io;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod secrets;
pub mod state;
