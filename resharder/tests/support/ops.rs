//! The statements the workload runs on one key of `items`, what each must answer given the
//! key's acknowledged state, and how they are sent in the simple and the extended protocol.

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

/// A key's row: `(val, note)`.
pub type Row = (i64, String);

/// A key's state: `None` when the key has no row.
pub type State = Option<Row>;

/// A row as a statement returned it: `val` as text (so a garbled value shows as such) and the
/// note, `None` for SQL NULL.
pub type Seen = (String, Option<String>);

/// The rows `state` reads as.
pub fn rows_of(state: &State) -> Vec<Seen> {
    state
        .iter()
        .map(|(val, note)| (val.to_string(), Some(note.clone())))
        .collect()
}

/// The state a key read as, or `None` when the rows are no possible state (several rows, a
/// NULL note, a value that is no integer).
pub fn state_of(rows: &[Seen]) -> Option<State> {
    match rows {
        [] => Some(None),
        [(val, Some(note))] => val.parse().ok().map(|v| Some((v, note.clone()))),
        _ => None,
    }
}

/// How a client talks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `Query` messages with literal SQL (`simple_query`).
    Simple,
    /// `Parse`/`Bind`/`Execute` with `$n` parameters, prepared per statement or cached.
    Extended,
}

/// One statement on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `SELECT val, note FROM items WHERE id = k`.
    Read,
    /// `INSERT` of a new row; fails with 23505 when the key has a row.
    Insert { val: i64, note: String },
    /// `UPDATE … SET val = val + delta [, note = …]`: relative, so a stale row image shows.
    Update { delta: i64, note: Option<String> },
    /// `DELETE … WHERE id = k`.
    Delete,
    /// `INSERT … ON CONFLICT (id) DO UPDATE SET val = items.val + EXCLUDED.val, note = EXCLUDED.note`.
    Upsert { val: i64, note: String },
}

/// A statement and whether it asks for `RETURNING val, note`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub kind: Kind,
    pub returning: bool,
}

/// What a statement answered: its rows (when it has a result set) and its row count (when the
/// protocol path reports one).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub rows: Option<Vec<Seen>>,
    pub count: Option<u64>,
}

impl Op {
    /// A read of the key.
    pub fn read() -> Op {
        Op {
            kind: Kind::Read,
            returning: false,
        }
    }

    /// Whether this statement writes.
    pub fn writes(&self) -> bool {
        self.kind != Kind::Read
    }

    /// The SQLSTATE the statement must fail with when run on `before` (an `INSERT` of a key
    /// that has a row).
    pub fn expected_error(&self, before: &State) -> Option<&'static str> {
        match (&self.kind, before) {
            (Kind::Insert { .. }, Some(_)) => Some("23505"),
            _ => None,
        }
    }

    /// The key's state after the statement, run on `before`.
    pub fn after(&self, before: &State) -> State {
        match (&self.kind, before) {
            (Kind::Read, _) => before.clone(),
            (Kind::Insert { .. }, Some(_)) => before.clone(),
            (Kind::Insert { val, note }, None) => Some((*val, note.clone())),
            (Kind::Update { .. }, None) => None,
            (Kind::Update { delta, note }, Some((v, n))) => {
                Some((v + delta, note.clone().unwrap_or_else(|| n.clone())))
            }
            (Kind::Delete, _) => None,
            (Kind::Upsert { val, note }, None) => Some((*val, note.clone())),
            (Kind::Upsert { val, note }, Some((v, _))) => Some((v + val, note.clone())),
        }
    }

    /// The row count and (for reads and `RETURNING`) the rows the statement must answer on
    /// `before`.
    fn expected(&self, before: &State) -> (u64, Option<Vec<Seen>>) {
        let after = self.after(before);
        let (count, rows) = match &self.kind {
            Kind::Read => (u64::from(before.is_some()), rows_of(before)),
            Kind::Insert { .. } | Kind::Upsert { .. } => (1, rows_of(&after)),
            Kind::Update { .. } => (u64::from(before.is_some()), rows_of(&after)),
            Kind::Delete => (u64::from(before.is_some()), rows_of(before)),
        };
        let has_rows = self.kind == Kind::Read || self.returning;
        (count, has_rows.then_some(rows))
    }

    /// `None` when `seen` is what the statement must answer on `before`, else what differs.
    pub fn check(&self, id: i64, before: &State, seen: &Observed) -> Option<String> {
        let (count, rows) = self.expected(before);
        let mut wrong = Vec::new();
        if let Some(got) = seen.count {
            if got != count {
                wrong.push(format!("{got} rows affected, expected {count}"));
            }
        }
        match (&seen.rows, &rows) {
            (Some(got), Some(want)) if got != want => {
                wrong.push(format!("returned {got:?}, expected {want:?}"));
            }
            (Some(got), None) if !got.is_empty() => {
                wrong.push(format!("returned rows {got:?}, expected none"));
            }
            _ => {}
        }
        (!wrong.is_empty()).then(|| {
            format!(
                "key {id}: {self} on acknowledged state {before:?}: {}",
                wrong.join("; ")
            )
        })
    }

    /// The statement with literals, for the simple protocol.
    pub fn simple_sql(&self, id: i64, owner: i32) -> String {
        let sql = match &self.kind {
            Kind::Read => return format!("SELECT val, note FROM items WHERE id = {id}"),
            Kind::Insert { val, note } => format!(
                "INSERT INTO items (id, owner, val, note) VALUES ({id}, {owner}, {val}, {})",
                literal(note)
            ),
            Kind::Update { delta, note } => {
                let change = if *delta < 0 {
                    format!("val - {}", delta.unsigned_abs())
                } else {
                    format!("val + {delta}")
                };
                let note = note
                    .as_ref()
                    .map(|n| format!(", note = {}", literal(n)))
                    .unwrap_or_default();
                format!("UPDATE items SET val = {change}{note} WHERE id = {id}")
            }
            Kind::Delete => format!("DELETE FROM items WHERE id = {id}"),
            Kind::Upsert { val, note } => format!(
                "INSERT INTO items (id, owner, val, note) VALUES ({id}, {owner}, {val}, {}) \
                 ON CONFLICT (id) DO UPDATE SET val = items.val + EXCLUDED.val, note = EXCLUDED.note",
                literal(note)
            ),
        };
        self.with_returning(sql)
    }

    /// The statement with `$n` parameters and its parameter values, for the extended protocol.
    pub fn extended_sql(&self, id: i64, owner: i32) -> (String, Vec<Param>) {
        let (sql, params) = match &self.kind {
            Kind::Read => {
                return (
                    "SELECT val, note FROM items WHERE id = $1".to_owned(),
                    vec![Param::Int8(id)],
                )
            }
            Kind::Insert { val, note } => (
                "INSERT INTO items (id, owner, val, note) VALUES ($1, $2, $3, $4)".to_owned(),
                vec![
                    Param::Int8(id),
                    Param::Int4(owner),
                    Param::Int8(*val),
                    Param::Text(note.clone()),
                ],
            ),
            Kind::Update {
                delta,
                note: Some(note),
            } => (
                "UPDATE items SET val = val + $2, note = $3 WHERE id = $1".to_owned(),
                vec![Param::Int8(id), Param::Int8(*delta), Param::Text(note.clone())],
            ),
            Kind::Update { delta, note: None } => (
                "UPDATE items SET val = val + $2 WHERE id = $1".to_owned(),
                vec![Param::Int8(id), Param::Int8(*delta)],
            ),
            Kind::Delete => (
                "DELETE FROM items WHERE id = $1".to_owned(),
                vec![Param::Int8(id)],
            ),
            Kind::Upsert { val, note } => (
                "INSERT INTO items (id, owner, val, note) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET val = items.val + EXCLUDED.val, note = EXCLUDED.note"
                    .to_owned(),
                vec![
                    Param::Int8(id),
                    Param::Int4(owner),
                    Param::Int8(*val),
                    Param::Text(note.clone()),
                ],
            ),
        };
        (self.with_returning(sql), params)
    }

    fn with_returning(&self, sql: String) -> String {
        if self.returning {
            sql + " RETURNING val, note"
        } else {
            sql
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let returning = if self.returning { " RETURNING" } else { "" };
        match &self.kind {
            Kind::Read => write!(f, "SELECT"),
            Kind::Insert { val, note } => write!(f, "INSERT ({val}, {note}){returning}"),
            Kind::Update { delta, note } => {
                write!(f, "UPDATE val + {delta}")?;
                if let Some(note) = note {
                    write!(f, ", note {note}")?;
                }
                write!(f, "{returning}")
            }
            Kind::Delete => write!(f, "DELETE{returning}"),
            Kind::Upsert { val, note } => write!(f, "UPSERT (+{val}, {note}){returning}"),
        }
    }
}

/// An SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A bound parameter value.
#[derive(Debug, Clone)]
pub enum Param {
    Int4(i32),
    Int8(i64),
    Text(String),
}

impl Param {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Int4(v) => v,
            Param::Int8(v) => v,
            Param::Text(v) => v,
        }
    }
}

/// A connection and, for the extended protocol, its statements prepared so far (by SQL text).
pub struct Conn {
    pub client: Client,
    prepared: HashMap<String, Statement>,
}

impl Conn {
    pub fn new(client: Client) -> Conn {
        Conn {
            client,
            prepared: HashMap::new(),
        }
    }

    /// Runs `op` on key `id`. In the extended protocol, `cached` runs it as a statement
    /// prepared once on this connection and reused; otherwise tokio-postgres prepares it for
    /// this one execution.
    pub async fn run(
        &mut self,
        protocol: Protocol,
        op: &Op,
        id: i64,
        owner: i32,
        cached: bool,
    ) -> Result<Observed, tokio_postgres::Error> {
        match protocol {
            Protocol::Simple => {
                let mut results = self.simple(&op.simple_sql(id, owner)).await?;
                Ok(results.pop().unwrap_or_default())
            }
            Protocol::Extended => {
                let (sql, params) = op.extended_sql(id, owner);
                let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
                let statement = if cached {
                    Some(self.statement(&sql).await?)
                } else {
                    None
                };
                let has_rows = op.kind == Kind::Read || op.returning;
                if has_rows {
                    let rows = match &statement {
                        Some(statement) => self.client.query(statement, &params).await?,
                        None => self.client.query(&sql, &params).await?,
                    };
                    let seen = rows
                        .iter()
                        .map(|row| {
                            let val = row
                                .try_get::<_, i64>(0)
                                .map(|v| v.to_string())
                                .unwrap_or_else(|e| format!("<{e}>"));
                            let note = row
                                .try_get::<_, Option<String>>(1)
                                .unwrap_or_else(|e| Some(format!("<{e}>")));
                            (val, note)
                        })
                        .collect();
                    Ok(Observed {
                        rows: Some(seen),
                        count: None,
                    })
                } else {
                    let count = match &statement {
                        Some(statement) => self.client.execute(statement, &params).await?,
                        None => self.client.execute(&sql, &params).await?,
                    };
                    Ok(Observed {
                        rows: None,
                        count: Some(count),
                    })
                }
            }
        }
    }

    /// Sends a transaction-control statement (`BEGIN`, `COMMIT`, `ROLLBACK`) in `protocol`.
    pub async fn control(
        &mut self,
        protocol: Protocol,
        sql: &str,
    ) -> Result<(), tokio_postgres::Error> {
        match protocol {
            Protocol::Simple => self.client.simple_query(sql).await.map(drop),
            Protocol::Extended => self.client.execute(sql, &[]).await.map(drop),
        }
    }

    /// Runs a simple-protocol query string; one [`Observed`] per statement in it.
    pub async fn simple(&self, sql: &str) -> Result<Vec<Observed>, tokio_postgres::Error> {
        let mut results = Vec::new();
        let mut current = Observed::default();
        for message in self.client.simple_query(sql).await? {
            match message {
                SimpleQueryMessage::RowDescription(_) => {
                    current.rows.get_or_insert_with(Vec::new);
                }
                SimpleQueryMessage::Row(row) => {
                    let val = row.get(0).unwrap_or("<NULL>").to_owned();
                    let note = row.get(1).map(str::to_owned);
                    current.rows.get_or_insert_with(Vec::new).push((val, note));
                }
                SimpleQueryMessage::CommandComplete(count) => {
                    current.count = Some(count);
                    results.push(std::mem::take(&mut current));
                }
                _ => {}
            }
        }
        Ok(results)
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A small deterministic xorshift64* generator, one per client.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_statements_apply_to_the_acknowledged_row() {
        let row = Some((10, "a".to_owned()));
        let update = Op {
            kind: Kind::Update {
                delta: -3,
                note: None,
            },
            returning: true,
        };
        assert_eq!(update.after(&row), Some((7, "a".to_owned())));
        assert_eq!(update.after(&None), None);
        let upsert = Op {
            kind: Kind::Upsert {
                val: 5,
                note: "b".to_owned(),
            },
            returning: false,
        };
        assert_eq!(upsert.after(&row), Some((15, "b".to_owned())));
        assert_eq!(upsert.after(&None), Some((5, "b".to_owned())));
        assert!(update.simple_sql(1, 0).contains("val - 3"));
        let seen = Observed {
            rows: Some(vec![("7".to_owned(), Some("a".to_owned()))]),
            count: Some(1),
        };
        assert_eq!(update.check(1, &row, &seen), None);
        assert!(update.check(1, &None, &seen).is_some());
    }
}
