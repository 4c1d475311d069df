//! Evaluating a `HAVING` condition on combined groups, with SQL's three-valued logic: a
//! comparison with NULL is unknown, and a group is kept only when the condition is true.

use std::cmp::Ordering;

use super::{CompareOp, Operand, Predicate};
use crate::sqlstate;
use crate::value::binary;
use crate::value::order::{Comparison, ValueOrder};
use crate::{Param, RouteError};

/// Whether a combined group passes `predicate`. `values` are the group's text values (hidden
/// `HAVING` columns are always text), `comparisons` how each column compares.
pub fn keep(
    predicate: &Predicate,
    values: &[Option<Vec<u8>>],
    comparisons: &[Comparison],
    params: &[Param<'_>],
) -> Result<bool, RouteError> {
    let group = Group {
        values,
        comparisons,
        params,
    };
    Ok(group.eval(predicate)? == Some(true))
}

struct Group<'a> {
    values: &'a [Option<Vec<u8>>],
    comparisons: &'a [Comparison],
    params: &'a [Param<'a>],
}

impl Group<'_> {
    fn eval(&self, predicate: &Predicate) -> Result<Option<bool>, RouteError> {
        Ok(match predicate {
            Predicate::And(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Predicate::Or(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Predicate::Not(p) => self.eval(p)?.map(|v| !v),
            Predicate::IsNull { column, negated } => {
                let null = self.values.get(*column).is_none_or(Option::is_none);
                Some(null != *negated)
            }
            Predicate::Compare(left, op, right) => {
                let comparison = self
                    .comparison(left)
                    .or_else(|| self.comparison(right))
                    .unwrap_or(Comparison::Bytes);
                let (Some(a), Some(b)) = (self.value(left)?, self.value(right)?) else {
                    return Ok(None);
                };
                let order = ValueOrder {
                    comparison,
                    binary: false,
                };
                let ordering = order.compare(&a, &b).ok_or_else(|| {
                    unsupported_having("a HAVING comparison across shards could not read its values; restrict the query to one shard")
                })?;
                Some(match op {
                    CompareOp::Lt => ordering == Ordering::Less,
                    CompareOp::LtEq => ordering != Ordering::Greater,
                    CompareOp::Eq => ordering == Ordering::Equal,
                    CompareOp::NotEq => ordering != Ordering::Equal,
                    CompareOp::Gt => ordering == Ordering::Greater,
                    CompareOp::GtEq => ordering != Ordering::Less,
                })
            }
        })
    }

    /// How a column operand compares; integers as exact decimals, so `count(*) > 2.5` works.
    fn comparison(&self, operand: &Operand) -> Option<Comparison> {
        let Operand::Column(column) = operand else {
            return None;
        };
        Some(match self.comparisons.get(*column)? {
            Comparison::Integer | Comparison::Unsigned => Comparison::Numeric,
            other => *other,
        })
    }

    /// The operand's text value (`None` for NULL).
    fn value(&self, operand: &Operand) -> Result<Option<Vec<u8>>, RouteError> {
        Ok(match operand {
            Operand::Column(column) => self.values.get(*column).cloned().flatten(),
            Operand::Literal(text) => Some(text.as_bytes().to_vec()),
            Operand::Param(index) => match self.params.get(*index) {
                None | Some(Param::Null) => None,
                Some(Param::Text(text)) => Some(text.to_vec()),
                Some(Param::Binary(bytes)) => Some(
                    binary::integer(bytes)
                        .ok_or_else(|| {
                            unsupported_having(
                                "a binary HAVING parameter must be an integer; send it as text",
                            )
                        })?
                        .to_string()
                        .into_bytes(),
                ),
            },
        })
    }
}

fn unsupported_having(message: &str) -> RouteError {
    RouteError::new(sqlstate::FEATURE_NOT_SUPPORTED, message)
}
