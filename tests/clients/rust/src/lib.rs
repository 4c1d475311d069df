//! What the sqlx and tokio-postgres clients share: the rows of the common scenario
//! (docs/compatibility.md, as in tests/clients/python/scenario.py) and the report lines that
//! tests/clients/run.sh reads (`version`, `ok <step>`, `fail <step>: <why>`, `skip <step>: <why>`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

pub const ROWS: u32 = 16;
pub const TX_ID: i64 = 100;
pub const ROLLBACK_ID: i64 = 101;
/// Inserted by the cross-shard transactions, committed and rolled back: four consecutive keys
/// land on several of the 4 shards.
pub const CROSS_IDS: [i64; 4] = [900_001, 900_002, 900_003, 900_004];
pub const CROSS_ROLLBACK_IDS: [i64; 4] = [900_011, 900_012, 900_013, 900_014];

pub const DDL: [&str; 4] = [
    "DROP TABLE IF EXISTS orders",
    "DROP TABLE IF EXISTS users",
    // bigserial: generated_keys leaves the key out; the other steps name it.
    "CREATE TABLE users (id bigserial PRIMARY KEY, n4 int4, name text, uid uuid, amount numeric, \
     ts timestamptz, flag bool, blob bytea, doc jsonb, tags text[], nums int4[])",
    "CREATE TABLE orders (user_id int8 NOT NULL, n int4 NOT NULL, PRIMARY KEY (user_id, n))",
];
pub const INSERT: &str =
    "INSERT INTO users (id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums) \
                          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub const SELECT_ROW: &str =
    "SELECT id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums FROM users WHERE id = $1";
pub const SELECT_NAME: &str = "SELECT name FROM users WHERE id = $1";
/// No key: runs on every shard.
pub const LOOKUP: &str = "SELECT id FROM users WHERE name = $1";
/// Hashed keys: runs on every shard.
pub const COUNT_RANGE: &str = "SELECT count(*) FROM users WHERE id BETWEEN $1 AND $2";
pub const SHOW_TIMEOUT: &str =
    "SELECT current_setting('statement_timeout') FROM users WHERE id = $1";

/// session_state: inserted by the transaction that opens with a savepoint, the first rolled
/// back to it, the second committed.
pub const SAVEPOINT_IDS: [i64; 2] = [910_001, 910_002];
/// A timestamp read as the driver's own type, and as the server's text.
pub const TS_NATIVE: &str = "SELECT '2000-01-10 12:00'::timestamp";
pub const TS_TEXT: &str = "SELECT '2000-01-10 12:00'::timestamp::text";
pub const GERMAN: &str = "German, YMD";

/// generated_keys: rows that leave the key to its default, so the proxy generates it.
pub const INSERT_GENERATED: &str = "INSERT INTO users (name) VALUES ($1) RETURNING id";
pub const INSERT_GENERATED_3: &str =
    "INSERT INTO users (name) VALUES ($1), ($2), ($3) RETURNING id";

/// The names of generated_keys' rows.
pub fn generated_names() -> Vec<String> {
    (1..=7).map(|i| format!("generated {i}: ünï ✓")).collect()
}

/// generated_keys' `(id, name)` pairs once every id was returned and none repeats.
pub fn returned_ids(got: Vec<(Option<i64>, String)>) -> anyhow::Result<Vec<(i64, String)>> {
    let ids: Vec<Option<i64>> = got.iter().map(|(id, _)| *id).collect();
    let mut seen = BTreeSet::new();
    anyhow::ensure!(
        ids.iter().all(|id| id.is_some_and(|id| seen.insert(id))),
        "a NULL or repeated id returned: {ids:?}"
    );
    Ok(got
        .into_iter()
        .filter_map(|(id, name)| Some((id?, name)))
        .collect())
}

/// The row generated_keys leaves: a name, NULL otherwise.
pub fn generated_row(key: i64, name: &str) -> Row {
    Row {
        name: Some(name.into()),
        ..null_row(key)
    }
}

/// The timestamp TS_NATIVE reads.
pub fn ts_value() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2000, 1, 10)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .expect("timestamp")
}

/// The text of TS_NATIVE's timestamp under DateStyle `style`.
pub fn ts_text(style: &str) -> &'static str {
    if style.starts_with("German") {
        "10.01.2000 12:00:00"
    } else {
        "2000-01-10 12:00:00"
    }
}

/// The row session_state's committed transaction leaves.
pub fn savepoint_row(key: i64) -> Row {
    Row {
        name: Some("after a savepoint".into()),
        ..null_row(key)
    }
}

/// Row `i` has key 7^i: keys of 2, 4 and 8 bytes, spread over the shards.
pub fn key(i: u32) -> i64 {
    7i64.pow(i)
}

/// The keys of the rows inserted one by one, and of the one row that is NULL but for its key.
pub fn keys() -> Vec<i64> {
    (1..=ROWS).map(key).collect()
}
pub fn null_id() -> i64 {
    key(17)
}
/// Rows inserted by the driver's batch API, last.
pub fn batch_keys() -> Vec<i64> {
    (1..=8).map(|i| -key(i)).collect()
}

/// A row of `users` as the drivers return it; `amount` is the numeric's text, so that its
/// scale is compared too.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub n4: Option<i32>,
    pub name: Option<String>,
    pub uid: Option<Uuid>,
    pub amount: Option<String>,
    pub ts: Option<DateTime<Utc>>,
    pub flag: Option<bool>,
    pub blob: Option<Vec<u8>>,
    pub doc: Option<serde_json::Value>,
    pub tags: Option<Vec<Option<String>>>,
    pub nums: Option<Vec<i32>>,
}

/// Row `i` of the scenario under `key`.
pub fn make_row(i: u32, key: i64) -> Row {
    let n = i as i32;
    Row {
        id: key,
        n4: Some(-1000 * n),
        name: Some(format!("user {i}: it's \"ünï\" \\ ✓")),
        uid: Some(Uuid::parse_str(&format!("00000000-0000-4000-8000-{i:012}")).expect("uuid")),
        amount: Some(format!("{i}9876543210.012340")),
        ts: Some(
            Utc.with_ymd_and_hms(2024, 2, 29, 12, i, 56).unwrap()
                + chrono::Duration::microseconds(789_012),
        ),
        flag: Some(i.is_multiple_of(2)),
        blob: Some(vec![0, i as u8, 255, 39, 92]),
        doc: Some(
            json!({"i": i, "s": "ünï", "tags": ["x", "y"], "nested": {"ok": true, "none": null}}),
        ),
        tags: Some(vec![
            Some("a".into()),
            Some("b,c".into()),
            Some("q\"d".into()),
            None,
        ]),
        nums: Some(vec![n, -n, 0]),
    }
}

pub fn null_row(key: i64) -> Row {
    Row {
        id: key,
        n4: None,
        name: None,
        uid: None,
        amount: None,
        ts: None,
        flag: None,
        blob: None,
        doc: None,
        tags: None,
        nums: None,
    }
}

/// The rows the insert step writes, by key: row i under key 7^i, and the NULL row.
pub fn inserted_rows() -> BTreeMap<i64, Row> {
    let mut rows: BTreeMap<i64, Row> = (1..=ROWS).map(|i| (key(i), make_row(i, key(i)))).collect();
    rows.insert(null_id(), null_row(null_id()));
    rows
}

/// The row the committed transaction leaves: a name and n4 = 7, NULL otherwise.
pub fn committed_row() -> Row {
    Row {
        name: Some("in tx".into()),
        n4: Some(7),
        ..null_row(TX_ID)
    }
}

/// A row the committed cross-shard transaction leaves: a name, n4 = 7 on the last key (the one
/// it updates), NULL otherwise.
pub fn cross_shard_row(key: i64) -> Row {
    Row {
        name: Some("cross shard".into()),
        n4: (key == CROSS_IDS[CROSS_IDS.len() - 1]).then_some(7),
        ..null_row(key)
    }
}

/// Prints the report lines; a failed step is remembered for the exit code.
#[derive(Default)]
pub struct Report {
    pub failed: bool,
}

impl Report {
    pub fn version(&self, version: &str) {
        println!("version {version}");
    }

    /// Records a step: `Ok(None)` passed, `Ok(Some(note))` passed with a note.
    pub fn record(&mut self, step: &str, result: anyhow::Result<Option<String>>) {
        match result {
            Ok(None) => println!("ok {step}"),
            Ok(Some(note)) => println!("ok {step} ({note})"),
            Err(e) => {
                self.failed = true;
                let msg = format!("{e:#}")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                println!("fail {step}: {}", msg.chars().take(300).collect::<String>());
            }
        }
    }

    pub fn skip(&self, step: &str, why: &str) {
        println!("skip {step}: {why}");
    }

    pub fn exit(self) -> ! {
        std::process::exit(if self.failed { 1 } else { 0 })
    }
}
