//! Shard keys the proxy generates, for `INSERT`s that leave a serial, identity or
//! `gen_random_uuid()` shard key to its default.
//!
//! The router finds such an `INSERT` and rewrites it to carry one key per row
//! (`shardline_router::generated`); this module says whether the table's key has such a
//! default (read once per table from the default shard's catalog) and hands out the keys:
//!
//! - **Integer keys** come from blocks of the table's key space kept in `shardline.key_blocks`
//!   on the default shard (`schema/keys.sql`). A proxy takes a block of [`BLOCK`] keys with one
//!   `UPDATE … RETURNING` and hands them out from memory, so an insert costs no round trip
//!   except one in [`BLOCK`]. Blocks never overlap, so keys are unique across proxies and
//!   restarts (a restart skips what was left of its block), increase within a proxy, and do
//!   not depend on clocks. The first block of a table starts after the largest key any shard
//!   holds. `int2`/`int4` keys stop with a clear error at their type's limit.
//! - **UUID keys** are version 7 (time-ordered, random below the millisecond), made in the
//!   proxy with no round trip.

use std::collections::HashMap;
use std::sync::Mutex;

use shardline_router::ident::quote_ident;
use shardline_router::{Config, KeyType};
use tokio::sync::Mutex as AsyncMutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::protocol::backend::sqlstate;
use crate::session::state::statements;
use crate::session::ClientError;

/// Keys a proxy takes from the catalog at a time.
pub const BLOCK: i64 = 1000;

/// The catalog table of key blocks.
const KEYS_SQL: &str = include_str!("../../schema/keys.sql");

/// What a table's shard key defaults to, as far as generated keys are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDefault {
    /// No default the proxy can stand in for: an `INSERT` must name the key.
    None,
    /// A sequence (`serial`, identity, `nextval()`); `always` for `GENERATED ALWAYS`, which
    /// takes a value only with `OVERRIDING SYSTEM VALUE`.
    Sequence { always: bool },
    /// `gen_random_uuid()` or another UUID generator.
    Uuid,
}

/// The tables whose keys the proxy generates, as `table.column (kind)` (or `none`).
pub fn generated_list(survey: &[(String, String, KeyDefault)]) -> String {
    let listed: Vec<String> = survey
        .iter()
        .filter_map(|(table, column, default)| {
            let kind = match default {
                KeyDefault::None => return None,
                KeyDefault::Sequence { always: true } => "identity, always",
                KeyDefault::Sequence { always: false } => "sequence",
                KeyDefault::Uuid => "uuid v7",
            };
            Some(format!("{table}.{column} ({kind})"))
        })
        .collect();
    if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join(", ")
    }
}

impl KeyDefault {
    /// A `GENERATED ALWAYS` identity: an explicit key needs `OVERRIDING SYSTEM VALUE`.
    pub fn always(self) -> bool {
        matches!(self, KeyDefault::Sequence { always: true })
    }
}

/// Reads a key column's catalog entry: `identity` is `pg_attribute.attidentity`, `default`
/// the column's default expression.
pub fn classify(key_type: KeyType, identity: &str, default: Option<&str>) -> KeyDefault {
    let default = default.unwrap_or_default().to_ascii_lowercase();
    let integer = matches!(key_type, KeyType::Int2 | KeyType::Int4 | KeyType::Int8);
    match identity {
        "a" if integer => return KeyDefault::Sequence { always: true },
        "d" if integer => return KeyDefault::Sequence { always: false },
        _ => {}
    }
    let uuid_generators = [
        "gen_random_uuid()",
        "uuid_generate_v4()",
        "uuidv7()",
        "uuidv4()",
    ];
    if integer && default.starts_with("nextval(") {
        KeyDefault::Sequence { always: false }
    } else if key_type == KeyType::Uuid && uuid_generators.iter().any(|g| default == *g) {
        KeyDefault::Uuid
    } else {
        KeyDefault::None
    }
}

/// The part of a table's key space a proxy holds: `next..end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Block {
    next: i64,
    end: i64,
}

impl Block {
    /// Takes `n` keys, if the block still has them.
    fn take(&mut self, n: i64) -> Option<std::ops::Range<i64>> {
        (self.end - self.next >= n).then(|| {
            let start = self.next;
            self.next += n;
            start..self.next
        })
    }
}

/// The largest key an integer type holds.
fn type_limit(key_type: KeyType) -> i64 {
    match key_type {
        KeyType::Int2 => i64::from(i16::MAX),
        KeyType::Int4 => i64::from(i32::MAX),
        _ => i64::MAX,
    }
}

/// Hands out generated keys; one per proxy.
#[derive(Default)]
pub struct KeySource {
    /// Tables whose key has a default the proxy stands in for (tables without one are asked
    /// again: a default may be added later), and the schema generation they were read in
    /// (a `DROP`, an `ALTER` or a rolled-back `CREATE` through the proxy makes them stale).
    defaults: Mutex<(u64, HashMap<String, KeyDefault>)>,
    blocks: AsyncMutex<HashMap<String, Block>>,
    /// The control connection to the default shard, kept between block refills.
    control: AsyncMutex<Option<Client>>,
}

impl KeySource {
    /// What `table`'s shard key defaults to, read from the default shard the first time.
    pub async fn default_of(
        &self,
        config: &Config,
        table: &str,
        column: &str,
        key_type: KeyType,
    ) -> Result<KeyDefault, ClientError> {
        let generation = statements::schema_generation();
        {
            let mut defaults = self.lock_defaults();
            if defaults.0 != generation {
                *defaults = (generation, HashMap::new());
            }
            if let Some(known) = defaults.1.get(table) {
                return Ok(*known);
            }
        }
        let control = self.control(config).await?;
        let columns = [(table.to_owned(), column.to_owned(), key_type)];
        let found = read_defaults(connected(&control)?, &columns)
            .await?
            .pop()
            .map_or(KeyDefault::None, |(_, _, default)| default);
        drop(control);
        let mut defaults = self.lock_defaults();
        if found != KeyDefault::None && defaults.0 == generation {
            defaults.1.insert(table.to_owned(), found);
        }
        Ok(found)
    }

    /// Every sharded table's key column and what it defaults to, read from the default shard:
    /// which tables get generated keys (`shardline check`, `SHOW CONFIG`).
    pub async fn survey(
        &self,
        config: &Config,
    ) -> Result<Vec<(String, String, KeyDefault)>, ClientError> {
        let mut columns: Vec<(String, String, KeyType)> = config
            .tables
            .iter()
            .filter_map(|(name, rule)| {
                Some((
                    name.clone(),
                    rule.key_column()?.to_owned(),
                    rule.key_type()?,
                ))
            })
            .collect();
        columns.sort_by(|a, b| a.0.cmp(&b.0));
        let control = self.control(config).await?;
        read_defaults(connected(&control)?, &columns).await
    }

    /// `n` new keys for `table`, as SQL text (integers, or UUIDs without quotes).
    pub async fn generate(
        &self,
        config: &Config,
        table: &str,
        column: &str,
        key_type: KeyType,
        n: usize,
    ) -> Result<Vec<String>, ClientError> {
        if key_type == KeyType::Uuid {
            return Ok((0..n)
                .map(|_| uuid::Uuid::now_v7().hyphenated().to_string())
                .collect());
        }
        let wanted = i64::try_from(n).map_err(|_| too_many())?;
        let mut blocks = self.blocks.lock().await;
        if !blocks.contains_key(table) {
            blocks.insert(table.to_owned(), Block::default());
        }
        let block = blocks.get_mut(table).ok_or_else(no_block)?;
        let range = match block.take(wanted) {
            Some(range) => range,
            None => {
                let size = wanted.max(BLOCK);
                let start = self.take_block(config, table, column, size).await?;
                let end = start.checked_add(size).ok_or_else(too_many)?;
                if end - 1 > type_limit(key_type) {
                    return Err(keys_exhausted(table, column));
                }
                *block = Block { next: start, end };
                block.take(wanted).ok_or_else(too_many)?
            }
        };
        Ok(range.map(|k| k.to_string()).collect())
    }

    /// Takes `size` keys of `table` from the catalog: the first of them.
    async fn take_block(
        &self,
        config: &Config,
        table: &str,
        column: &str,
        size: i64,
    ) -> Result<i64, ClientError> {
        const TAKE: &str = "UPDATE shardline.key_blocks SET next_value = next_value + $2 \
                            WHERE table_name = $1 RETURNING next_value - $2";
        let control = self.control(config).await?;
        let client = connected(&control)?;
        let taken = client.query_opt(TAKE, &[&table, &size]).await;
        let missing = match &taken {
            Ok(row) => row.is_none(),
            Err(e) => e.code() == Some(&SqlState::UNDEFINED_TABLE),
        };
        if !missing {
            let row = taken.map_err(|e| catalog_error(&e))?;
            return row.map(|row| row.get(0)).ok_or_else(no_block);
        }
        // The table's first block: after every key its shards hold.
        let start = largest_key(config, table, column)
            .await?
            .checked_add(1)
            .ok_or_else(|| keys_exhausted(table, column))?;
        crate::migration::catalog::install(client, KEYS_SQL)
            .await
            .map_err(|e| catalog_error(&e))?;
        client
            .execute(
                "INSERT INTO shardline.key_blocks VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&table, &start],
            )
            .await
            .map_err(|e| catalog_error(&e))?;
        client
            .query_opt(TAKE, &[&table, &size])
            .await
            .map_err(|e| catalog_error(&e))?
            .map(|row| row.get(0))
            .ok_or_else(no_block)
    }

    /// The control connection, connected (again) when there is none.
    async fn control(
        &self,
        config: &Config,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, ClientError> {
        let mut control = self.control.lock().await;
        if control.as_ref().is_none_or(Client::is_closed) {
            *control = Some(connect_default(config).await?);
        }
        Ok(control)
    }

    fn lock_defaults(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, KeyDefault>)> {
        self.defaults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What each (table, key column) defaults to, read from the catalog in one query; a table
/// that does not exist has no default.
async fn read_defaults(
    client: &Client,
    columns: &[(String, String, KeyType)],
) -> Result<Vec<(String, String, KeyDefault)>, ClientError> {
    let tables: Vec<&str> = columns.iter().map(|(t, _, _)| t.as_str()).collect();
    let names: Vec<&str> = columns.iter().map(|(_, c, _)| c.as_str()).collect();
    let rows = client
        .query(
            "SELECT a.attidentity::text, pg_get_expr(d.adbin, d.adrelid) \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(tab, col, n) \
             LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(k.tab) \
               AND a.attname = k.col AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             ORDER BY k.n",
            &[&tables, &names],
        )
        .await
        .map_err(|e| catalog_error(&e))?;
    Ok(columns
        .iter()
        .zip(rows)
        .map(|((table, column, key_type), row)| {
            let identity: Option<&str> = row.get(0);
            let default: Option<&str> = row.get(1);
            let found = classify(*key_type, identity.unwrap_or_default(), default);
            (table.clone(), column.clone(), found)
        })
        .collect())
}

/// The largest key of `table` on any shard (0 when empty).
async fn largest_key(config: &Config, table: &str, column: &str) -> Result<i64, ClientError> {
    let mut largest = 0;
    for shard in &config.shards {
        let (client, connection) = crate::migration::catalog::connect(config, shard)
            .await
            .map_err(|e| unreachable_catalog(&e))?;
        let sql = format!(
            "SELECT coalesce(max({})::bigint, 0) FROM {}",
            quote_ident(column),
            quote_ident(table)
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| catalog_error(&e))?;
        largest = largest.max(row.get::<_, i64>(0));
        drop(client);
        connection.abort();
    }
    Ok(largest)
}

/// A control connection to the default shard.
async fn connect_default(config: &Config) -> Result<Client, ClientError> {
    let shard = config
        .shards
        .get(config.default_shard)
        .ok_or_else(|| ClientError::new(sqlstate::INTERNAL, "the config has no default shard"))?;
    crate::migration::catalog::connect(config, shard)
        .await
        .map(|(client, _)| client)
        .map_err(|e| unreachable_catalog(&e))
}

/// The connected client inside the control connection's guard.
fn connected(control: &Option<Client>) -> Result<&Client, ClientError> {
    control.as_ref().ok_or_else(|| {
        ClientError::new(
            sqlstate::CONNECTION_FAILURE,
            "no connection to the default shard to generate a shard key",
        )
    })
}

fn catalog_error(e: &tokio_postgres::Error) -> ClientError {
    ClientError::new(
        sqlstate::CONNECTION_FAILURE,
        format!("shardline could not generate a shard key (catalog on the default shard): {e}"),
    )
}

fn unreachable_catalog(e: &anyhow::Error) -> ClientError {
    ClientError::new(
        sqlstate::CONNECTION_FAILURE,
        format!("shardline could not reach the default shard to generate a shard key: {e:#}"),
    )
}

/// The keys of `table.column` ran past the largest value its type holds.
fn keys_exhausted(table: &str, column: &str) -> ClientError {
    ClientError::new(
        sqlstate::SEQUENCE_GENERATOR_LIMIT_EXCEEDED,
        format!("the keys shardline generates for {table}.{column} reached the largest value of its type; make the column bigint (ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint)"),
    )
}

fn no_block() -> ClientError {
    ClientError::new(
        sqlstate::INTERNAL,
        "the catalog handed out no block of keys",
    )
}

fn too_many() -> ClientError {
    ClientError::new(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        "too many rows for one statement to generate keys for",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_the_proxy_stands_in_for() {
        let int8 = KeyType::Int8;
        assert_eq!(
            classify(int8, "", Some("nextval('users_id_seq'::regclass)")),
            KeyDefault::Sequence { always: false }
        );
        assert_eq!(
            classify(int8, "a", None),
            KeyDefault::Sequence { always: true }
        );
        assert_eq!(
            classify(KeyType::Int4, "d", None),
            KeyDefault::Sequence { always: false }
        );
        assert_eq!(
            classify(KeyType::Uuid, "", Some("gen_random_uuid()")),
            KeyDefault::Uuid
        );
        assert_eq!(classify(int8, "", None), KeyDefault::None);
        assert_eq!(classify(int8, "", Some("42")), KeyDefault::None);
        assert_eq!(
            classify(KeyType::Text, "", Some("nextval('s'::regclass)")),
            KeyDefault::None
        );
    }

    #[test]
    fn a_block_hands_out_each_key_once() {
        let mut block = Block { next: 10, end: 13 };
        assert_eq!(block.take(2), Some(10..12));
        assert_eq!(block.take(2), None);
        assert_eq!(block.take(1), Some(12..13));
        assert_eq!(block.take(1), None);
    }
}
