//! Which columns of its pulled tables a pull-up's statement reads, as PostgreSQL itself
//! resolves the statement, so other shards send only those columns (`shardline_router::pull`
//! moves whole rows otherwise).
//!
//! A word list cannot answer this exactly (a column-alias list is positional, a table's name
//! can be a whole-row value, a type, or a field-style function call). PostgreSQL can: once the
//! pulled tables exist as temporary tables on the backend that runs the statement, a temporary
//! view over the statement ([`probe_sql`]) makes PostgreSQL record, in `pg_depend`, every
//! column the statement references, and its stored rule says whether it reads a whole row or a
//! system column. The probe runs inside a savepoint that is always rolled back ([`PROBE_END`]),
//! so it leaves nothing behind, and a statement a view cannot hold simply moves whole rows.
//!
//! Columns a statement does not reference are then left NULL in the temporary tables, which is
//! exact only if nothing reads them behind the statement's back, so whole rows move whenever
//! the statement uses anything PostgreSQL did not build in (built-in objects are pinned and
//! never recorded as dependencies; a user's function or operator could read a pulled table
//! itself), a whole row or a system column of any table, or a `regclass` constant (which
//! functions such as `table_to_xml` read a table through).

use std::collections::BTreeMap;

/// The savepoint and view the probe runs in.
const PROBE: &str = "shardline_probe";

/// Ends the probe, whether it succeeded or not: sent as a `Query` of its own after
/// [`probe_sql`]'s, it runs even when the probe failed.
pub const PROBE_END: &str =
    "ROLLBACK TO SAVEPOINT shardline_probe; RELEASE SAVEPOINT shardline_probe";

/// The probe of `statement` (a `SELECT`, as the backend that runs the pull-up will read it):
/// one simple `Query` answering rows of (kind, table, column, temporary) — what the statement
/// depends on (`pg_class` for a table or one of its columns, or another catalog's name), a
/// `whole row` or `regclass` row when it reads such, a `domain` row for each column of a
/// temporary table whose type is a domain (a NULL left there could break the domain's
/// constraint, so it is always pulled), and a `first` row with the first column of each
/// temporary table. Read by [`columns_read`].
pub fn probe_sql(statement: &str) -> String {
    let statement = statement.trim_end().trim_end_matches(';').trim_end();
    format!(
        "SAVEPOINT {PROBE}; \
         CREATE TEMP VIEW {PROBE} AS SELECT 1 FROM (\n{statement}\n) AS {PROBE}; \
         SELECT d.refclassid::regclass::text, c.relname::text, a.attname::text, \
                c.relnamespace = pg_my_temp_schema() \
           FROM pg_rewrite r \
           JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
           LEFT JOIN pg_class c ON d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid \
           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid \
                AND d.refobjsubid <> 0 \
          WHERE r.ev_class = 'pg_temp.{PROBE}'::regclass AND d.refobjid <> r.ev_class \
         UNION ALL \
         SELECT CASE WHEN ev_action::text ~ ':varattno (0 |-)' THEN 'whole row' \
                ELSE 'regclass' END, NULL, NULL, NULL \
           FROM pg_rewrite WHERE ev_class = 'pg_temp.{PROBE}'::regclass \
            AND ev_action::text ~ ':varattno (0 |-)|:consttype 2205 ' \
         UNION ALL \
         SELECT 'domain', c.relname::text, a.attname::text, true \
           FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
           JOIN pg_type t ON t.oid = a.atttypid \
          WHERE c.relnamespace = pg_my_temp_schema() AND c.relkind = 'r' AND a.attnum > 0 \
            AND NOT a.attisdropped AND t.typtype = 'd' \
         UNION ALL \
         SELECT 'first', c.relname::text, a.attname::text, true \
           FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
          WHERE c.relnamespace = pg_my_temp_schema() AND c.relkind = 'r' \
            AND a.attnum = (SELECT min(x.attnum) FROM pg_attribute x \
                             WHERE x.attrelid = c.oid AND x.attnum > 0 AND NOT x.attisdropped)"
    )
}

/// One row of the probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The catalog of what the statement depends on (`pg_class`, `pg_proc`, …), or `whole
    /// row`, `regclass`, `domain` or `first`.
    pub kind: String,
    /// For `pg_class`, `domain` and `first`: the table's name.
    pub table: Option<String>,
    /// For a column of a table: its name (`None` for the table as a whole).
    pub column: Option<String>,
    /// Whether the table is one of the session's temporary tables.
    pub temporary: Option<bool>,
}

/// The columns of each of `tables` (the pulled tables' names) that the statement reads, from
/// the probe's answer `found`; `None` when whole rows must move. A table the statement reads
/// no column of (`count(*)`) still needs its rows: it gets its first column.
pub fn columns_read(
    tables: &[&str],
    found: &[Dependency],
) -> Option<BTreeMap<String, Vec<String>>> {
    let mut read: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for dependency in found {
        let column = dependency.column.as_deref();
        match (dependency.kind.as_str(), dependency.table.as_deref()) {
            ("first", Some(table)) => {
                first.insert(table, column?);
            }
            // A collation cannot read a table.
            ("pg_collation", _) => {}
            // Tables outside the pull (reference tables, the session's own temporary ones)
            // are read as they are.
            ("pg_class" | "domain", Some(table)) if !tables.contains(&table) => {}
            // The real table behind a pulled name, not its temporary stand-in.
            ("pg_class", Some(_)) if dependency.temporary != Some(true) => return None,
            ("pg_class" | "domain", Some(table)) => {
                let columns = read.entry(table.to_owned()).or_default();
                if let Some(column) = column.filter(|c| !columns.iter().any(|known| known == c)) {
                    columns.push(column.to_owned());
                }
            }
            // Anything else PostgreSQL did not build in (a function, operator or type of the
            // user's), a whole row or system column, a regclass constant.
            _ => return None,
        }
    }
    tables
        .iter()
        .map(|table| {
            let mut columns = read.remove(*table).unwrap_or_default();
            if columns.is_empty() {
                columns.push((*first.get(table)?).to_owned());
            }
            Some((table.to_string(), columns))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(kind: &str, table: Option<&str>, column: Option<&str>, temp: bool) -> Dependency {
        Dependency {
            kind: kind.to_owned(),
            table: table.map(str::to_owned),
            column: column.map(str::to_owned),
            temporary: Some(temp),
        }
    }

    fn firsts() -> Vec<Dependency> {
        vec![
            dep("first", Some("users"), Some("id"), true),
            dep("first", Some("orders"), Some("id"), true),
        ]
    }

    #[test]
    fn the_columns_referenced_are_pulled() {
        let mut found = firsts();
        found.extend([
            dep("pg_class", Some("users"), Some("name"), true),
            dep("pg_class", Some("users"), Some("id"), true),
            dep("pg_class", Some("orders"), Some("user_id"), true),
            dep("pg_class", Some("countries"), Some("code"), false),
            dep("pg_class", Some("countries"), None, false),
        ]);
        let read = columns_read(&["orders", "users"], &found);
        let expected = BTreeMap::from([
            ("orders".to_owned(), vec!["user_id".to_owned()]),
            ("users".to_owned(), vec!["name".to_owned(), "id".to_owned()]),
        ]);
        assert_eq!(read, Some(expected));
    }

    #[test]
    fn domain_columns_are_always_pulled() {
        let mut found = firsts();
        found.extend([
            dep("pg_class", Some("users"), Some("id"), true),
            dep("domain", Some("users"), Some("label"), true),
            dep("domain", Some("other"), Some("x"), true),
        ]);
        let read = columns_read(&["users"], &found);
        let expected = vec!["id".to_owned(), "label".to_owned()];
        assert_eq!(read, Some(BTreeMap::from([("users".to_owned(), expected)])));
    }

    #[test]
    fn a_table_read_for_its_rows_alone_gets_its_first_column() {
        let mut found = firsts();
        found.push(dep("pg_class", Some("users"), None, true));
        let read = columns_read(&["users"], &found);
        assert_eq!(
            read,
            Some(BTreeMap::from([(
                "users".to_owned(),
                vec!["id".to_owned()]
            )]))
        );
    }

    #[test]
    fn anything_that_could_read_around_the_columns_moves_whole_rows() {
        for unsafe_kind in ["whole row", "regclass", "pg_proc", "pg_operator", "pg_type"] {
            let mut found = firsts();
            found.push(dep("pg_class", Some("users"), Some("id"), true));
            found.push(dep(unsafe_kind, None, None, false));
            assert_eq!(columns_read(&["users"], &found), None, "{unsafe_kind}");
        }
        // The real table (not the pulled temporary one) behind the same name.
        let mut found = firsts();
        found.push(dep("pg_class", Some("users"), Some("id"), false));
        assert_eq!(columns_read(&["users"], &found), None);
        // No first column known for a table with none read.
        assert_eq!(columns_read(&["users"], &[]), None);
    }

    #[test]
    fn the_probe_wraps_the_statement_on_lines_of_its_own() {
        let sql = probe_sql("SELECT 1 -- trailing comment\n;  ");
        assert!(sql.contains("(\nSELECT 1 -- trailing comment\n) AS shardline_probe"));
        assert!(sql.starts_with("SAVEPOINT shardline_probe;"));
    }
}
