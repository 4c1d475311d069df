//! The migration's state in PostgreSQL (`schema/catalog.sql`), on the source layout's default
//! shard: what the resharder resumes from after a crash.

use anyhow::{bail, Context};
use shardline_router::migration::images::TableShape;
pub use shardline_router::migration::Phase;
use tokio_postgres::Client;

/// The catalog's SQL, installed idempotently before the first migration.
pub const CATALOG_SQL: &str = include_str!("../../schema/catalog.sql");

fn parse_phase(text: &str) -> anyhow::Result<Phase> {
    Phase::parse(text).with_context(|| format!("the catalog holds phase {text:?}, which this shardline-reshard does not know; use the version that started the migration"))
}

/// A migration as the catalog records it.
#[derive(Debug, Clone)]
pub struct Migration {
    pub id: i64,
    pub source_yaml: String,
    pub target_yaml: String,
    pub phase: Phase,
}

/// Backfill progress of one table from one source shard.
#[derive(Debug, Clone)]
pub struct Progress {
    pub table: String,
    pub source: String,
    pub last_key: Option<String>,
    pub rows_copied: i64,
    pub done: bool,
}

/// The catalog, through a connection to the default shard.
pub struct Catalog {
    client: Client,
}

impl Catalog {
    /// Opens the catalog, installing it if needed.
    pub async fn open(client: Client) -> anyhow::Result<Catalog> {
        client
            .batch_execute(CATALOG_SQL)
            .await
            .context("could not install the shardline catalog on the default shard")?;
        Ok(Catalog { client })
    }

    /// The migration in progress, if any.
    pub async fn in_progress(&self) -> anyhow::Result<Option<Migration>> {
        let row = self
            .client
            .query_opt(
                "SELECT id, source_yaml, target_yaml, phase FROM shardline.migrations WHERE phase NOT IN ('done', 'aborted')",
                &[],
            )
            .await?;
        row.map(|row| {
            Ok(Migration {
                id: row.get(0),
                source_yaml: row.get(1),
                target_yaml: row.get(2),
                phase: parse_phase(row.get(3))?,
            })
        })
        .transpose()
    }

    /// Records a new migration, or returns the one in progress if it is the same one
    /// (resuming); a different migration in progress is an error.
    pub async fn start(&self, source_yaml: &str, target_yaml: &str) -> anyhow::Result<Migration> {
        if let Some(existing) = self.in_progress().await? {
            if existing.source_yaml == source_yaml && existing.target_yaml == target_yaml {
                return Ok(existing);
            }
            bail!(
                "migration {} with other layouts is in progress; finish it or run `shardline-reshard abort` first",
                existing.id
            );
        }
        let id: i64 = self
            .client
            .query_one(
                "INSERT INTO shardline.migrations (source_yaml, target_yaml, phase) VALUES ($1, $2, 'started') RETURNING id",
                &[&source_yaml, &target_yaml],
            )
            .await?
            .get(0);
        Ok(Migration {
            id,
            source_yaml: source_yaml.to_owned(),
            target_yaml: target_yaml.to_owned(),
            phase: Phase::Started,
        })
    }

    /// Moves the migration to `phase`.
    pub async fn set_phase(&self, id: i64, phase: Phase) -> anyhow::Result<()> {
        self.client
            .execute(
                "UPDATE shardline.migrations SET phase = $2, updated_at = now() WHERE id = $1",
                &[&id, &phase.as_str()],
            )
            .await?;
        Ok(())
    }

    /// Backfill progress of every table and source shard recorded so far.
    pub async fn progress(&self, id: i64) -> anyhow::Result<Vec<Progress>> {
        let rows = self
            .client
            .query(
                "SELECT table_name, source, last_key, rows_copied, done FROM shardline.backfill WHERE migration = $1 ORDER BY table_name, source",
                &[&id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Progress {
                table: row.get(0),
                source: row.get(1),
                last_key: row.get(2),
                rows_copied: row.get(3),
                done: row.get(4),
            })
            .collect())
    }

    /// Records one copied batch: the last key read and how many rows moved.
    pub async fn record_batch(
        &self,
        id: i64,
        table: &str,
        source: &str,
        last_key: Option<&str>,
        copied: i64,
        done: bool,
    ) -> anyhow::Result<()> {
        self.client
            .execute(
                "INSERT INTO shardline.backfill (migration, table_name, source, last_key, rows_copied, done) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (migration, table_name, source) DO UPDATE SET \
                 last_key = coalesce(EXCLUDED.last_key, shardline.backfill.last_key), \
                 rows_copied = shardline.backfill.rows_copied + EXCLUDED.rows_copied, done = EXCLUDED.done",
                &[&id, &table, &source, &last_key, &copied, &done],
            )
            .await?;
        Ok(())
    }

    /// Records the shape of a moving table for the proxies (once; a resumed start keeps it).
    pub async fn record_shape(
        &self,
        id: i64,
        table: &str,
        shape: &TableShape,
    ) -> anyhow::Result<()> {
        self.client
            .execute(
                "INSERT INTO shardline.moving_tables (migration, table_name, columns, unique_key) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&id, &table, &shape.columns, &shape.unique_key],
            )
            .await?;
        Ok(())
    }

    /// Records that `proxy` confirmed `phase`.
    pub async fn record_confirmation(
        &self,
        id: i64,
        proxy: &str,
        phase: Phase,
    ) -> anyhow::Result<()> {
        self.client
            .execute(
                "INSERT INTO shardline.confirmations (migration, proxy, phase) VALUES ($1, $2, $3) \
                 ON CONFLICT (migration, proxy, phase) DO UPDATE SET confirmed_at = now()",
                &[&id, &proxy, &phase.as_str()],
            )
            .await?;
        Ok(())
    }
}
