//! Sets of shards, as bitmaps: what route evaluation computes with.

use crate::config::{Config, ShardId, Sharding, TableRule};

/// A set of shard ids as a bitmap; the first 64 shards need no allocation, which keeps
/// `route()` allocation-free for ordinary clusters.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardSet {
    low: u64,
    high: Vec<u64>,
}

impl ShardSet {
    pub(crate) fn new() -> ShardSet {
        ShardSet::default()
    }

    pub(crate) fn single(id: ShardId) -> ShardSet {
        let mut s = ShardSet::new();
        s.insert(id);
        s
    }

    pub(crate) fn insert(&mut self, id: ShardId) {
        if id < 64 {
            self.low |= 1 << id;
        } else {
            let word = id / 64 - 1;
            if self.high.len() <= word {
                self.high.resize(word + 1, 0);
            }
            self.high[word] |= 1 << (id % 64);
        }
    }

    pub(crate) fn contains(&self, id: ShardId) -> bool {
        if id < 64 {
            self.low & (1 << id) != 0
        } else {
            self.high
                .get(id / 64 - 1)
                .is_some_and(|w| w & (1 << (id % 64)) != 0)
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.low.count_ones() as usize
            + self
                .high
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.low == 0 && self.high.iter().all(|w| *w == 0)
    }

    pub(crate) fn union_with(&mut self, other: &ShardSet) {
        self.low |= other.low;
        if self.high.len() < other.high.len() {
            self.high.resize(other.high.len(), 0);
        }
        for (mine, theirs) in self.high.iter_mut().zip(&other.high) {
            *mine |= theirs;
        }
    }

    pub(crate) fn intersect_with(&mut self, other: &ShardSet) {
        self.low &= other.low;
        for (i, mine) in self.high.iter_mut().enumerate() {
            *mine &= other.high.get(i).copied().unwrap_or(0);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        std::iter::once(self.low)
            .chain(self.high.iter().copied())
            .enumerate()
            .flat_map(|(word, bits)| {
                (0..64)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| word * 64 + b)
            })
    }

    pub(crate) fn first(&self) -> Option<ShardId> {
        self.iter().next()
    }

    /// The only member, when there is exactly one.
    pub(crate) fn only(&self) -> Option<ShardId> {
        if self.len() == 1 {
            self.first()
        } else {
            None
        }
    }
}

impl PartialEq for ShardSet {
    fn eq(&self, other: &ShardSet) -> bool {
        let words = self.high.len().max(other.high.len());
        self.low == other.low
            && (0..words).all(|i| {
                self.high.get(i).copied().unwrap_or(0) == other.high.get(i).copied().unwrap_or(0)
            })
    }
}

impl Eq for ShardSet {}

/// Every shard that holds rows of `rule`.
pub(super) fn table_shards(rule: &TableRule, all: usize) -> ShardSet {
    let mut set = ShardSet::new();
    match &rule.sharding {
        Sharding::Hash { shards, .. } => shards.iter().for_each(|s| set.insert(*s)),
        Sharding::Range { ranges, .. } => ranges.iter().for_each(|r| set.insert(r.shard)),
        Sharding::Reference => (0..all).for_each(|s| set.insert(s)),
    }
    rule.directory.shards().for_each(|s| set.insert(s));
    set
}

/// Every shard of the cluster.
pub(super) fn all_shards(config: &Config) -> ShardSet {
    let mut set = ShardSet::new();
    config.all_shards().for_each(|s| set.insert(s));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sets_behave_like_sets() {
        let mut a = ShardSet::new();
        for id in [0, 3, 63, 64, 200] {
            a.insert(id);
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 3, 63, 64, 200]);
        assert_eq!(a.len(), 5);
        assert!(a.contains(200) && !a.contains(199));
        let mut b = ShardSet::single(3);
        b.insert(200);
        let mut i = a.clone();
        i.intersect_with(&b);
        assert_eq!(i, b);
        let mut small = ShardSet::single(3);
        small.intersect_with(&ShardSet::single(200));
        assert!(small.is_empty());
        let mut wide = ShardSet::single(200);
        wide.intersect_with(&ShardSet::single(3));
        assert!(wide.is_empty());
        assert_eq!(wide, ShardSet::new());
        let mut u = ShardSet::single(1);
        u.union_with(&a);
        assert_eq!(u.len(), 6);
        assert_eq!(ShardSet::single(7).only(), Some(7));
        assert_eq!(u.only(), None);
    }
}
