//! `start`: creates the moving tables on their target shards and copies the moving rows in key
//! order, in batches read `FOR SHARE` from the old owner (see the crate docs for why), with
//! progress committed to the catalog after each batch so a killed run resumes at the next key.
//! Also `abort`'s removal of what was copied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use shardline_router::Config;

use crate::catalog::{Catalog, Migration};
use crate::plan::for_each_key;
use crate::shards::{connect, drop_key, read_shape, row_key, Login};
use shardline_router::migration::images::ident;
use shardline_router::migration::{Layout, TableMove};

/// How fast and in what batches rows are copied.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Rows read from the old owner per batch.
    pub batch: i64,
    /// Upper bound on copied rows per second (`None`: as fast as the shards go).
    pub rows_per_second: Option<u64>,
}

/// Creates every moving table on target shards that lack it, with the source's definition
/// (columns, defaults, constraints, indexes) as `pg_dump --schema-only` prints it.
pub async fn prepare_targets(layout: &Layout, login: &Login) -> anyhow::Result<()> {
    for table in &layout.tables {
        let source = &table.source_shards[0];
        let mut definition: Option<String> = None;
        for target in &table.target_shards {
            let client = connect(&layout.target, target, login).await?;
            let exists: Option<String> = client
                .query_one("SELECT to_regclass($1)::text", &[&ident(&table.table)])
                .await?
                .get(0);
            if exists.is_some() {
                continue;
            }
            if definition.is_none() {
                definition = Some(dump_definition(
                    &layout.source,
                    source,
                    login,
                    &table.table,
                )?);
            }
            if let Some(sql) = &definition {
                client.batch_execute(sql).await.with_context(|| {
                    format!("could not create table {} on shard {target}", table.table)
                })?;
            }
        }
    }
    Ok(())
}

/// The SQL that creates `table` as it is on shard `shard` (psql meta-commands removed).
fn dump_definition(
    config: &Config,
    shard: &str,
    login: &Login,
    table: &str,
) -> anyhow::Result<String> {
    let entry = config
        .shards
        .iter()
        .find(|s| s.name == shard)
        .with_context(|| format!("shard {shard} is not in the source layout"))?;
    let mut command = std::process::Command::new(pg_tool("pg_dump")?);
    command
        .args(["--schema-only", "--no-owner", "--no-privileges"])
        .arg(format!("--table={}", ident(table)))
        .args(["--host", &entry.host, "--port", &entry.port.to_string()])
        .args(["--username", &login.user])
        .arg(entry.database.as_deref().unwrap_or(&login.database));
    if let Some(password) = &login.password {
        command.env("PGPASSWORD", password);
    }
    let output = command.output().context("could not run pg_dump")?;
    if !output.status.success() {
        bail!(
            "pg_dump of table {table} on shard {shard} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8(output.stdout).context("pg_dump printed non-UTF-8")?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A PostgreSQL client program: on `PATH`, or in the newest `/usr/lib/postgresql/*/bin`.
fn pg_tool(name: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found on PATH or in /usr/lib/postgresql/*/bin; install the PostgreSQL client (apt-get install postgresql-client)"))
}

/// Copies every moving row not yet copied, resuming from the catalog's progress.
pub async fn run(
    layout: &Layout,
    login: &Login,
    catalog: &Catalog,
    migration: &Migration,
    pace: Pace,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let progress = catalog.progress(migration.id).await?;
    let already: i64 = progress.iter().map(|p| p.rows_copied).sum();
    bar.set_position(u64::try_from(already).unwrap_or(0));
    let started = Instant::now();
    let mut copied_now = 0u64;
    for table in &layout.tables {
        for source in &table.source_shards {
            let state = progress
                .iter()
                .find(|p| p.table == table.table && &p.source == source);
            if state.is_some_and(|p| p.done) {
                continue;
            }
            let resume = state.and_then(|p| p.last_key.clone());
            let mut copier = Copier::new(layout, login, table, source).await?;
            let mut last = resume;
            loop {
                let batch = copier.copy_batch(last.as_deref(), pace.batch).await?;
                catalog
                    .record_batch(
                        migration.id,
                        &table.table,
                        source,
                        batch.last_key.as_deref(),
                        i64::try_from(batch.moved).unwrap_or(i64::MAX),
                        batch.last_key.is_none(),
                    )
                    .await?;
                copier.release().await?;
                copied_now += batch.moved;
                bar.inc(batch.moved);
                match batch.last_key {
                    Some(key) => last = Some(key),
                    None => break,
                }
                throttle(pace.rows_per_second, copied_now, started).await;
            }
        }
    }
    Ok(copied_now)
}

/// Sleeps as long as the copy runs ahead of `rows_per_second`.
async fn throttle(rows_per_second: Option<u64>, copied: u64, started: Instant) {
    if let Some(rate) = rows_per_second.filter(|r| *r > 0) {
        let due = Duration::from_secs_f64(copied as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What one batch did.
struct Batch {
    /// Rows that moved (copied to a new owner).
    moved: u64,
    /// Last key read, or `None` when the source has no more rows.
    last_key: Option<String>,
}

/// Copies one table's moving rows from one source shard, batch by batch.
struct Copier<'a> {
    table: &'a TableMove,
    source: &'a str,
    source_client: tokio_postgres::Client,
    targets: BTreeMap<String, tokio_postgres::Client>,
    upsert: String,
    select_first: String,
    select_after: String,
    /// Every row of one key: a batch the limit cut inside a key takes the rest of it (a shard
    /// key need not be unique, and the next batch starts after the key).
    select_key: String,
}

impl<'a> Copier<'a> {
    async fn new(
        layout: &Layout,
        login: &Login,
        table: &'a TableMove,
        source: &'a str,
    ) -> anyhow::Result<Copier<'a>> {
        let source_client = connect(&layout.source, source, login).await?;
        let shape = read_shape(&source_client, &table.table).await?;
        let mut targets = BTreeMap::new();
        for target in &table.target_shards {
            if target != source {
                targets.insert(
                    target.clone(),
                    connect(&layout.target, target, login).await?,
                );
            }
        }
        // Qualified: a bare name in ORDER BY would mean the text output column, not the key.
        let key = format!("t.{}", ident(&table.key_column));
        let select = format!(
            "SELECT {key}::text AS shardline_key, row_to_json(t)::text FROM {} AS t",
            ident(&table.table)
        );
        Ok(Copier {
            table,
            source,
            source_client,
            targets,
            upsert: shape.upsert_sql(&table.table),
            // A row whose key is NULL belongs to no shard in either layout (the plan counts
            // none): it stays where it is.
            select_first: format!(
                "{select} WHERE {key} IS NOT NULL ORDER BY {key} LIMIT $1 FOR SHARE"
            ),
            select_after: format!(
                "{select} WHERE {key} > $2::text::{} ORDER BY {key} LIMIT $1 FOR SHARE",
                table.key_type
            ),
            select_key: format!(
                "{select} WHERE {key} = $1::text::{} FOR SHARE",
                table.key_type
            ),
        })
    }

    /// Reads the next batch after `after` under share locks (held until [`Copier::release`])
    /// and upserts its moving rows into their new owners.
    async fn copy_batch(&mut self, after: Option<&str>, size: i64) -> anyhow::Result<Batch> {
        self.source_client.batch_execute("BEGIN").await?;
        let mut rows = match after {
            None => {
                self.source_client
                    .query(&self.select_first, &[&size])
                    .await?
            }
            Some(key) => {
                self.source_client
                    .query(&self.select_after, &[&size, &key])
                    .await?
            }
        };
        let table = &self.table.table;
        if rows.len() as i64 == size {
            if let Some(last) = rows.last().map(|r| row_key(r, table)).transpose()? {
                drop_key(&mut rows, &last, table)?;
                rows.extend(self.source_client.query(&self.select_key, &[&last]).await?);
            }
        }
        let mut by_target: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut last_key = None;
        for row in &rows {
            let key_text = row_key(row, table)?;
            let image: String = row.get(1);
            let key = self
                .table
                .parse_key(&key_text)
                .map_err(anyhow::Error::msg)?;
            let to = self.table.place(&key).map_err(anyhow::Error::msg)?.to;
            if to != self.source {
                by_target.entry(to).or_default().push(image);
            }
            last_key = Some(key_text);
        }
        let mut moved = 0u64;
        for (target, images) in by_target {
            let client = self
                .targets
                .get(target)
                .with_context(|| format!("no connection to target shard {target}"))?;
            let json = format!("[{}]", images.join(","));
            client
                .execute(&self.upsert, &[&json])
                .await
                .with_context(|| {
                    format!(
                        "could not copy rows of {} to shard {target}",
                        self.table.table
                    )
                })?;
            moved += images.len() as u64;
        }
        Ok(Batch { moved, last_key })
    }

    /// Ends the batch's transaction on the old owner, releasing its share locks.
    async fn release(&mut self) -> anyhow::Result<()> {
        self.source_client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// Removes from every target shard the rows it holds only as copies (keys its source layout
/// gives to another shard): after an abort the target shards are as before the migration.
pub async fn remove_copies(layout: &Layout, login: &Login) -> anyhow::Result<u64> {
    let mut removed = 0;
    for table in &layout.tables {
        for target in &table.target_shards {
            let mut copies = Vec::new();
            for_each_key(layout, login, table, target, |key_text| {
                let key = table.parse_key(key_text)?;
                if table.place(&key)?.from != target {
                    copies.push(key_text.to_owned());
                }
                Ok(())
            })
            .await?;
            let client = connect(&layout.target, target, login).await?;
            let delete = format!(
                "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
                ident(&table.table),
                ident(&table.key_column),
                table.key_type
            );
            for chunk in copies.chunks(5_000) {
                removed += client.execute(&delete, &[&chunk]).await?;
            }
        }
    }
    Ok(removed)
}
