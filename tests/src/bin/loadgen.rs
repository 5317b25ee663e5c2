//! `loadgen`: the benchmark's load generator and echo server (run inside lab pods).
//!
//! - `serve --listen ADDR`: a quiet echo server (one thread per connection, no
//!   per-connection output, so the server costs the same under every configuration);
//!   prints `listening <addr>`.
//! - `rr --to ADDR --size N --rate R --duration-ms D --connections C`: request/response
//!   over C persistent connections at a fixed **open-loop** rate R (requests per second
//!   in total). Request k of connection i is due at `start + (k*C + i)/R`; its latency
//!   runs from that intended time to the last byte of the echo, so a stall shows up as
//!   latency instead of quietly lowering the rate (no coordinated omission).
//! - `conn --to ADDR --size N --rate R --duration-ms D --workers W`: connect, one
//!   request/response, close, by W workers; open loop at R per second, or with
//!   `--rate 0` closed loop, as fast as the path allows (the connection-rate figure).
//!
//! Each prints one JSON [`LoadReport`] on stdout; percentiles come from an HDR histogram.
//! Exit status 0 even when some requests failed: the report counts them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use mesh_tests::bench::load::{LoadReport, Percentiles};

/// A send later than this after its intended time counts as late.
const LATE: Duration = Duration::from_millis(1);
/// Read/write/connect timeout: a request slower than this is an error.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Workers start together this long after the last one is ready.
const START_DELAY: Duration = Duration::from_millis(20);

#[derive(Parser)]
#[command(about = "open-loop load generator and echo server for the mesh benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server.
    Serve {
        #[arg(long)]
        listen: String,
    },
    /// Request/response over persistent connections at a fixed rate.
    Rr {
        #[arg(long)]
        to: String,
        /// Request (and response) size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Requests per second, all connections together.
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Unmeasured requests per connection before the clock starts (tunnel set-up,
        /// slow start).
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// New connections: connect, one request/response, close.
    Conn {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Connections per second; 0 for closed loop (as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
}

fn main() -> ExitCode {
    // Sleeps to the next intended send time should wake on time, not up to the default
    // 50 µs timer slack late (which would add to every measured latency).
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this process's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let result = match Cli::parse().command {
        Cmd::Serve { listen } => serve(&listen),
        Cmd::Rr {
            to,
            size,
            rate,
            duration_ms,
            connections,
            warmup,
        } => resolve(&to).and_then(|addr| {
            rr(
                addr,
                size,
                rate,
                Duration::from_millis(duration_ms),
                connections,
                warmup,
            )
        }),
        Cmd::Conn {
            to,
            size,
            rate,
            duration_ms,
            workers,
        } => {
            resolve(&to).and_then(|addr| conn(addr, size, rate, Duration::from_millis(duration_ms), workers))
        }
    };
    match result {
        Ok(Some(report)) => {
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to nothing")))
}

fn serve(listen: &str) -> io::Result<Option<LoadReport>> {
    let listener = TcpListener::bind(resolve(listen)?)?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::spawn(move || echo(stream));
    }
    Ok(None)
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A histogram of nanoseconds, 1 ns to 100 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let us = |ns: u64| ns as f64 / 1000.0;
    Percentiles {
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// What one worker thread measured.
struct Tally {
    hist: Histogram<u64>,
    completed: u64,
    errors: u64,
    late: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: histogram(),
            completed: 0,
            errors: 0,
            late: 0,
            first_error: None,
        }
    }

    fn record(&mut self, latency: Duration) {
        self.completed += 1;
        self.hist
            .saturating_record(latency.as_nanos().min(u64::MAX as u128) as u64);
    }

    fn error(&mut self, what: &str, e: &io::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{what}: {e}"));
    }
}

fn report(mode: &str, tallies: Vec<Tally>, elapsed: Duration, target_rate: f64) -> LoadReport {
    let mut hist = histogram();
    let mut r = LoadReport {
        mode: mode.into(),
        elapsed_s: elapsed.as_secs_f64(),
        target_rate,
        ..LoadReport::default()
    };
    for t in tallies {
        hist.add(&t.hist).expect("same histogram bounds");
        r.completed += t.completed;
        r.errors += t.errors;
        r.late += t.late;
        if r.first_error.is_none() {
            r.first_error = t.first_error;
        }
    }
    r.achieved_rate = r.completed as f64 / r.elapsed_s.max(1e-9);
    r.latency_us = percentiles(&hist);
    r
}

/// Bytes of request `k`: a pattern that differs per request, so a stale or mixed-up
/// echo is caught.
fn fill(buf: &mut [u8], k: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = (k as usize).wrapping_mul(31).wrapping_add(j) as u8;
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One request/response on `s`: writes `req`, reads as many bytes back and checks them.
fn exchange(s: &mut TcpStream, req: &[u8], resp: &mut [u8]) -> io::Result<()> {
    s.write_all(req)?;
    s.read_exact(resp)?;
    if req != resp {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo differs from the request",
        ));
    }
    Ok(())
}

/// Sleeps until `at` (pacing of the open loop, not synchronisation) and returns how
/// late the wake-up was.
fn wait_until(at: Instant) -> Duration {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
    Instant::now().saturating_duration_since(at)
}

fn rr(
    addr: SocketAddr,
    size: usize,
    rate: f64,
    duration: Duration,
    connections: usize,
    warmup: usize,
) -> io::Result<Option<LoadReport>> {
    if rate.is_nan() || rate <= 0.0 || connections == 0 || size == 0 {
        return Err(io::Error::other(
            "rr needs --rate > 0, --connections > 0, --size > 0",
        ));
    }
    let barrier = Arc::new(Barrier::new(connections + 1));
    let start_cell = Arc::new(std::sync::OnceLock::<Instant>::new());
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let (barrier, start_cell) = (barrier.clone(), start_cell.clone());
            thread::spawn(move || -> io::Result<Tally> {
                let mut req = vec![0u8; size];
                let mut resp = vec![0u8; size];
                let conn = connect(addr).and_then(|mut s| {
                    for k in 0..warmup {
                        fill(&mut req, k as u64);
                        exchange(&mut s, &req, &mut resp)?;
                    }
                    Ok(s)
                });
                barrier.wait();
                let mut s = conn?;
                let start = *start_cell.wait();
                let end = start + duration;
                let mut tally = Tally::new();
                let interval = connections as f64 / rate;
                for k in 0u64.. {
                    let due =
                        start + Duration::from_secs_f64((k as f64 * connections as f64 + i as f64) / rate);
                    if due >= end {
                        break;
                    }
                    if wait_until(due) > LATE {
                        tally.late += 1;
                    }
                    fill(&mut req, k);
                    match exchange(&mut s, &req, &mut resp) {
                        Ok(()) => tally.record(due.elapsed()),
                        Err(e) => {
                            // The rest of this connection's schedule is lost with it.
                            tally.error("request", &e);
                            tally.errors += ((end - due).as_secs_f64() / interval) as u64;
                            break;
                        }
                    }
                }
                Ok(tally)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now() + START_DELAY;
    start_cell.set(start).expect("start is set once");
    let tallies = join(workers)?;
    Ok(Some(report("rr", tallies, start.elapsed(), rate)))
}

fn conn(
    addr: SocketAddr,
    size: usize,
    rate: f64,
    duration: Duration,
    workers: usize,
) -> io::Result<Option<LoadReport>> {
    if workers == 0 || size == 0 || rate < 0.0 {
        return Err(io::Error::other(
            "conn needs --workers > 0, --size > 0, --rate >= 0",
        ));
    }
    let start = Instant::now() + START_DELAY;
    let end = start + duration;
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            thread::spawn(move || -> io::Result<Tally> {
                let mut tally = Tally::new();
                let mut req = vec![0u8; size];
                let mut resp = vec![0u8; size];
                wait_until(start);
                for k in 0u64.. {
                    let due = if rate > 0.0 {
                        let due =
                            start + Duration::from_secs_f64((k as f64 * workers as f64 + i as f64) / rate);
                        if due >= end {
                            break;
                        }
                        if wait_until(due) > LATE {
                            tally.late += 1;
                        }
                        due
                    } else {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    };
                    fill(&mut req, k);
                    let result = connect(addr).and_then(|mut s| exchange(&mut s, &req, &mut resp));
                    match result {
                        Ok(()) => tally.record(due.elapsed()),
                        Err(e) => tally.error("connection", &e),
                    }
                }
                Ok(tally)
            })
        })
        .collect();
    let tallies = join(handles)?;
    Ok(Some(report("conn", tallies, start.elapsed(), rate)))
}

fn join(handles: Vec<thread::JoinHandle<io::Result<Tally>>>) -> io::Result<Vec<Tally>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a worker panicked")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                thread::spawn(move || echo(s));
            }
        });
        addr
    }

    #[test]
    fn rr_keeps_the_schedule_and_counts_every_request() {
        let r = rr(server(), 1024, 500.0, Duration::from_millis(200), 2, 2)
            .unwrap()
            .unwrap();
        // 200 ms at 500/s is 100 intended requests, all of them sent.
        assert_eq!((r.completed, r.errors), (100, 0), "{r:?}");
        assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.p99);
    }

    #[test]
    fn conn_counts_refused_connections_as_errors() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let r = conn(closed, 64, 100.0, Duration::from_millis(50), 1)
            .unwrap()
            .unwrap();
        assert_eq!(r.completed, 0);
        assert_eq!(r.errors, 5, "{r:?}");
        assert!(r.first_error.unwrap().contains("refused"));
    }

    #[test]
    fn conn_closed_loop_completes_connections() {
        let r = conn(server(), 64, 0.0, Duration::from_millis(100), 2)
            .unwrap()
            .unwrap();
        assert!(r.completed > 0 && r.errors == 0, "{r:?}");
    }

    #[test]
    fn rr_reports_a_dead_server_as_errors_not_a_panic() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and closes at once: every exchange fails.
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                drop(s);
            }
        });
        let r = rr(addr, 64, 100.0, Duration::from_millis(100), 1, 0)
            .unwrap()
            .unwrap();
        assert_eq!(r.completed, 0);
        assert!(r.errors >= 9, "{r:?}");
    }
}
