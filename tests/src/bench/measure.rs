//! Running one measurement: `loadgen` or `iperf3` in a pod, and the CPU time and memory
//! of the processes that carry the traffic, read from `/proc/<pid>/{stat,status}`.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::load::LoadReport;
use crate::{Lab, Pod};

/// Slack on top of a run's own duration before it counts as hung.
const RUN_SLACK: Duration = Duration::from_secs(60);

/// CPU seconds (user + system, including reaped children such as socat's per-connection
/// forks) that `pids` have used so far.
pub fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) may hold spaces; the fields after it are plain.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("{path}: no `)` after the command name"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime are fields 14..=17 of the line, 12..=15 after `)`.
        for f in fields
            .get(11..15)
            .with_context(|| format!("{path}: too few fields"))?
        {
            total += f.parse::<u64>().with_context(|| format!("{path}: field {f:?}"))?;
        }
    }
    Ok(total as f64 / ticks)
}

/// (VmRSS, VmHWM) of `pid` in bytes.
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path}: no {name}"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// How a measurement asks for load.
#[derive(Clone, Debug)]
pub enum Load {
    /// Request/response at a fixed rate over persistent connections.
    Rr {
        size: usize,
        rate: u32,
        connections: usize,
    },
    /// New connections, closed loop.
    Conn { size: usize, workers: usize },
}

/// Runs `loadgen` in `client` against `to` for `duration` and returns its report;
/// fails if more than 0.1 % of the requests failed (a broken path is not a figure).
pub fn loadgen(
    lab: &Lab,
    client: &Pod,
    to: SocketAddr,
    load: &Load,
    duration: Duration,
) -> Result<LoadReport> {
    let mut cmd = client.command(super::loadgen_bin());
    let ms = duration.as_millis().to_string();
    match load {
        Load::Rr {
            size,
            rate,
            connections,
        } => cmd
            .args(["rr", "--to", &to.to_string(), "--duration-ms", &ms])
            .args([
                "--size",
                &size.to_string(),
                "--rate",
                &rate.to_string(),
                "--connections",
                &connections.to_string(),
            ]),
        Load::Conn { size, workers } => cmd
            .args(["conn", "--to", &to.to_string(), "--duration-ms", &ms])
            .args(["--size", &size.to_string(), "--workers", &workers.to_string()]),
    };
    let out = lab.run(&mut cmd, duration + RUN_SLACK);
    if !out.success() {
        bail!("loadgen in {} to {to} failed: {out}", client.name);
    }
    let report: LoadReport = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("loadgen printed no report: {}", out.stdout))?;
    let attempted = report.completed + report.errors;
    if report.completed == 0 || report.errors * 1000 > attempted {
        bail!(
            "loadgen in {} to {to}: {} of {attempted} failed, first: {}",
            client.name,
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(report)
}

/// What `iperf3 -J` reported, received side.
#[derive(Clone, Copy, Debug)]
pub struct Bulk {
    pub bytes: f64,
    pub bits_per_second: f64,
}

/// `iperf3 -c` from `client` to `to` with `streams` parallel streams.
pub fn iperf(lab: &Lab, client: &Pod, to: SocketAddr, streams: usize, duration: Duration) -> Result<Bulk> {
    let secs = duration.as_secs().max(1).to_string();
    let out = lab.run(
        client.command("iperf3").args([
            "-c",
            &to.ip().to_string(),
            "-p",
            &to.port().to_string(),
            "-t",
            &secs,
            "-P",
            &streams.to_string(),
            "-J",
        ]),
        duration + RUN_SLACK,
    );
    if !out.success() {
        bail!("iperf3 in {} to {to} failed: {out}", client.name);
    }
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON: {}", out.stdout))?;
    let sum = &json["end"]["sum_received"];
    match (sum["bytes"].as_f64(), sum["bits_per_second"].as_f64()) {
        (Some(bytes), Some(bits_per_second)) if bytes > 0.0 => Ok(Bulk {
            bytes,
            bits_per_second,
        }),
        _ => bail!(
            "iperf3 in {} to {to}: no bytes received: {}",
            client.name,
            out.stdout
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_memory_of_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(&[me]).unwrap() >= 0.0);
        let (rss, hwm) = memory(me).unwrap();
        assert!(rss > 0 && hwm >= rss, "{rss} {hwm}");
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(cpu_seconds(&[u32::MAX]).is_err());
    }
}
