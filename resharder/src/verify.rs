//! `verify`: compares the moving rows on their old owners with the copies on their new owners,
//! row by row (an md5 of each row's image), and repairs what differs by copying the old
//! owner's image again or deleting a copy the old owner no longer has.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::{Layout, TableMove};
use crate::plan::for_each_row;
use crate::shards::{connect, ident, Login, TableShape};

/// What verify found for one table on one new owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub table: String,
    pub shard: String,
    /// Moving rows the old owners hold.
    pub expected: u64,
    /// Rows the new owner lacks.
    pub missing: u64,
    /// Rows whose copy differs from the old owner's row.
    pub differing: u64,
    /// Copies whose row the old owners no longer hold.
    pub extra: u64,
}

impl Report {
    /// The new owner holds exactly the old owners' moving rows.
    pub fn exact(&self) -> bool {
        self.missing == 0 && self.differing == 0 && self.extra == 0
    }
}

/// Row digests by key, as text.
type Digests = BTreeMap<String, String>;

/// Compares every moving table; with `repair`, fixes each difference found.
pub async fn verify(layout: &Layout, login: &Login, repair: bool) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for table in &layout.tables {
        let mut expected: BTreeMap<String, Digests> = BTreeMap::new();
        let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for source in &table.source_shards {
            for (key, digest) in digests(layout, login, table, source).await? {
                let to = table
                    .place(&table.parse_key(&key).map_err(anyhow::Error::msg)?)
                    .map_err(anyhow::Error::msg)?
                    .to
                    .to_owned();
                if &to != source {
                    sources.entry(source.clone()).or_default().push(key.clone());
                    expected.entry(to).or_default().insert(key, digest);
                }
            }
        }
        for target in &table.target_shards {
            let want = expected.remove(target).unwrap_or_default();
            let mut have = Digests::new();
            for (key, digest) in digests(layout, login, table, target).await? {
                let from = table
                    .place(&table.parse_key(&key).map_err(anyhow::Error::msg)?)
                    .map_err(anyhow::Error::msg)?
                    .from;
                if from != target {
                    have.insert(key, digest);
                }
            }
            let mut report = Report {
                table: table.table.clone(),
                shard: target.clone(),
                expected: want.len() as u64,
                ..Report::default()
            };
            let mut recopy = BTreeSet::new();
            for (key, digest) in &want {
                match have.remove(key) {
                    None => {
                        report.missing += 1;
                        recopy.insert(key.clone());
                    }
                    Some(copy) if &copy != digest => {
                        report.differing += 1;
                        recopy.insert(key.clone());
                    }
                    Some(_) => {}
                }
            }
            let extra: Vec<String> = have.into_keys().collect();
            report.extra = extra.len() as u64;
            if repair && !report.exact() {
                repair_target(layout, login, table, target, &sources, &recopy, &extra).await?;
            }
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Every row's key and the md5 of its image on `shard`.
async fn digests(
    layout: &Layout,
    login: &Login,
    table: &TableMove,
    shard: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let sql = format!(
        "SELECT t.{}::text, md5(row_to_json(t)::text) FROM {} AS t",
        ident(&table.key_column),
        ident(&table.table)
    );
    let mut out = Vec::new();
    for_each_row(layout, login, shard, &sql, |row| {
        if let Some(key) = row.get::<_, Option<String>>(0) {
            out.push((key, row.get(1)));
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Copies the old owners' images of `recopy` to `target` again and deletes `extra` there.
async fn repair_target(
    layout: &Layout,
    login: &Login,
    table: &TableMove,
    target: &str,
    sources: &BTreeMap<String, Vec<String>>,
    recopy: &BTreeSet<String>,
    extra: &[String],
) -> anyhow::Result<()> {
    let target_client = connect(&layout.target, target, login).await?;
    let any_keys = format!(
        "t.{} = ANY($1::text[]::{}[])",
        ident(&table.key_column),
        table.key_type
    );
    for (source, keys) in sources {
        let wanted: Vec<&String> = keys.iter().filter(|k| recopy.contains(*k)).collect();
        if wanted.is_empty() {
            continue;
        }
        let client = connect(&layout.source, source, login).await?;
        let shape = TableShape::read(&client, &table.table).await?;
        let sql = format!(
            "SELECT coalesce(json_agg(row_to_json(t)), '[]')::text FROM {} AS t WHERE {any_keys}",
            ident(&table.table)
        );
        let images: String = client.query_one(&sql, &[&wanted]).await?.get(0);
        target_client
            .execute(&shape.upsert_sql(&table.table), &[&images])
            .await?;
    }
    if !extra.is_empty() {
        let sql = format!("DELETE FROM {} AS t WHERE {any_keys}", ident(&table.table));
        target_client.execute(&sql, &[&extra]).await?;
    }
    Ok(())
}
