//! A service's request metrics in the Prometheus text format: a latency histogram and
//! a count per outcome for each endpoint, recorded lock-free on the request path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Upper bounds of the latency buckets, in seconds (then +Inf).
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One endpoint's latencies: a cumulative-on-render histogram and its sum.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (the last one: past every bound).
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let b = BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(BUCKETS.len());
        self.counts[b].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
}

/// Latency and outcomes per endpoint (see the module documentation).
#[derive(Debug, Default)]
pub struct RequestMetrics {
    latency: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
    outcomes: Mutex<BTreeMap<(&'static str, u16), Arc<AtomicU64>>>,
}

impl RequestMetrics {
    /// Records one request to `endpoint` that took `seconds` and answered `status`.
    pub fn observe(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.histogram(endpoint).observe(seconds);
        self.outcome(endpoint, status)
            .fetch_add(1, Ordering::Relaxed);
    }

    // The maps only grow, by one entry per endpoint or outcome the service has; the
    // lock is held for the look-up, the count is taken outside it.
    fn histogram(&self, endpoint: &'static str) -> Arc<Histogram> {
        let mut map = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(endpoint).or_default())
    }

    fn outcome(&self, endpoint: &'static str, status: u16) -> Arc<AtomicU64> {
        let mut map = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry((endpoint, status)).or_default())
    }

    /// Appends the histograms (`mosaic_request_seconds`) and outcome counts
    /// (`mosaic_requests_total`) in the Prometheus text format to `out`.
    pub fn render(&self, out: &mut String) {
        let hist: Vec<_> = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, Arc::clone(v)))
            .collect();
        let _ = writeln!(
            out,
            "# HELP mosaic_request_seconds Request latency by endpoint."
        );
        let _ = writeln!(out, "# TYPE mosaic_request_seconds histogram");
        for (endpoint, h) in hist {
            let mut cumulative = 0;
            for (k, c) in h.counts.iter().enumerate() {
                cumulative += c.load(Ordering::Relaxed);
                let le = BUCKETS.get(k).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "mosaic_request_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "mosaic_request_seconds_sum{{endpoint=\"{endpoint}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "mosaic_request_seconds_count{{endpoint=\"{endpoint}\"}} {cumulative}"
            );
        }
        let outcomes: Vec<_> = self
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
            .collect();
        let _ = writeln!(
            out,
            "# HELP mosaic_requests_total Requests by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE mosaic_requests_total counter");
        for ((endpoint, status), n) in outcomes {
            let _ = writeln!(
                out,
                "mosaic_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_sum_and_outcomes() {
        let m = RequestMetrics::default();
        m.observe("recommend", 200, 0.0003);
        m.observe("recommend", 200, 0.004);
        m.observe("recommend", 429, 9.0);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "mosaic_request_seconds_bucket{endpoint=\"recommend\",le=\"0.0005\"} 1",
            "mosaic_request_seconds_bucket{endpoint=\"recommend\",le=\"0.005\"} 2",
            "mosaic_request_seconds_bucket{endpoint=\"recommend\",le=\"5\"} 2",
            "mosaic_request_seconds_bucket{endpoint=\"recommend\",le=\"+Inf\"} 3",
            "mosaic_request_seconds_count{endpoint=\"recommend\"} 3",
            "mosaic_requests_total{endpoint=\"recommend\",status=\"200\"} 2",
            "mosaic_requests_total{endpoint=\"recommend\",status=\"429\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
        let sum = out
            .lines()
            .find_map(|l| l.strip_prefix("mosaic_request_seconds_sum{endpoint=\"recommend\"} "))
            .unwrap();
        assert!((sum.parse::<f64>().unwrap() - 9.0043).abs() < 1e-6, "{sum}");
    }
}
