#!/usr/bin/env python3
"""Does a socket-map splice keep TCP semantics on this kernel? (root; no dependencies)

The evidence behind `bpf.splice` using splice(2) instead of sk_msg/sk_skb redirection
(docs/architecture.md, "In-kernel splice"). Each probe builds the situation on loopback
with raw bpf(2) calls and tiny hand-assembled programs, and prints what it saw:

1. recv-after-half-close: a socket in a sockmap (no program at all) that has shut down
   writing and waits in a blocking recv (with and without SO_RCVTIMEO). A plain socket
   waits for the data; in a sockmap tcp_bpf_recvmsg returns EAGAIN at the first wakeup
   without data (the ACK of our FIN moves the socket to FIN_WAIT2 and wakes it).
2. sk_msg ingress redirect (workload socket -> peer workload socket's ingress): how much
   a sender can write while the receiver reads nothing. bpf_tcp_ingress charges only
   protocol-wide memory, not the receiver's rcvbuf.
3. sk_msg egress redirect (workload socket -> the daemon's upstream socket): blocking
   senders block, but a non-blocking sender with edge-triggered epoll gets EAGAIN and
   then never an EPOLLOUT (its own socket never had anything queued).
4. sk_skb verdict on the daemon's two sockets, redirecting each to the other's egress:
   how much a sender can write while the receiver reads nothing (the verdict consumes
   the receive queue, so the window stays open; the backlog queue has no bound).

Probes 2 and 4 stop at LIMIT_MIB so they do not exhaust the machine's TCP memory.
"""
import ctypes, os, select, socket, struct, threading, time

LIMIT_MIB = 512
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321  # x86_64


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def sockmap(n=2):
    return bpf(0, struct.pack("IIIII", 15, 4, 4, n, 0))  # BPF_MAP_TYPE_SOCKMAP


def put(m, i, sock):
    k, v = ctypes.c_uint32(i), ctypes.c_uint32(sock.fileno())
    bpf(2, struct.pack("IIQQQ", m, 0, ctypes.addressof(k), ctypes.addressof(v), 0))


def ins(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def load(prog_type, code, expected_attach=0):
    lic, c, log = ctypes.create_string_buffer(b"GPL"), ctypes.create_string_buffer(code), ctypes.create_string_buffer(65536)
    attr = struct.pack("IIQQIIQII16sII", prog_type, len(code) // 8, ctypes.addressof(c), ctypes.addressof(lic),
                       1, 65536, ctypes.addressof(log), 0, 0, b"probe", 0, expected_attach)
    return bpf(5, attr)


def attach(m, prog, attach_type):
    bpf(8, struct.pack("IIII", m, prog, attach_type, 0))


def cross(m, port_off, port, helper, flags):
    """Redirect to slot 1 when the socket's local port is `port`, else to slot 0."""
    return (ins(0x61, 2, 1, port_off) + ins(0xb7, 3, imm=0) + ins(0x55, 2, off=1, imm=port) + ins(0xb7, 3, imm=1)
            + ins(0x18, 2, 1, imm=m) + ins(0) + ins(0xb7, 4, imm=flags) + ins(0x85, imm=helper) + ins(0x95))


def pair():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    return c, s


def flood(sock, seconds=3):
    """Bytes a non-blocking writer gets accepted while nobody reads."""
    sock.setblocking(False)
    total, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop and total < LIMIT_MIB << 20:
        try:
            total += sock.send(b"x" * 65536)
        except BlockingIOError:
            if not select.select([], [sock], [], 0.5)[1]:
                break
        except OSError as e:
            return total, str(e)
    return total, None


def probe_recv_after_half_close():
    for in_map in (False, True):
        for timeout in (0, 5):
            c, s = pair()
            if in_map:
                put(sockmap(), 0, c)
            if timeout:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", timeout, 0))
            got = threading.Event()

            def server():
                while s.recv(100):
                    pass
                got.wait(2)  # answer well after the FIN was acknowledged
                s.send(b"answer")
                s.close()
            threading.Thread(target=server, daemon=True).start()
            c.send(b"request")
            c.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            try:
                res = f"got {c.recv(10)!r}"
            except OSError as e:
                res = f"{type(e).__name__} {e.errno}"
            got.set()
            print(f"  1. in sockmap={in_map!s:5} SO_RCVTIMEO={timeout}s: blocking recv -> {res} "
                  f"after {(time.monotonic() - t0) * 1000:.0f} ms")


def probe_sk_msg(ingress):
    a, da = pair()    # workload A's client socket, daemon's accepted socket
    du, bs = pair()   # daemon's upstream socket, workload B's accepted socket
    m = sockmap()
    prog = load(16, cross(m, 64, a.getsockname()[1], 60, 1 if ingress else 0))  # SK_MSG, msg_redirect_map
    attach(m, prog, 7)  # BPF_SK_MSG_VERDICT
    put(m, 0, a)
    put(m, 1, bs if ingress else du)
    a.send(b"ping")
    assert bs.recv(4) == b"ping"
    if ingress:
        total, err = flood(a)
        print(f"  2. sk_msg ingress redirect: sender wrote {total / 2**20:.0f} MiB while the receiver read nothing"
              + (f", then: {err}" if err else ""))
        return
    a.setblocking(False)
    ep = select.epoll()
    ep.register(a.fileno(), select.EPOLLOUT | select.EPOLLET)
    ep.poll(0.1)
    total = 0
    while True:
        try:
            total += a.send(b"x" * 65536)
        except BlockingIOError:
            break
    got, stop = 0, time.monotonic() + 5
    bs.setblocking(False)
    while got < total and time.monotonic() < stop:
        select.select([bs], [], [], 0.5)
        try:
            got += len(bs.recv(1 << 20))
        except BlockingIOError:
            pass
    print(f"  3. sk_msg egress redirect: EAGAIN after {total / 2**20:.1f} MiB; receiver drained "
          f"{got / 2**20:.1f} MiB; sender's EPOLLOUT events in 2 s: {len(ep.poll(2))}")


def probe_sk_skb():
    c, da = pair()
    du, s = pair()
    m = sockmap()
    prog = load(14, cross(m, 136, da.getsockname()[1], 52, 0), 38)  # SK_SKB, sk_redirect_map
    attach(m, prog, 38)  # BPF_SK_SKB_VERDICT
    put(m, 0, da)
    put(m, 1, du)
    c.send(b"ping")
    assert s.recv(4) == b"ping"
    total, err = flood(c)
    print(f"  4. sk_skb verdict between the daemon's sockets: sender wrote {total / 2**20:.0f} MiB "
          f"while the receiver read nothing" + (f", then: {err}" if err else ""))


if __name__ == "__main__":
    print(f"kernel {os.uname().release}")
    probe_recv_after_half_close()
    probe_sk_msg(ingress=True)
    probe_sk_msg(ingress=False)
    probe_sk_skb()
