//! `HAVING` across shards. A shard cannot apply `HAVING` to its partial groups (a group whose
//! count is 3 on each of two shards has count 6), so the clause is taken off the shards'
//! statement and every aggregate or grouping expression it reads becomes a hidden column the
//! shards return; the proxy evaluates the condition on the combined groups.
//!
//! Supported: comparisons (`<`, `<=`, `=`, `<>`, `>`, `>=`) between such expressions, literals
//! and parameters, `IS [NOT] NULL`, `AND`, `OR`, `NOT` and parentheses. Anything else leaves the
//! query uncombined, and the router refuses it with a clear error.

mod eval;

pub use eval::keep;

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};

use crate::combine::{combinable, Combine};

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A column the shards return (a hidden one, in text).
    Column(usize),
    /// A literal, as PostgreSQL would read it in text.
    Literal(String),
    /// A bound parameter (0-based).
    Param(usize),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Lt,
    LtEq,
    Eq,
    NotEq,
    Gt,
    GtEq,
}

/// A `HAVING` condition over combined groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    Compare(Operand, CompareOp, Operand),
    /// `column IS NULL` (`negated`: `IS NOT NULL`).
    IsNull {
        column: usize,
        negated: bool,
    },
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
}

/// Reads `having` of a query grouped by `group_by`. Expressions it reads become shard columns
/// numbered from `first_column`, appended to `hidden` with how they combine.
pub(crate) fn predicate(
    having: &Expr,
    group_by: &[Expr],
    first_column: usize,
    hidden: &mut Vec<(Expr, Combine)>,
) -> Option<Predicate> {
    let mut reader = Reader {
        group_by,
        first_column,
        hidden,
    };
    reader.predicate(having)
}

struct Reader<'a> {
    group_by: &'a [Expr],
    first_column: usize,
    hidden: &'a mut Vec<(Expr, Combine)>,
}

impl Reader<'_> {
    fn predicate(&mut self, expr: &Expr) -> Option<Predicate> {
        Some(match expr {
            Expr::Nested(inner) => self.predicate(inner)?,
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => Predicate::And(
                    Box::new(self.predicate(left)?),
                    Box::new(self.predicate(right)?),
                ),
                BinaryOperator::Or => Predicate::Or(
                    Box::new(self.predicate(left)?),
                    Box::new(self.predicate(right)?),
                ),
                _ => {
                    let op = match op {
                        BinaryOperator::Lt => CompareOp::Lt,
                        BinaryOperator::LtEq => CompareOp::LtEq,
                        BinaryOperator::Eq => CompareOp::Eq,
                        BinaryOperator::NotEq => CompareOp::NotEq,
                        BinaryOperator::Gt => CompareOp::Gt,
                        BinaryOperator::GtEq => CompareOp::GtEq,
                        _ => return None,
                    };
                    Predicate::Compare(self.operand(left)?, op, self.operand(right)?)
                }
            },
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Predicate::Not(Box::new(self.predicate(expr)?)),
            Expr::IsNull(e) | Expr::IsNotNull(e) => {
                let Operand::Column(column) = self.operand(e)? else {
                    return None;
                };
                Predicate::IsNull {
                    column,
                    negated: matches!(expr, Expr::IsNotNull(_)),
                }
            }
            _ => return None,
        })
    }

    fn operand(&mut self, expr: &Expr) -> Option<Operand> {
        match expr {
            Expr::Nested(inner) => self.operand(inner),
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(Operand::Literal(n.clone())),
                Value::SingleQuotedString(s) => Some(Operand::Literal(s.clone())),
                Value::Placeholder(p) => {
                    let n: usize = p.strip_prefix('$')?.parse().ok()?;
                    Some(Operand::Param(n.checked_sub(1)?))
                }
                _ => None,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr: inner,
            } => match self.operand(inner)? {
                Operand::Literal(n) if n.starts_with(|c: char| c.is_ascii_digit()) => {
                    Some(Operand::Literal(format!("-{n}")))
                }
                _ => None,
            },
            _ => {
                let combine = match combinable(expr) {
                    // An average would need its own hidden count; not combined here.
                    Some(Combine::Avg { .. }) => return None,
                    Some(c) => c,
                    None if self.group_by.contains(expr) => Combine::Group,
                    None => return None,
                };
                let index = match self.hidden.iter().position(|(e, _)| e == expr) {
                    Some(i) => i,
                    None => {
                        self.hidden.push((expr.clone(), combine));
                        self.hidden.len() - 1
                    }
                };
                Some(Operand::Column(self.first_column + index))
            }
        }
    }
}
