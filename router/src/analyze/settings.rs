//! Session settings: `SET` in its many spellings becomes the `name = value` pair the proxy
//! replays on every backend, or is refused when it cannot be replayed.

use sqlparser::ast::{
    Expr, ObjectName, Set, TransactionAccessMode, TransactionIsolationLevel, TransactionMode,
};

use super::walker::name_parts;
use super::Analysis;
use crate::plan::StatementKind;

/// A GUC name as PostgreSQL spells it: lower case, dotted parts joined.
pub(super) fn guc_name(name: &ObjectName) -> String {
    name_parts(name)
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// `SET …` variants.
pub(super) fn set_statement(set: &Set) -> Analysis {
    use sqlparser::ast::ContextModifier;
    match set {
        Set::SingleAssignment { scope, variable, values, .. } => {
            if matches!(scope, Some(ContextModifier::Local)) {
                return Analysis::handled(StatementKind::SetLocal);
            }
            let value = values.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            Analysis::handled(StatementKind::Set {
                name: guc_name(variable),
                value,
            })
        }
        Set::SetTimeZone { local: true, .. } => Analysis::handled(StatementKind::SetLocal),
        Set::SetTimeZone { local: false, value } => {
            let value = match value {
                Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("local") => "DEFAULT".to_owned(),
                other => other.to_string(),
            };
            Analysis::handled(StatementKind::Set {
                name: "timezone".into(),
                value,
            })
        }
        Set::SetRole { context_modifier: Some(ContextModifier::Local), .. } => Analysis::handled(StatementKind::SetLocal),
        Set::SetRole { role_name, .. } => Analysis::handled(StatementKind::Set {
            name: "role".into(),
            value: role_name.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string),
        }),
        Set::SetSessionAuthorization(param) => {
            let value = param.to_string();
            // Display gives "SESSION AUTHORIZATION <user>"; keep what follows.
            let value = value.rsplit_once("AUTHORIZATION ").map_or(value.clone(), |(_, v)| v.to_owned());
            Analysis::handled(StatementKind::Set {
                name: "session_authorization".into(),
                value,
            })
        }
        Set::SetNames { charset_name, .. } => Analysis::handled(StatementKind::Set {
            name: "client_encoding".into(),
            value: format!("'{}'", charset_name.value.replace('\'', "''")),
        }),
        Set::SetNamesDefault {} => Analysis::handled(StatementKind::Set {
            name: "client_encoding".into(),
            value: "DEFAULT".into(),
        }),
        Set::SetTransaction { session: false, .. } => Analysis::handled(StatementKind::SetLocal),
        Set::SetTransaction { session: true, modes, .. } => match modes.as_slice() {
            [mode] => {
                let (name, value) = match mode {
                    TransactionMode::IsolationLevel(level) => (
                        "default_transaction_isolation",
                        match level {
                            TransactionIsolationLevel::ReadUncommitted => "'read uncommitted'",
                            TransactionIsolationLevel::ReadCommitted => "'read committed'",
                            TransactionIsolationLevel::RepeatableRead => "'repeatable read'",
                            TransactionIsolationLevel::Serializable => "'serializable'",
                            TransactionIsolationLevel::Snapshot => "'repeatable read'",
                        },
                    ),
                    TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => ("default_transaction_read_only", "on"),
                    TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => ("default_transaction_read_only", "off"),
                };
                Analysis::handled(StatementKind::Set {
                    name: name.into(),
                    value: value.into(),
                })
            }
            _ => Analysis::unsupported(
                "set one session characteristic per statement (for example SET default_transaction_isolation = 'serializable'), so shardline can replay it on every backend",
            ),
        },
        Set::ParenthesizedAssignments { .. } | Set::MultipleAssignments { .. } | Set::SetSessionParam(_) => {
            Analysis::unsupported("shardline does not support this form of SET; use SET name = value")
        }
    }
}
