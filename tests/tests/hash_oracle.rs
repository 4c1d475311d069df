//! The router's hash placement must equal PostgreSQL's own hash partitioning: for thousands of
//! keys of every supported type, the shard the router picks is the partition PostgreSQL puts
//! the row in (`PARTITION BY HASH … MODULUS n`), asked of a real server — for plain hash
//! (modulus = shards) and for bucketed hash (modulus = buckets, each bucket's shard from
//! `bucket_map`). The SQL the resharder computes a key's bucket with in the database must
//! agree as well.

use shardline::localpg::{free_ports, ClusterOptions, LocalCluster};
use shardline_router::migration::fence::remainder_sql;
use shardline_router::{Config, KeyType};
use shardline_tests::{connect, scratch_dir};

/// (column type, SQL expression generating key number `g` as that type)
const TYPES: &[(&str, &str)] = &[
    ("int8", "(g * 7919 - 5000000)::int8 * 104729"),
    ("int4", "(g * 7919 - 5000000)::int4"),
    ("int2", "((g % 65000) - 32500)::int2"),
    ("text", "md5(g::text) || repeat('x', g % 37)"),
    ("uuid", "md5(g::text)::uuid"),
];

/// A layout to check: the YAML of each table's placement after `type: …`, its modulus, and the
/// shard each remainder (bucket) belongs to.
struct Layout {
    placement: String,
    modulus: usize,
    shard_of_remainder: Vec<usize>,
}

/// Plain hash: the modulus is the shard count and remainder `r` is shard `r`.
fn plain(modulus: usize) -> Layout {
    Layout {
        placement: String::new(),
        modulus,
        shard_of_remainder: (0..modulus).collect(),
    }
}

/// 64 buckets over 3 shards, mapped out of order so that a wrong bucket lands elsewhere.
fn bucketed() -> Layout {
    let map = [
        (0, 10, 2),
        (10, 40, 0),
        (40, 41, 1),
        (41, 50, 2),
        (50, 64, 1),
    ];
    let mut placement = String::from(", buckets: 64, bucket_map: [");
    let mut shard_of_remainder = vec![0; 64];
    for (from, to, shard) in map {
        placement.push_str(&format!("{{from: {from}, to: {to}, shard: s{shard}}}, "));
        shard_of_remainder[from..to].fill(shard);
    }
    placement.push(']');
    Layout {
        placement,
        modulus: 64,
        shard_of_remainder,
    }
}

fn config_for(layout: &Layout) -> Config {
    let shards = layout.shard_of_remainder.iter().max().map_or(1, |m| m + 1);
    let mut yaml = String::from("users: [{name: app, password: app}]\nshards:\n");
    for i in 0..shards {
        yaml.push_str(&format!("  - {{name: s{i}, port: {}}}\n", 5000 + i));
    }
    yaml.push_str("tables:\n");
    for (ty, _) in TYPES {
        yaml.push_str(&format!(
            "  - {{name: t_{ty}, sharding: hash, column: k, type: {ty}{}}}\n",
            layout.placement
        ));
    }
    match Config::from_yaml(&yaml) {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{yaml}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn router_agrees_with_postgres_hash_partitioning() -> anyhow::Result<()> {
    let mut opts = ClusterOptions::new(scratch_dir("hash"), free_ports(1));
    opts.keep_data = false;
    opts.reuse_existing = false;
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
    let server = &cluster.servers()[0];
    let db = connect(&server.app_conninfo()).await?;
    let keys_per_type = 3000;
    let mut checked = 0;
    let layouts = [plain(2), plain(3), plain(4), plain(7), bucketed()];
    for layout in &layouts {
        let modulus = layout.modulus;
        let config = config_for(layout);
        for (ty, expr) in TYPES {
            let table = format!("t_{ty}");
            let mut ddl = format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k {ty}) PARTITION BY HASH (k);");
            for r in 0..modulus {
                ddl.push_str(&format!(
                    "CREATE TABLE {table}_p{r} PARTITION OF {table} FOR VALUES WITH (MODULUS {modulus}, REMAINDER {r});"
                ));
            }
            ddl.push_str(&format!(
                "INSERT INTO {table} SELECT DISTINCT {expr} FROM generate_series(1, {keys_per_type}) g;"
            ));
            db.batch_execute(&ddl).await?;
            let key_type = KeyType::from_name(ty).ok_or_else(|| anyhow::anyhow!("type {ty}"))?;
            // The resharder's SQL for a key's bucket (fences, verify, cleanup) is asked too.
            let bucket = remainder_sql(key_type, "k", modulus);
            let rows = db
                .query(
                    &format!(
                        "SELECT k::text, tableoid::regclass::text, ({bucket})::int8 FROM {table}"
                    ),
                    &[],
                )
                .await?;
            assert!(
                rows.len() > keys_per_type / 2,
                "{ty}: too few distinct keys"
            );
            let rule = config
                .table(&table)
                .ok_or_else(|| anyhow::anyhow!("no rule for {table}"))?;
            for row in rows {
                let key: String = row.get(0);
                let partition: String = row.get(1);
                let remainder: usize = partition.rsplit("_p").next().unwrap_or("x").parse()?;
                let computed: i64 = row.get(2);
                assert_eq!(
                    computed, remainder as i64,
                    "{ty} key {key} modulus {modulus}: the bucket SQL says {computed}, PostgreSQL's partition is {partition}"
                );
                let value = key_type.parse_text(&key)?;
                let shard = rule.shard_for(&value)?;
                let expected = layout.shard_of_remainder[remainder];
                assert_eq!(shard, expected, "{ty} key {key} modulus {modulus}: router says shard {shard}, PostgreSQL's partition {partition} is on shard {expected}");
                checked += 1;
            }
        }
    }
    println!("hash placement oracle: {checked} keys agreed with PostgreSQL");
    assert!(checked > 50_000);
    Ok(())
}
