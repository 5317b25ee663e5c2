//! Same-node acceleration (`bpf.splice`): the bytes of a plain TCP connection (a workload
//! of this node, or a passthrough destination) move between the daemon's two sockets with
//! `splice(2)` through one pipe per direction, so payload pages are handed from one
//! socket to the other inside the kernel and never copied into the daemon's memory.
//!
//! Why not the `sk_msg`/`sk_skb` socket-map splice of design §2: on the kernels measured
//! (6.18) every variant breaks ordinary applications (a workload socket in a socket map
//! gets EAGAIN from a blocking `recv` after its half-close; redirects into a peer's
//! ingress or out of the daemon's sockets buffer without bound; redirects into the
//! daemon's upstream leave a non-blocking sender without any writability event).
//! docs/architecture.md ("In-kernel splice") has the evidence and the probe that shows it.
//!
//! TCP semantics are those of two ordinary sockets, because that is what the workloads
//! have: each direction is spliced until its source reaches EOF, then the other side is
//! shut down for writing (half-close in both directions, in order: the FIN is sent after
//! the last byte); an error on either side fails the whole connection, which the caller
//! turns into resets. A direction only reads when its pipe is empty and only drains the
//! pipe when its destination is writable, so a destination that stops reading stops the
//! source after at most one pipe of bytes (backpressure reaches the sender through TCP's
//! own windows).
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use tokio::{io::Interest, net::TcpStream};

/// Bytes one pipe holds (the kernel rounds to pages). 256 KiB moves a bulk transfer in
/// few system calls; small request/response exchanges do not depend on it.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Which way bytes move, from the point of view of the connection's source workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// From the source workload (the accepted socket) towards the destination.
    Request,
    /// From the destination back to the source workload.
    Response,
}

/// A pipe made for one direction of one connection; both ends close on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A smaller pipe (the default is 64 KiB) only costs more system calls, so a
        // refusal (e.g. past /proc/sys/fs/pipe-max-size) is not an error.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        // SAFETY: as above.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if size <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe {
            read,
            write,
            size: size as usize,
        })
    }
}

/// One `splice(2)` call, never blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from
    // sockets and a pipe owned by the caller); null offsets mean "current position".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves bytes both ways between `source` (the accepted socket of the source workload)
/// and `destination` until both directions reach EOF, like
/// `tokio::io::copy_bidirectional`; `progress` is told every chunk as it is read from its
/// socket, so that live byte counts grow during long transfers and are exact at the end.
/// Returns (request bytes, response bytes).
pub async fn bidirectional(
    source: &TcpStream,
    destination: &TcpStream,
    progress: &(dyn Fn(Way, u64) + Sync),
) -> io::Result<(u64, u64)> {
    let (up, down) = (Pipe::new()?, Pipe::new()?);
    tokio::try_join!(
        one_way(source, destination, &up, |n| progress(Way::Request, n)),
        one_way(destination, source, &down, |n| progress(Way::Response, n)),
    )
}

async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe, progress: impl Fn(u64)) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here: take whatever the socket has, up to one pipe.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            break;
        }
        progress(n as u64);
        total += n as u64;
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
    // Every byte is in `to`'s send queue: the FIN goes after them.
    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// A client, a spliced hop (the two daemon sockets) and a server, all on loopback.
    async fn hop() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(back.local_addr().unwrap()).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        (client, accepted, upstream, server)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[tokio::test]
    async fn both_directions_arrive_intact_with_half_close_and_exact_counts() {
        let (mut client, accepted, upstream, mut server) = hop().await;
        let (request, response) = (AtomicU64::new(0), AtomicU64::new(0));
        let progress = |way: Way, n: u64| {
            match way {
                Way::Request => request.fetch_add(n, Ordering::Relaxed),
                Way::Response => response.fetch_add(n, Ordering::Relaxed),
            };
        };
        let up = pattern(3 << 20, 0x55);
        let down = pattern(1 << 20, 0xaa);
        let splicing = bidirectional(&accepted, &upstream, &progress);
        let server_side = async {
            // The server answers only after the client's EOF: the client half-closed and
            // still reads.
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&down).await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        let client_side = async {
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let (spliced, at_server, at_client) = tokio::join!(splicing, server_side, client_side);
        assert_eq!(spliced.unwrap(), (up.len() as u64, down.len() as u64));
        assert!(at_server == up, "request bytes differ");
        assert!(at_client == down, "response bytes differ");
        assert_eq!(request.load(Ordering::Relaxed), up.len() as u64);
        assert_eq!(response.load(Ordering::Relaxed), down.len() as u64);
    }

    #[tokio::test]
    async fn a_reset_fails_the_splice() {
        let (client, accepted, upstream, _server) = hop().await;
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let err = bidirectional(&accepted, &upstream, &|_, _| {}).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }
}
