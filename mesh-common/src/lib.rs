//! Types shared by the kernel programs (`mesh-ebpf`) and the daemon (`mesh-node`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and padded explicitly, so the byte layout
//! seen by the verifier and by user space is the same. Map names are defined once here
//! and used on both sides. Addresses are stored as the kernel hands them out
//! (network byte order, IPv4 in word 0); ports are stored in host byte order.
#![no_std]

/// Enrolled workloads: cgroup id (`u64`) → [`Workload`]. Written by the daemon, read by
/// `connect4`/`connect6`.
pub const MAP_ENROLLED: &str = "MESH_ENROLLED";
/// Original destinations of captured connections by socket cookie (`u64`) → [`OrigDst`].
/// Written by `connect4`/`connect6`, moved to [`MAP_ORIG_BY_TUPLE`] by `sock_ops`.
pub const MAP_ORIG_BY_COOKIE: &str = "MESH_ORIG_CK";
/// Original destinations by the connection's 4-tuple ([`SockKey`]) → [`OrigDst`].
/// Written by `sock_ops`, read and deleted by the daemon when it accepts.
pub const MAP_ORIG_BY_TUPLE: &str = "MESH_ORIG_TUP";
/// One [`Settings`] entry at index 0. Written by the daemon.
pub const MAP_SETTINGS: &str = "MESH_SETTINGS";
/// Excluded IPv4 destinations: LPM key of 4 address bytes → `u8` (1).
pub const MAP_EXCLUDED_V4: &str = "MESH_EXCL_V4";
/// Excluded IPv6 destinations: LPM key of 16 address bytes → `u8` (1).
pub const MAP_EXCLUDED_V6: &str = "MESH_EXCL_V6";
/// Excluded destination ports (host order `u16`) → `u8` (1).
pub const MAP_EXCLUDED_PORTS: &str = "MESH_EXCL_PORT";
/// Established captured sockets by [`SockKey`], for in-kernel acceleration (`sk_msg`).
pub const MAP_SOCKETS: &str = "MESH_SOCKS";
/// Per-CPU `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "MESH_COUNTERS";
/// Kernel fast path of policy: [`VerdictKey`] → `u8` ([`VERDICT_DENY`] or
/// [`VERDICT_ALLOW`]). Written by the daemon from the policies it can decide at the
/// source; read by `connect4`/`connect6`, which refuse a denied connect with EPERM.
pub const MAP_VERDICTS: &str = "MESH_VERDICT";
pub const VERDICT_DENY: u8 = 1;
pub const VERDICT_ALLOW: u8 = 2;
pub const MAX_VERDICTS: u32 = 65_536;

/// (source workload's cgroup, destination address, destination port). Port 0 means "any
/// port without an entry of its own".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub cgroup_id: u64,
    /// Network byte order, IPv4 in word 0.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Sources that may open TCP connections to enrolled workloads in STRICT mode: the
/// addresses this node's daemon connects from. [`IpKey`] → `u8` (1).
pub const MAP_TRUSTED_SOURCES: &str = "MESH_TRUSTED";

/// Per-flow kernel counters: [`FlowKey`] → per-CPU [`FlowCounters`]. Written by
/// `connect4`/`connect6` (opened, denied), `sock_ops` (closed, bytes) and `mesh_ingress`
/// (inbound denials); harvested and deleted by the daemon when idle.
pub const MAP_FLOWS: &str = "MESH_FLOWS";
/// Live captured sockets by cookie (`u64`) → [`FlowSocket`], so that `sock_ops` can
/// count a connection's close and bytes on its flow. Written and deleted by `sock_ops`.
pub const MAP_FLOW_SOCKETS: &str = "MESH_FLOW_SK";
/// Ring buffer of [`KernelEvent`]s the daemon never sees otherwise (connects refused in
/// the kernel). Written by the programs, read by the daemon's flow stream.
pub const MAP_FLOW_EVENTS: &str = "MESH_FLOW_EV";
pub const MAX_FLOWS: u32 = 16_384;
pub const FLOW_EVENTS_BYTES: u32 = 256 * 1024;

/// [`FlowKey::direction`]: a connection an enrolled workload opened.
pub const FLOW_OUTBOUND: u16 = 0;
/// [`FlowKey::direction`]: a connection attempt towards an enrolled workload.
pub const FLOW_INBOUND: u16 = 1;

/// (workload's cgroup, peer address, destination port, direction): the key of the
/// kernel's per-flow counters. Bounded by workloads × peers × ports, not connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The enrolled workload: the source of an outbound flow, the destination of an
    /// inbound one.
    pub cgroup_id: u64,
    /// The other end (destination of outbound, source of inbound). Network byte order,
    /// IPv4 in word 0.
    pub addr: [u32; 4],
    /// The destination port, host byte order.
    pub port: u16,
    pub family: u16,
    pub direction: u16,
    pub _pad: u16,
}

/// Per-CPU counters of one [`FlowKey`]. Bytes are the kernel's own accounting of the
/// workload's socket (`tcp_sock.bytes_acked`/`bytes_received`, less SYN and FIN).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub opened: u64,
    pub closed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub denied: u64,
}

/// A live captured socket: its flow and when it was established.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSocket {
    pub key: FlowKey,
    pub started_ns: u64,
    /// Kernel bookkeeping of the socket's FINs (mesh-ebpf's business).
    pub fins: u16,
    pub _pad: [u16; 3],
}

/// [`KernelEvent::reason`]: the kernel policy fast path refused the connect.
pub const DENY_POLICY: u32 = 1;
/// [`KernelEvent::reason`]: the connect could not be captured safely (fail closed).
pub const DENY_UNCAPTURABLE: u32 = 2;
/// [`KernelEvent::reason`]: a SYN from outside the mesh to a STRICT workload.
pub const DENY_STRICT_BYPASS: u32 = 3;

/// A connection the kernel refused, for `mesh-node flows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelEvent {
    pub key: FlowKey,
    /// `bpf_ktime_get_ns` at the event.
    pub time_ns: u64,
    /// One of the `DENY_*` constants.
    pub reason: u32,
    pub _pad: u32,
}

/// Every map, in the order the daemon pins and reports them.
pub const ALL_MAPS: [&str; 14] = [
    MAP_ENROLLED,
    MAP_ORIG_BY_COOKIE,
    MAP_ORIG_BY_TUPLE,
    MAP_SETTINGS,
    MAP_EXCLUDED_V4,
    MAP_EXCLUDED_V6,
    MAP_EXCLUDED_PORTS,
    MAP_SOCKETS,
    MAP_COUNTERS,
    MAP_TRUSTED_SOURCES,
    MAP_VERDICTS,
    MAP_FLOWS,
    MAP_FLOW_SOCKETS,
    MAP_FLOW_EVENTS,
];

/// Capacities. Changing one changes the pinned map layout: a daemon refuses to adopt
/// maps of another size and asks for `mesh-node uninstall`.
pub const MAX_WORKLOADS: u32 = 16_384;
pub const MAX_PENDING_CONNECTIONS: u32 = 65_536;
pub const MAX_EXCLUSIONS: u32 = 1_024;
pub const MAX_SOCKETS: u32 = 65_536;
pub const MAX_TRUSTED_SOURCES: u32 = 256;

/// Program names (the BPF function names) as seen by aya.
pub const PROG_CONNECT4: &str = "mesh_connect4";
pub const PROG_CONNECT6: &str = "mesh_connect6";
pub const PROG_SOCK_OPS: &str = "mesh_sock_ops";
pub const PROG_SK_MSG: &str = "mesh_sk_msg";
pub const PROG_INGRESS: &str = "mesh_ingress";

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// [`Workload::flags`]: inbound TCP from anything but the node's daemon is dropped.
pub const WORKLOAD_STRICT: u32 = 1;

/// An address, for map keys: network byte order, IPv4 in `addr[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    pub addr: [u32; 4],
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
}

/// An enrolled workload as the kernel knows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Index of the workload in the daemon's state (stable while the config is).
    pub id: u32,
    pub flags: u32,
}

/// The destination a workload asked for before `connect` was rewritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network byte order; IPv4 in `addr[0]`, the other words zero.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    pub _pad: u32,
    /// cgroup id of the workload that connected: the kernel's word on who the source is.
    pub cgroup_id: u64,
}

/// A TCP connection as seen from its client: (client address, server address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network byte order; IPv4 in word 0 (IPv4-mapped IPv6 is stored as IPv4).
    pub client_addr: [u32; 4],
    pub server_addr: [u32; 4],
    /// Host byte order.
    pub client_port: u16,
    pub server_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// Node-wide settings, written by the daemon at start and on reload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Capture address (network byte order); valid when [`SETTINGS_HAS_V4`] is set.
    pub capture_v4: u32,
    pub capture_v6: [u32; 4],
    /// Capture port, host byte order.
    pub capture_port: u16,
    pub flags: u16,
}

pub const SETTINGS_HAS_V4: u16 = 1;
pub const SETTINGS_HAS_V6: u16 = 2;
/// Put established captured sockets into [`MAP_SOCKETS`]. Off by default: on the kernels
/// tested, a socket in a sockmap can see a blocking `recv` with `SO_RCVTIMEO` return
/// EAGAIN early (tcp_bpf_recvmsg), which breaks ordinary applications.
pub const SETTINGS_SOCKET_MAP: u16 = 4;

/// Indexes of [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IPv4 connects of enrolled workloads redirected to the capture address.
    CapturedV4 = 0,
    /// IPv6 connects (including IPv4-mapped) redirected.
    CapturedV6 = 1,
    /// Connects of enrolled workloads left alone by an exclusion (loopback, CIDR, port).
    Excluded = 2,
    /// Connects refused in the kernel because they could not be captured safely.
    Refused = 3,
    /// Captured connections re-keyed by 4-tuple at establishment.
    Established = 4,
    /// Captured connections that could not be put into the socket map.
    SockmapFull = 5,
    /// Payload bytes sent by captured client sockets, counted by `sk_msg`.
    SkMsgBytes = 6,
    /// Connection attempts (SYN) to a STRICT workload from outside the mesh, dropped.
    BypassDropped = 7,
    /// Connection attempts to a PERMISSIVE workload from outside the mesh, let through.
    BypassAllowed = 8,
    /// Connects refused by the policy fast path (EPERM at `connect`).
    PolicyDenied = 9,
}

/// Room for counters to come without changing the pinned map's layout.
pub const COUNTER_SLOTS: u32 = 32;

impl Counter {
    pub const ALL: [Counter; 10] = [
        Counter::CapturedV4,
        Counter::CapturedV6,
        Counter::Excluded,
        Counter::Refused,
        Counter::Established,
        Counter::SockmapFull,
        Counter::SkMsgBytes,
        Counter::BypassDropped,
        Counter::BypassAllowed,
        Counter::PolicyDenied,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::CapturedV4 => "captured_v4",
            Counter::CapturedV6 => "captured_v6",
            Counter::Excluded => "excluded",
            Counter::Refused => "refused",
            Counter::Established => "established",
            Counter::SockmapFull => "sockmap_full",
            Counter::SkMsgBytes => "sk_msg_bytes",
            Counter::BypassDropped => "bypass_dropped",
            Counter::BypassAllowed => "bypass_allowed",
            Counter::PolicyDenied => "policy_denied",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain `repr(C)` data with explicit padding and no pointers; any bit pattern
    // is a valid value.
    unsafe impl aya::Pod for Workload {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VerdictKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowCounters {}
}
