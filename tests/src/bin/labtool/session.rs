//! `labtool session`: one connection driven step by step, to check TCP semantics through
//! the mesh (half-close in either order, resets, backpressure, readiness, `MSG_PEEK`), and
//! the server modes that pair with it (`greet`, `reset`, `gated`).
//!
//! Blocking sockets use `SO_RCVTIMEO`/`SO_SNDTIMEO` (a receive timeout is what a socket
//! map broke); `--nonblocking` waits with edge-triggered epoll, which only wakes on a
//! real readiness change, so a lost wakeup shows as a timeout instead of being hidden by
//! level-triggered polling.
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::json;

use super::{pattern_byte, pattern_chunk, say};

/// What one session does, in order: optionally read to EOF first (the server closed
/// first), send `send` bytes, half-close or reset, then read to EOF.
#[derive(clap::Args)]
pub struct Plan {
    #[arg(long)]
    to: String,
    /// Pattern bytes to send (suffixes K, M, G).
    #[arg(long, default_value = "0", value_parser = super::parse_size)]
    send: u64,
    /// Read to EOF before sending (the server closes first).
    #[arg(long)]
    read_first: bool,
    /// Shut down writing after sending, then read to EOF.
    #[arg(long)]
    half_close: bool,
    /// After sending, close with SO_LINGER 0 (the peer sees a reset).
    #[arg(long)]
    reset: bool,
    /// Non-blocking socket, waiting with edge-triggered epoll; prints
    /// `backpressure at N` at the first EAGAIN of a write.
    #[arg(long)]
    nonblocking: bool,
    /// Peek (MSG_PEEK) before every read and check the read returns the same bytes.
    #[arg(long)]
    peek: bool,
    /// Check that what is read is the pattern (the peer sends the pattern).
    #[arg(long)]
    check: bool,
    /// Timeout for connecting and for every read, write and wait.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
}

#[derive(Default)]
struct Outcome {
    sent: u64,
    received: u64,
    /// Bytes written before the first EAGAIN, when the socket is non-blocking.
    backpressure_at: Option<u64>,
    error: Option<String>,
}

pub fn run(plan: &Plan) -> bool {
    let mut out = Outcome::default();
    let result = session(plan, &mut out);
    if let Err(e) = result {
        out.error = Some(e.to_string());
    }
    let ok = out.error.is_none();
    say(&json!({
        "sent": out.sent,
        "received": out.received,
        "backpressure_at": out.backpressure_at,
        "ok": ok,
        "error": out.error,
    })
    .to_string());
    ok
}

fn session(plan: &Plan, out: &mut Outcome) -> io::Result<()> {
    let timeout = Duration::from_millis(plan.timeout_ms);
    let to = super::resolve(&plan.to)?;
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let waiter = if plan.nonblocking {
        stream.set_nonblocking(true)?;
        Some(Epoll::new(&stream)?)
    } else {
        None
    };
    let io = Io {
        waiter: waiter.as_ref(),
        timeout,
        peek: plan.peek,
        check: plan.check,
    };
    if plan.read_first {
        io.read_to_eof(&mut stream, out)?;
    }
    io.send(&mut stream, plan.send, out)?;
    if plan.reset {
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
        say("reset sent");
        return Ok(());
    }
    if plan.half_close {
        stream.shutdown(Shutdown::Write)?;
    }
    if !plan.read_first {
        io.read_to_eof(&mut stream, out)?;
    }
    Ok(())
}

struct Io<'a> {
    waiter: Option<&'a Epoll>,
    timeout: Duration,
    peek: bool,
    check: bool,
}

impl Io<'_> {
    fn send(&self, stream: &mut TcpStream, total: u64, out: &mut Outcome) -> io::Result<()> {
        let chunk = pattern_chunk();
        while out.sent < total {
            // Chunks start at a multiple of 251, where the pattern starts over.
            let start = (out.sent % 251) as usize;
            let n = (total - out.sent).min((chunk.len() - start) as u64) as usize;
            match stream.write(&chunk[start..start + n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => out.sent += w as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.waiter.is_some() => {
                    if out.backpressure_at.is_none() {
                        out.backpressure_at = Some(out.sent);
                        say(&format!("backpressure at {}", out.sent));
                    }
                    self.wait(libc::EPOLLOUT)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(with_context("send", e)),
            }
        }
        Ok(())
    }

    fn read_to_eof(&self, stream: &mut TcpStream, out: &mut Outcome) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut peeked = vec![0u8; 64 * 1024];
        loop {
            if self.peek {
                // What MSG_PEEK shows must be what the next read returns.
                let p = loop {
                    match stream.peek(&mut peeked) {
                        Ok(p) => break p,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.waiter.is_some() => {
                            self.wait(libc::EPOLLIN)?
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(with_context("peek", e)),
                    }
                };
                let n = stream
                    .read(&mut buf[..p.max(1)])
                    .map_err(|e| with_context("recv", e))?;
                if n != p || buf[..n] != peeked[..n] {
                    return Err(io::Error::other(format!(
                        "MSG_PEEK showed {p} bytes, the read after it returned {n} different ones"
                    )));
                }
                if !self.take(&buf[..n], out)? {
                    return Ok(());
                }
                continue;
            }
            match stream.read(&mut buf) {
                Ok(n) => {
                    if !self.take(&buf[..n], out)? {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.waiter.is_some() => {
                    self.wait(libc::EPOLLIN)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(with_context("recv", e)),
            }
        }
    }

    /// Accounts for `data`; false at EOF.
    fn take(&self, data: &[u8], out: &mut Outcome) -> io::Result<bool> {
        if data.is_empty() {
            return Ok(false);
        }
        if self.check {
            if let Some(j) = (0..data.len()).find(|&j| data[j] != pattern_byte(out.received + j as u64)) {
                return Err(io::Error::other(format!(
                    "byte {} is not the pattern",
                    out.received + j as u64
                )));
            }
        }
        out.received += data.len() as u64;
        Ok(true)
    }

    fn wait(&self, want: libc::c_int) -> io::Result<()> {
        let epoll = self.waiter.expect("only non-blocking sessions wait");
        epoll.wait(want as u32, self.timeout)
    }
}

fn with_context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Edge-triggered epoll on one socket.
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new(stream: &TcpStream) -> io::Result<Epoll> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epoll_create1 returned a new descriptor that nothing else owns.
        let epoll = Epoll(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(epoll)
    }

    /// Waits for an edge that includes `want` (or an error or hang-up, which the next
    /// call then reports).
    fn wait(&self, want: u32, timeout: Duration) -> io::Result<()> {
        let stop = std::time::Instant::now() + timeout;
        let fail = (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;
        loop {
            let left = stop.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no readiness event (events {want:#x}) within {} ms",
                        timeout.as_millis()
                    ),
                ));
            }
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: `ev` has room for the one event asked for.
            let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, left.as_millis() as i32) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 1 && ev.events & (want | fail) != 0 {
                return Ok(());
            }
        }
    }
}

/// Server side of `serve --mode greet`: send `bytes` of the pattern, shut down writing
/// (the server closes first), then read to EOF. Returns (read, written).
pub fn greet(stream: &mut TcpStream, bytes: u64) -> io::Result<(u64, u64)> {
    let chunk = pattern_chunk();
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        written += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let read = io::copy(stream, &mut io::sink())?;
    Ok((read, written))
}

/// `serve --mode reset`: read `bytes`, then abort the connection (RST).
pub fn reset_after(stream: &mut TcpStream, bytes: u64) -> io::Result<(u64, u64)> {
    let read = io::copy(&mut (&*stream).take(bytes), &mut io::sink())?;
    socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO))?;
    Ok((read, 0))
}

/// `serve --mode gated`: read nothing until a line arrives on the FIFO `gate` (the test
/// holds the sender in backpressure meanwhile), then read to EOF checking the pattern.
pub fn gated(stream: &mut TcpStream, gate: &std::path::Path) -> io::Result<(u64, u64)> {
    say("gate closed");
    let mut line = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(std::fs::File::open(gate)?), &mut line)?;
    say("gate open");
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok((read, 0));
        }
        if let Some(j) = (0..n).find(|&j| buf[j] != pattern_byte(read + j as u64)) {
            return Err(io::Error::other(format!(
                "byte {} is not the pattern",
                read + j as u64
            )));
        }
        read += n as u64;
    }
}
