//! The router's hash placement must equal PostgreSQL's own hash partitioning: for thousands of
//! keys of every supported type, the shard the router picks is the partition PostgreSQL puts
//! the row in (`PARTITION BY HASH … MODULUS n`), asked of a real server.

use shardline::localpg::{free_ports, ClusterOptions, LocalCluster};
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

fn config_for(modulus: usize) -> Config {
    let mut yaml = String::from("users: [{name: app, password: app}]\nshards:\n");
    for i in 0..modulus {
        yaml.push_str(&format!("  - {{name: s{i}, port: {}}}\n", 5000 + i));
    }
    yaml.push_str("tables:\n");
    for (ty, _) in TYPES {
        yaml.push_str(&format!(
            "  - {{name: t_{ty}, sharding: hash, column: k, type: {ty}}}\n"
        ));
    }
    match Config::from_yaml(&yaml) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
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
    for modulus in [2usize, 3, 4, 7] {
        let config = config_for(modulus);
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
            let rows = db
                .query(
                    &format!("SELECT k::text, tableoid::regclass::text FROM {table}"),
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
            let key_type = KeyType::from_name(ty).ok_or_else(|| anyhow::anyhow!("type {ty}"))?;
            for row in rows {
                let key: String = row.get(0);
                let partition: String = row.get(1);
                let remainder: usize = partition.rsplit("_p").next().unwrap_or("x").parse()?;
                let value = key_type.parse_text(&key)?;
                let shard = rule.shard_for(&value)?;
                assert_eq!(shard, remainder, "{ty} key {key} modulus {modulus}: router says shard {shard}, PostgreSQL says partition {partition}");
                checked += 1;
            }
        }
    }
    println!("hash placement oracle: {checked} keys agreed with PostgreSQL");
    assert!(checked > 40_000);
    Ok(())
}
