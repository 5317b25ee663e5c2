//! `labtool`: the TCP client and server that lab tests run inside pods.
//!
//! - `serve --listen ADDR [--mode echo|whoami|discard]` prints
//!   `listening <addr>`, then per connection `accepted <peer>` and
//!   `closed <peer> in=<bytes> out=<bytes>`.
//! - `connect --to ADDR [--send N] [--count C] [--timeout-ms T]` opens C
//!   connections at once, sends N pattern bytes on each, half-closes, reads
//!   to EOF, checks the echo and prints one JSON line per connection; exits 0
//!   only if all were ok.
//! - `whoami --to ADDR` prints what the server sent (with `serve --mode
//!   whoami`: the address the server saw us connect from).
//! - `session --to ADDR ...` drives one connection step by step (see
//!   `labtool/session.rs`); `serve --mode greet|reset|gated` are its peers.
//!
//! Addresses print as `ip:port` (`[ip]:port` for IPv6), IPv4-mapped IPv6
//! addresses as plain IPv4.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

#[path = "labtool/session.rs"]
mod session;

#[derive(Parser)]
#[command(about = "TCP client and server for the mesh test lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accept connections and serve them concurrently.
    Serve {
        /// Address to bind, e.g. `0.0.0.0:7000` or `[::]:0`.
        #[arg(long)]
        listen: String,
        #[arg(long, value_enum, default_value_t = Mode::Echo)]
        mode: Mode,
        /// `greet`: bytes to send first; `reset`: bytes to read before resetting.
        #[arg(long, default_value = "0", value_parser = parse_size)]
        bytes: u64,
        /// `gated`: a FIFO; the server reads nothing until a line arrives on it.
        #[arg(long)]
        gate: Option<std::path::PathBuf>,
    },
    /// One connection, step by step; prints one JSON line, exits 0 if all went well.
    Session(session::Plan),
    /// Open connections, send a pattern, check what comes back.
    Connect {
        #[arg(long)]
        to: String,
        /// Bytes to send on each connection (suffixes K, M, G: powers of 1024).
        #[arg(long, default_value = "1024", value_parser = parse_size)]
        send: u64,
        /// Connections to open at once.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Timeout for connecting and for each read and write.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// What the server sends back: `echo` checks it is the same bytes,
        /// `any` accepts whatever comes (e.g. a discard server's count).
        #[arg(long, value_enum, default_value_t = Expect::Echo)]
        expect: Expect,
    },
    /// Connect, read to EOF and print what the server sent.
    Whoami {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Send back everything; shut down writing at the client's EOF.
    Echo,
    /// Send the client's address as the server sees it, then close.
    Whoami,
    /// Read to EOF, then send back the number of bytes read.
    Discard,
    /// Send `--bytes` of the pattern, shut down writing, then read to EOF.
    Greet,
    /// Read `--bytes`, then close with SO_LINGER 0 (a reset).
    Reset,
    /// Read nothing until a line arrives on the `--gate` FIFO, then read to EOF checking
    /// the pattern.
    Gated,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expect {
    Echo,
    Any,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Serve {
            listen,
            mode,
            bytes,
            gate,
        } => serve(&listen, Server { mode, bytes, gate }),
        Cmd::Session(plan) => {
            if session::run(&plan) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Connect {
            to,
            send,
            count,
            timeout_ms,
            expect,
        } => connect(&to, send, count, Duration::from_millis(timeout_ms), expect),
        Cmd::Whoami { to, timeout_ms } => whoami(&to, Duration::from_millis(timeout_ms)),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to nothing")))
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Prints one line and flushes, so a watcher sees it at once.
fn say(line: &str) {
    println!("{line}");
    let _ = io::stdout().flush();
}

/// How `serve` treats each connection.
#[derive(Clone)]
struct Server {
    mode: Mode,
    bytes: u64,
    gate: Option<std::path::PathBuf>,
}

fn serve(listen: &str, server: Server) -> ExitCode {
    if matches!(server.mode, Mode::Gated) && server.gate.is_none() {
        eprintln!("--mode gated needs --gate FIFO");
        return ExitCode::FAILURE;
    }
    let listener = match resolve(listen).and_then(TcpListener::bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(a) => say(&format!("listening {}", canonical(a))),
        Err(e) => {
            eprintln!("local_addr: {e}");
            return ExitCode::FAILURE;
        }
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let server = server.clone();
                thread::spawn(move || handle(stream, &server));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}

fn handle(mut stream: TcpStream, server: &Server) {
    let peer = match stream.peer_addr() {
        Ok(p) => canonical(p).to_string(),
        Err(e) => format!("unknown({e})"),
    };
    say(&format!("accepted {peer}"));
    let (mut read, mut written) = (0u64, 0u64);
    let result = (|| -> io::Result<()> {
        match server.mode {
            Mode::Echo => {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    read += n as u64;
                    stream.write_all(&buf[..n])?;
                    written += n as u64;
                }
            }
            Mode::Whoami => {
                let line = format!("{peer}\n");
                stream.write_all(line.as_bytes())?;
                written += line.len() as u64;
            }
            Mode::Discard => {
                read = io::copy(&mut stream, &mut io::sink())?;
                let line = format!("{read}\n");
                stream.write_all(line.as_bytes())?;
                written += line.len() as u64;
            }
            Mode::Greet => {
                (read, written) = session::greet(&mut stream, server.bytes)?;
                return Ok(());
            }
            Mode::Reset => {
                (read, written) = session::reset_after(&mut stream, server.bytes)?;
                return Ok(());
            }
            Mode::Gated => {
                let gate = server.gate.as_deref().expect("checked in serve");
                (read, written) = session::gated(&mut stream, gate)?;
            }
        }
        stream.shutdown(Shutdown::Write)
    })();
    match result {
        Ok(()) => say(&format!("closed {peer} in={read} out={written}")),
        Err(e) => say(&format!("closed {peer} in={read} out={written} error={e}")),
    }
}

/// Byte `i` of what `connect` sends: `(i*7 + 13) % 251`, which depends on
/// `i % 251` only.
fn pattern_byte(i: u64) -> u8 {
    (((i % 251) * 7 + 13) % 251) as u8
}

/// 261 periods of the pattern: chunks that start at a multiple of 251 can
/// all be sliced from it.
fn pattern_chunk() -> Vec<u8> {
    (0..251 * 261).map(pattern_byte).collect()
}

struct Report {
    local: Option<SocketAddr>,
    peer: SocketAddr,
    sent: u64,
    received: u64,
    elapsed: Duration,
    error: Option<String>,
}

fn connect(to: &str, send: u64, count: usize, timeout: Duration, expect: Expect) -> ExitCode {
    let addr = match resolve(to) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("resolve {to}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers: Vec<_> = (0..count)
        .map(|_| {
            thread::spawn(move || {
                let report = one_connection(addr, send, timeout, expect);
                let ok = report.error.is_none();
                say(&json!({
                    "local": report.local.map(|a| canonical(a).to_string()),
                    "peer": canonical(report.peer).to_string(),
                    "sent": report.sent,
                    "received": report.received,
                    "ok": ok,
                    "error": report.error,
                    "elapsed_us": report.elapsed.as_micros() as u64,
                })
                .to_string());
                ok
            })
        })
        .collect();
    let all_ok = workers.into_iter().all(|w| w.join().unwrap_or(false));
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn describe(what: &str, e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what}: timed out after {} ms ({e})", timeout.as_millis())
        }
        _ => format!("{what}: {e}"),
    }
}

fn one_connection(addr: SocketAddr, send: u64, timeout: Duration, expect: Expect) -> Report {
    let start = Instant::now();
    let mut report = Report {
        local: None,
        peer: addr,
        sent: 0,
        received: 0,
        elapsed: Duration::ZERO,
        error: None,
    };
    let stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(describe("connect", &e, timeout));
            report.elapsed = start.elapsed();
            return report;
        }
    };
    report.local = stream.local_addr().ok();
    if let Ok(peer) = stream.peer_addr() {
        report.peer = peer;
    }
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let writer = match stream.try_clone() {
        Ok(mut w) => thread::spawn(move || {
            let chunk = pattern_chunk();
            let mut sent = 0u64;
            while sent < send {
                let n = (send - sent).min(chunk.len() as u64) as usize;
                if let Err(e) = w.write_all(&chunk[..n]) {
                    return (sent, Some(describe("send", &e, timeout)));
                }
                sent += n as u64;
            }
            let err = w
                .shutdown(Shutdown::Write)
                .err()
                .map(|e| describe("shutdown", &e, timeout));
            (sent, err)
        }),
        Err(e) => {
            report.error = Some(describe("clone socket", &e, timeout));
            return report;
        }
    };
    let mut reader = &stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut read_error = None;
    let mut mismatch = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if expect == Expect::Echo && mismatch.is_none() {
                    mismatch = (0..n)
                        .find(|&j| buf[j] != pattern_byte(received + j as u64))
                        .map(|j| received + j as u64);
                }
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                read_error = Some(describe("recv", &e, timeout));
                break;
            }
        }
    }
    if read_error.is_some() {
        // Unblock a writer stuck on a peer that stopped reading.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let (sent, write_error) = writer.join().unwrap_or((0, Some("send: writer panicked".into())));
    report.sent = sent;
    report.received = received;
    report.error = write_error.or(read_error).or_else(|| match expect {
        Expect::Any => None,
        Expect::Echo => match mismatch {
            Some(at) => Some(format!("echo differs from what was sent at byte {at}")),
            None if received != sent => Some(format!("received {received} bytes, sent {sent}")),
            None => None,
        },
    });
    report.elapsed = start.elapsed();
    report
}

fn whoami(to: &str, timeout: Duration) -> ExitCode {
    let result = resolve(to).and_then(|addr| TcpStream::connect_timeout(&addr, timeout));
    let mut stream = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", describe("connect", &e, timeout));
            return ExitCode::FAILURE;
        }
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let mut text = String::new();
    if let Err(e) = stream.read_to_string(&mut text) {
        eprintln!("{}", describe("recv", &e, timeout));
        return ExitCode::FAILURE;
    }
    print!("{text}");
    let _ = io::stdout().flush();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("3X").is_err());
    }

    #[test]
    fn pattern_chunk_repeats_the_pattern() {
        let chunk = pattern_chunk();
        assert_eq!(chunk.len() % 251, 0);
        assert!(chunk
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64)));
        assert_eq!(pattern_byte(0), 13);
        assert_eq!(pattern_byte(251), 13);
    }

    #[test]
    fn echo_round_trip_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            handle(
                s,
                &Server {
                    mode: Mode::Echo,
                    bytes: 0,
                    gate: None,
                },
            );
        });
        let r = one_connection(addr, 300_000, Duration::from_secs(5), Expect::Echo);
        assert_eq!((r.sent, r.received, r.error), (300_000, 300_000, None));
    }

    #[test]
    fn refused_connection_reports_the_os_error() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let r = one_connection(addr, 10, Duration::from_secs(5), Expect::Echo);
        let err = r.error.unwrap();
        assert!(
            err.starts_with("connect: Connection refused (os error 111)"),
            "{err}"
        );
    }
}
