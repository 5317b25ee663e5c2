//! The scenarios S1–S7 of the benchmark (docs/benchmarks.md says what each measures).
//! Each runs its configurations interleaved, round after round, and keeps every sample.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use mesh_node::policy::AuthorizationPolicy;

use super::baselines::Target;
use super::lab::{echo_addr, v4, BenchLab, IPERF_PORT, NODE1_WORKLOADS};
use super::load::{LoadReport, Percentiles};
use super::measure::{self, Load};
use super::stats::{round_order, Figure, Sample, Scenario};
use super::Plan;
use crate::Pod;

pub const NO_MESH: &str = "no mesh";
pub const MESH: &str = "mesh";
pub const MESH_SPLICE: &str = "mesh + splice";
pub const MESH_POOLED: &str = "mesh pooled";
pub const MESH_HANDSHAKE: &str = "mesh handshake/conn";

/// One way from a client pod to a server: a configuration of a scenario.
struct Path<'a> {
    name: &'static str,
    client: &'a Pod,
    to: SocketAddr,
    /// The processes that carry this path's traffic (proxies, daemons), for CPU figures.
    pids: Vec<u32>,
}

type Measured = (BTreeMap<String, f64>, Option<Percentiles>);

/// Runs `measure` for every path, `plan.rounds` times, in rotating order.
fn rounds(
    plan: &Plan,
    id: String,
    title: String,
    figures: Vec<Figure>,
    paths: &[Path],
    mut measure: impl FnMut(&Path) -> Result<Measured>,
) -> Result<Scenario> {
    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        for i in round_order(paths.len(), round) {
            let p = &paths[i];
            let (values, latency_us) =
                measure(p).with_context(|| format!("{id}, {}, round {}", p.name, round + 1))?;
            let shown: Vec<String> = figures
                .iter()
                .filter_map(|f| values.get(f.key).map(|v| format!("{}={v:.3}", f.key)))
                .collect();
            eprintln!(
                "bench: {id} round {}/{} {:<20} {}",
                round + 1,
                plan.rounds,
                p.name,
                shown.join(" ")
            );
            samples.push(Sample {
                config: p.name.into(),
                round,
                values,
                latency_us,
            });
        }
    }
    Ok(Scenario {
        id,
        title,
        baseline: paths[0].name.into(),
        configs: paths.iter().map(|p| p.name.to_string()).collect(),
        figures,
        samples,
        notes: Vec::new(),
    })
}

const LATENCY_FIGURES: [Figure; 3] = [
    Figure::lower("p50_us", "p50 µs"),
    Figure::lower("p90_us", "p90 µs"),
    Figure::lower("p99_us", "p99 µs"),
];

fn rr_values(r: &LoadReport) -> Measured {
    let v = BTreeMap::from([
        ("p50_us".to_string(), r.latency_us.p50),
        ("p90_us".to_string(), r.latency_us.p90),
        ("p99_us".to_string(), r.latency_us.p99),
        ("rate".to_string(), r.achieved_rate),
    ]);
    (v, Some(r.latency_us))
}

/// Connections per rr run: several, so a stalled one does not stop the schedule, and
/// few, as long-lived application connections are.
const RR_CONNECTIONS: usize = 4;
const CONN_WORKERS: usize = 4;

/// S1: same-node request/response, 64 B and 1 KB, at 1,000 requests per second.
pub fn s1(b: &BenchLab, plan: &Plan) -> Result<Vec<Scenario>> {
    let mut paths = vec![
        Path {
            name: NO_MESH,
            client: &b.bc1,
            to: echo_addr(&b.bs1),
            pids: vec![],
        },
        hop("socat", &b.bc1, b.baselines.socat(Target::SameNodeEcho)),
        hop("haproxy", &b.bc1, b.baselines.haproxy(Target::SameNodeEcho)),
        Path {
            name: MESH,
            client: &b.mc1,
            to: echo_addr(&b.ms1),
            pids: vec![b.daemons[0].pid()],
        },
    ];
    if b.splice {
        paths.push(Path {
            name: MESH_SPLICE,
            client: &b.mc3,
            to: echo_addr(&b.ms3),
            pids: vec![b.daemons[2].pid()],
        });
    }
    let mut out = Vec::new();
    for size in [64, 1024] {
        let load = Load::Rr {
            size,
            rate: 1000,
            connections: RR_CONNECTIONS,
        };
        let label = if size == 64 { "64 B" } else { "1 KB" };
        let mut s = rounds(
            plan,
            format!("S1-{}", label.replace(' ', "")),
            format!("same-node request/response, {label}, 1,000 req/s"),
            LATENCY_FIGURES.to_vec(),
            &paths,
            |p| {
                Ok(rr_values(&measure::loadgen(
                    &b.lab,
                    p.client,
                    p.to,
                    &load,
                    plan.duration,
                )?))
            },
        )?;
        if !b.splice {
            s.notes.push(
                "this mesh-node has no `bpf.splice` switch: the mesh row is the user-space path".into(),
            );
        } else {
            s.notes.push(format!(
                "`{MESH}`: node1, bpf.splice off; `{MESH_SPLICE}`: node3, bpf.splice on"
            ));
        }
        out.push(s);
    }
    Ok(out)
}

fn hop<'a>(name: &'static str, client: &'a Pod, hop: super::baselines::Hop) -> Path<'a> {
    Path {
        name,
        client,
        to: hop.listen,
        pids: hop.pids,
    }
}

/// The cross-node paths to `target`: no mesh, socat, haproxy, stunnel, mesh.
fn cross_node<'a>(b: &'a BenchLab, target: Target, port: u16) -> Vec<Path<'a>> {
    vec![
        Path {
            name: NO_MESH,
            client: &b.bc1,
            to: v4(&b.bs2, port),
            pids: vec![],
        },
        hop("socat", &b.bc1, b.baselines.socat(target)),
        hop("haproxy", &b.bc1, b.baselines.haproxy(target)),
        hop("stunnel (mTLS)", &b.bc1, b.baselines.stunnel(target)),
        Path {
            name: MESH,
            client: &b.mc1,
            to: v4(&b.ms2, port),
            pids: vec![b.daemons[0].pid(), b.daemons[1].pid()],
        },
    ]
}

/// S2: cross-node (mTLS for stunnel and the mesh) request/response, 1 KB, at 1k and 5k/s.
pub fn s2(b: &BenchLab, plan: &Plan) -> Result<Vec<Scenario>> {
    let paths = cross_node(b, Target::CrossNodeEcho, super::lab::ECHO_PORT);
    let mut out = Vec::new();
    for rate in [1000, 5000] {
        let load = Load::Rr {
            size: 1024,
            rate,
            connections: RR_CONNECTIONS,
        };
        out.push(rounds(
            plan,
            format!("S2-{}k", rate / 1000),
            format!("cross-node request/response, 1 KB, {},000 req/s", rate / 1000),
            LATENCY_FIGURES.to_vec(),
            &paths,
            |p| {
                Ok(rr_values(&measure::loadgen(
                    &b.lab,
                    p.client,
                    p.to,
                    &load,
                    plan.duration,
                )?))
            },
        )?);
    }
    Ok(out)
}

/// S3: cross-node bulk throughput (iperf3), 1 and 4 streams, and CPU per GB.
pub fn s3(b: &BenchLab, plan: &Plan) -> Result<Vec<Scenario>> {
    let paths = cross_node(b, Target::CrossNodeIperf, IPERF_PORT);
    let mut out = Vec::new();
    for streams in [1, 4] {
        let mut s = rounds(
            plan,
            format!("S3-{streams}"),
            format!("cross-node bulk throughput, {streams} stream(s)"),
            vec![
                Figure::higher("gbit_s", "Gbit/s"),
                Figure::lower("cpu_s_per_gb", "proxy CPU-s/GB"),
            ],
            &paths,
            |p| {
                let cpu0 = measure::cpu_seconds(&p.pids)?;
                let bulk = measure::iperf(&b.lab, p.client, p.to, streams, plan.bulk)?;
                let cpu = measure::cpu_seconds(&p.pids)? - cpu0;
                let mut v = BTreeMap::from([("gbit_s".to_string(), bulk.bits_per_second / 1e9)]);
                if !p.pids.is_empty() {
                    v.insert("cpu_s_per_gb".into(), cpu / (bulk.bytes / 1e9));
                }
                Ok((v, None))
            },
        )?;
        s.notes
            .push("proxy CPU: socat/haproxy on node1, both stunnel ends, both mesh daemons".into());
        out.push(s);
    }
    Ok(out)
}

fn conn_values(r: &LoadReport, cpu: Option<f64>) -> Measured {
    let mut v = BTreeMap::from([
        ("conn_s".to_string(), r.achieved_rate),
        ("p50_ms".to_string(), r.latency_us.p50 / 1000.0),
        ("p99_ms".to_string(), r.latency_us.p99 / 1000.0),
    ]);
    if let Some(cpu) = cpu {
        v.insert("cpu_us_per_conn".into(), cpu * 1e6 / r.completed.max(1) as f64);
    }
    (v, None)
}

const CONN_FIGURES: [Figure; 4] = [
    Figure::higher("conn_s", "conn/s"),
    Figure::lower("p50_ms", "p50 ms"),
    Figure::lower("p99_ms", "p99 ms"),
    Figure::lower("cpu_us_per_conn", "proxy CPU µs/conn"),
];

/// Closed-loop connection rate on `p`, with the CPU its processes used.
fn conn_run(b: &BenchLab, p: &Path, plan: &Plan) -> Result<Measured> {
    let load = Load::Conn {
        size: 64,
        workers: CONN_WORKERS,
    };
    let cpu0 = measure::cpu_seconds(&p.pids)?;
    let r = measure::loadgen(&b.lab, p.client, p.to, &load, plan.duration)?;
    let cpu = measure::cpu_seconds(&p.pids)? - cpu0;
    Ok(conn_values(&r, (!p.pids.is_empty()).then_some(cpu)))
}

/// S4: new connections per second (connect, 64 B request/response, close).
pub fn s4(b: &BenchLab, plan: &Plan) -> Result<Scenario> {
    let mut paths = cross_node(b, Target::CrossNodeEcho, super::lab::ECHO_PORT);
    paths.last_mut().expect("mesh path").name = MESH_POOLED;
    paths.push(Path {
        name: MESH_HANDSHAKE,
        client: &b.mc3,
        to: echo_addr(&b.ms2),
        pids: vec![b.daemons[2].pid(), b.daemons[1].pid()],
    });
    let mut s = rounds(
        plan,
        "S4".into(),
        format!("cross-node new connections, closed loop, {CONN_WORKERS} workers"),
        CONN_FIGURES.to_vec(),
        &paths,
        |p| conn_run(b, p, plan),
    )?;
    s.notes.push(format!(
        "`{MESH_POOLED}`: node1 reuses HBONE tunnels; `{MESH_HANDSHAKE}`: node3 has hbone.reuseConnections: false"
    ));
    Ok(s)
}

/// `count` policies: one ALLOW for the benchmark's servers (`app: ms`, from the `mc`
/// clients), and `count - 1` that select other apps of the same namespace, so the
/// destination's evaluator has to look at every one of them.
pub fn policies(count: usize) -> Result<Vec<AuthorizationPolicy>> {
    let policy = |i: usize, app: &str, principal: &str| {
        serde_json::json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": format!("bench-{i:05}"), "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": app}},
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": [principal]}}],
                    "to": [{"operation": {"ports": ["7000", "5201"]}}]
                }]
            }
        })
    };
    (0..count)
        .map(|i| {
            let v = if i == 0 {
                policy(i, "ms2", "cluster.local/ns/default/sa/mc")
            } else {
                policy(
                    i,
                    &format!("other-{i}"),
                    &format!("cluster.local/ns/default/sa/client-{i}"),
                )
            };
            serde_json::from_value(v).context("a generated policy does not parse")
        })
        .collect()
}

/// S5: the connection rate with 1 and with 10,000 policies (hot-reloaded between rounds),
/// the time to reload them and to check the file.
pub fn s5(b: &BenchLab, plan: &Plan) -> Result<Scenario> {
    let sets = [("1 policy", policies(1)?), ("10,000 policies", policies(10_000)?)];
    let paths: Vec<Path> = sets
        .iter()
        .map(|(name, _)| Path {
            name,
            client: &b.mc1,
            to: echo_addr(&b.ms2),
            pids: vec![b.daemons[0].pid(), b.daemons[1].pid()],
        })
        .collect();
    let mut figures = CONN_FIGURES.to_vec();
    figures.push(Figure::lower("reload_ms", "reload ms"));
    figures.push(Figure::lower("check_ms", "`mesh-node check` ms"));
    let s = rounds(
        plan,
        "S5".into(),
        "policy scale: new connections, 1 vs 10,000 policies".into(),
        figures,
        &paths,
        |p| {
            let set = &sets.iter().find(|(n, _)| *n == p.name).expect("a set per path").1;
            // From no policies each time: the rotation can visit the same set twice in a
            // row, and an unchanged file is no reload to measure.
            b.reload_policies(&[])?;
            let reload = b.reload_policies(set)?;
            let file = b.lab.write_file("s5-check.yaml", &b.node_yaml(1, set)?);
            let started = Instant::now();
            b.lab
                .run(
                    b.nodes[1]
                        .command(crate::mesh_node_bin())
                        .arg("check")
                        .arg("--config")
                        .arg(&file),
                    Duration::from_secs(120),
                )
                .assert_success();
            let check = started.elapsed();
            let (mut v, _) = conn_run(b, p, plan)?;
            v.insert("reload_ms".into(), reload.as_secs_f64() * 1000.0);
            v.insert("check_ms".into(), check.as_secs_f64() * 1000.0);
            Ok((v, None))
        },
    );
    // Back to no policies for whatever runs next, also after a failure.
    b.reload_policies(&[])?;
    s
}

/// S6: daemon memory and CPU at 1,000 req/s (1 KB, cross-node) with 100 workloads on
/// node1.
pub fn s6(b: &BenchLab, plan: &Plan) -> Result<Scenario> {
    let paths = [Path {
        name: MESH,
        client: &b.mc1,
        to: echo_addr(&b.ms2),
        pids: vec![b.daemons[0].pid(), b.daemons[1].pid()],
    }];
    let load = Load::Rr {
        size: 1024,
        rate: 1000,
        connections: RR_CONNECTIONS,
    };
    let mut s = rounds(
        plan,
        "S6".into(),
        format!("daemon resources at 1,000 req/s, {NODE1_WORKLOADS} workloads on node1"),
        vec![
            Figure::lower("node1_rss_mb", "node1 RSS MB"),
            Figure::lower("node1_hwm_mb", "node1 peak RSS MB"),
            Figure::lower("node1_cpu_pct", "node1 CPU %"),
            Figure::lower("node2_rss_mb", "node2 RSS MB"),
            Figure::lower("node2_cpu_pct", "node2 CPU %"),
        ],
        &paths,
        |p| {
            let (node1, node2) = (p.pids[0], p.pids[1]);
            let (c1, c2) = (measure::cpu_seconds(&[node1])?, measure::cpu_seconds(&[node2])?);
            let started = Instant::now();
            let r = measure::loadgen(&b.lab, p.client, p.to, &load, plan.s6)?;
            let secs = started.elapsed().as_secs_f64();
            let (rss1, hwm1) = measure::memory(node1)?;
            let (rss2, _) = measure::memory(node2)?;
            let mb = |x: u64| x as f64 / 1e6;
            let v = BTreeMap::from([
                ("node1_rss_mb".to_string(), mb(rss1)),
                ("node1_hwm_mb".to_string(), mb(hwm1)),
                (
                    "node1_cpu_pct".to_string(),
                    (measure::cpu_seconds(&[node1])? - c1) / secs * 100.0,
                ),
                ("node2_rss_mb".to_string(), mb(rss2)),
                (
                    "node2_cpu_pct".to_string(),
                    (measure::cpu_seconds(&[node2])? - c2) / secs * 100.0,
                ),
                ("rate".to_string(), r.achieved_rate),
            ]);
            Ok((v, Some(r.latency_us)))
        },
    )?;
    s.notes
        .push("MB = 10^6 bytes; CPU % of one core over the run (loadgen start-up included)".into());
    Ok(s)
}

/// S7: traffic of unenrolled pods on a node with the programs attached (node1) against a
/// node without them (node4): connection rate, throughput, latency.
pub fn s7(b: &BenchLab, plan: &Plan) -> Result<Scenario> {
    let paths = [
        Path {
            name: "no programs",
            client: &b.bc4,
            to: echo_addr(&b.bs4),
            pids: vec![],
        },
        Path {
            name: "programs attached",
            client: &b.bc1,
            to: echo_addr(&b.bs1),
            pids: vec![],
        },
    ];
    let rr = Load::Rr {
        size: 1024,
        rate: 1000,
        connections: RR_CONNECTIONS,
    };
    let mut s = rounds(
        plan,
        "S7".into(),
        "unmeshed traffic, same node, with and without the programs attached".into(),
        vec![
            Figure::higher("conn_s", "conn/s"),
            Figure::higher("gbit_s", "Gbit/s"),
            Figure::lower("p50_us", "rr p50 µs"),
        ],
        &paths,
        |p| {
            let (mut v, _) = conn_run(b, p, plan)?;
            let bulk = measure::iperf(&b.lab, p.client, v4(&pod_server(b, p), IPERF_PORT), 1, plan.bulk)?;
            v.insert("gbit_s".into(), bulk.bits_per_second / 1e9);
            let r = measure::loadgen(&b.lab, p.client, p.to, &rr, plan.duration)?;
            v.insert("p50_us".into(), r.latency_us.p50);
            Ok((v, None))
        },
    )?;
    s.notes
        .push("conn/s: closed loop, 4 workers, 64 B; Gbit/s: iperf3, 1 stream; rr: 1 KB at 1,000/s".into());
    Ok(s)
}

/// The server pod behind an S7 path.
fn pod_server(b: &BenchLab, p: &Path) -> Pod {
    if p.client == &b.bc4 {
        b.bs4.clone()
    } else {
        b.bs1.clone()
    }
}
