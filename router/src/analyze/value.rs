//! Shard-key values as written in a statement: literals (numbers normalised), `$n`
//! parameters and arrays for `= ANY(...)`, seen through casts that keep the value intact.

use sqlparser::ast::{CastKind, DataType, Expr, UnaryOperator, Value};

use crate::key::KeyType;

/// A shard-key value as written in the statement, before the key type reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyExpr {
    /// A literal's text (numbers normalised to decimal).
    Literal(String),
    /// Literal NULL.
    Null,
    /// `$n` (0-based).
    Param(usize),
    /// `= ANY($n)` with an array parameter (0-based).
    ParamArray(usize),
    /// A literal that cannot be a key at all (malformed array literal, ...).
    Invalid(String),
}

/// The families of types whose casts keep a shard-key value intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Int,
    Numeric,
    Text,
    Uuid,
}

/// The family of a cast's target type, or `None` when the cast may change the value in a way
/// routing cannot follow (`varchar(3)` truncates, `numeric(4,1)` rounds, custom types...).
pub(super) fn family(data_type: &DataType) -> Option<Family> {
    match data_type {
        DataType::Int2(None)
        | DataType::SmallInt(None)
        | DataType::Int(None)
        | DataType::Int4(None)
        | DataType::Integer(None)
        | DataType::Int8(None)
        | DataType::BigInt(None) => Some(Family::Int),
        DataType::Numeric(sqlparser::ast::ExactNumberInfo::None)
        | DataType::Decimal(sqlparser::ast::ExactNumberInfo::None) => Some(Family::Numeric),
        DataType::Text
        | DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::CharVarying(None) => Some(Family::Text),
        DataType::Uuid => Some(Family::Uuid),
        DataType::Custom(name, modifiers) if modifiers.is_empty() => {
            let last = super::walker::name_parts(name)
                .last()
                .map(|i| i.value.to_ascii_lowercase())?;
            match last.as_str() {
                "int2" | "int4" | "int8" => Some(Family::Int),
                "text" | "varchar" => Some(Family::Text),
                "uuid" => Some(Family::Uuid),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a column of `key_type` cast to `family` still compares like the key itself.
pub(super) fn keeps_key(key_type: KeyType, family: Family) -> bool {
    matches!(
        (key_type, family),
        (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, Family::Int)
            | (KeyType::Text, Family::Text)
            | (KeyType::Uuid, Family::Uuid)
    )
}

/// Removes redundant parentheses.
pub(super) fn strip_nested(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// Normalises an integer literal's text: `1_000` → `1000`, `0x1F` → `31`.
fn number_text(text: &str) -> String {
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let (sign, digits) = match cleaned.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", cleaned.as_str()),
    };
    let lower = digits.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(body) = lower.strip_prefix(prefix) {
            if let Ok(v) = i128::from_str_radix(body, radix) {
                return format!("{sign}{v}");
            }
        }
    }
    cleaned
}

/// The parameter index of `$n`.
fn placeholder(text: &str) -> Option<usize> {
    let n: usize = text.strip_prefix('$')?.parse().ok()?;
    n.checked_sub(1)
}

/// A shard-key value written as a literal or parameter, seen through harmless casts.
pub(crate) fn key_value(expr: &Expr) -> Option<KeyExpr> {
    match strip_nested(expr) {
        Expr::Value(v) => match &v.value {
            Value::Number(text, _) => Some(KeyExpr::Literal(number_text(text))),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(KeyExpr::Literal(s.clone())),
            Value::DollarQuotedString(d) => Some(KeyExpr::Literal(d.value.clone())),
            Value::HexStringLiteral(h) => Some(match i128::from_str_radix(h, 16) {
                Ok(v) => KeyExpr::Literal(v.to_string()),
                Err(_) => KeyExpr::Invalid(format!("0x{h} is not a valid shard key")),
            }),
            Value::Null => Some(KeyExpr::Null),
            Value::Placeholder(p) => placeholder(p).map(KeyExpr::Param),
            _ => None,
        },
        Expr::TypedString(ts) => {
            family(&ts.data_type)?;
            match &ts.value.value {
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => Some(KeyExpr::Literal(s.clone())),
                Value::DollarQuotedString(d) => Some(KeyExpr::Literal(d.value.clone())),
                _ => None,
            }
        }
        Expr::Cast {
            kind,
            expr,
            data_type,
            format: None,
        } if !matches!(kind, CastKind::TryCast | CastKind::SafeCast) => {
            family(data_type)?;
            key_value(expr)
        }
        Expr::UnaryOp { op, expr } => match (op, strip_nested(expr)) {
            (UnaryOperator::Minus, Expr::Value(v)) => match &v.value {
                Value::Number(text, _) => Some(KeyExpr::Literal(number_text(&format!("-{text}")))),
                _ => None,
            },
            (UnaryOperator::Plus, inner @ Expr::Value(v))
                if matches!(v.value, Value::Number(..)) =>
            {
                key_value(inner)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Literal and parameter elements of an array expression for `= ANY(...)`.
pub(super) fn array_values(expr: &Expr) -> Option<Vec<KeyExpr>> {
    match strip_nested(expr) {
        Expr::Cast {
            expr, format: None, ..
        } => array_values(expr),
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => placeholder(p).map(|i| vec![KeyExpr::ParamArray(i)]),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                Some(match super::array::parse_text_array(s) {
                    Ok(elements) => elements
                        .into_iter()
                        .map(|e| e.map_or(KeyExpr::Null, KeyExpr::Literal))
                        .collect(),
                    Err(why) => vec![KeyExpr::Invalid(format!(
                        "malformed array literal {s:?}: {why}"
                    ))],
                })
            }
            Value::Null => Some(Vec::new()),
            _ => None,
        },
        Expr::Array(array) => array.elem.iter().map(key_value).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_literals_are_normalised() {
        for (text, want) in [
            ("1_000", "1000"),
            ("0x1F", "31"),
            ("-0x10", "-16"),
            ("0b101", "5"),
            ("0o17", "15"),
            ("42", "42"),
        ] {
            assert_eq!(number_text(text), want, "{text}");
        }
        assert_eq!(placeholder("$1"), Some(0));
        assert_eq!(placeholder("$0"), None);
        assert_eq!(placeholder("?"), None);
    }
}
