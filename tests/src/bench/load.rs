//! What `loadgen` prints (one JSON object on stdout) and the harness reads: the load
//! generator and the harness share this type, so they cannot disagree on the format.
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds, from an HDR histogram (3 significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// The percentile points the chart draws, with their labels.
    pub fn points(&self) -> [(&'static str, f64); 4] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
        ]
    }
}

/// One run of `loadgen rr` or `loadgen conn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// `rr` or `conn`.
    pub mode: String,
    /// Requests (rr) or connections (conn) that completed and were checked.
    pub completed: u64,
    /// Requests or connections that failed (refused, reset, wrong bytes, timeout).
    pub errors: u64,
    /// The first error, for the message.
    pub first_error: Option<String>,
    /// Wall time of the measured part, seconds.
    pub elapsed_s: f64,
    /// The intended rate (0: as fast as possible, closed loop).
    pub target_rate: f64,
    /// `completed / elapsed_s`.
    pub achieved_rate: f64,
    /// Sends that started more than 1 ms after their intended time (the load
    /// generator or the path could not keep up; their latency counts from the intended
    /// time, so it is not hidden).
    pub late: u64,
    /// Latency: for open-loop runs from the intended send time to the end of the
    /// response; for closed-loop runs from the start of the request.
    pub latency_us: Percentiles,
}
