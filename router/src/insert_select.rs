//! `INSERT INTO t … SELECT …` with `t` sharded: the plan that runs the `SELECT` on one backend
//! (the default shard's, after pulling the sharded tables it reads there, see [`crate::pull`])
//! and loads the rows it makes into `t`'s shards as a routed `COPY` would.
//!
//! The selected rows go first into a staging table shaped like `t` (`LIKE t INCLUDING
//! DEFAULTS`), so PostgreSQL applies exactly the casts, checks and column defaults an
//! `INSERT` into `t` would; the staging table's rows are then copied out as text and each row
//! goes to the shard that owns its key. The staging table leaves the shard key without its
//! default: a key a shard's own sequence would hand out is not unique across shards, so a
//! column list that leaves the key out gets keys the proxy generates (or is refused, when the
//! table has none), and a `SELECT` narrower than the table that leaves the key out reaches
//! the router as a NULL key and is refused.
//!
//! With `ON CONFLICT` or `RETURNING`, each shard takes its rows into a table of its own first
//! ([`Apply`]), then inserts them into `t` with the client's clauses, inside the same
//! two-phase commit: conflicts are decided where the conflicting rows live (a unique key that
//! holds the shard key lives on one shard), the statement counts what PostgreSQL counts, and
//! each shard returns the rows it inserted (or updated), which the proxy passes on once the
//! statement committed everywhere.

use sqlparser::ast::{AssignmentTarget, Insert, OnConflictAction, OnInsert, SetExpr};

use crate::config::Config;
use crate::copy::{copy_into, CopyInto};
use crate::ident::quote_ident;
use crate::plan::RouteError;
use crate::pull::{fold, pulled_tables, temp_qualified, PulledTable};
use crate::scan::{Kind, Scanner};
use crate::sqlstate;

/// The staging table's name on the backend that runs the `SELECT`.
const STAGING: &str = "shardline_insert_rows";

/// The savepoint staging runs under inside a client's transaction block.
const SAVEPOINT: &str = "shardline_insert_select";

/// How one `INSERT … SELECT` into a sharded table runs.
#[derive(Debug, Clone)]
pub struct InsertSelect {
    /// The sharded tables the `SELECT` reads, pulled into the backend that runs it.
    pub pulled: Vec<PulledTable>,
    /// Creates the staging table (inside the pull's transaction, before the pulled tables,
    /// whose temporary copies would hide `t` itself).
    pub stage: String,
    /// Runs the client's `SELECT` into the staging table; its `$n` are the client's.
    pub fill: String,
    /// Copies the staged rows out, as text.
    pub unload: String,
    /// `stage` inside a client's transaction block: under a savepoint, so that `unstage`
    /// can take the staging table, the pulled tables and the staging's `SET LOCAL` away again
    /// (outside one, the staging runs in a transaction of its own, rolled back at the end).
    pub stage_in_transaction: String,
    /// Ends staging inside a client's transaction block, leaving it as it was before.
    pub unstage: String,
    /// The `COPY … FROM STDIN` each of `t`'s shards runs.
    pub copy: String,
    /// What the routed COPY needs to place each row.
    pub spec: CopyInto,
    /// Set for `INSERT … SELECT … ON CONFLICT | RETURNING`: how each shard applies its rows.
    pub apply: Option<Apply>,
}

impl InsertSelect {
    /// Whether the statement returns rows (`RETURNING`).
    pub fn returns_rows(&self) -> bool {
        self.apply.as_ref().is_some_and(|a| !a.returning.is_empty())
    }
}

/// How a shard applies its rows of an `INSERT … SELECT … ON CONFLICT | RETURNING`: they are
/// copied into a table made for the statement (an ordinary one: a temporary table would keep
/// the shard's transaction from `PREPARE TRANSACTION`), then inserted into the target with
/// the client's clauses, and the table is dropped again before the shard's transaction is
/// prepared.
#[derive(Debug, Clone)]
pub struct Apply {
    /// The target as the client named it, with its alias.
    table: String,
    /// The target alone, for the table the rows arrive in.
    shape: String,
    /// The client's column list, empty for all columns.
    columns: Vec<String>,
    on_conflict: String,
    /// ` RETURNING …`, or empty.
    returning: String,
}

impl Apply {
    /// The COPY a shard runs instead of the plain one, into `rows` (a name unique to the
    /// statement, chosen by the caller): the table is made in the same query string.
    pub fn copy_sql(&self, rows: &str) -> String {
        let columns = if self.columns.is_empty() {
            "*".to_owned()
        } else {
            self.columns.join(", ")
        };
        format!(
            "CREATE UNLOGGED TABLE {rows} AS SELECT {columns} FROM {table} LIMIT 0; COPY {rows} FROM STDIN",
            table = self.shape
        )
    }

    /// What a shard runs after its rows arrived: the insert (whose tag counts the rows it
    /// inserted or updated, and which returns what `RETURNING` asks for); [`Apply::drop_sql`]
    /// follows.
    pub fn insert_sql(&self, rows: &str) -> String {
        let list = if self.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.columns.join(", "))
        };
        format!(
            "INSERT INTO {table}{list} SELECT * FROM {rows}{on_conflict}{returning}",
            table = self.table,
            on_conflict = self.on_conflict,
            returning = self.returning
        )
    }

    /// Drops the table the rows arrived in.
    pub fn drop_sql(rows: &str) -> String {
        format!("DROP TABLE {rows}")
    }
}

/// The plan of `sql` when it is an `INSERT … SELECT` into a sharded table; `None` for any
/// other statement.
pub fn insert_select(config: &Config, sql: &str) -> Option<Result<InsertSelect, RouteError>> {
    let (insert, name) = crate::analyze::sole_insert(sql)?;
    let table = name.to_string();
    let rule = config.table(&table)?;
    rule.key_column()?;
    let source = insert.source.as_ref()?;
    if matches!(source.body.as_ref(), SetExpr::Values(_)) && source.with.is_none() {
        return None;
    }
    Some(plan(config, &insert, &table))
}

fn plan(config: &Config, insert: &Insert, table: &str) -> Result<InsertSelect, RouteError> {
    let Some(source) = insert.source.as_ref() else {
        return Err(internal());
    };
    let writes = source
        .with
        .iter()
        .flat_map(|with| &with.cte_tables)
        .any(|cte| {
            matches!(
                cte.query.body.as_ref(),
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            )
        });
    if writes {
        return Err(RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("INSERT … SELECT into sharded table {table} from a WITH that changes data is not supported; run the data-changing statement on its own first"),
        ));
    }
    let source = source.to_string();
    let columns: Vec<String> = insert.columns.iter().map(ToString::to_string).collect();
    let list = if columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", columns.join(", "))
    };
    let copy = format!("COPY {table}{list} FROM STDIN");
    let spec = match copy_into(config, &copy) {
        Some(spec) => spec?,
        None => return Err(internal()),
    };
    let key = spec.rule.key_column().ok_or_else(internal)?.to_owned();
    let on_conflict = match &insert.on {
        None => String::new(),
        Some(on) => {
            check_on_conflict(table, &key, on)?;
            on.to_string()
        }
    };
    let returning = match &insert.returning {
        None => String::new(),
        Some(items) => {
            let items: Vec<String> = items.iter().map(ToString::to_string).collect();
            let items = items.join(", ");
            check_shard_local(table, "RETURNING", &items)?;
            format!(" RETURNING {items}")
        }
    };
    let apply = if on_conflict.is_empty() && returning.is_empty() {
        None
    } else if spec.leaves_out_key() {
        return Err(RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("INSERT … SELECT … ON CONFLICT or RETURNING into sharded table {table} must give the shard key {key} itself (the proxy generates it otherwise, and a generated key never conflicts); add {key} to the column list and the SELECT"),
        ));
    } else {
        let target = match &insert.table_alias {
            Some(alias) => format!("{table} AS {}", alias.alias),
            None => table.to_owned(),
        };
        Some(Apply {
            table: target,
            shape: table.to_owned(),
            columns: columns.clone(),
            on_conflict,
            returning,
        })
    };
    let key = quote_ident(&key);
    let stage = format!(
        "CREATE TEMP TABLE {STAGING} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP; \
         ALTER TABLE {STAGING} ALTER COLUMN {key} DROP DEFAULT, ALTER COLUMN {key} DROP NOT NULL; \
         SET LOCAL extra_float_digits = 3"
    );
    Ok(InsertSelect {
        pulled: pulled_tables(config, &source)?,
        stage_in_transaction: format!("SAVEPOINT {SAVEPOINT}; {stage}"),
        stage,
        fill: format!(
            "INSERT INTO {STAGING}{list} {}",
            temp_qualified(config, &source)
        ),
        unload: format!("COPY {STAGING}{list} TO STDOUT"),
        unstage: format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"),
        copy,
        spec,
        apply,
    })
}

/// Refuses what a shard cannot decide alone in an `ON CONFLICT` clause: an update of the shard
/// key (the row would stay on a shard that no longer owns it), a subquery (it would read that
/// shard's rows only) and parameters (the clause runs as text of its own on every shard).
fn check_on_conflict(table: &str, key: &str, on: &OnInsert) -> Result<(), RouteError> {
    let refuse = |why: String| Err(RouteError::new(sqlstate::FEATURE_NOT_SUPPORTED, why));
    let OnInsert::OnConflict(conflict) = on else {
        return refuse(format!(
            "INSERT … SELECT into {table}: only ON CONFLICT is supported"
        ));
    };
    if let OnConflictAction::DoUpdate(update) = &conflict.action {
        let targets = update.assignments.iter().flat_map(|a| match &a.target {
            AssignmentTarget::ColumnName(name) => vec![name],
            AssignmentTarget::Tuple(names) => names.iter().collect(),
        });
        for name in targets {
            let folded = name.0.last().and_then(|part| part.as_ident()).map(fold);
            if folded.as_deref() == Some(key) {
                return refuse(format!("INSERT … SELECT … ON CONFLICT DO UPDATE into {table} cannot change the shard key {key} (the row would stay on a shard that does not own the new key); update the other columns, or delete and insert the row"));
            }
        }
    }
    check_shard_local(table, "the ON CONFLICT clause", &on.to_string())
}

/// Refuses a clause every shard runs as text of its own (`ON CONFLICT`, `RETURNING`) when it
/// holds a subquery (it would read only that shard's rows) or parameters.
fn check_shard_local(table: &str, clause: &str, text: &str) -> Result<(), RouteError> {
    let refuse = |why: String| Err(RouteError::new(sqlstate::FEATURE_NOT_SUPPORTED, why));
    for token in Scanner::new(text).flatten() {
        // `TABLE t` and `VALUES …` are query bodies too (`EXISTS (TABLE banned)`).
        let query = token.kind == (Kind::Word { quoted: false })
            && ["select", "table", "values"]
                .iter()
                .any(|word| token.text.eq_ignore_ascii_case(word));
        if query {
            return refuse(format!("INSERT … SELECT into {table} with a subquery in {clause} is not supported (each shard would read only its own rows); compute the value in the SELECT"));
        }
        if token.kind == Kind::Param {
            return refuse(format!("INSERT … SELECT into {table} with parameters in {clause} is not supported; pass the values through the SELECT"));
        }
    }
    Ok(())
}

fn internal() -> RouteError {
    RouteError::new(
        sqlstate::INTERNAL,
        "an INSERT … SELECT lost its target table while being planned",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_yaml(
            "users: [{name: app, password: app}]
shards:
  - {name: s0, host: 127.0.0.1, port: 5432}
  - {name: s1, host: 127.0.0.1, port: 5433}
tables:
  - {name: users, sharding: hash, column: id, type: int8}
  - {name: archive, sharding: hash, column: id, type: int8}
  - {name: countries, sharding: reference}
",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn planned(sql: &str) -> InsertSelect {
        match insert_select(&config(), sql) {
            Some(Ok(plan)) => plan,
            Some(Err(e)) => panic!("{sql}: refused: {}", e.message),
            None => panic!("{sql}: not an INSERT … SELECT into a sharded table"),
        }
    }

    #[test]
    fn only_insert_select_into_sharded_tables_is_planned() {
        let config = config();
        for other in [
            "INSERT INTO users (id, name) VALUES (1, 'a')",
            "INSERT INTO countries SELECT * FROM users",
            "INSERT INTO unlisted SELECT * FROM users",
            "SELECT * FROM users",
            "COPY users FROM STDIN",
        ] {
            assert!(insert_select(&config, other).is_none(), "{other}");
        }
    }

    #[test]
    fn the_select_fills_a_staging_table_shaped_like_the_target() {
        let plan =
            planned("INSERT INTO archive (id, name) SELECT id, name FROM users WHERE id > 5");
        assert_eq!(
            plan.fill,
            "INSERT INTO shardline_insert_rows (id, name) SELECT id, name FROM users WHERE id > 5"
        );
        assert!(plan
            .stage
            .starts_with("CREATE TEMP TABLE shardline_insert_rows (LIKE archive INCLUDING DEFAULTS) ON COMMIT DROP;"));
        assert!(plan.stage.contains("ALTER COLUMN \"id\" DROP DEFAULT"));
        assert_eq!(
            plan.unload,
            "COPY shardline_insert_rows (id, name) TO STDOUT"
        );
        assert_eq!(plan.copy, "COPY archive (id, name) FROM STDIN");
        let pulled: Vec<&str> = plan.pulled.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(pulled, ["users"]);
    }

    #[test]
    fn a_select_of_no_sharded_table_pulls_nothing() {
        let plan = planned("INSERT INTO users SELECT g, 'n' || g FROM generate_series(1, 10) g");
        assert!(plan.pulled.is_empty());
        assert_eq!(plan.unload, "COPY shardline_insert_rows TO STDOUT");
        assert_eq!(plan.copy, "COPY users FROM STDIN");
        assert!(!plan.spec.leaves_out_key());
    }

    #[test]
    fn a_column_list_without_the_key_leaves_it_to_the_generated_keys() {
        let plan = planned("INSERT INTO users (name) SELECT name FROM countries");
        assert!(plan.spec.leaves_out_key());
        assert!(plan.pulled.is_empty());
    }

    #[test]
    fn on_conflict_applies_each_shards_rows_through_a_table_of_its_own() {
        let plan = planned("INSERT INTO users (id, name) SELECT id, name FROM archive ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name");
        let apply = plan.apply.unwrap_or_else(|| panic!("no apply"));
        assert_eq!(
            apply.copy_sql("r1"),
            "CREATE UNLOGGED TABLE r1 AS SELECT id, name FROM users LIMIT 0; COPY r1 FROM STDIN"
        );
        assert_eq!(
            apply.insert_sql("r1"),
            "INSERT INTO users (id, name) SELECT * FROM r1 ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name"
        );
        let all = planned("INSERT INTO users SELECT * FROM archive ON CONFLICT DO NOTHING");
        let apply = all.apply.unwrap_or_else(|| panic!("no apply"));
        assert!(apply
            .copy_sql("r")
            .starts_with("CREATE UNLOGGED TABLE r AS SELECT * FROM users LIMIT 0;"));
        assert!(planned("INSERT INTO users SELECT * FROM archive")
            .apply
            .is_none());
        let aliased = planned("INSERT INTO users AS u (id, n) SELECT id, 1 FROM archive ON CONFLICT (id) DO UPDATE SET n = u.n + 1 WHERE u.id > 0");
        let apply = aliased.apply.unwrap_or_else(|| panic!("no apply"));
        assert!(apply
            .copy_sql("r")
            .contains("SELECT id, n FROM users LIMIT 0"));
        assert!(apply
            .insert_sql("r")
            .starts_with("INSERT INTO users AS u (id, n) SELECT * FROM r ON CONFLICT"));
    }

    #[test]
    fn returning_is_applied_on_each_shard() {
        let plan = planned("INSERT INTO users AS u SELECT * FROM archive RETURNING u.id, *");
        assert!(plan.returns_rows());
        let apply = plan.apply.unwrap_or_else(|| panic!("no apply"));
        assert_eq!(
            apply.insert_sql("r"),
            "INSERT INTO users AS u SELECT * FROM r RETURNING u.id, *"
        );
        assert!(
            !planned("INSERT INTO users SELECT * FROM archive ON CONFLICT DO NOTHING")
                .returns_rows()
        );
    }

    #[test]
    fn returning_keyless_conflicts_and_qualified_reads_are_refused() {
        let config = config();
        for sql in [
            "INSERT INTO users (id, name) SELECT id, name FROM archive ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id + 1000",
            "INSERT INTO users (id, name) SELECT id, name FROM archive ON CONFLICT (id) DO UPDATE SET (name, \"id\") = (EXCLUDED.name, 5)",
            "INSERT INTO users (id, n) SELECT id, 1 FROM archive ON CONFLICT (id) DO UPDATE SET n = (SELECT count(*) FROM archive)",
            "INSERT INTO users (id, n) SELECT id, 1 FROM archive ON CONFLICT (id) DO UPDATE SET n = $1",
            "INSERT INTO users (name) SELECT name FROM archive ON CONFLICT DO NOTHING",
            "INSERT INTO users (name) SELECT name FROM archive RETURNING id",
            "INSERT INTO users SELECT * FROM archive RETURNING (SELECT count(*) FROM archive)",
            "INSERT INTO users SELECT * FROM archive RETURNING id + $1",
            "INSERT INTO users SELECT * FROM sales.archive",
            "INSERT INTO users WITH gone AS (DELETE FROM archive RETURNING *) SELECT * FROM gone",
        ] {
            assert!(
                matches!(insert_select(&config, sql), Some(Err(e)) if e.sqlstate == sqlstate::FEATURE_NOT_SUPPORTED),
                "{sql}"
            );
        }
    }
}
