//! Counting from every serving thread without sharing a cache line.
//!
//! A counter every thread adds to is one cache line every core writes: each addition waits
//! for the line to come over from the core that wrote it last, and the proxy counts several
//! things per transaction (statements, transactions, busy time, latency buckets). A striped
//! value keeps one line per stripe instead; a thread adds to its own stripe, and a reader
//! (`SHOW STATS`, `/metrics`) sums them. A stripe only one thread writes is added to with a
//! plain load and store; an atomic addition is left for the stripe later threads share.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A value alone on its cache lines (two: x86's prefetcher pulls lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Stripes per value: one more than the machine's cores (at most 64), so each serving thread
/// (one per core by default) has a stripe to itself.
static STRIPES: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_add(1)
        .min(64)
});

/// A thread's place among a value's stripes. Neither `Send` nor `Sync`: it is only good on the
/// thread that asked for it (held across an `.await`, a task could carry it to another thread,
/// which would then write a stripe it does not own without a locked instruction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    /// The stripe the thread adds to.
    pub index: usize,
    /// True when no other thread adds to it: an addition then needs no locked instruction.
    pub own: bool,
    _this_thread: PhantomData<*const ()>,
}

impl Stripe {
    /// Adds `v` to `slot`, this thread's stripe of a value: a load and a store when the thread
    /// writes the stripe alone (no locked instruction, which stalls the core on every
    /// transaction), an atomic addition when other threads share it.
    pub fn add(self, slot: &AtomicU64, v: u64) {
        if self.own {
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(v),
                Ordering::Relaxed,
            );
        } else {
            slot.fetch_add(v, Ordering::Relaxed);
        }
    }
}

/// The stripe of the thread numbered `number` among `count`: the first `count - 1` numbers
/// get a stripe each to themselves, every later one shares the last.
fn stripe_of(number: usize, count: usize) -> Stripe {
    let last = count.saturating_sub(1);
    Stripe {
        index: number.min(last),
        own: number < last,
        _this_thread: PhantomData,
    }
}

/// This thread's stripe among `count`. Threads take numbers in the order they first count, so
/// the serving threads, one per core by default, which count from the first transaction,
/// get stripes of their own.
pub fn stripe(count: usize) -> Stripe {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    stripe_of(NUMBER.with(|n| *n), count)
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
        let stripe = stripe(stripes.len());
        if let Some(Padded(slot)) = stripes.get(stripe.index) {
            stripe.add(slot, v);
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
    fn stripes_outnumber_the_cores_and_lie_a_line_pair_apart() {
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 128);
        let stripes = stripes::<AtomicU64>();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(stripes.len(), (cores + 1).min(64));
        assert!(stripe(stripes.len()).index < stripes.len());
        let apart = std::mem::size_of_val(&stripes[0]);
        assert!(apart >= 128, "stripes {apart} bytes apart");
    }

    #[test]
    fn only_the_first_threads_own_their_stripes() {
        let count = 4;
        let taken: Vec<Stripe> = (0..8).map(|number| stripe_of(number, count)).collect();
        let place = |s: &Stripe| (s.index, s.own);
        for (number, stripe) in taken.iter().enumerate().take(count - 1) {
            assert_eq!(place(stripe), (number, true));
        }
        for stripe in &taken[count - 1..] {
            assert_eq!(place(stripe), (count - 1, false));
        }
        assert_eq!(place(&stripe_of(5, 1)), (0, false));
    }
}
