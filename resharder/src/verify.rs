//! `verify`: compares the moving rows on their old owners with the copies on their new owners
//! and repairs what differs, range by range while the application writes.
//!
//! Each key range of a source shard is read in key order `FOR SHARE` inside a transaction, so
//! its rows cannot change on the old owner while the same range is read on the new owners and
//! compared image by image (`row_to_json`). A copy that is missing or differs is overwritten
//! with the old owner's image. A copy whose row the old owner lacks is deleted only after the
//! key is locked as dual writes lock it and found still absent, so a row inserted meanwhile is
//! never deleted from its new owner. Differences found while a dual write is between its two
//! commits are repaired with the image it is committing anyway, so repairs are always safe.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use shardline_router::migration::fence;
use shardline_router::migration::images::{ident, lock_keys_sql};
use shardline_router::migration::{Layout, TableMove};
use tokio_postgres::Client;

use crate::shards::{drop_key, read_shape, row_key, Connections};
use std::sync::Arc;

/// Rows compared per range.
const RANGE_ROWS: i64 = 2_000;

/// What verify found for one table on one new owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub table: String,
    pub shard: String,
    /// Moving rows the old owners hold.
    pub expected: u64,
    /// Rows the new owner lacked.
    pub missing: u64,
    /// Rows whose copy differed from the old owner's row.
    pub differing: u64,
    /// Copies whose row the old owners no longer hold.
    pub extra: u64,
}

impl Report {
    /// The new owner held exactly the old owners' moving rows.
    pub fn exact(&self) -> bool {
        self.missing == 0 && self.differing == 0 && self.extra == 0
    }
}

/// Compares every moving table; with `repair`, fixes each difference found.
pub async fn verify(
    layout: &Layout,
    shards: &Connections<'_>,
    repair: bool,
) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for table in &layout.tables {
        let mut targets = BTreeMap::new();
        for target in &table.target_shards {
            let client = shards.get(target).await?;
            let report = Report {
                table: table.table.clone(),
                shard: target.clone(),
                ..Report::default()
            };
            targets.insert(target.clone(), (client, report));
        }
        for source in &table.source_shards {
            let client = shards.get(source).await?;
            let upsert = read_shape(&client, &table.table)
                .await?
                .upsert_sql(&table.table);
            let range = Ranges {
                table,
                source,
                client,
                upsert,
                repair,
            };
            range.compare_all(&mut targets).await?;
        }
        reports.extend(targets.into_values().map(|(_, report)| report));
    }
    Ok(reports)
}

/// Whether the copies of every moving table add up to its old owners' moving rows: a count
/// and a 64-bit checksum of the row images per shard, computed by the shards in one scan each
/// without shipping rows, which a cutover's pause can afford where a row-by-row comparison
/// cannot. A mismatch calls for [`verify`].
pub async fn checksums_match(layout: &Layout, shards: &Connections<'_>) -> anyhow::Result<bool> {
    for table in &layout.tables {
        let key = format!("t.{}", ident(&table.key_column));
        let mut leaving = Checksum::default();
        for source in &table.source_shards {
            let condition = fence::leaving_condition(table, source, &key);
            leaving
                .add(&*shards.get(source).await?, table, &condition)
                .await?;
        }
        let mut copied = Checksum::default();
        for target in &table.target_shards {
            let condition = fence::arrived_condition(table, target, &key);
            copied
                .add(&*shards.get(target).await?, table, &condition)
                .await?;
        }
        if leaving != copied {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rows and the sum of their images' 64-bit hashes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Checksum {
    rows: i64,
    sum: i128,
}

impl Checksum {
    async fn add(
        &mut self,
        client: &Client,
        table: &TableMove,
        condition: &str,
    ) -> anyhow::Result<()> {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(hashtextextended(row_to_json(t)::text, 0)), 0)::text FROM {} AS t WHERE {condition}",
                    ident(&table.table)
                ),
                &[],
            )
            .await?;
        self.rows += row.get::<_, i64>(0);
        let sum: String = row.get(1);
        self.sum += sum
            .parse::<i128>()
            .context("a checksum that is not an integer")?;
        Ok(())
    }
}

/// Walks one source shard's rows of one table range by range.
struct Ranges<'a> {
    table: &'a TableMove,
    source: &'a str,
    client: Arc<Client>,
    upsert: String,
    repair: bool,
}

impl Ranges<'_> {
    async fn compare_all(
        &self,
        targets: &mut BTreeMap<String, (Arc<Client>, Report)>,
    ) -> anyhow::Result<()> {
        let key = format!("t.{}", ident(&self.table.key_column));
        let t = ident(&self.table.table);
        let kt = self.table.key_type;
        let read_source = format!(
            "SELECT {key}::text, row_to_json(t)::text FROM {t} AS t \
             WHERE {key} IS NOT NULL AND ($1::text IS NULL OR {key} > $1::text::{kt}) ORDER BY {key} LIMIT {RANGE_ROWS} FOR SHARE"
        );
        let read_target = format!(
            "SELECT {key}::text, row_to_json(t)::text FROM {t} AS t \
             WHERE {key} IS NOT NULL AND ($1::text IS NULL OR {key} > $1::text::{kt}) AND ($2::text IS NULL OR {key} <= $2::text::{kt})"
        );
        // Every row of one key, for ranges cut inside a key (a shard key need not be unique).
        let read_key = format!(
            "SELECT {key}::text, row_to_json(t)::text FROM {t} AS t WHERE {key} = $1::text::{kt} FOR SHARE"
        );
        let mut after: Option<String> = None;
        loop {
            self.client.batch_execute("BEGIN").await?;
            let mut rows = self.client.query(&read_source, &[&after]).await?;
            let full = rows.len() as i64 == RANGE_ROWS;
            let table = &self.table.table;
            let upper: Option<String> = if full {
                rows.last().map(|r| row_key(r, table)).transpose()?
            } else {
                None
            };
            if let Some(last) = &upper {
                // The range ends at `last`: take all of its rows, not only those the limit kept.
                drop_key(&mut rows, last, table)?;
                rows.extend(self.client.query(&read_key, &[last]).await?);
            }
            // The old owner's moving rows of this range, by new owner and key.
            let mut wanted: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
            for row in &rows {
                let key_text = row_key(row, table)?;
                let (_, to) = self.owners(&key_text)?;
                if to != self.source {
                    let images = wanted.entry(to).or_default().entry(key_text).or_default();
                    images.push(row.get(1));
                }
            }
            for (target, (client, report)) in targets.iter_mut() {
                if target == self.source {
                    continue;
                }
                let mut want = wanted.remove(target).unwrap_or_default();
                report.expected += want.values().map(|images| images.len() as u64).sum::<u64>();
                // Per key, the copy's rows that match none of the old owner's; the keys with
                // any difference are made exactly the old owner's.
                let mut unmatched: BTreeMap<String, u64> = BTreeMap::new();
                for row in client.query(&read_target, &[&after, &upper]).await? {
                    let key_text = row_key(&row, table)?;
                    if self.owners(&key_text)?.0 != self.source {
                        continue;
                    }
                    let image: String = row.get(1);
                    let images = want.get_mut(&key_text);
                    match images.and_then(|i| i.iter().position(|i| *i == image).map(|p| (i, p))) {
                        Some((images, found)) => {
                            images.swap_remove(found);
                        }
                        None => *unmatched.entry(key_text).or_default() += 1,
                    }
                }
                let mut resync = BTreeSet::new();
                for (key_text, images) in want {
                    let left = images.len() as u64;
                    let stray = unmatched.remove(&key_text).unwrap_or(0);
                    // A row on both sides that differs counts once, as differing.
                    let differing = left.min(stray);
                    report.differing += differing;
                    report.missing += left - differing;
                    report.extra += stray - differing;
                    if left + stray > 0 {
                        resync.insert(key_text);
                    }
                }
                for (key_text, stray) in unmatched {
                    report.extra += stray;
                    resync.insert(key_text);
                }
                if self.repair && !resync.is_empty() {
                    self.repair(client, resync.into_iter().collect())
                        .await
                        .with_context(|| {
                            format!("could not repair {} on shard {target}", self.table.table)
                        })?;
                }
            }
            self.client.batch_execute("COMMIT").await?;
            match upper {
                Some(last) => after = Some(last),
                None => return Ok(()),
            }
        }
    }

    /// Makes the copies of `keys` exactly the old owner's rows of them: the keys are locked as
    /// dual writes lock them, their rows read under a share lock, and on `target` every row of
    /// those keys that is not one of them is deleted and the rest upserted.
    async fn repair(&self, target: &Client, keys: Vec<String>) -> anyhow::Result<()> {
        let parsed = keys
            .iter()
            .map(|k| self.table.parse_key(k).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.client
            .batch_execute(&lock_keys_sql(&self.table.table, &parsed))
            .await?;
        let t = ident(&self.table.table);
        let key = ident(&self.table.key_column);
        let kt = self.table.key_type;
        let present: Vec<String> = self
            .client
            .query(
                &format!("SELECT row_to_json(t)::text FROM {t} AS t WHERE t.{key} = ANY($1::text[]::{kt}[]) FOR SHARE"),
                &[&keys],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        target
            .execute(
                &format!(
                    "DELETE FROM {t} AS d WHERE d.{key} = ANY($1::text[]::{kt}[]) \
                     AND NOT (row_to_json(d)::text = ANY($2::text[]))"
                ),
                &[&keys, &present],
            )
            .await?;
        if !present.is_empty() {
            target
                .execute(&self.upsert, &[&format!("[{}]", present.join(","))])
                .await?;
        }
        Ok(())
    }

    /// The key's old and new owner, by name.
    fn owners(&self, key_text: &str) -> anyhow::Result<(String, String)> {
        let key = self.table.parse_key(key_text).map_err(anyhow::Error::msg)?;
        let placement = self.table.place(&key).map_err(anyhow::Error::msg)?;
        Ok((placement.from.to_owned(), placement.to.to_owned()))
    }
}
