//! Aggregates across shards: every shard returns its groups with partial `count`/`sum`/`min`/
//! `max` values, and the proxy combines them per group — counts and sums added exactly, the
//! extreme of the extremes kept — then orders and limits the combined rows. Memory is bounded by
//! the number of groups, not by the rows the shards scanned.

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::BufMut;
use shardline_router::combine::{AggregateSpec, Combine};

use shardline_router::merge::Slice;
use shardline_router::sqlstate;
use shardline_router::Param;

use crate::protocol::backend::tag;
use crate::protocol::frontend::is_binary;
use crate::session::multi::gather::{Delivery, MergeFailure};
use crate::session::multi::ordered::{
    describe, field, next_message, read_header, rebuild, unsupported, Stream,
};
use crate::session::{ClientError, Session};
use shardline_router::having;
use shardline_router::value::binary;
use shardline_router::value::numeric;
use shardline_router::value::order::{compare_key, Comparison, ValueOrder};

/// One column's values, owned.
type Values = Vec<Option<Vec<u8>>>;

/// How each column is read and combined, from its type.
struct Column {
    combine: Combine,
    /// How values compare, in the format the shards send this column.
    order: ValueOrder,
    /// `sum` over `numeric` (exact decimal addition) rather than over `bigint`.
    numeric_sum: bool,
}

impl Session {
    /// Reads every shard's groups, combines them, and sends the ordered, limited result.
    pub(crate) async fn combine_streams(
        &mut self,
        streams: &mut [Stream],
        spec: &AggregateSpec,
        slice: Slice,
        formats: &[i16],
        delivery: &Delivery,
        params: &[Param<'_>],
    ) -> Result<u64, MergeFailure> {
        let Some((collation, description)) = read_header(streams).await? else {
            return Ok(0);
        };
        let (types, _) = describe(&description, 0)
            .ok_or_else(|| unsupported("malformed RowDescription from a shard"))?;
        if types.len() != spec.columns.len() {
            return Err(unsupported(
                "the shards' rows do not match the aggregate query",
            ));
        }
        let columns = spec
            .columns
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (combine, oid))| column(*combine, *oid, &collation, is_binary(formats, i)))
            .collect::<Result<Vec<_>, _>>()?;

        let mut groups: Vec<Values> = Vec::new();
        let mut index: HashMap<Values, usize> = HashMap::new();
        for stream in streams.iter_mut() {
            while let Some(row) = next_message(stream).await? {
                let values: Values = (0..columns.len())
                    .map(|i| field(&row, i).map(|v| v.map(<[u8]>::to_vec)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| unsupported("malformed DataRow from a shard"))?;
                let key: Values = columns
                    .iter()
                    .zip(&values)
                    .filter(|(c, _)| c.combine == Combine::Group)
                    .map(|(_, v)| v.clone())
                    .collect();
                match index.get(&key) {
                    Some(&g) => {
                        for (i, c) in columns.iter().enumerate() {
                            groups[g][i] = combine(c, groups[g][i].take(), values[i].clone())?;
                        }
                    }
                    None => {
                        index.insert(key, groups.len());
                        groups.push(values);
                    }
                }
            }
        }

        finish_averages(&mut groups, spec)?;
        if let Some(predicate) = &spec.having {
            let comparisons: Vec<Comparison> = columns.iter().map(|c| c.order.comparison).collect();
            let mut kept = Vec::with_capacity(groups.len());
            for values in groups {
                if having::keep(predicate, &values, &comparisons, params)
                    .map_err(|e| MergeFailure::Query(e.into()))?
                {
                    kept.push(values);
                }
            }
            groups = kept;
        }
        for values in &mut groups {
            values.truncate(spec.visible);
        }
        let mut failure = None;
        groups.sort_by(|a, b| {
            for key in &spec.order {
                let shardline_router::merge::SortColumn::Output(i) = key.column else {
                    continue;
                };
                let Some(c) = columns.get(i) else { continue };
                match compare_key(key, c.order, a[i].as_deref(), b[i].as_deref()) {
                    Some(Ordering::Equal) => {}
                    Some(o) => return o,
                    None => failure = Some(()),
                }
            }
            Ordering::Equal
        });
        if failure.is_some() {
            return Err(unsupported("an aggregate result could not be ordered across shards; restrict the query to one shard"));
        }
        if delivery.describe {
            self.out
                .push(&visible_description(&description, spec, delivery))
                .await?;
        }
        let mut sent = 0u64;
        let selected = groups
            .iter()
            .skip(usize::try_from(slice.offset).unwrap_or(usize::MAX))
            .take(
                slice
                    .limit
                    .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)),
            );
        for values in selected {
            let mut fields = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let encoded;
                let v = match (v, &columns[i].combine) {
                    (Some(text), Combine::Count | Combine::Sum | Combine::Avg { .. })
                        if delivery.binary(i) =>
                    {
                        encoded = encode_binary(text, types[i], columns[i].combine)?;
                        Some(&encoded)
                    }
                    (v, _) => v.as_ref(),
                };
                match v {
                    Some(bytes) => {
                        fields.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
                        fields.put_slice(bytes);
                    }
                    None => fields.put_i32(-1),
                }
            }
            self.out
                .push(&rebuild(tag::DATA_ROW, values.len(), &fields))
                .await?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// Replaces each average's combined sum by `sum / count` (as PostgreSQL prints `avg`).
fn finish_averages(groups: &mut [Values], spec: &AggregateSpec) -> Result<(), MergeFailure> {
    for values in groups.iter_mut() {
        for (i, combine) in spec.columns.iter().enumerate().take(spec.visible) {
            let Combine::Avg { count } = combine else {
                continue;
            };
            let count: u64 = values
                .get(*count)
                .and_then(|c| c.as_deref())
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let sum = values[i]
                .as_deref()
                .and_then(|s| std::str::from_utf8(s).ok())
                .map(str::to_owned);
            values[i] = match sum {
                Some(sum) if count > 0 => Some(
                    numeric::average(&sum, count)
                        .ok_or_else(|| unsupported("an average from a shard could not be read"))?
                        .into_bytes(),
                ),
                _ => None,
            };
        }
    }
    Ok(())
}

/// A combined count, sum or average (exact text) in binary: `bigint` or `numeric` as the
/// column's type says.
fn encode_binary(text: &[u8], oid: u32, combine: Combine) -> Result<Vec<u8>, MergeFailure> {
    let text = std::str::from_utf8(text).ok();
    let encoded = match (combine, oid) {
        (Combine::Avg { .. }, _) | (_, 1700) => text.and_then(binary::numeric_binary),
        (_, 20) => text
            .and_then(|t| t.parse::<i64>().ok())
            .map(|n| n.to_be_bytes().to_vec()),
        _ => None,
    };
    encoded.ok_or_else(|| {
        unsupported(&format!(
            "a combined aggregate of type oid {oid} cannot be sent in binary; request text results or restrict the query to one shard"
        ))
    })
}

/// The shards' row description as the client should see it: hidden columns dropped, averages
/// typed `numeric`, formats as the client asked.
fn visible_description(
    frame: &crate::protocol::Frame,
    spec: &AggregateSpec,
    delivery: &Delivery,
) -> bytes::Bytes {
    let body = frame.body();
    let mut fields = Vec::new();
    let mut at = 2;
    for (i, combine) in spec.columns.iter().take(spec.visible).enumerate() {
        let Some(end) = body
            .get(at..)
            .and_then(|rest| rest.iter().position(|b| *b == 0))
        else {
            return frame.bytes().clone();
        };
        let Some(field) = body.get(at..at + end + 19) else {
            return frame.bytes().clone();
        };
        let mut field = field.to_vec();
        if matches!(combine, Combine::Avg { .. }) {
            // type oid numeric, size -1 (variable), no type modifier
            let fixed = end + 1;
            field[fixed + 6..fixed + 10].copy_from_slice(&1700u32.to_be_bytes());
            field[fixed + 10..fixed + 12].copy_from_slice(&(-1i16).to_be_bytes());
            field[fixed + 12..fixed + 16].copy_from_slice(&(-1i32).to_be_bytes());
        }
        let format = i16::from(delivery.binary(i));
        field[end + 17..end + 19].copy_from_slice(&format.to_be_bytes());
        fields.extend_from_slice(&field);
        at += end + 19;
    }
    rebuild(tag::ROW_DESCRIPTION, spec.visible, &fields)
}

/// How a column of type `oid`, sent by the shards in binary or text, combines, or why it cannot.
fn column(
    combine: Combine,
    oid: u32,
    collation: &str,
    binary: bool,
) -> Result<Column, MergeFailure> {
    let c_collation = matches!(collation, "C" | "POSIX" | "C.UTF-8" | "C.utf8");
    let typed = Comparison::for_type(oid);
    let (comparison, numeric_sum) = match combine {
        Combine::Count => (Comparison::Integer, false),
        // An average is ordered by its final numeric value; its sum adds like `sum`.
        Combine::Avg { .. } => match oid {
            20 | 21 | 23 => (Comparison::Numeric, false),
            1700 => (Comparison::Numeric, true),
            _ => return Err(unsupported(&format!("avg() of type oid {oid} across shards is not combined exactly (floating point, intervals); restrict the query to one shard"))),
        },
        Combine::Sum => match oid {
            20 | 21 | 23 => (Comparison::Integer, false),
            1700 => (Comparison::Numeric, true),
            _ => return Err(unsupported(&format!("sum() of type oid {oid} across shards is not combined exactly (floating point, intervals, money); restrict the query to one shard"))),
        },
        Combine::Min | Combine::Max => match typed {
            Some((c, collated)) if !collated || c_collation => (c, false),
            Some(_) => return Err(unsupported(&format!("min()/max() of text across shards needs the shards' collation to be C (it is {collation})"))),
            None => return Err(unsupported(&format!("min()/max() of type oid {oid} across shards is not supported yet"))),
        },
        // Groups match by their text; types whose equal values can print differently (numeric
        // scales, floats) would split a group.
        Combine::Group => match typed {
            Some((c, collated)) if !matches!(c, Comparison::Numeric | Comparison::Float) && (!collated || c_collation) => (c, false),
            _ => return Err(unsupported(&format!("GROUP BY a column of type oid {oid} across shards is not supported yet; group by an integer, text (C collation), uuid, bool, date or timestamp column"))),
        },
    };
    Ok(Column {
        combine,
        order: ValueOrder { comparison, binary },
        numeric_sum,
    })
}

/// One column's combined value from two partial values.
fn combine(
    column: &Column,
    current: Option<Vec<u8>>,
    next: Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, MergeFailure> {
    let (a, b) = match (current, next) {
        (None, other) | (other, None) => return Ok(other),
        (Some(a), Some(b)) => (a, b),
    };
    let text = |v: &[u8]| String::from_utf8(v.to_vec()).ok();
    Ok(Some(match column.combine {
        Combine::Group => a,
        Combine::Count | Combine::Sum | Combine::Avg { .. } if !column.numeric_sum => {
            let sum = text(&a)
                .and_then(|x| x.parse::<i64>().ok())
                .zip(text(&b).and_then(|y| y.parse::<i64>().ok()))
                .and_then(|(x, y)| x.checked_add(y))
                .ok_or_else(|| {
                    MergeFailure::Query(ClientError::new(
                        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                        "bigint out of range",
                    ))
                })?;
            sum.to_string().into_bytes()
        }
        Combine::Count | Combine::Sum | Combine::Avg { .. } => text(&a)
            .zip(text(&b))
            .and_then(|(x, y)| numeric::add(&x, &y))
            .ok_or_else(|| unsupported("a numeric sum from a shard could not be read"))?
            .into_bytes(),
        Combine::Min | Combine::Max => {
            let key = shardline_router::merge::SortKey {
                column: shardline_router::merge::SortColumn::Output(0),
                descending: column.combine == Combine::Max,
                nulls_first: false,
            };
            match compare_key(&key, column.order, Some(&a), Some(&b)) {
                Some(Ordering::Greater) => b,
                Some(_) => a,
                None => {
                    return Err(unsupported(
                        "a min()/max() value from a shard could not be compared",
                    ))
                }
            }
        }
    }))
}
