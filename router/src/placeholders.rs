//! Renumbering `$n` parameters after a rewrite.
//!
//! A statement the proxy rewrites for the shards can lose references to some of the client's
//! parameters: a `LIMIT $2` the proxy applies itself, the rows of a split `INSERT` that belong to
//! another shard. PostgreSQL refuses a statement whose parameter it cannot type, so the rewritten
//! text is renumbered to use only the parameters it still references, and the proxy binds just
//! those values.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A statement for one shard and the client parameters it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatement {
    pub sql: String,
    /// For each of the statement's parameters (`$1`, `$2`, …), the index of the client's
    /// parameter that supplies it.
    pub params: Vec<usize>,
}

impl ShardStatement {
    /// `sql` with its parameters renumbered densely, in their original order; `None` when the
    /// text does not tokenize (it came from the parser, so this does not happen in practice).
    pub fn renumbered(sql: &str) -> Option<ShardStatement> {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
        let mut used: Vec<usize> = tokens.iter().filter_map(placeholder_index).collect();
        used.sort_unstable();
        used.dedup();
        if used.iter().enumerate().all(|(new, old)| new == *old) {
            return Some(ShardStatement {
                sql: sql.to_owned(),
                params: used,
            });
        }
        let mut text = String::with_capacity(sql.len());
        for token in &tokens {
            match placeholder_index(token).and_then(|old| used.binary_search(&old).ok()) {
                Some(new) => text.push_str(&format!("${}", new + 1)),
                None => text.push_str(&token.to_string()),
            }
        }
        Some(ShardStatement {
            sql: text,
            params: used,
        })
    }
}

/// The 0-based parameter index of a `$n` token.
fn placeholder_index(token: &Token) -> Option<usize> {
    let Token::Placeholder(p) = token else {
        return None;
    };
    p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_parameters_are_dropped_and_the_rest_renumbered() {
        let s = ShardStatement::renumbered("SELECT * FROM t WHERE a = $3 AND b = $1 OR c = $3");
        assert_eq!(
            s,
            Some(ShardStatement {
                sql: "SELECT * FROM t WHERE a = $2 AND b = $1 OR c = $2".into(),
                params: vec![0, 2],
            })
        );
    }

    #[test]
    fn dense_statements_are_kept_as_written() {
        let sql = "INSERT INTO t VALUES ($1, 'it''s $2'), ($2, $3)";
        let s = ShardStatement::renumbered(sql);
        assert_eq!(
            s,
            Some(ShardStatement {
                sql: sql.into(),
                params: vec![0, 1, 2],
            })
        );
        assert_eq!(
            ShardStatement::renumbered("SELECT 1").map(|s| s.params),
            Some(Vec::new())
        );
    }

    #[test]
    fn quoted_dollars_are_not_parameters() {
        let s = ShardStatement::renumbered("SELECT '$1', \"$2\", $4");
        assert_eq!(
            s.map(|s| (s.sql, s.params)),
            Some(("SELECT '$1', \"$2\", $1".into(), vec![3]))
        );
    }
}
