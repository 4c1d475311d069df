//! Counting from every worker thread without sharing a cache line.
//!
//! A counter every thread adds to is one cache line every core writes: each addition waits
//! for the line to come over from the core that wrote it last, and the proxy counts several
//! things per transaction (statements, transactions, busy time, latency buckets). A striped
//! value keeps one line per stripe instead; a thread adds to its own stripe, and a reader
//! (`SHOW STATS`, `/metrics`) sums them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A value alone on its cache lines (two: x86's prefetcher pulls lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Stripes per value: the machine's cores, rounded up to a power of two (at most 64).
static STRIPES: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .next_power_of_two()
        .min(64)
});

/// The stripe this thread adds to among `count` (a power of two). Threads take numbers in
/// the order they first count, so the worker threads of a runtime sized to the cores get
/// stripes of their own.
pub fn stripe(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n) & (count - 1)
}

/// Fresh stripes of `T`, [`STRIPES`] of them.
pub fn stripes<T: Default>() -> Arc<[Padded<T>]> {
    (0..*STRIPES).map(|_| Padded::default()).collect()
}

/// A Prometheus counter striped across threads; clones share the count.
#[derive(Debug, Clone)]
pub struct StripedCounter(Arc<[Padded<AtomicU64>]>);

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter(stripes())
    }
}

impl StripedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `v`.
    pub fn inc_by(&self, v: u64) {
        let stripes = &self.0;
        if let Some(own) = stripes.get(stripe(stripes.len())) {
            own.0.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// The count so far (every stripe's, added up).
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
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
    fn counts_from_many_threads_add_up() -> Result<(), std::fmt::Error> {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let counter = counter.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        counter.inc();
                    }
                    counter.inc_by(5);
                });
            }
        });
        assert_eq!(counter.get(), 8 * 1005);
        let mut registry = Registry::default();
        registry.register("things", "test", counter);
        let mut text = String::new();
        encode(&mut text, &registry)?;
        assert!(text.contains("things_total 8040"), "{text}");
        Ok(())
    }

    #[test]
    fn stripes_are_a_power_of_two_and_a_line_pair_apart() {
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 128);
        let stripes = stripes::<AtomicU64>();
        assert!(stripes.len().is_power_of_two());
        assert!(stripe(stripes.len()) < stripes.len());
        let apart = std::mem::size_of_val(&stripes[0]);
        assert!(apart >= 128, "stripes {apart} bytes apart");
    }
}
