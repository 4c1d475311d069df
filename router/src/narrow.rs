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
//! itself), a whole row or a system column of any table, a value of type `regclass` or a
//! built-in function that reads a table named at run time (`query_to_xml`, `ts_stat`, …), or a
//! relation other than a plain table (a view's own code could read a pulled table).

use std::collections::BTreeMap;

/// The savepoint and view the probe runs in.
const PROBE: &str = "shardline_probe";

/// Starts the probe: sent as a `Query` of its own before [`probe_sql`]'s, so that the
/// savepoint exists even when the probe's text does not parse.
pub const PROBE_START: &str = "SAVEPOINT shardline_probe";

/// Ends the probe, whether it succeeded or not: sent as a `Query` of its own after
/// [`probe_sql`]'s, it runs even when the probe failed.
pub const PROBE_END: &str =
    "ROLLBACK TO SAVEPOINT shardline_probe; RELEASE SAVEPOINT shardline_probe";

/// Built-in functions that read a table named at run time (in SQL text, a schema or a
/// `regclass`), behind the view's dependencies.
const READS_BY_NAME: &str = "'query_to_xml', 'query_to_xmlschema', 'query_to_xml_and_xmlschema', \
     'table_to_xml', 'table_to_xmlschema', 'table_to_xml_and_xmlschema', \
     'schema_to_xml', 'schema_to_xmlschema', 'schema_to_xml_and_xmlschema', \
     'database_to_xml', 'database_to_xmlschema', 'database_to_xml_and_xmlschema', \
     'cursor_to_xml', 'cursor_to_xmlschema', 'ts_stat', 'ts_rewrite', 'currtid2'";

/// The probe of `statement` (a `SELECT`, as the backend that runs the pull-up will read it):
/// one simple `Query` (between [`PROBE_START`] and [`PROBE_END`]) answering rows of (kind,
/// table, column, temporary) — what the statement depends on (`pg_class` for a table or one
/// of its columns, or another catalog's name); `whole row` when it reads a whole row or a
/// system column, `by name` when it uses a value of type `regclass` or a built-in function
/// that reads a table named at run time, `indirect` for a relation other than a plain table
/// (a view, whose own code could read a pulled table) or one with row security; a `domain`
/// row for each column of a temporary table whose type is a domain (a NULL left there could
/// break the domain's constraint, so it is always pulled); and a `first` row with the first
/// column of each temporary table. Read by [`columns_read`]. Every catalog name is qualified,
/// so the session's `search_path` cannot stand in objects of its own.
pub fn probe_sql(statement: &str) -> String {
    let statement = without_trailing_semicolons(statement);
    format!(
        "CREATE TEMP VIEW {PROBE} AS SELECT 1 FROM (\n{statement}\n) AS {PROBE}; \
         WITH rule AS (SELECT r.oid, r.ev_class, r.ev_action::pg_catalog.text AS action \
                         FROM pg_catalog.pg_rewrite r \
                        WHERE r.ev_class OPERATOR(pg_catalog.=) 'pg_temp.{PROBE}'::pg_catalog.regclass) \
         SELECT d.refclassid::pg_catalog.regclass::pg_catalog.text, c.relname::pg_catalog.text, \
                a.attname::pg_catalog.text, \
                c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
           FROM rule r \
           JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid OPERATOR(pg_catalog.=) r.oid \
           LEFT JOIN pg_catalog.pg_class c ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                AND c.oid OPERATOR(pg_catalog.=) d.refobjid \
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
                AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid AND d.refobjsubid OPERATOR(pg_catalog.<>) 0 \
          WHERE d.refobjid OPERATOR(pg_catalog.<>) r.ev_class \
         UNION ALL \
         SELECT 'whole row', NULL, NULL, NULL FROM rule \
          WHERE action OPERATOR(pg_catalog.~) ':varattno (0 |-)' \
         UNION ALL \
         SELECT 'by name', NULL, NULL, NULL FROM rule \
          WHERE action OPERATOR(pg_catalog.~) ':(consttype|resulttype|funcresulttype|vartype|paramtype|aggtype|wintype) 2205 ' \
             OR EXISTS (SELECT FROM pg_catalog.pg_proc p \
                         WHERE p.proname OPERATOR(pg_catalog.=) ANY (ARRAY[{READS_BY_NAME}]::pg_catalog.name[]) \
                           AND p.oid::pg_catalog.text OPERATOR(pg_catalog.=) ANY ( \
                               SELECT m[1] FROM pg_catalog.regexp_matches(action, \
                                   ':(?:funcid|aggfnoid|winfnoid|opfuncid) ([0-9]+)', 'g') m)) \
         UNION ALL \
         SELECT 'indirect', c.relname::pg_catalog.text, NULL, NULL \
           FROM rule r \
           JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid OPERATOR(pg_catalog.=) r.oid \
           JOIN pg_catalog.pg_class c ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                AND c.oid OPERATOR(pg_catalog.=) d.refobjid \
          WHERE c.oid OPERATOR(pg_catalog.<>) r.ev_class \
            AND (c.relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p', 'm', 'f', 'S']::pg_catalog.\"char\"[]) \
                 OR c.relrowsecurity) \
         UNION ALL \
         SELECT 'domain', c.relname::pg_catalog.text, a.attname::pg_catalog.text, true \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
           JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
          WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
            AND c.relkind OPERATOR(pg_catalog.=) 'r' AND a.attnum OPERATOR(pg_catalog.>) 0 \
            AND NOT a.attisdropped AND t.typtype OPERATOR(pg_catalog.=) 'd' \
         UNION ALL \
         SELECT 'first', c.relname::pg_catalog.text, a.attname::pg_catalog.text, true \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
          WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
            AND c.relkind OPERATOR(pg_catalog.=) 'r' \
            AND a.attnum OPERATOR(pg_catalog.=) (SELECT pg_catalog.min(x.attnum) FROM pg_catalog.pg_attribute x \
                 WHERE x.attrelid OPERATOR(pg_catalog.=) c.oid AND x.attnum OPERATOR(pg_catalog.>) 0 AND NOT x.attisdropped)"
    )
}

/// `statement` without the semicolons (and blanks and comments around them) that end it, as
/// the scanner reads it: a trailing `;` would end the probe's subquery early.
fn without_trailing_semicolons(statement: &str) -> &str {
    let mut end = 0;
    for token in crate::scan::Scanner::new(statement) {
        let Ok(token) = token else {
            return statement;
        };
        if token.kind != crate::scan::Kind::Blank && token.text != ";" {
            end = token.text.as_ptr() as usize - statement.as_ptr() as usize + token.text.len();
        }
    }
    &statement[..end]
}

/// One row of the probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The catalog of what the statement depends on (`pg_class`, `pg_proc`, …), or `whole
    /// row`, `by name`, `indirect`, `domain` or `first`.
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
            // user's), a whole row or system column, a table read by name, a view.
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
        assert!(sql.contains("(\nSELECT 1\n) AS shardline_probe"));
        let sql = probe_sql("SELECT ';' ; -- a note; with semicolons\n ; /* and */");
        assert!(sql.contains("(\nSELECT ';'\n) AS shardline_probe"), "{sql}");
        assert!(sql.starts_with("CREATE TEMP VIEW shardline_probe AS SELECT 1 FROM ("));
    }

    #[test]
    fn tables_read_by_name_or_through_views_move_whole_rows() {
        for kind in ["by name", "indirect"] {
            let mut found = firsts();
            found.push(dep("pg_class", Some("users"), Some("id"), true));
            found.push(dep(kind, Some("names_view"), None, false));
            assert_eq!(columns_read(&["users"], &found), None, "{kind}");
        }
    }
}
