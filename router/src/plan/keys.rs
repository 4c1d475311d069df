//! Shard-key values at route time: literals parsed at plan time and `$n` Bind parameters
//! (text, binary, and arrays for `= ANY($n)`), each placed on the shard that owns it.

use crate::config::{ShardId, Sharding, TableRule};
use crate::key::{KeyError, KeyValue};
use crate::params::Param;
use crate::sqlstate;

use super::eval::Eval;
use super::target::{ClassInfo, KeySrc};
use super::{null_key, RouteError, ShardSet};

impl<'a> Eval<'a> {
    /// Adds the shard of one key source to `out`.
    pub(super) fn key(
        &mut self,
        class: &ClassInfo,
        rule: &TableRule,
        src: &KeySrc,
        out: &mut ShardSet,
    ) -> Result<(), RouteError> {
        self.key_values(class, src, &mut |value| {
            out.insert(place(rule, value)?);
            Ok(())
        })
    }

    /// Calls `each` with every key value one key source stands for (none for NULL).
    pub(super) fn key_values(
        &mut self,
        class: &ClassInfo,
        src: &KeySrc,
        each: &mut dyn FnMut(&KeyValue) -> Result<(), RouteError>,
    ) -> Result<(), RouteError> {
        match src {
            KeySrc::Value(v) => each(v)?,
            KeySrc::Null => {}
            KeySrc::Fail(e) => return Err(e.clone()),
            KeySrc::Param(i) | KeySrc::InsertParam(i) => match self.param(*i)? {
                Param::Null => {
                    if self.explain {
                        self.notes.push(format!("${} = NULL", i + 1));
                    }
                    if matches!(src, KeySrc::InsertParam(_)) {
                        return Err(null_key(&class.column));
                    }
                }
                Param::Text(bytes) => {
                    let value = match class.key_type.int_from_text(bytes) {
                        Some(value) => value,
                        None => {
                            let text = utf8_param(bytes, "parameter", *i, class)?;
                            class.key_type.parse_text(text).map_err(invalid_key)?
                        }
                    };
                    self.note(*i, &value);
                    each(&value)?;
                }
                Param::Binary(bytes) => {
                    let value = class.key_type.parse_binary(bytes).map_err(invalid_key)?;
                    self.note(*i, &value);
                    each(&value)?;
                }
            },
            KeySrc::ParamArray(i) => {
                let values = match self.param(*i)? {
                    Param::Null => Vec::new(),
                    Param::Text(bytes) => {
                        let text = utf8_param(bytes, "array parameter", *i, class)?;
                        let elements = crate::analyze::parse_text_array(text).map_err(|why| {
                            RouteError::new(
                                sqlstate::INVALID_TEXT_REPRESENTATION,
                                format!("malformed array parameter ${}: {why}", i + 1),
                            )
                        })?;
                        parse_elements(elements, |e| class.key_type.parse_text(&e))?
                    }
                    Param::Binary(bytes) => {
                        let elements =
                            crate::analyze::parse_binary_array(bytes).map_err(|why| {
                                RouteError::new(
                                    sqlstate::INVALID_TEXT_REPRESENTATION,
                                    format!("malformed binary array parameter ${}: {why}", i + 1),
                                )
                            })?;
                        parse_elements(elements, |e| class.key_type.parse_binary(e))?
                    }
                };
                if self.explain {
                    let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
                    self.notes
                        .push(format!("${} = {{{}}}", i + 1, shown.join(",")));
                }
                for value in &values {
                    each(value)?;
                }
            }
        }
        Ok(())
    }

    fn param(&self, index: usize) -> Result<Param<'a>, RouteError> {
        self.params.get(index).ok_or_else(|| {
            RouteError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "the statement uses parameter ${} but the Bind message did not supply it",
                    index + 1
                ),
            )
        })
    }

    fn note(&mut self, index: usize, value: &KeyValue) {
        if self.explain {
            self.notes.push(format!("${} = {value}", index + 1));
        }
    }
}

/// The shard of one key, with placement failures turned into client errors.
pub(super) fn place(rule: &TableRule, key: &KeyValue) -> Result<ShardId, RouteError> {
    if let Sharding::Hash { shards, .. } = &rule.sharding {
        if shards.is_empty() {
            return Err(RouteError::new(
                sqlstate::OBJECT_NOT_IN_STATE,
                format!(
                    "hash table {} has an empty shard list in shards.yaml; list its shards",
                    rule.name
                ),
            ));
        }
    }
    rule.shard_for(key)
        .map_err(|e| RouteError::new(sqlstate::INVALID_PARAMETER_VALUE, e.to_string()))
}

/// A text-format parameter as UTF-8; `what` names it in the error ("parameter", "array
/// parameter").
fn utf8_param<'p>(
    bytes: &'p [u8],
    what: &str,
    index: usize,
    class: &ClassInfo,
) -> Result<&'p str, RouteError> {
    std::str::from_utf8(bytes).map_err(|_| {
        RouteError::new(
            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            format!(
                "{what} ${} for shard key {} is not valid UTF-8",
                index + 1,
                class.column
            ),
        )
    })
}

/// Parses the elements of an array parameter as shard keys, text or binary alike; NULL
/// elements match no row and are skipped.
fn parse_elements<T>(
    elements: Vec<Option<T>>,
    parse: impl Fn(T) -> Result<KeyValue, KeyError>,
) -> Result<Vec<KeyValue>, RouteError> {
    let mut values = Vec::with_capacity(elements.len());
    for element in elements.into_iter().flatten() {
        values.push(parse(element).map_err(invalid_key)?);
    }
    Ok(values)
}

/// A value that is not a valid shard key of its type (invalid_text_representation).
fn invalid_key(e: KeyError) -> RouteError {
    RouteError::new(sqlstate::INVALID_TEXT_REPRESENTATION, e.to_string())
}
