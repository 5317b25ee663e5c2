//! Results of a run and their statistics: every round's figures are kept; a figure of
//! a configuration is summarised as the median and min–max over its rounds, and compared
//! with the scenario's baseline as the ratio of medians.
use std::collections::BTreeMap;

use serde::Serialize;

use super::load::Percentiles;

/// A figure a scenario reports, e.g. `p50_us`.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub higher_is_better: bool,
}

impl Figure {
    pub const fn lower(key: &'static str, label: &'static str) -> Figure {
        Figure {
            key,
            label,
            higher_is_better: false,
        }
    }

    pub const fn higher(key: &'static str, label: &'static str) -> Figure {
        Figure {
            key,
            label,
            higher_is_better: true,
        }
    }
}

/// One configuration measured once.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub config: String,
    pub round: usize,
    pub values: BTreeMap<String, f64>,
    /// Latency percentiles of request/response runs (for the chart).
    pub latency_us: Option<Percentiles>,
}

/// A scenario's results: its configurations in order (the baseline first), figures and
/// every sample.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub baseline: String,
    pub configs: Vec<String>,
    pub figures: Vec<Figure>,
    pub samples: Vec<Sample>,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

/// Median (mean of the middle two for an even count), min and max; None for no values.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        rounds: n,
    })
}

impl Scenario {
    pub fn values(&self, config: &str, key: &str) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.config == config)
            .filter_map(|s| s.values.get(key).copied())
            .collect()
    }

    pub fn summary(&self, config: &str, key: &str) -> Option<Summary> {
        summarize(&self.values(config, key))
    }

    /// Median of `config` over median of the baseline, for `key`.
    pub fn ratio(&self, config: &str, key: &str) -> Option<f64> {
        let base = self.summary(&self.baseline, key)?.median;
        let this = self.summary(config, key)?.median;
        (base != 0.0).then(|| this / base)
    }

    /// The median of each latency percentile of `config` over its rounds.
    pub fn median_percentiles(&self, config: &str) -> Option<Percentiles> {
        let runs: Vec<Percentiles> = self
            .samples
            .iter()
            .filter(|s| s.config == config)
            .filter_map(|s| s.latency_us)
            .collect();
        let med =
            |f: fn(&Percentiles) -> f64| summarize(&runs.iter().map(f).collect::<Vec<_>>()).map(|s| s.median);
        Some(Percentiles {
            p50: med(|p| p.p50)?,
            p90: med(|p| p.p90)?,
            p99: med(|p| p.p99)?,
            p999: med(|p| p.p999)?,
            max: med(|p| p.max)?,
            mean: med(|p| p.mean)?,
        })
    }
}

/// The order in which round `round` visits `n` configurations: each round starts one
/// further along, so no configuration always runs first (after a pause) or last.
pub fn round_order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
    }

    #[test]
    fn ratio_is_of_medians_against_the_baseline() {
        let sample = |config: &str, round, v| Sample {
            config: config.into(),
            round,
            values: [("x".to_string(), v)].into(),
            latency_us: None,
        };
        let s = Scenario {
            id: "T".into(),
            title: "t".into(),
            baseline: "none".into(),
            configs: vec!["none".into(), "mesh".into()],
            figures: vec![Figure::lower("x", "x")],
            samples: vec![
                sample("none", 0, 10.0),
                sample("none", 1, 30.0),
                sample("none", 2, 20.0),
                sample("mesh", 0, 25.0),
                sample("mesh", 1, 100.0),
                sample("mesh", 2, 30.0),
            ],
            notes: vec![],
        };
        assert_eq!(s.ratio("mesh", "x"), Some(1.5));
        assert_eq!(s.ratio("none", "x"), Some(1.0));
        assert_eq!(s.ratio("mesh", "missing"), None);
    }

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(round_order(3, 0), vec![0, 1, 2]);
        assert_eq!(round_order(3, 1), vec![1, 2, 0]);
        assert_eq!(round_order(3, 5), vec![2, 0, 1]);
        let mut all = round_order(5, 3);
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
