//! Prepared statements under transaction pooling.
//!
//! A client names its statements; backends are shared, so the proxy prepares each distinct
//! (query, parameter types) once per backend under a proxy-chosen name (`shardline_<id>`) and
//! translates the client's names. Ids are interned process-wide, so two clients preparing the
//! same query share the server-side statement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use shardline_router::{KeyType, Plan};

/// A statement a client prepared.
#[derive(Debug)]
pub struct Statement {
    /// Process-wide id of (query, parameter types); the backend name derives from it.
    pub id: u64,
    /// Its name on backends (`shardline_<id>`), spelled once: every `Bind` carries it.
    pub server_name: Box<[u8]>,
    pub query: Arc<str>,
    /// Raw parameter type count and OIDs from the client's Parse.
    pub param_types: Bytes,
    pub plan: Arc<Plan>,
    /// The config version the plan was made under.
    pub version: u64,
    /// The schema generation ([`schema_generation`]) it was defined in: after a `DROP` or an
    /// `ALTER` the same text gets a fresh id, and is prepared anew on backends.
    pub schema: u64,
    /// The proxy rewrote the client's `INSERT` to take generated shard keys as parameters.
    pub generated: Option<Arc<GeneratedKeys>>,
    /// The text is ASCII: the same bytes in every client encoding.
    pub ascii: bool,
}

/// The shard keys the proxy binds to a statement it rewrote (an `INSERT` that left them to
/// the table's default): one per row, as text parameters after the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKeys {
    pub table: String,
    pub column: String,
    pub key_type: KeyType,
    pub rows: usize,
}

/// Ids of every distinct (query, parameter types) seen by this process, by query then types
/// (two levels, so a lookup borrows the client's bytes instead of copying them).
#[derive(Default)]
struct StatementIds {
    by_query: HashMap<Arc<str>, HashMap<Box<[u8]>, u64>>,
    next: u64,
}

/// The process-wide ids.
fn ids() -> std::sync::MutexGuard<'static, StatementIds> {
    static IDS: OnceLock<Mutex<StatementIds>> = OnceLock::new();
    IDS.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Interns (query, parameter types) into a small id, and the query into text shared by every
/// statement of the same text: each re-`Parse` compares the client's text with it, and one
/// copy every session reads stays in cache where a copy per session would not.
fn intern(query: &str, param_types: &[u8]) -> (u64, Arc<str>) {
    let mut ids = ids();
    let StatementIds { by_query, next } = &mut *ids;
    let text = match by_query.get_key_value(query) {
        Some((text, _)) => text.clone(),
        None => Arc::from(query),
    };
    let types = by_query.entry(text.clone()).or_default();
    let id = *types.entry(param_types.into()).or_insert_with(|| {
        *next += 1;
        *next
    });
    (id, text)
}

/// Whether a statement that completed on a backend (its command tag) dropped every prepared
/// statement there, the proxy's included: `DEALLOCATE ALL`, `DISCARD ALL` sent with other
/// statements (alone they are answered by the proxy).
pub fn forgets_every_statement(command_tag: &[u8]) -> bool {
    matches!(command_tag, b"DEALLOCATE ALL" | b"DISCARD ALL")
}

/// Notes a statement a backend completed (its command tag). After a `DROP` or an `ALTER`,
/// statements prepared on backends before it may name what is gone (a dropped and re-created
/// type is "cache lookup failed") or return other columns: the queries seen so far forget
/// their ids, so one parsed afterwards gets a fresh id and is prepared anew, as a driver
/// re-preparing it on one server would have it (psycopg drops its own cache on the same tags).
/// Statements clients still hold keep their old ids, as on one server. Creating objects
/// changes no existing statement, so a workload creating temporary tables keeps its statements
/// — unless the creation is undone ([`undone`]): a `ROLLBACK` (or `ROLLBACK TO`) drops what
/// was created as surely as a `DROP`.
pub fn completed(command_tag: &[u8]) {
    match consequence(command_tag) {
        Some(Consequence::SchemaChanged) => schema_changed(),
        Some(Consequence::Created) => CREATED.store(true, Ordering::Relaxed),
        Some(Consequence::RolledBack) => undone(),
        None => {}
    }
}

/// Whether a statement that completed on a backend (its command tag) is of any concern to the
/// proxy's statements ([`completed`], [`forgets_every_statement`]); a `SELECT` or an `INSERT`
/// is not, and its answers can be relayed without a look.
pub fn completion_matters(command_tag: &[u8]) -> bool {
    consequence(command_tag).is_some() || forgets_every_statement(command_tag)
}

/// What a completed statement means for the statement ids (see [`completed`]).
enum Consequence {
    SchemaChanged,
    Created,
    RolledBack,
}

fn consequence(command_tag: &[u8]) -> Option<Consequence> {
    if command_tag.starts_with(b"DROP ") || command_tag.starts_with(b"ALTER ") {
        Some(Consequence::SchemaChanged)
    } else if command_tag.starts_with(b"CREATE ") {
        Some(Consequence::Created)
    } else if command_tag.starts_with(b"ROLLBACK") {
        Some(Consequence::RolledBack)
    } else {
        None
    }
}

/// Objects were created since the statement ids were last renewed.
static CREATED: AtomicBool = AtomicBool::new(false);

/// Notes that a transaction or a savepoint was rolled back (a `ROLLBACK`, an error that ends
/// an implicit transaction, the proxy aborting what a client left): if objects were created
/// since the ids were renewed, they may be gone, so the ids are renewed.
pub fn undone() {
    if CREATED.swap(false, Ordering::Relaxed) {
        schema_changed();
    }
}

/// Counts the schema changes seen through the proxy (what was read from the catalog before
/// one may be stale).
static SCHEMA_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The schema may have changed: statements get fresh ids, catalog readings a new generation.
fn schema_changed() {
    ids().by_query.clear();
    SCHEMA_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current schema generation (see [`completed`]).
pub fn schema_generation() -> u64 {
    SCHEMA_GENERATION.load(Ordering::Relaxed)
}

/// The statements one client has prepared, by the client's names: the unnamed one (`""`) in
/// a field of its own, named ones hashed with FxHash (looked up on every `Parse` and `Bind`;
/// the names are the client's own, and only its own session could suffer from names chosen
/// to collide).
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: FxHashMap<Vec<u8>, Arc<Statement>>,
    /// The named statements the client was told exist (their `Parse` was answered with
    /// `ParseComplete`): a `Parse` of one of these names is an error, as on one server. The
    /// others are defined when their segment is read, and a `Parse` replaces them.
    confirmed: FxHashSet<Vec<u8>>,
    /// The unnamed statement, apart: drivers that do not prepare send every query as one,
    /// so it is looked up at every execution.
    unnamed: Option<Arc<Statement>>,
}

impl ClientStatements {
    /// The statement `name` already is when a `Parse` of the same text (`query`, in UTF-8)
    /// and parameter types under config `version`, with no schema change since, would define
    /// it again: drivers re-parse the unnamed statement for every execution, and its plan need
    /// not be looked up again.
    pub fn reparsed(
        &self,
        name: &[u8],
        query: &[u8],
        param_types: &[u8],
        version: u64,
    ) -> Option<Arc<Statement>> {
        let existing = self.slot(name)?;
        let same = existing.version == version
            && existing.schema == schema_generation()
            && existing.generated.is_none()
            && existing.query.as_bytes() == query
            && existing.param_types == param_types;
        same.then(|| existing.clone())
    }

    /// Records a `Parse` planned under config `version`, replacing any statement of the same
    /// name.
    pub fn define(
        &mut self,
        name: &[u8],
        query: &str,
        param_types: &[u8],
        (plan, version): (Arc<Plan>, u64),
        generated: Option<Arc<GeneratedKeys>>,
    ) -> Arc<Statement> {
        if let Some(existing) = self.slot(name) {
            // Drivers re-parse the same unnamed statement for every execution.
            if &*existing.query == query
                && existing.param_types == param_types
                && Arc::ptr_eq(&existing.plan, &plan)
            {
                return existing.clone();
            }
        }
        let (id, query) = intern(query, param_types);
        let statement = Arc::new(Statement {
            id,
            server_name: format!("shardline_{id}").into_bytes().into_boxed_slice(),
            ascii: query.is_ascii(),
            query,
            param_types: Bytes::copy_from_slice(param_types),
            plan,
            version,
            schema: schema_generation(),
            generated,
        });
        if name.is_empty() {
            self.unnamed = Some(statement.clone());
        } else {
            self.by_name.insert(name.to_vec(), statement.clone());
        }
        statement
    }

    /// The statement named `name`, borrowed.
    fn slot(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.by_name.get(name)
        }
    }

    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<Arc<Statement>> {
        self.slot(name).cloned()
    }

    /// Forgets one statement (`Close`).
    pub fn close(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.by_name.remove(name);
            self.confirmed.remove(name);
        }
    }

    /// Forgets every statement (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.confirmed.clear();
        self.unnamed = None;
    }

    /// Records that the client was told named statement `name` exists.
    pub fn confirm(&mut self, name: &[u8]) {
        if self.by_name.contains_key(name) && !self.confirmed.contains(name) {
            self.confirmed.insert(name.to_vec());
        }
    }

    /// Whether the client was told named statement `name` exists (see [`Self::confirm`]).
    pub fn confirmed(&self, name: &[u8]) -> bool {
        self.confirmed.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(sql: &str) -> Arc<Plan> {
        let config = shardline_router::Config::from_yaml(
            "shards:\n  - {name: a, host: 127.0.0.1, port: 1}\nusers:\n  - {name: app, password: app}\n",
        );
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        Arc::new(shardline_router::plan(&config, sql))
    }

    #[test]
    fn a_reparse_under_the_same_config_is_the_statement_already_defined() {
        let mut statements = ClientStatements::default();
        let sql = "SELECT $1::int";
        let types = [0u8, 1, 0, 0, 0, 23];
        let defined = statements.define(b"", sql, &types, (planned(sql), 7), None);
        let again = statements.reparsed(b"", sql.as_bytes(), &types, 7);
        assert!(again.is_some_and(|s| Arc::ptr_eq(&s, &defined)));
        // Another client's statement of the same text shares its id and its text.
        let other = ClientStatements::default().define(b"s", sql, &types, (planned(sql), 7), None);
        assert_eq!(other.id, defined.id);
        assert!(Arc::ptr_eq(&other.query, &defined.query));
        assert!(
            statements
                .reparsed(b"", sql.as_bytes(), &types, 8)
                .is_none(),
            "a reload plans again"
        );
        assert!(statements
            .reparsed(b"", sql.as_bytes(), &[0, 0], 7)
            .is_none());
        assert!(statements.reparsed(b"", b"SELECT 2", &types, 7).is_none());
        assert!(statements
            .reparsed(b"s1", sql.as_bytes(), &types, 7)
            .is_none());
        // (In this one test: the schema generation is the process's, and no other unit test
        // changes it.)
        completed(b"DROP TABLE");
        assert!(
            statements
                .reparsed(b"", sql.as_bytes(), &types, 7)
                .is_none(),
            "after a DROP the statement is defined anew"
        );
        let anew = statements.define(b"", sql, &types, (planned(sql), 7), None);
        assert_ne!(
            anew.id, defined.id,
            "and prepared on backends under a fresh id"
        );
    }

    #[test]
    fn the_unnamed_statement_is_kept_apart_from_named_ones() {
        let mut statements = ClientStatements::default();
        let (one, two) = ("SELECT 1", "SELECT 2");
        let unnamed = statements.define(b"", one, &[], (planned(one), 1), None);
        let named = statements.define(b"s", two, &[], (planned(two), 1), None);
        assert!(statements
            .get(b"")
            .is_some_and(|s| Arc::ptr_eq(&s, &unnamed)));
        assert!(statements
            .get(b"s")
            .is_some_and(|s| Arc::ptr_eq(&s, &named)));
        statements.close(b"");
        assert!(statements.get(b"").is_none());
        assert!(
            statements.get(b"s").is_some(),
            "closing one leaves the other"
        );
        statements.define(b"", one, &[], (planned(one), 1), None);
        statements.clear();
        assert!(statements.get(b"").is_none() && statements.get(b"s").is_none());
    }

    #[test]
    fn a_confirmed_name_stays_confirmed_until_closed_or_cleared() {
        let mut statements = ClientStatements::default();
        let define = |statements: &mut ClientStatements, name: &[u8]| {
            statements.define(name, "SELECT 1", &[0, 0], (planned("SELECT 1"), 7), None)
        };
        statements.confirm(b"s1");
        assert!(
            !statements.confirmed(b"s1"),
            "only a defined name is confirmed"
        );
        define(&mut statements, b"s1");
        assert!(!statements.confirmed(b"s1"), "defined, not yet answered");
        statements.confirm(b"s1");
        assert!(statements.confirmed(b"s1"));
        statements.close(b"s1");
        assert!(!statements.confirmed(b"s1"));
        define(&mut statements, b"s1");
        statements.confirm(b"s1");
        statements.clear();
        assert!(!statements.confirmed(b"s1"));
    }
}
