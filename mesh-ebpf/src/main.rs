//! The mesh's kernel programs.
//!
//! - `mesh_connect4` / `mesh_connect6` (cgroup sock_addr): redirect the TCP connects of
//!   enrolled workloads to the node daemon's capture address, remembering the original
//!   destination by socket cookie.
//! - `mesh_sock_ops`: when a captured connection is established, re-key its original
//!   destination by 4-tuple (what the daemon sees when it accepts) and add the socket to
//!   the socket map.
//!   It also counts each captured connection's close and bytes on its flow
//!   (`MESH_FLOWS`), from TCP state changes.
//! - `mesh_sk_msg`: counts payload bytes of captured sockets; the hook for in-kernel
//!   acceleration.
//! - `mesh_ingress` (cgroup skb ingress): inbound strictness. A TCP SYN to an enrolled
//!   workload from anything but this node's daemon is counted, and dropped when the
//!   workload is STRICT.
//!
//! Fail closed: when a connect of an enrolled workload cannot be captured (no capture
//! address for its family, no room to remember it), the connect is refused (EPERM)
//! rather than sent directly.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_sock_addr, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_CLOSING, BPF_TCP_FIN_WAIT2,
        BPF_TCP_LAST_ACK,
    },
    helpers::bpf_skb_cgroup_id,
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_skb, cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash,
    },
    programs::{SkBuffContext, SkMsgContext, SockAddrContext, SockOpsContext},
    EbpfContext as _,
};
use mesh_common::{
    Counter, FlowCounters, FlowKey, FlowSocket, IpKey, KernelEvent, OrigDst, Settings, SockKey, VerdictKey,
    Workload, AF_INET, AF_INET6, COUNTER_SLOTS, DENY_POLICY, DENY_STRICT_BYPASS, DENY_UNCAPTURABLE,
    FLOW_EVENTS_BYTES, FLOW_INBOUND, FLOW_OUTBOUND, MAX_EXCLUSIONS, MAX_FLOWS, MAX_PENDING_CONNECTIONS,
    MAX_SOCKETS, MAX_TRUSTED_SOURCES, MAX_VERDICTS, MAX_WORKLOADS, SETTINGS_HAS_V4, SETTINGS_HAS_V6,
    SETTINGS_SOCKET_MAP, VERDICT_DENY, WORKLOAD_STRICT,
};

/// cgroup id → enrolled workload. Written by the daemon.
#[map(name = "MESH_ENROLLED")]
static ENROLLED: HashMap<u64, Workload> = HashMap::pinned(MAX_WORKLOADS, 0);

/// Socket cookie → original destination, between connect and establishment. Written by
/// connect4/6, consumed by sock_ops; LRU so that failed connects age out.
#[map(name = "MESH_ORIG_CK")]
static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

/// 4-tuple → original destination. Written by sock_ops, consumed by the daemon on accept.
#[map(name = "MESH_ORIG_TUP")]
static ORIG_BY_TUPLE: LruHashMap<SockKey, OrigDst> = LruHashMap::pinned(MAX_PENDING_CONNECTIONS, 0);

/// Node settings (capture address) at index 0. Written by the daemon.
#[map(name = "MESH_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Excluded IPv4 destination CIDRs. Written by the daemon.
#[map(name = "MESH_EXCL_V4")]
static EXCLUDED_V4: LpmTrie<[u8; 4], u8> = LpmTrie::pinned(MAX_EXCLUSIONS, 0);

/// Excluded IPv6 destination CIDRs. Written by the daemon.
#[map(name = "MESH_EXCL_V6")]
static EXCLUDED_V6: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(MAX_EXCLUSIONS, 0);

/// Excluded destination ports (host order), including the mesh's own. Written by the daemon.
#[map(name = "MESH_EXCL_PORT")]
static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::pinned(MAX_EXCLUSIONS, 0);

/// Established captured client sockets. Written by sock_ops.
#[map(name = "MESH_SOCKS")]
static SOCKETS: SockHash<SockKey> = SockHash::pinned(MAX_SOCKETS, 0);

/// Per-CPU counters indexed by `mesh_common::Counter`. Written by every program.
#[map(name = "MESH_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Policy verdicts the source node can decide. Written by the daemon.
#[map(name = "MESH_VERDICT")]
static VERDICTS: HashMap<VerdictKey, u8> = HashMap::pinned(MAX_VERDICTS, 0);

/// Per-flow counters. Written by connect4/6, sock_ops and ingress; harvested by the daemon.
#[map(name = "MESH_FLOWS")]
static FLOWS: PerCpuHashMap<FlowKey, FlowCounters> = PerCpuHashMap::pinned(MAX_FLOWS, 0);

/// Live captured sockets by cookie → their flow. Written and deleted by sock_ops; LRU so
/// that a socket whose close was never seen cannot fill it.
#[map(name = "MESH_FLOW_SK")]
static FLOW_SOCKETS: LruHashMap<u64, FlowSocket> = LruHashMap::pinned(MAX_SOCKETS, 0);

/// Connections refused in the kernel, for the daemon's flow stream. Written by
/// connect4/6 and ingress.
#[map(name = "MESH_FLOW_EV")]
static FLOW_EVENTS: RingBuf = RingBuf::pinned(FLOW_EVENTS_BYTES, 0);

/// Adds to this CPU's counters of `key`, creating the flow on its first use. A full map
/// loses the count (the daemon harvests idle flows, and reports the fill ratio).
#[inline(always)]
fn flow(key: &FlowKey, add: impl FnOnce(&mut FlowCounters)) {
    if FLOWS.get_ptr_mut(key).is_none() {
        let _ = FLOWS.insert(key, &FlowCounters::default(), u64::from(BPF_NOEXIST));
    }
    if let Some(c) = FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of an element that exists; programs do not migrate.
        add(unsafe { &mut *c });
    }
}

/// Counts a connection the kernel refused and tells the daemon why (best effort: a full
/// ring drops the event, never the decision).
#[inline(always)]
fn denied(key: FlowKey, reason: u32) {
    flow(&key, |c| c.denied += 1);
    let event = KernelEvent {
        key,
        // SAFETY: the helper has no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        reason,
        _pad: 0,
    };
    let _ = FLOW_EVENTS.output::<KernelEvent>(&event, 0);
}

#[inline(always)]
fn outbound_key(orig: &OrigDst) -> FlowKey {
    FlowKey {
        cgroup_id: orig.cgroup_id,
        addr: orig.addr,
        port: orig.port,
        family: orig.family,
        direction: FLOW_OUTBOUND,
        _pad: 0,
    }
}

/// Whether policy denies this connect: an entry for the exact port decides, else the
/// destination's any-port entry.
#[inline(always)]
fn policy_denies(cgroup_id: u64, addr: [u32; 4], family: u16, port: u16) -> bool {
    let mut key = VerdictKey {
        cgroup_id,
        addr,
        port,
        family,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { VERDICTS.get(&key) }.copied() {
        return v == VERDICT_DENY;
    }
    key.port = 0;
    // SAFETY: as above.
    unsafe { VERDICTS.get(&key) }.copied() == Some(VERDICT_DENY)
}

/// Addresses this node's daemon connects to workloads from. Written by the daemon.
#[map(name = "MESH_TRUSTED")]
static TRUSTED_SOURCES: HashMap<IpKey, u8> = HashMap::pinned(MAX_TRUSTED_SOURCES, 0);

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SK_PASS: u32 = 1;

#[inline(always)]
fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *slot += n };
    }
}

#[inline(always)]
fn enrolled() -> bool {
    // SAFETY: the helper has no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is only tested for presence.
    unsafe { ENROLLED.get(&cgroup).is_some() }
}

#[inline(always)]
fn settings() -> Option<Settings> {
    SETTINGS.get(0).copied()
}

#[inline(always)]
fn v4_excluded(addr: u32, port: u16) -> bool {
    let bytes = addr.to_ne_bytes();
    bytes[0] == 127
        // SAFETY: presence test only.
        || unsafe { EXCLUDED_PORTS.get(&port).is_some() }
        || EXCLUDED_V4.get(&Key::new(32, bytes)).is_some()
}

#[inline(always)]
fn v6_excluded(addr: &[u32; 4], port: u16) -> bool {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = addr[i].to_ne_bytes();
        bytes[i * 4] = w[0];
        bytes[i * 4 + 1] = w[1];
        bytes[i * 4 + 2] = w[2];
        bytes[i * 4 + 3] = w[3];
        i += 1;
    }
    let loopback =
        addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && bytes[15] == 1 && bytes[12..15] == [0, 0, 0];
    // SAFETY: presence test only.
    loopback
        || unsafe { EXCLUDED_PORTS.get(&port).is_some() }
        || EXCLUDED_V6.get(&Key::new(128, bytes)).is_some()
}

/// `::ffff:a.b.c.d` → `a.b.c.d` (network order word).
#[inline(always)]
fn v4_mapped(addr: &[u32; 4]) -> Option<u32> {
    (addr[0] == 0 && addr[1] == 0 && addr[2].to_ne_bytes() == [0, 0, 0xff, 0xff]).then_some(addr[3])
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: OrigDst) -> bool {
    // SAFETY: the context is a valid sock_addr for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_BY_COOKIE.insert(&cookie, &orig, 0).is_ok()
}

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx).unwrap_or_else(|verdict| verdict)
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr.
    if unsafe { (*sa).type_ } != SOCK_STREAM || !enrolled() {
        return Ok(ALLOW);
    }
    // SAFETY: as above.
    let (addr, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    let settings = settings().ok_or(REFUSE)?;
    if settings.flags & SETTINGS_HAS_V4 == 0 {
        count(Counter::Refused, 1);
        return Err(REFUSE);
    }
    if addr == settings.capture_v4 && port == settings.capture_port {
        // Already redirected by another instance of this program (daemon restart).
        return Ok(ALLOW);
    }
    if v4_excluded(addr, port) {
        count(Counter::Excluded, 1);
        return Ok(ALLOW);
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let orig = OrigDst {
        addr: [addr, 0, 0, 0],
        port,
        family: AF_INET,
        _pad: 0,
        cgroup_id,
    };
    if policy_denies(orig.cgroup_id, orig.addr, orig.family, orig.port) {
        count(Counter::PolicyDenied, 1);
        denied(outbound_key(&orig), DENY_POLICY);
        return Err(REFUSE);
    }
    if !remember(ctx, orig) {
        count(Counter::Refused, 1);
        denied(outbound_key(&orig), DENY_UNCAPTURABLE);
        return Err(REFUSE);
    }
    flow(&outbound_key(&orig), |c| c.opened += 1);
    // SAFETY: user_ip4/user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = settings.capture_v4;
        (*sa).user_port = u32::from(settings.capture_port.to_be());
    }
    count(Counter::CapturedV4, 1);
    Ok(ALLOW)
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx).unwrap_or_else(|verdict| verdict)
}

fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr.
    if unsafe { (*sa).type_ } != SOCK_STREAM || !enrolled() {
        return Ok(ALLOW);
    }
    // SAFETY: as above; user_ip6 is readable word by word.
    let (addr, port) = unsafe {
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            u16::from_be((*sa).user_port as u16),
        )
    };
    let settings = settings().ok_or(REFUSE)?;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (orig, capture) = if let Some(v4) = v4_mapped(&addr) {
        // An IPv6 socket connecting to an IPv4 peer: capture over IPv4-mapped IPv6.
        if settings.flags & SETTINGS_HAS_V4 == 0 {
            count(Counter::Refused, 1);
            return Err(REFUSE);
        }
        if v4 == settings.capture_v4 && port == settings.capture_port {
            return Ok(ALLOW);
        }
        if v4_excluded(v4, port) {
            count(Counter::Excluded, 1);
            return Ok(ALLOW);
        }
        let orig = OrigDst {
            addr: [v4, 0, 0, 0],
            port,
            family: AF_INET,
            _pad: 0,
            cgroup_id,
        };
        (orig, [0, 0, addr[2], settings.capture_v4])
    } else {
        if settings.flags & SETTINGS_HAS_V6 == 0 {
            count(Counter::Refused, 1);
            return Err(REFUSE);
        }
        if addr == settings.capture_v6 && port == settings.capture_port {
            return Ok(ALLOW);
        }
        if v6_excluded(&addr, port) {
            count(Counter::Excluded, 1);
            return Ok(ALLOW);
        }
        let orig = OrigDst {
            addr,
            port,
            family: AF_INET6,
            _pad: 0,
            cgroup_id,
        };
        (orig, settings.capture_v6)
    };
    if policy_denies(orig.cgroup_id, orig.addr, orig.family, orig.port) {
        count(Counter::PolicyDenied, 1);
        denied(outbound_key(&orig), DENY_POLICY);
        return Err(REFUSE);
    }
    if !remember(ctx, orig) {
        count(Counter::Refused, 1);
        denied(outbound_key(&orig), DENY_UNCAPTURABLE);
        return Err(REFUSE);
    }
    flow(&outbound_key(&orig), |c| c.opened += 1);
    // SAFETY: user_ip6/user_port are writable in connect6, word by word.
    unsafe {
        (*sa).user_ip6[0] = capture[0];
        (*sa).user_ip6[1] = capture[1];
        (*sa).user_ip6[2] = capture[2];
        (*sa).user_ip6[3] = capture[3];
        (*sa).user_port = u32::from(settings.capture_port.to_be());
    }
    count(Counter::CapturedV6, 1);
    Ok(ALLOW)
}

#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    try_sock_ops(&ctx);
    0
}

/// The 4-tuple of an established connection as its client sees it, with IPv4-mapped
/// IPv6 folded to IPv4 so that it matches what the daemon's IPv4 listener sees.
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> SockKey {
    let client_port = ctx.local_port() as u16;
    // remote_port holds the big-endian port in its upper half on little-endian hosts.
    let server_port = u32::from_be(ctx.remote_port()) as u16;
    let (family, client_addr, server_addr) = if ctx.family() == u32::from(AF_INET6) {
        let local = ctx.local_ip6();
        let remote = ctx.remote_ip6();
        match (v4_mapped(&local), v4_mapped(&remote)) {
            (Some(l), Some(r)) => (AF_INET, [l, 0, 0, 0], [r, 0, 0, 0]),
            _ => (AF_INET6, local, remote),
        }
    } else {
        (AF_INET, [ctx.local_ip4(), 0, 0, 0], [ctx.remote_ip4(), 0, 0, 0])
    };
    SockKey {
        client_addr,
        server_addr,
        client_port,
        server_port,
        family,
        _pad: 0,
    }
}

#[inline(always)]
fn try_sock_ops(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx),
        BPF_SOCK_OPS_STATE_CB => state_changed(ctx),
        _ => {}
    }
}

/// [`FlowSocket::fins`] bits: which FINs a captured socket has seen, so that its close
/// counts payload bytes only (the kernel's byte counts include SYN and FIN).
const PEER_FIN: u16 = 1;
const OWN_FIN_ACKED: u16 = 2;

/// A captured client socket changed TCP state: remember FINs, and at its close count the
/// close and its payload bytes on its flow.
#[inline(always)]
fn state_changed(ctx: &SockOpsContext) {
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    // SAFETY: the context is a valid bpf_sock_ops for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(sock) = FLOW_SOCKETS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: an element of the map, valid for this program run.
    let sock = unsafe { &mut *sock };
    let fins = match (old, new) {
        (_, BPF_TCP_CLOSE_WAIT) | (_, BPF_TCP_CLOSING) => PEER_FIN,
        (_, BPF_TCP_FIN_WAIT2) => OWN_FIN_ACKED,
        // FIN_WAIT2 closes when the peer's FIN arrives (the socket becomes a time-wait
        // one); LAST_ACK and CLOSING when the peer acknowledges our FIN.
        (BPF_TCP_FIN_WAIT2, BPF_TCP_CLOSE) => PEER_FIN,
        (BPF_TCP_LAST_ACK, BPF_TCP_CLOSE) | (BPF_TCP_CLOSING, BPF_TCP_CLOSE) => OWN_FIN_ACKED,
        _ => 0,
    };
    sock.fins |= fins;
    if new != BPF_TCP_CLOSE {
        return;
    }
    // SAFETY: ctx.ops points at the live bpf_sock_ops of this callback.
    let (acked, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    let own_fin = u64::from(sock.fins & OWN_FIN_ACKED != 0);
    let peer_fin = u64::from(sock.fins & PEER_FIN != 0);
    let key = sock.key;
    flow(&key, |c| {
        c.closed += 1;
        // bytes_acked counts our SYN too.
        c.bytes_sent += acked.saturating_sub(1 + own_fin);
        c.bytes_received += received.saturating_sub(peer_fin);
    });
    let _ = FLOW_SOCKETS.remove(&cookie);
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid bpf_sock_ops for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    let flow_socket = FlowSocket {
        key: outbound_key(&orig),
        // SAFETY: the helper has no preconditions.
        started_ns: unsafe { bpf_ktime_get_ns() },
        fins: 0,
        _pad: [0; 3],
    };
    // Without the entry or the callbacks the close is not counted: the daemon's own
    // counts remain exact, and the flow shows opened > closed.
    if FLOW_SOCKETS.insert(&cookie, &flow_socket, 0).is_ok() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    let mut key = sock_key(ctx);
    // If this fails the daemon does not find the destination and closes the connection.
    let _ = ORIG_BY_TUPLE.insert(&key, &orig, 0);
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    count(Counter::Established, 1);
    if settings().is_none_or(|s| s.flags & SETTINGS_SOCKET_MAP == 0) {
        return;
    }
    // SAFETY: ctx.ops points at the live bpf_sock_ops of this callback.
    if SOCKETS
        .update(&mut key, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count(Counter::SockmapFull, 1);
    }
}

#[sk_msg]
pub fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    count(Counter::SkMsgBytes, u64::from(ctx.size()));
    SK_PASS
}

const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[cgroup_skb]
pub fn mesh_ingress(ctx: SkBuffContext) -> i32 {
    try_ingress(&ctx).unwrap_or(ALLOW)
}

/// Only connection attempts are judged (SYN without ACK): established connections were
/// judged at their SYN, and everything else is not TCP to a listener.
fn try_ingress(ctx: &SkBuffContext) -> Result<i32, i64> {
    // SAFETY: the context is a valid __sk_buff for this helper.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // SAFETY: the value is copied out at once.
    let Some(workload) = (unsafe { ENROLLED.get(&cgroup) }).copied() else {
        return Ok(ALLOW);
    };
    let first: u8 = ctx.load(0)?;
    let (src, dst, tcp) = match first >> 4 {
        4 => {
            if ctx.load::<u8>(9)? != IPPROTO_TCP {
                return Ok(ALLOW);
            }
            let src: u32 = ctx.load(12)?;
            let dst: u32 = ctx.load(16)?;
            (
                IpKey {
                    addr: [src, 0, 0, 0],
                    family: AF_INET as u32,
                },
                dst_key_v4(dst),
                usize::from(first & 0x0f) * 4,
            )
        }
        6 => {
            // Extension headers are not followed: such a SYN is judged as not TCP.
            if ctx.load::<u8>(6)? != IPPROTO_TCP {
                return Ok(ALLOW);
            }
            let src: [u32; 4] = ctx.load(8)?;
            let dst: [u32; 4] = ctx.load(24)?;
            (
                IpKey {
                    addr: src,
                    family: AF_INET6 as u32,
                },
                IpKey {
                    addr: dst,
                    family: AF_INET6 as u32,
                },
                40,
            )
        }
        _ => return Ok(ALLOW),
    };
    let flags: u8 = ctx.load(tcp + 13)?;
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return Ok(ALLOW);
    }
    // The workload talking to itself, loopback, and the node's daemon are the mesh.
    let loopback = (src.family == AF_INET as u32 && src.addr[0].to_ne_bytes()[0] == 127)
        || (src.family == AF_INET6 as u32 && src.addr == [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    // SAFETY: presence test only.
    if loopback || src == dst || unsafe { TRUSTED_SOURCES.get(&src).is_some() } {
        return Ok(ALLOW);
    }
    if workload.flags & WORKLOAD_STRICT != 0 {
        count(Counter::BypassDropped, 1);
        let port: u16 = ctx.load(tcp + 2)?;
        denied(
            FlowKey {
                cgroup_id: cgroup,
                addr: src.addr,
                port: u16::from_be(port),
                family: src.family as u16,
                direction: FLOW_INBOUND,
                _pad: 0,
            },
            DENY_STRICT_BYPASS,
        );
        Ok(REFUSE)
    } else {
        count(Counter::BypassAllowed, 1);
        Ok(ALLOW)
    }
}

#[inline(always)]
fn dst_key_v4(dst: u32) -> IpKey {
    IpKey {
        addr: [dst, 0, 0, 0],
        family: AF_INET as u32,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
