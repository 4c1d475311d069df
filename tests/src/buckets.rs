//! Bucket maps for tests of bucketed hash tables: the YAML of a table's rule, and which shard
//! holds a bucket — written out here so a test's expectation does not come from the router.

/// Buckets `[from, to)` and the shard holding them.
pub type BucketMap = [(usize, usize, &'static str)];

/// 60 buckets, 20 on each of s0, s1, s2.
pub const THREE_SHARDS: &BucketMap = &[(0, 20, "s0"), (20, 40, "s1"), (40, 60, "s2")];

/// The same 60 buckets over 5 shards: each old shard keeps 12 and gives 8 away, so 24 of 60
/// buckets (40%) move — where plain hash 3 → 5 would move about 80% of the keys.
pub const FIVE_SHARDS: &BucketMap = &[
    (0, 12, "s0"),
    (12, 20, "s3"),
    (20, 32, "s1"),
    (32, 36, "s3"),
    (36, 40, "s4"),
    (40, 52, "s2"),
    (52, 60, "s4"),
];

/// The `tables:` entry of `table`, hash-sharded on int8 `column` in 60 buckets as `map` says.
pub fn bucketed_rule(table: &str, column: &str, map: &BucketMap) -> String {
    let ranges: Vec<String> = map
        .iter()
        .map(|(from, to, shard)| format!("{{from: {from}, to: {to}, shard: {shard}}}"))
        .collect();
    format!(
        "{{name: {table}, sharding: hash, column: {column}, type: int8, buckets: 60, bucket_map: [{}]}}",
        ranges.join(", ")
    )
}

/// The shard `map` puts `bucket` on.
pub fn holder(map: &BucketMap, bucket: usize) -> &'static str {
    map.iter()
        .find(|(from, to, _)| (*from..*to).contains(&bucket))
        .map_or("none", |(_, _, shard)| shard)
}
