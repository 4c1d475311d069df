//! One table's sharding rule from its `tables:` entry: the strategy and key (hash, range,
//! bucketed hash, reference), the shards it lives on, range bounds in the key's type, and its
//! directory of hot keys, each problem noted with its line.

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::raw::{RawRange, RawTable, Scalar};
use super::validate::Problems;
use super::{KeyRange, Sharding, TableRule};
use crate::key::{KeyType, KeyValue};

/// The rule of one table in `tables:`, or `None` (with its problems noted) when it is invalid.
pub(super) fn table_rule(
    t: &RawTable,
    shard_ids: &HashMap<String, usize>,
    problems: &mut Problems,
) -> Option<TableRule> {
    let name = t.name.value.clone();
    let sharding = match super::directory::strategy(t, problems)? {
        "reference" => Sharding::Reference,
        kind @ ("hash" | "range") => {
            let Some(column) = &t.column else {
                problems.at(
                    &t.name,
                    format!("table {name:?} is sharded by {kind} but has no `column`"),
                );
                return None;
            };
            let key_type = match &t.key_type {
                None => KeyType::Int8,
                Some(ty) => KeyType::from_name(&ty.value).or_else(|| {
                    problems.at(ty, format!("type {:?} cannot be a shard key; use int2, int4, int8, text, varchar or uuid", ty.value));
                    None
                })?,
            };
            let column = column.value.to_ascii_lowercase();
            if kind == "hash" {
                let listed: Vec<usize> = match &t.shards {
                    None => (0..shard_ids.len()).collect(),
                    Some(names) => names
                        .iter()
                        .filter_map(|n| resolve(n, shard_ids, problems))
                        .collect(),
                };
                if listed.is_empty() {
                    problems.at(
                        &t.name,
                        format!("hash table {name:?} needs at least one shard"),
                    );
                    return None;
                }
                let shards = match (&t.buckets, t.bucket_map.as_deref()) {
                    (None, None) => listed,
                    (None, Some(map)) => {
                        let at = map.first().map_or(&t.sharding, |r| &r.shard);
                        problems.at(
                            at,
                            format!("table {name:?}: bucket_map needs `buckets` (the number of buckets)"),
                        );
                        return None;
                    }
                    (Some(_), Some(_)) if t.shards.is_some() => {
                        problems.at(
                            &t.name,
                            format!(
                                "table {name:?}: give either `shards` or `bucket_map`, not both"
                            ),
                        );
                        return None;
                    }
                    (Some(buckets), map) => super::buckets::bucket_shards(
                        &name, buckets, map, &listed, shard_ids, problems,
                    )?,
                };
                Sharding::Hash {
                    column,
                    key_type,
                    shards,
                }
            } else {
                if let Some(buckets) = &t.buckets {
                    problems.at(
                        buckets,
                        format!("table {name:?}: buckets are for hash tables"),
                    );
                }
                let ranges = ranges(
                    &name,
                    key_type,
                    t.ranges.as_deref().unwrap_or_default(),
                    shard_ids,
                    problems,
                );
                if t.ranges.as_ref().is_none_or(|r| r.is_empty()) {
                    problems.at(
                        &t.name,
                        format!("range table {name:?} needs a non-empty `ranges:` list"),
                    );
                }
                Sharding::Range {
                    column,
                    key_type,
                    ranges,
                }
            }
        }
        other => {
            problems.at(
                &t.sharding,
                format!("sharding {other:?} is not hash, range, directory or reference"),
            );
            return None;
        }
    };
    let directory = super::directory::entries(t, sharding.key_type(), shard_ids, problems);
    Some(TableRule {
        name,
        sharding,
        directory,
    })
}

fn resolve(
    name: &Spanned<String>,
    shard_ids: &HashMap<String, usize>,
    problems: &mut Problems,
) -> Option<usize> {
    let id = shard_ids.get(&name.value).copied();
    if id.is_none() {
        problems.at(
            name,
            format!("shard {:?} is not defined under `shards:`", name.value),
        );
    }
    id
}

fn bound(
    b: &Option<Spanned<Scalar>>,
    key_type: KeyType,
    problems: &mut Problems,
) -> Option<KeyValue> {
    let b = b.as_ref()?;
    let text = match &b.value {
        Scalar::Int(i) => i.to_string(),
        Scalar::Text(s) => s.clone(),
    };
    match key_type.parse_text(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.at(b, e.to_string());
            None
        }
    }
}

fn ranges(
    table: &str,
    key_type: KeyType,
    raw: &[RawRange],
    shard_ids: &HashMap<String, usize>,
    problems: &mut Problems,
) -> Vec<KeyRange> {
    let mut out: Vec<(KeyRange, &RawRange)> = Vec::new();
    for r in raw {
        let from = bound(&r.from, key_type, problems);
        let to = bound(&r.to, key_type, problems);
        let Some(shard) = resolve(&r.shard, shard_ids, problems) else {
            continue;
        };
        if let (Some(f), Some(t)) = (&from, &to) {
            if f.compare(t).is_none_or(|o| o.is_ge()) {
                problems.at(
                    &r.shard,
                    format!(
                        "range [{f}, {t}) of table {table:?} is empty: `from` must be below `to`"
                    ),
                );
                continue;
            }
        }
        out.push((KeyRange { from, to, shard }, r));
    }
    // Sort by lower bound (open first) and check that neighbours do not overlap.
    out.sort_by(|(a, _), (b, _)| match (&a.from, &b.from) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.compare(y).unwrap_or(std::cmp::Ordering::Equal),
    });
    for pair in out.windows(2) {
        let (prev, _) = &pair[0];
        let (next, raw_next) = &pair[1];
        let overlaps = match (&prev.to, &next.from) {
            (None, _) | (_, None) => true,
            (Some(to), Some(from)) => to.compare(from).is_some_and(|o| o.is_gt()),
        };
        if overlaps {
            problems.at(
                &raw_next.shard,
                format!(
                    "ranges of table {table:?} overlap; each key must belong to exactly one range"
                ),
            );
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}
