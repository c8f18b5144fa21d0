//! [`Histogram`]: a lock-free, fixed-bucket histogram for metrics (fsync latency, batch sizes),
//! rendered by the node in Prometheus' text format. Bucket bounds are chosen at construction.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds; observations are counted in the first bucket whose bound
/// is `>=` the value (cumulative counts are computed when read).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ending with `(+Inf, count)`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// A histogram with the given upper bounds (sorted ascending); `+Inf` is implied.
    pub fn new(bounds: Vec<f64>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Bounds growing by `factor` from `start`, `n` of them.
    pub fn exponential(start: f64, factor: f64, n: usize) -> Histogram {
        let mut b = Vec::with_capacity(n);
        let mut v = start;
        for _ in 0..n {
            b.push(v);
            v *= factor;
        }
        Histogram::new(b)
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cum));
        }
        HistogramSnapshot {
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let h = Histogram::new(vec![1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 9.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (2.0, 3), (4.0, 4), (f64::INFINITY, 5)]
        );
        assert_eq!(s.count, 5);
        assert!((s.sum - 15.0).abs() < 1e-9);
    }

    #[test]
    fn exponential_bounds_grow() {
        let s = Histogram::exponential(1.0, 2.0, 4).snapshot();
        let bounds: Vec<f64> = s.buckets.iter().map(|b| b.0).collect();
        assert_eq!(bounds, vec![1.0, 2.0, 4.0, 8.0, f64::INFINITY]);
    }
}
