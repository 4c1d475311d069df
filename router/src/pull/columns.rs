//! Which columns of its pulled tables a statement can read, so a pull-up moves only those.
//!
//! The answer is a superset, never a guess: every word of the statement's text that could name
//! a column (each identifier and keyword, folded as PostgreSQL folds it) is kept, and the
//! statement reads whole rows — so every column moves — when it has a `*` other than
//! `count(*)`'s, a `NATURAL` join (which joins on every shared column name), or names a pulled
//! table or one of its aliases as a value (`row_to_json(u)`, `(u).name`, `SELECT u FROM …`). A
//! column left behind by mistake could only make the statement fail ("column does not
//! exist"), never answer differently: a name that resolves to a column of one table resolves
//! to the same column when other tables have fewer columns, since PostgreSQL reports an
//! ambiguous name instead of choosing.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, TableFactor, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::scan::{Kind, Scanner};

/// The names `sql` may read columns of `tables` (folded table names) by, or `None` when it
/// may read their whole rows.
pub(super) fn read_names(sql: &str, tables: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let significant: Vec<_> = Scanner::new(sql)
        .map(|token| token.ok())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .filter(|token| token.kind != Kind::Blank)
        .collect();
    let mut names = BTreeSet::new();
    for (i, token) in significant.iter().enumerate() {
        match token.kind {
            Kind::Word { quoted } => {
                let name = token.folded();
                if name == "natural" && !quoted {
                    return None;
                }
                names.insert(name);
            }
            Kind::Operator if token.text.contains('*') => {
                let before = i.checked_sub(1).and_then(|j| significant.get(j));
                let after = significant.get(i + 1);
                let counts_rows = token.text == "*"
                    && before.is_some_and(|t| t.text == "(")
                    && after.is_some_and(|t| t.text == ")");
                if !counts_rows {
                    return None;
                }
            }
            _ => {}
        }
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut rows = WholeRows {
        tables,
        names: BTreeSet::new(),
    };
    // Aliases first: a value naming one may come before the `FROM` that declares it.
    for statement in &statements {
        let _ = statement.visit(&mut Aliases(&mut rows));
    }
    for statement in &statements {
        if statement.visit(&mut rows).is_break() {
            return None;
        }
    }
    Some(names)
}

/// The names that mean a pulled table's whole row as a value: the tables' own and their
/// aliases.
struct WholeRows<'a> {
    tables: &'a BTreeSet<String>,
    names: BTreeSet<String>,
}

/// Collects the aliases of pulled tables into [`WholeRows::names`].
struct Aliases<'a, 'b>(&'b mut WholeRows<'a>);

impl Visitor for Aliases<'_, '_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, alias, .. } = factor {
            let table = name
                .0
                .last()
                .and_then(|part| part.as_ident())
                .map(super::fold);
            if let Some(table) = table.filter(|t| self.0.tables.contains(t)) {
                self.0.names.insert(table);
                if let Some(alias) = alias {
                    self.0.names.insert(super::fold(&alias.name));
                }
            }
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for WholeRows<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(ident) if self.names.contains(&super::fold(ident)) => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str) -> Option<Vec<String>> {
        let tables = BTreeSet::from(["users".to_owned(), "orders".to_owned()]);
        read_names(sql, &tables).map(|names| names.into_iter().collect())
    }

    #[test]
    fn the_words_of_a_statement_bound_the_columns_it_reads() {
        let names = read("SELECT u.\"Name\", count(*) FROM users u JOIN orders o USING (user_id) WHERE o.total > 5 GROUP BY 1");
        let names = names.unwrap_or_else(|| panic!("no names"));
        for name in ["Name", "user_id", "total", "u", "o"] {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n == "name"), "{names:?}");
    }

    #[test]
    fn whole_rows_and_wildcards_read_every_column() {
        for sql in [
            "SELECT * FROM users",
            "SELECT u.* FROM users u",
            "SELECT count(u.*) FROM users u",
            "SELECT row_to_json(u) FROM users u",
            "SELECT (x).id FROM users x",
            "SELECT users FROM users",
            "SELECT id * 2 FROM users",
            "SELECT id FROM users NATURAL JOIN orders",
            "SELECT (SELECT jsonb_agg(o) FROM orders o) FROM users",
        ] {
            assert_eq!(read(sql), None, "{sql}");
        }
        assert!(read("SELECT count(*), max(id) FROM users").is_some());
    }
}
