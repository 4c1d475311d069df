//! Bucketed hash in `shards.yaml`: `buckets: N` on a hash table makes its key space
//! PostgreSQL's `PARTITION BY HASH` with `MODULUS N` — a key's bucket is the remainder its
//! partition would get — and `bucket_map:` says which shard holds each bucket, as `[from, to)`
//! ranges. Adding a shard then reassigns whole buckets, so only their rows travel (consistent
//! hashing that PostgreSQL can check), where plain `hash` (modulus = shard count) moves most
//! rows. Without `bucket_map:` the buckets are split evenly, in contiguous blocks, over the
//! table's shards.
//!
//! The model needs nothing new: [`Sharding::Hash`](super::Sharding::Hash)'s `shards` is the
//! shard of each remainder, and here it simply has `N` entries.

use std::collections::HashMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::validate::Problems;
use super::ShardId;

/// Most buckets a table may have (the map is kept as one entry per bucket).
pub const MAX_BUCKETS: u32 = 65_536;

/// One entry of `bucket_map:`: buckets `[from, to)` on `shard`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucketRange {
    pub from: Spanned<u32>,
    pub to: Spanned<u32>,
    pub shard: Spanned<String>,
}

/// The shard of each of the `buckets` buckets: from `map` when given, else an even split over
/// `shards` in contiguous blocks. `None` (with the problems noted) when it cannot be built.
pub(super) fn bucket_shards(
    table: &str,
    buckets: &Spanned<u32>,
    map: Option<&[RawBucketRange]>,
    shards: &[ShardId],
    shard_ids: &HashMap<String, usize>,
    problems: &mut Problems,
) -> Option<Vec<ShardId>> {
    let n = buckets.value;
    if n == 0 || n > MAX_BUCKETS {
        problems.at(
            buckets,
            format!("table {table:?}: buckets must be between 1 and {MAX_BUCKETS}"),
        );
        return None;
    }
    let Some(map) = map else {
        if (n as usize) < shards.len() {
            problems.at(
                buckets,
                format!(
                    "table {table:?}: {n} buckets cannot be split over {} shards; use at least as many buckets as shards",
                    shards.len()
                ),
            );
            return None;
        }
        return Some(even_split(n, shards));
    };
    let mut owner: Vec<Option<ShardId>> = vec![None; n as usize];
    let mut valid = true;
    for range in map {
        let Some(shard) = shard_ids.get(&range.shard.value).copied() else {
            problems.at(
                &range.shard,
                format!(
                    "shard {:?} is not defined under `shards:`",
                    range.shard.value
                ),
            );
            valid = false;
            continue;
        };
        if range.from.value >= range.to.value || range.to.value > n {
            problems.at(
                &range.from,
                format!(
                    "table {table:?}: bucket range [{}, {}) must be non-empty and within [0, {n})",
                    range.from.value, range.to.value
                ),
            );
            valid = false;
            continue;
        }
        for bucket in range.from.value..range.to.value {
            let slot = &mut owner[bucket as usize];
            if slot.is_some() {
                problems.at(
                    &range.from,
                    format!("table {table:?}: bucket {bucket} is mapped twice in bucket_map"),
                );
                valid = false;
                break;
            }
            *slot = Some(shard);
        }
    }
    if let Some(first) = owner.iter().position(Option::is_none) {
        let end = owner[first..]
            .iter()
            .position(Option::is_some)
            .map_or(n as usize, |len| first + len);
        problems.at(
            buckets,
            format!("table {table:?}: buckets [{first}, {end}) have no shard in bucket_map"),
        );
        return None;
    }
    valid.then(|| owner.into_iter().flatten().collect())
}

/// `n` buckets over `shards` in contiguous blocks whose sizes differ by at most one.
fn even_split(n: u32, shards: &[ShardId]) -> Vec<ShardId> {
    let count = shards.len() as u64;
    (0..u64::from(n))
        .map(|b| shards[(b * count / u64::from(n)) as usize])
        .collect()
}

/// Maximal runs of consecutive buckets on one shard: `(from, to, shard)`, `[from, to)`.
pub fn bucket_runs(map: &[ShardId]) -> Vec<(usize, usize, ShardId)> {
    let mut runs: Vec<(usize, usize, ShardId)> = Vec::new();
    for (bucket, &shard) in map.iter().enumerate() {
        match runs.last_mut() {
            Some((_, to, last)) if *last == shard => *to = bucket + 1,
            _ => runs.push((bucket, bucket + 1, shard)),
        }
    }
    runs
}

/// Whether a hash table's placement is a bucket map rather than one remainder per shard: some
/// shard holds several remainders.
pub fn is_bucketed(map: &[ShardId]) -> bool {
    let mut seen = std::collections::HashSet::new();
    !map.iter().all(|s| seen.insert(*s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::minimal_with;
    use crate::config::{Config, Sharding};
    use crate::KeyValue;

    fn with_shards(tables: &str) -> Result<Config, String> {
        Config::from_yaml(&format!(
            "users: [{{name: app, password: app}}]\nshards:\n  - {{name: s0, port: 5432}}\n  - {{name: s1, port: 5433}}\n  - {{name: s2, port: 5434}}\ntables:\n{tables}"
        ))
        .map_err(|e| e.to_string())
    }

    fn map_of(config: &Config, table: &str) -> Vec<ShardId> {
        match config.table(table).map(|t| &t.sharding) {
            Some(Sharding::Hash { shards, .. }) => shards.clone(),
            other => panic!("{table} is not hash: {other:?}"),
        }
    }

    #[test]
    fn buckets_split_evenly_in_blocks_by_default() {
        let config = with_shards("  - {name: t, sharding: hash, column: id, buckets: 10}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let map = map_of(&config, "t");
        assert_eq!(map, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(bucket_runs(&map), [(0, 4, 0), (4, 7, 1), (7, 10, 2)]);
        assert!(is_bucketed(&map));
        assert!(!is_bucketed(&[2, 0, 1]));
    }

    #[test]
    fn a_bucket_map_places_each_bucket() {
        let config = with_shards(
            "  - name: t\n    sharding: hash\n    column: id\n    buckets: 8\n    bucket_map:\n      - {from: 0, to: 3, shard: s2}\n      - {from: 3, to: 4, shard: s0}\n      - {from: 4, to: 8, shard: s1}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let map = map_of(&config, "t");
        assert_eq!(map, [2, 2, 2, 0, 1, 1, 1, 1]);
        // The key's bucket is PostgreSQL's remainder for MODULUS 8, and its shard the map's.
        let rule = config.table("t").cloned().unwrap_or_else(|| panic!("no t"));
        for key in 0..200i64 {
            let remainder =
                crate::hash::partition_remainder([KeyValue::Int(key).partition_hash()], 8);
            assert_eq!(
                rule.shard_for(&KeyValue::Int(key)).ok(),
                Some(map[remainder as usize])
            );
        }
    }

    #[test]
    fn gaps_overlaps_and_bad_counts_are_reported_with_their_line() {
        let cases = [
            ("    buckets: 0\n", "between 1 and 65536"),
            ("    buckets: 2\n", "cannot be split over 3 shards"),
            (
                "    buckets: 4\n    bucket_map:\n      - {from: 0, to: 3, shard: s0}\n",
                "buckets [3, 4) have no shard",
            ),
            (
                "    buckets: 4\n    bucket_map:\n      - {from: 0, to: 3, shard: s0}\n      - {from: 2, to: 4, shard: s1}\n",
                "bucket 2 is mapped twice",
            ),
            (
                "    buckets: 4\n    bucket_map:\n      - {from: 0, to: 5, shard: s0}\n",
                "within [0, 4)",
            ),
            (
                "    buckets: 4\n    bucket_map:\n      - {from: 0, to: 4, shard: s9}\n",
                "\"s9\" is not defined",
            ),
            (
                "    bucket_map:\n      - {from: 0, to: 4, shard: s0}\n",
                "bucket_map needs `buckets`",
            ),
            (
                "    buckets: 4\n    shards: [s0]\n    bucket_map:\n      - {from: 0, to: 4, shard: s0}\n",
                "either `shards` or `bucket_map`",
            ),
        ];
        for (yaml, expected) in cases {
            let error = with_shards(&format!(
                "  - name: t\n    sharding: hash\n    column: id\n{yaml}"
            ))
            .err()
            .unwrap_or_default();
            assert!(error.contains(expected), "{yaml}: {error}");
            assert!(error.starts_with("line "), "{yaml}: {error}");
        }
        assert!(minimal_with("tables:\n  - {name: t, sharding: range, column: id, buckets: 4, ranges: [{shard: s0}]}\n")
            .err()
            .unwrap_or_default()
            .contains("buckets are for hash tables"));
    }

    #[test]
    fn tables_with_the_same_bucket_map_are_co_located_and_check_shows_shares() {
        let config = with_shards(
            "  - {name: users, sharding: hash, column: id, buckets: 12}\n  - {name: orders, sharding: hash, column: user_id, buckets: 12}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map_of(&config, "users"), map_of(&config, "orders"));
        let shown = config.to_string();
        assert!(
            shown.contains(
                "users: hash(id int8), 12 buckets: s0 4 (33.3%), s1 4 (33.3%), s2 4 (33.3%)"
            ),
            "{shown}"
        );
        assert!(shown.contains("    buckets [4, 8) -> s1"), "{shown}");
    }
}
