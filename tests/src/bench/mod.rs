//! The benchmark suite behind `cargo xtask bench` (run as `mesh-lab bench`): a lab of
//! four nodes with pods, the mesh's daemons and the baselines (no mesh, socat, haproxy,
//! a stunnel4 pair), the scenarios S1–S7 run interleaved over several rounds, and the
//! report: `target/bench/<timestamp>.{md,json}`, `latest.md` and a PNG chart of the
//! latency percentiles. Method and figures: docs/benchmarks.md.
mod baselines;
mod chart;
mod lab;
pub mod load;
mod measure;
mod report;
mod scenarios;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

pub use report::Run;

/// How long and how often each measurement runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    /// Rounds per scenario; each round visits every configuration once.
    pub rounds: usize,
    /// One request/response or connection-rate measurement.
    pub duration: Duration,
    /// One iperf3 measurement.
    pub bulk: Duration,
    /// One S6 measurement.
    pub s6: Duration,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            rounds: 5,
            duration: Duration::from_secs(5),
            bulk: Duration::from_secs(5),
            s6: Duration::from_secs(10),
        }
    }

    /// About two minutes: fewer, shorter rounds, still interleaved.
    pub fn quick() -> Plan {
        Plan {
            quick: true,
            rounds: 3,
            duration: Duration::from_secs(1),
            bulk: Duration::from_secs(1),
            s6: Duration::from_secs(2),
        }
    }
}

pub struct Options {
    pub plan: Plan,
    /// Where the reports go (`target/bench`).
    pub out_dir: PathBuf,
    /// The commit measured, for the report.
    pub commit: String,
    /// Scenario prefixes to run (`S1`, `S4`, ...); empty for all.
    pub only: Vec<String>,
}

/// `loadgen`: `$LOADGEN_BIN`, else beside the running executable.
pub fn loadgen_bin() -> PathBuf {
    crate::bins::find_bin(
        "loadgen",
        "LOADGEN_BIN",
        "build it first: cargo build -p mesh-tests --bins",
    )
}

/// The Debian tools the benchmark runs (installed by `cargo xtask setup`).
const TOOLS: &[&str] = &["iperf3", "socat", "haproxy", "stunnel4"];

/// Builds the lab, runs the scenarios and writes the reports; returns the markdown path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    if !crate::require_privileges() {
        bail!("the benchmark builds network namespaces, cgroups and BPF programs: run it as root");
    }
    for tool in TOOLS {
        which(tool).with_context(|| format!("{tool} is missing: run `cargo xtask setup`"))?;
    }
    chart::load_font()?;
    let _ = (crate::mesh_node_bin(), loadgen_bin());
    let started = Instant::now();
    let mut run = Run::new(&opts.plan, &opts.commit);
    eprintln!("bench: building the lab");
    let lab = lab::BenchLab::build()?;
    run.notes.push(format!(
        "lab ready in {:.1} s; same-node splice switch in this mesh-node: {}",
        started.elapsed().as_secs_f64(),
        if lab.splice { "yes" } else { "no" }
    ));
    let wanted = |id: &str| opts.only.is_empty() || opts.only.iter().any(|o| id.starts_with(o.as_str()));
    let plan = &opts.plan;
    type Step = fn(&lab::BenchLab, &Plan) -> Result<Vec<stats::Scenario>>;
    let steps: [(&str, Step); 7] = [
        ("S1", scenarios::s1),
        ("S2", scenarios::s2),
        ("S3", scenarios::s3),
        ("S4", |b, p| scenarios::s4(b, p).map(|s| vec![s])),
        ("S5", |b, p| scenarios::s5(b, p).map(|s| vec![s])),
        ("S6", |b, p| scenarios::s6(b, p).map(|s| vec![s])),
        ("S7", |b, p| scenarios::s7(b, p).map(|s| vec![s])),
    ];
    for (id, step) in steps {
        if wanted(id) {
            run.scenarios.extend(step(&lab, plan)?);
        }
    }
    drop(lab);
    run.wall_s = started.elapsed().as_secs_f64();
    run.targets = report::targets(&run);
    write_reports(&run, &opts.out_dir)
}

fn write_reports(run: &Run, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = run.file_stem();
    let chart_name = format!("{stem}-latency.png");
    chart::draw(run, &dir.join(&chart_name))?;
    let md = report::markdown(run, &chart_name);
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, &md)?;
    std::fs::write(dir.join("latest.md"), &md)?;
    std::fs::copy(dir.join(&chart_name), dir.join("latest-latency.png"))?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(run).context("report to JSON")?,
    )?;
    eprintln!(
        "bench: done in {:.0} s; report {} (and latest.md, {stem}.json, {chart_name})",
        run.wall_s,
        md_path.display()
    );
    Ok(md_path)
}

fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found on PATH"))
}
