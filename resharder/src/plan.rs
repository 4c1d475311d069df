//! `plan`: which keys move from which shard to which, counted on the source shards.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::shards::{connect, Login};
use shardline_router::migration::images::ident;
use shardline_router::migration::{Layout, TableMove};

/// Rows of one table that move from one shard to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub table: String,
    pub from: String,
    pub to: String,
    pub rows: u64,
}

/// Rows of one table on one shard whose shard key is NULL: no shard owns them in either
/// layout, so they stay where they are (written on the shard directly; the proxy refuses them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Keyless {
    pub table: String,
    pub shard: String,
    pub rows: u64,
}

/// What a migration moves, counted key by key on the source shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Moving rows by table and (source, target) shard.
    pub flows: Vec<Flow>,
    /// Rows of the moving tables read, moving or not (keyless ones left out).
    pub rows: u64,
    /// Rows without a shard key, which stay where they are.
    pub keyless: Vec<Keyless>,
}

impl Plan {
    /// Rows that change shard.
    pub fn moving(&self) -> u64 {
        self.flows.iter().map(|f| f.rows).sum()
    }
}

/// Counts the moving rows of every table, reading each source shard's keys.
pub async fn count_flows(layout: &Layout, login: &Login) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for table in &layout.tables {
        for source in &table.source_shards {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let keyless = for_each_key(layout, login, table, source, |key_text| {
                let key = table.parse_key(key_text)?;
                let to = table.place(&key)?.to;
                plan.rows += 1;
                if to != source {
                    *counts.entry(to.to_owned()).or_default() += 1;
                }
                Ok(())
            })
            .await?;
            if keyless > 0 {
                plan.keyless.push(Keyless {
                    table: table.table.clone(),
                    shard: source.clone(),
                    rows: keyless,
                });
            }
            plan.flows.extend(counts.into_iter().map(|(to, rows)| Flow {
                table: table.table.clone(),
                from: source.clone(),
                to,
                rows,
            }));
        }
    }
    Ok(plan)
}

/// Streams the keys (as text) of `table` on shard `shard` through `each`; the rows whose key
/// is NULL, which have none to pass, are counted instead.
pub async fn for_each_key<F>(
    layout: &Layout,
    login: &Login,
    table: &TableMove,
    shard: &str,
    mut each: F,
) -> anyhow::Result<u64>
where
    F: FnMut(&str) -> Result<(), String>,
{
    let sql = format!(
        "SELECT {}::text FROM {}",
        ident(&table.key_column),
        ident(&table.table)
    );
    let mut keyless = 0;
    for_each_row(layout, login, shard, &sql, |row| {
        match row.try_get::<_, Option<&str>>(0)? {
            Some(key) => each(key).map_err(|e| anyhow::anyhow!("table {}: {e}", table.table)),
            None => {
                keyless += 1;
                Ok(())
            }
        }
    })
    .await?;
    Ok(keyless)
}

/// Streams the rows `sql` returns on shard `shard` (of either layout) through `each`.
pub async fn for_each_row<F>(
    layout: &Layout,
    login: &Login,
    shard: &str,
    sql: &str,
    mut each: F,
) -> anyhow::Result<()>
where
    F: FnMut(&Row) -> anyhow::Result<()>,
{
    let config = if layout.source.shard_id(shard).is_some() {
        &layout.source
    } else {
        &layout.target
    };
    let client = connect(config, shard, login).await?;
    let rows = client
        .query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>())
        .await?;
    futures::pin_mut!(rows);
    while let Some(row) = rows.try_next().await? {
        each(&row)?;
    }
    Ok(())
}

/// The plan as a table, with the share of the tables' rows that move and an estimate of the
/// backfill's duration at `rows_per_second`.
pub fn render(plan: &Plan, rows_per_second: u64) -> String {
    let mut out = String::from("table      from       to         rows\n");
    for flow in &plan.flows {
        out.push_str(&format!(
            "{:<10} {:<10} {:<10} {}\n",
            flow.table, flow.from, flow.to, flow.rows
        ));
    }
    let total = plan.moving();
    let share = if plan.rows == 0 {
        0.0
    } else {
        total as f64 * 100.0 / plan.rows as f64
    };
    let seconds = total / rows_per_second.max(1);
    out.push_str(&format!(
        "{total} of {} rows move ({share:.1}%); backfill at {rows_per_second} rows/s takes about {}\n",
        plan.rows,
        humanize(Duration::from_secs(seconds))
    ));
    for keyless in &plan.keyless {
        let (rows, verb) = match keyless.rows {
            1 => ("1 row".to_owned(), "has"),
            n => (format!("{n} rows"), "have"),
        };
        out.push_str(&format!(
            "{rows} of {} on {} {verb} a NULL shard key: no shard owns them, so they stay there\n",
            keyless.table, keyless.shard
        ));
    }
    out
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "under a second".to_owned(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}
