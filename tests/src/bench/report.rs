//! The report of a run: the JSON of every sample, and a markdown page with one table
//! per scenario (median and min–max per figure, ratio of medians to the baseline) and the
//! issue's targets, met or not.
use std::fmt::Write as _;

use serde::Serialize;

use super::scenarios::{MESH, MESH_POOLED, MESH_SPLICE};
use super::stats::Scenario;
use super::Plan;

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// UTC, RFC 3339.
    pub date: String,
    pub commit: String,
    pub plan: Plan,
    pub machine: String,
    pub scenarios: Vec<Scenario>,
    pub notes: Vec<String>,
    pub wall_s: f64,
    /// Filled when the report is written.
    pub targets: Vec<TargetResult>,
}

impl Run {
    pub fn new(plan: &Plan, commit: &str) -> Run {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "unknown".into());
        Run {
            date,
            commit: commit.into(),
            plan: plan.clone(),
            machine: machine(),
            scenarios: Vec::new(),
            notes: Vec::new(),
            wall_s: 0.0,
            targets: Vec::new(),
        }
    }

    /// `2025-01-31T12-00-00Z`: the date, usable as a file name.
    pub fn file_stem(&self) -> String {
        let base: String = self
            .date
            .chars()
            .take(19)
            .map(|c| if c == ':' { '-' } else { c })
            .collect();
        format!("{base}Z")
    }

    fn scenario(&self, id: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.id == id)
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpus} CPUs, Linux {}, load average at start {}",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

/// A target of the issue and where the run stands.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    pub scenario: String,
    pub what: String,
    pub limit: String,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

enum Check {
    /// Ratio of medians to the baseline at most / at least.
    RatioAtMost(f64),
    RatioAtLeast(f64),
    /// Median of the configuration minus the baseline's, divided by `scale`, at most.
    AddedAtMost(f64, f64),
    /// Median at most.
    AtMost(f64),
}

/// The targets of issue #6 part 4.
pub fn targets(run: &Run) -> Vec<TargetResult> {
    let s1_config = if run
        .scenario("S1-64B")
        .is_some_and(|s| s.configs.iter().any(|c| c == MESH_SPLICE))
    {
        MESH_SPLICE
    } else {
        MESH
    };
    let list: Vec<(&str, &str, &str, Check, &str)> = vec![
        ("S1-64B", s1_config, "p50_us", Check::RatioAtMost(1.10), "p50"),
        ("S1-1KB", s1_config, "p50_us", Check::RatioAtMost(1.10), "p50"),
        ("S2-1k", MESH, "p50_us", Check::RatioAtMost(1.6), "p50"),
        (
            "S2-1k",
            MESH,
            "p99_us",
            Check::AddedAtMost(0.15, 1000.0),
            "added p99 (ms)",
        ),
        ("S2-5k", MESH, "p50_us", Check::RatioAtMost(1.6), "p50"),
        (
            "S2-5k",
            MESH,
            "p99_us",
            Check::AddedAtMost(0.15, 1000.0),
            "added p99 (ms)",
        ),
        ("S3-1", MESH, "gbit_s", Check::RatioAtLeast(0.55), "throughput"),
        ("S3-4", MESH, "gbit_s", Check::RatioAtLeast(0.55), "throughput"),
        ("S4", MESH_POOLED, "conn_s", Check::RatioAtLeast(0.6), "conn/s"),
        (
            "S6",
            MESH,
            "node1_rss_mb",
            Check::AtMost(16.0),
            "node1 daemon RSS (MB)",
        ),
        (
            "S7",
            "programs attached",
            "conn_s",
            Check::RatioAtLeast(0.98),
            "conn/s",
        ),
        (
            "S7",
            "programs attached",
            "gbit_s",
            Check::RatioAtLeast(0.98),
            "throughput",
        ),
    ];
    list.into_iter()
        .filter_map(|(id, config, key, check, what)| {
            let s = run.scenario(id)?;
            let (value, limit, met) = match check {
                Check::RatioAtMost(l) => {
                    let v = s.ratio(config, key);
                    (v, format!("≤ {l:.2}× {}", s.baseline), v.map(|v| v <= l))
                }
                Check::RatioAtLeast(l) => {
                    let v = s.ratio(config, key);
                    (v, format!("≥ {l:.2}× {}", s.baseline), v.map(|v| v >= l))
                }
                Check::AddedAtMost(l, scale) => {
                    let v = s
                        .summary(config, key)
                        .zip(s.summary(&s.baseline, key))
                        .map(|(a, b)| (a.median - b.median) / scale);
                    (v, format!("≤ {l:.2} over {}", s.baseline), v.map(|v| v <= l))
                }
                Check::AtMost(l) => {
                    let v = s.summary(config, key).map(|x| x.median);
                    (v, format!("≤ {l:.0}"), v.map(|v| v <= l))
                }
            };
            Some(TargetResult {
                scenario: id.into(),
                what: format!("{config}: {what}"),
                limit,
                value,
                met,
            })
        })
        .collect()
}

/// Significant digits that suit the value's size.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub fn markdown(run: &Run, chart: &str) -> String {
    let mut out = String::new();
    let mode = if run.plan.quick { "quick" } else { "full" };
    let _ = writeln!(out, "# Benchmark run {}\n", run.date);
    let _ = writeln!(
        out,
        "Commit `{}`, {mode} mode: {} interleaved rounds, {} s per request/connection run, {} s per iperf3 run; {}; {:.0} s in all.\n",
        run.commit,
        run.plan.rounds,
        run.plan.duration.as_secs_f64(),
        run.plan.bulk.as_secs_f64(),
        run.machine,
        run.wall_s
    );
    for n in &run.notes {
        let _ = writeln!(out, "- {n}");
    }
    let _ = writeln!(
        out,
        "\nEach cell: median over the rounds, (min–max); `×` columns: ratio of medians to the scenario's first row, measured in the same run.\n"
    );
    let targets = targets(run);
    if !targets.is_empty() {
        let _ = writeln!(
            out,
            "## Targets (issue #6)\n\n| scenario | figure | target | this run | |\n|---|---|---|---|---|"
        );
        for t in &targets {
            let status = match t.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "n/a",
            };
            let value = t.value.map_or("n/a".into(), num);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {value} | {status} |",
                t.scenario, t.what, t.limit
            );
        }
        out.push('\n');
    }
    for s in &run.scenarios {
        scenario_table(&mut out, s);
    }
    let _ = writeln!(out, "## Latency percentiles\n\n![latency percentiles]({chart})");
    out
}

fn scenario_table(out: &mut String, s: &Scenario) {
    let _ = writeln!(out, "## {} — {}\n", s.id, s.title);
    let figures: Vec<_> = s
        .figures
        .iter()
        .filter(|f| s.samples.iter().any(|x| x.values.contains_key(f.key)))
        .collect();
    let with_ratio = s.configs.len() > 1;
    let mut header = String::from("| configuration |");
    let mut rule = String::from("|---|");
    for f in &figures {
        header += &format!(" {} |", f.label);
        rule += "---|";
        if with_ratio {
            header += " × |";
            rule += "---|";
        }
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for config in &s.configs {
        let mut row = format!("| {config} |");
        for f in &figures {
            match s.summary(config, f.key) {
                Some(x) => row += &format!(" {} ({}–{}) |", num(x.median), num(x.min), num(x.max)),
                None => row += " – |",
            }
            if with_ratio {
                match s.ratio(config, f.key) {
                    Some(r) => row += &format!(" {r:.2} |"),
                    None => row += " – |",
                }
            }
        }
        let _ = writeln!(out, "{row}");
    }
    for n in &s.notes {
        let _ = writeln!(out, "\n{n}");
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scenarios::NO_MESH;
    use crate::bench::stats::{Figure, Sample};

    fn scenario() -> Scenario {
        let sample = |config: &str, round, p50: f64, p99: f64| Sample {
            config: config.into(),
            round,
            values: [("p50_us".to_string(), p50), ("p99_us".to_string(), p99)].into(),
            latency_us: None,
        };
        Scenario {
            id: "S2-1k".into(),
            title: "cross-node".into(),
            baseline: NO_MESH.into(),
            configs: vec![NO_MESH.into(), MESH.into()],
            figures: vec![
                Figure::lower("p50_us", "p50 µs"),
                Figure::lower("p99_us", "p99 µs"),
            ],
            samples: vec![
                sample(NO_MESH, 0, 100.0, 200.0),
                sample(NO_MESH, 1, 110.0, 220.0),
                sample(MESH, 0, 150.0, 400.0),
                sample(MESH, 1, 170.0, 420.0),
            ],
            notes: vec![],
        }
    }

    #[test]
    fn targets_use_ratios_and_added_latency() {
        let mut run = Run::new(&Plan::quick(), "abc");
        run.scenarios.push(scenario());
        let t = targets(&run);
        assert_eq!(t.len(), 2);
        // p50: 160 / 105.
        assert!((t[0].value.unwrap() - 160.0 / 105.0).abs() < 1e-9);
        assert_eq!(t[0].met, Some(true));
        // Added p99: 410 - 210 µs = 0.2 ms > 0.15 ms.
        assert!((t[1].value.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(t[1].met, Some(false));
    }

    #[test]
    fn markdown_has_a_row_per_configuration_with_ratios() {
        let mut run = Run::new(&Plan::quick(), "abc");
        run.scenarios.push(scenario());
        let md = markdown(&run, "x.png");
        assert!(
            md.contains("| no mesh | 105 (100–110) | 1.00 | 210 (200–220) | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| mesh | 160 (150–170) | 1.52 | 410 (400–420) | 1.95 |"),
            "{md}"
        );
        assert!(md.contains("**missed**"));
        assert!(run.file_stem().ends_with('Z') && !run.file_stem().contains(':'));
    }
}
