//! Text sqlparser cannot parse (or that is too complex to analyse safely): utility statements
//! are recognised by their first words, and anything else is routed only when that cannot send
//! it to the wrong shard.

use std::collections::BTreeSet;

use sqlparser::tokenizer::TokenWithSpan;

use super::{lex, TOO_COMPLEX};
use crate::config::Config;
use crate::plan::{Plan, RouteError, StatementKind, Target};
use crate::sqlstate;

/// Text sqlparser cannot parse (or will not parse safely). Utility statements are recognised by
/// their first words; anything else goes to the default shard only if it mentions no
/// configured table.
pub(super) fn unparseable(
    config: &Config,
    sql: &str,
    tokens: Option<&[TokenWithSpan]>,
    why: &str,
    sqlstate: &'static str,
) -> Plan {
    let words = match tokens {
        Some(t) => lex::leading_words(t, 3),
        None => lex::leading_words_raw(sql, 3),
    };
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let handled = |kind: StatementKind| Plan {
        kind,
        target: Target::Anywhere(
            "handled by the proxy: the client's backend or the default shard".into(),
        ),
        parts: Vec::new(),
        merge: None,
        aggregate: None,
    };
    match (word(0), word(1), word(2)) {
        ("PREPARE", "TRANSACTION", _) => {
            if prepares_reserved_name(sql) {
                return Plan {
                    kind: StatementKind::Unsupported,
                    target: Target::Error(RouteError::new(
                        sqlstate::RESERVED_NAME,
                        "prepared transaction names starting with sl_tx: or sl_dw: are shardline's own (its resolver finishes them); choose another name",
                    )),
                    parts: Vec::new(),
                    merge: None,
                    aggregate: None,
                };
            }
            return handled(StatementKind::PrepareTransaction);
        }
        ("COMMIT" | "ROLLBACK", "PREPARED", _) | ("MOVE", _, _) => {
            return handled(StatementKind::TransactionControl)
        }
        ("RESET", "TIME", "ZONE") => {
            return handled(StatementKind::Reset {
                name: "timezone".into(),
            })
        }
        ("RESET", "SESSION", "AUTHORIZATION") => {
            return handled(StatementKind::Reset {
                name: "session_authorization".into(),
            })
        }
        ("SET", "CONSTRAINTS", _) => return handled(StatementKind::SetLocal),
        ("SHOW", _, _) => return handled(StatementKind::Show),
        ("SET" | "RESET", _, _) => {
            // Session state shardline cannot follow would be lost between backends.
            return Plan {
                kind: StatementKind::Unsupported,
                target: Target::Error(RouteError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("shardline could not parse this {} statement ({why}); use SET name = value or RESET name", word(0)),
                )),
                parts: Vec::new(),
                merge: None,
        aggregate: None,
            };
        }
        _ => {}
    }
    let kind = match word(0) {
        "SELECT" | "VALUES" | "TABLE" | "WITH" => StatementKind::Read,
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "COMMENT" | "GRANT" | "REVOKE" | "REINDEX"
        | "CLUSTER" | "VACUUM" | "ANALYZE" | "SECURITY" | "IMPORT" => StatementKind::Ddl,
        "COPY" => {
            let upper = sql.to_ascii_uppercase();
            if upper.contains("STDIN") {
                StatementKind::CopyIn
            } else {
                StatementKind::CopyOut
            }
        }
        _ => StatementKind::Write,
    };
    // Every whole word counts, including inside strings and comments: a `DO` block or a
    // function body can reach a sharded table from a dollar-quoted string.
    let mentioned: BTreeSet<String> = lex::configured_words_raw(config, sql);
    // Maintenance and schema changes that carry no query go to every shard whatever they
    // name; `CREATE` may carry a query (CREATE TABLE … AS), so it follows the mention rule.
    let maintenance = matches!(
        word(0),
        "VACUUM"
            | "ANALYZE"
            | "REINDEX"
            | "CLUSTER"
            | "ALTER"
            | "DROP"
            | "TRUNCATE"
            | "COMMENT"
            | "GRANT"
            | "REVOKE"
            | "SECURITY"
    );
    let target = if maintenance {
        Target::AllShards(
            "schema change or maintenance shardline could not parse: every shard".into(),
        )
    } else if let Some(first) = mentioned.iter().next() {
        let what = match config.tables.get(first).map(|r| &r.sharding) {
            Some(crate::config::Sharding::Reference) => "reference table",
            _ => "sharded table",
        };
        let verb = if sqlstate == TOO_COMPLEX {
            "analyse"
        } else {
            "parse"
        };
        Target::Error(RouteError::new(
            sqlstate,
            format!(
                "shardline could not {verb} this statement ({why}), and it mentions {what} {first}, so it cannot be routed safely; rewrite it in syntax shardline understands"
            ),
        ))
    } else if kind == StatementKind::Ddl {
        Target::AllShards(
            "schema change shardline could not parse, mentioning no configured table: every shard"
                .into(),
        )
    } else {
        Target::Default(format!(
            "statement shardline could not parse ({why}), mentioning no configured table: default shard"
        ))
    };
    Plan {
        kind,
        target,
        parts: Vec::new(),
        merge: None,
        aggregate: None,
    }
}

/// Whether `sql` (a `PREPARE TRANSACTION`) names one of shardline's own prepared transactions,
/// or might once PostgreSQL reads its string: a plain `'…'` is read as it is; any other
/// spelling (escapes, Unicode escapes, dollar quotes, continued literals) is taken as reserved
/// when its text holds `sl` anywhere, which costs a client nothing it needs.
fn prepares_reserved_name(sql: &str) -> bool {
    use crate::scan::{Kind, Scanner};
    let strings: Vec<_> = Scanner::new(sql)
        .flatten()
        .filter(|t| matches!(t.kind, Kind::String | Kind::OtherString))
        .collect();
    match strings.as_slice() {
        [] => false,
        [plain] if plain.kind == Kind::String && !plain.text.contains('\\') => {
            let body = &plain.text[1..plain.text.len().saturating_sub(1).max(1)];
            crate::indoubt::reserved(&body.replace("''", "'"))
        }
        spelled => spelled
            .iter()
            .any(|t| t.text.to_ascii_lowercase().contains("sl")),
    }
}

#[cfg(test)]
mod tests {
    use super::prepares_reserved_name;

    #[test]
    fn shardline_s_prepared_names_are_recognised_however_written() {
        for sql in [
            "PREPARE TRANSACTION 'sl_tx:1:2:3:s0:s1'",
            "PREPARE TRANSACTION E'sl\\_dw:1'",
            "PREPARE TRANSACTION $$sl_tx:x$$",
            "PREPARE TRANSACTION $t$sl_tx:x$t$",
            "PREPARE TRANSACTION /* it's */ 'sl_tx:1'",
            "PREPARE TRANSACTION E'sl\\x5ftx:1:2:3:4:s0:s1'",
            "PREPARE TRANSACTION U&'sl\\005ftx:1'",
            "PREPARE TRANSACTION 'sl_'\n'tx:1'",
            "PREPARE TRANSACTION 'sl\\x5ftx:1'",
        ] {
            assert!(prepares_reserved_name(sql), "{sql}");
        }
        for sql in [
            "PREPARE TRANSACTION 'app_1'",
            "PREPARE TRANSACTION 'sl_txn'",
        ] {
            assert!(!prepares_reserved_name(sql), "{sql}");
        }
    }
}
