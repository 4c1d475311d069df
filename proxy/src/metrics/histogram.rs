//! A Prometheus histogram of durations that records without a lock.
//!
//! `prometheus_client`'s histogram takes a mutex on every observation. The proxy records a
//! query duration and a checkout wait for every transaction, from every serving thread, into
//! histograms shared by all sessions: with a lock that is a point where threads queue behind
//! each other. Here an observation is two additions (its bucket and the sum in nanoseconds) to
//! the observing thread's own stripe ([`super::striped`]); `/metrics` adds the stripes up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::striped::{stripe, stripes, Padded};

/// One stripe's counts: one slot per bucket, the sum of observations in nanoseconds last.
const ROW: usize = 16;
/// Buckets with an upper bound: the rest of a row is `+Inf` and the sum.
const MAX_BOUNDS: usize = ROW - 2;

/// Durations in buckets with upper bounds in seconds; clones share the counts.
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in nanoseconds, ascending; the last bucket (`+Inf`) is implied.
    bounds: Vec<u64>,
    /// Observations per bucket (not cumulative) and their sum, per stripe.
    rows: Arc<[Padded<[AtomicU64; ROW]>]>,
}

impl DurationHistogram {
    /// `count` buckets (at most 14) whose upper bounds grow from `start` by `factor`, then
    /// `+Inf`.
    pub fn exponential(start: Duration, factor: u32, count: usize) -> DurationHistogram {
        let start = u64::try_from(start.as_nanos()).unwrap_or(u64::MAX);
        let bounds: Vec<u64> =
            std::iter::successors(Some(start), |b| b.checked_mul(u64::from(factor)))
                .take(count.min(MAX_BOUNDS))
                .collect();
        DurationHistogram {
            inner: Arc::new(Inner {
                bounds,
                rows: stripes(),
            }),
        }
    }

    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let inner = &self.inner;
        let stripe = stripe(inner.rows.len());
        let Some(Padded(row)) = inner.rows.get(stripe.index) else {
            return;
        };
        let bucket = inner.bounds.partition_point(|bound| *bound < nanos);
        if let Some(slot) = row.get(bucket) {
            stripe.add(slot, 1);
        }
        // A checkout that found a free connection waited zero: nothing to add.
        if nanos > 0 {
            stripe.add(&row[ROW - 1], nanos);
        }
    }

    /// Slot `index` of every stripe's row, added up.
    fn total(&self, index: usize) -> u64 {
        self.inner.rows.iter().fold(0u64, |sum, Padded(row)| {
            sum.wrapping_add(row.get(index).map_or(0, |n| n.load(Ordering::Relaxed)))
        })
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let seconds = |nanos: u64| nanos as f64 / 1e9;
        let bounds = inner
            .bounds
            .iter()
            .map(|b| seconds(*b))
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(index, bound)| (bound, self.total(index)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = seconds(self.total(ROW - 1));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn observations_land_in_their_buckets_and_encode_cumulatively() -> Result<(), std::fmt::Error> {
        let histogram = DurationHistogram::exponential(Duration::from_millis(1), 10, 2);
        for ms in [0, 1, 5, 10, 50, 5000] {
            histogram.observe(Duration::from_millis(ms));
        }
        let mut registry = Registry::default();
        registry.register("wait_seconds", "test", histogram.clone());
        let mut text = String::new();
        encode(&mut text, &registry)?;
        for line in [
            "wait_seconds_bucket{le=\"0.001\"} 2",
            "wait_seconds_bucket{le=\"0.01\"} 4",
            "wait_seconds_bucket{le=\"+Inf\"} 6",
            "wait_seconds_count 6",
            "wait_seconds_sum 5.066",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        Ok(())
    }
}
