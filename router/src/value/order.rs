//! Comparing values the way PostgreSQL orders them, for merging sorted shard results, in text
//! or binary format: integers and floats numerically, numeric as exact decimals, dates and
//! timestamps as instants, text and uuid bytewise (the shards' collation must be C for text
//! keys; the merge checks it).

use std::cmp::Ordering;

use super::binary;
use crate::merge::SortKey;

/// How one sort column's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Integer,
    /// `oid`: unsigned 32-bit.
    Unsigned,
    Float,
    Numeric,
    /// Bytewise: text under the C collation, uuid, bool.
    Bytes,
    /// date, timestamp, timestamptz in ISO style.
    Instant,
}

impl Comparison {
    /// The comparison for a PostgreSQL type OID, if the merge supports it.
    pub fn for_type(oid: u32) -> Option<(Comparison, bool)> {
        // The flag says the type compares by collation (needs a C-collation database).
        Some(match oid {
            20 | 21 | 23 => (Comparison::Integer, false),
            26 => (Comparison::Unsigned, false),
            700 | 701 => (Comparison::Float, false),
            1700 => (Comparison::Numeric, false),
            16 | 2950 => (Comparison::Bytes, false),
            25 | 1042 | 1043 | 19 => (Comparison::Bytes, true),
            1082 | 1114 | 1184 => (Comparison::Instant, false),
            _ => return None,
        })
    }

    /// Orders two non-NULL text values; `None` when a value does not read as its type.
    fn compare(self, a: &[u8], b: &[u8]) -> Option<Ordering> {
        match self {
            Comparison::Bytes => Some(a.cmp(b)),
            Comparison::Integer => Some(parse::<i64>(a)?.cmp(&parse::<i64>(b)?)),
            Comparison::Unsigned => Some(parse::<u64>(a)?.cmp(&parse::<u64>(b)?)),
            Comparison::Float => Some(parse::<f64>(a)?.total_cmp(&parse::<f64>(b)?)),
            Comparison::Numeric => {
                compare_numeric(std::str::from_utf8(a).ok()?, std::str::from_utf8(b).ok()?)
            }
            Comparison::Instant => Some(instant(a)?.cmp(&instant(b)?)),
        }
    }
}

/// How one column's values compare: by type, in the format the shard sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueOrder {
    pub comparison: Comparison,
    pub binary: bool,
}

impl ValueOrder {
    /// Orders two non-NULL values; `None` when a value does not read as its type.
    pub fn compare(self, a: &[u8], b: &[u8]) -> Option<Ordering> {
        if !self.binary {
            return self.comparison.compare(a, b);
        }
        match self.comparison {
            // text under C, uuid and bool compare bytewise in binary as in text.
            Comparison::Bytes => Some(a.cmp(b)),
            // date is a 4-byte day count, timestamps 8-byte microsecond counts.
            Comparison::Integer | Comparison::Instant => {
                Some(binary::integer(a)?.cmp(&binary::integer(b)?))
            }
            Comparison::Unsigned => {
                let read = |v: &[u8]| v.try_into().ok().map(u32::from_be_bytes);
                Some(read(a)?.cmp(&read(b)?))
            }
            Comparison::Float => Some(binary::float(a)?.total_cmp(&binary::float(b)?)),
            Comparison::Numeric => {
                compare_numeric(&binary::numeric_text(a)?, &binary::numeric_text(b)?)
            }
        }
    }
}

fn parse<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Orders two values of one sort key, NULL placement and direction applied.
pub fn compare_key(
    key: &SortKey,
    order: ValueOrder,
    a: Option<&[u8]>,
    b: Option<&[u8]>,
) -> Option<Ordering> {
    let ordering = match (a, b) {
        (None, None) => return Some(Ordering::Equal),
        (None, Some(_)) => {
            return Some(if key.nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            })
        }
        (Some(_), None) => {
            return Some(if key.nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            })
        }
        (Some(a), Some(b)) => order.compare(a, b)?,
    };
    Some(if key.descending {
        ordering.reverse()
    } else {
        ordering
    })
}

/// Exact comparison of PostgreSQL numeric text (`-12.50`, `NaN`, `Infinity`).
fn compare_numeric(a: &str, b: &str) -> Option<Ordering> {
    // Finite values rank between -Infinity and Infinity; NaN sorts above everything.
    let special = |s: &str| match s {
        "-Infinity" => Some(-1),
        "Infinity" => Some(1),
        "NaN" => Some(2),
        _ => None,
    };
    if special(a).is_some() || special(b).is_some() {
        return Some(special(a).unwrap_or(0).cmp(&special(b).unwrap_or(0)));
    }
    let (neg_a, ma) = split_sign(a);
    let (neg_b, mb) = split_sign(b);
    let zero_a = ma.bytes().all(|c| c == b'0' || c == b'.');
    let zero_b = mb.bytes().all(|c| c == b'0' || c == b'.');
    let sign = |neg: bool, zero: bool| {
        if zero {
            0
        } else if neg {
            -1
        } else {
            1
        }
    };
    let (sa, sb) = (sign(neg_a, zero_a), sign(neg_b, zero_b));
    if sa != sb {
        return Some(sa.cmp(&sb));
    }
    let magnitude = compare_magnitude(ma, mb)?;
    Some(if sa < 0 {
        magnitude.reverse()
    } else {
        magnitude
    })
}

fn split_sign(s: &str) -> (bool, &str) {
    match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    }
}

/// Compares two unsigned decimal strings.
fn compare_magnitude(a: &str, b: &str) -> Option<Ordering> {
    let (ia, fa) = a.split_once('.').unwrap_or((a, ""));
    let (ib, fb) = b.split_once('.').unwrap_or((b, ""));
    if !(ia
        .bytes()
        .chain(fa.bytes())
        .chain(ib.bytes())
        .chain(fb.bytes()))
    .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let ia = ia.trim_start_matches('0');
    let ib = ib.trim_start_matches('0');
    let by_integer = ia.len().cmp(&ib.len()).then_with(|| ia.cmp(ib));
    if by_integer != Ordering::Equal {
        return Some(by_integer);
    }
    let fa = fa.trim_end_matches('0');
    let fb = fb.trim_end_matches('0');
    Some(fa.cmp(fb))
}

/// An ISO date/timestamp[tz] as (days, microseconds) in UTC; ±infinity at the ends.
fn instant(bytes: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(bytes).ok()?;
    match s {
        "infinity" => return Some((i64::MAX, 0)),
        "-infinity" => return Some((i64::MIN, 0)),
        _ => {}
    }
    // Client text may put a multi-byte character anywhere: cut only at character boundaries.
    let cut = s.len().min(10);
    let (date, rest) = (s.get(..cut)?, s.get(cut..)?);
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if date.len() != 10 || rest.ends_with(" BC") {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Some((days, 0));
    }
    // HH:MM:SS[.ffffff][±HH[:MM[:SS]]]
    let clock_end = 8.min(rest.len());
    let offset_at = rest
        .get(clock_end..)?
        .find(['+', '-'])
        .map(|i| i + clock_end);
    let (time, offset) = match offset_at {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, m, sec): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let micros_fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").get(..6)?.parse().ok()?
    };
    let mut micros = clock_micros(h, m, sec)?.checked_add(micros_fraction)?;
    if !offset.is_empty() {
        let negative = offset.starts_with('-');
        let mut o = offset.get(1..)?.split(':');
        let oh: i64 = o.next()?.parse().ok()?;
        let om: i64 = o.next().map_or(Some(0), |x| x.parse().ok())?;
        let os: i64 = o.next().map_or(Some(0), |x| x.parse().ok())?;
        let shift = clock_micros(oh, om, os)?;
        micros = if negative {
            micros.checked_add(shift)?
        } else {
            micros.checked_sub(shift)?
        };
    }
    let day_micros = 86_400 * 1_000_000;
    Some((
        days + micros.div_euclid(day_micros),
        micros.rem_euclid(day_micros),
    ))
}

/// Microseconds of `h:m:s`; `None` past what an `i64` holds (values no valid time has, but
/// client text can carry).
fn clock_micros(h: i64, m: i64, s: i64) -> Option<i64> {
    h.checked_mul(60)?
        .checked_add(m)?
        .checked_mul(60)?
        .checked_add(s)?
        .checked_mul(1_000_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_compare_exactly() {
        let ordered = [
            "-Infinity",
            "-100.5",
            "-2",
            "-0.001",
            "0",
            "0.00",
            "0.5",
            "2",
            "10",
            "10.000001",
            "Infinity",
            "NaN",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                let equal_zero = (*a == "0" && *b == "0.00") || (*a == "0.00" && *b == "0");
                let want = if equal_zero {
                    Ordering::Equal
                } else {
                    i.cmp(&j)
                };
                assert_eq!(compare_numeric(a, b), Some(want), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn instants_compare_across_offsets() {
        let a = instant(b"2024-03-10 12:00:00+02");
        let b = instant(b"2024-03-10 11:30:00+00");
        assert!(a < b, "{a:?} {b:?}");
        assert!(instant(b"2024-03-10") < instant(b"2024-03-10 00:00:00.5"));
        assert!(instant(b"1999-12-31 23:59:59.999999") < instant(b"2000-01-01"));
        assert!(
            instant(b"-infinity") < instant(b"1970-01-01")
                && instant(b"infinity") > instant(b"9999-12-31")
        );
        assert_eq!(
            instant(b"2024-01-01 00:00:00-05:30"),
            instant(b"2024-01-01 05:30:00+00")
        );
        assert_eq!(instant(b"0044-03-15 BC"), None);
    }

    #[test]
    fn client_text_that_is_no_instant_is_not_one() {
        // Multi-byte characters where the date ends and where the clock ends, hours past what
        // an i64 holds in microseconds, and an offset that overflows: none is an instant, and
        // none may panic (a HAVING on a timestamp compares client text this way).
        for text in [
            "2024-01-0é",
            "2024-01-01 12:3é:00",
            "2024-01-01 12:34:5é+02",
            "2024-01-01 999999999999999999:00:00",
            "2024-01-01 00:00:00+999999999999999999",
            "2024-01-01 00:00:00-",
        ] {
            assert_eq!(instant(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn binary_values_order_like_their_text() {
        let text = |comparison| ValueOrder {
            comparison,
            binary: false,
        };
        let bin = |comparison| ValueOrder {
            comparison,
            binary: true,
        };
        let ints: [i64; 4] = [i64::MIN, -3, 0, 70_000];
        for a in ints {
            for b in ints {
                let want = text(Comparison::Integer)
                    .compare(a.to_string().as_bytes(), b.to_string().as_bytes());
                assert_eq!(
                    bin(Comparison::Integer).compare(&a.to_be_bytes(), &b.to_be_bytes()),
                    want
                );
            }
        }
        let oid = |n: u32| n.to_be_bytes();
        assert_eq!(
            bin(Comparison::Unsigned).compare(&oid(3_000_000_000), &oid(5)),
            Some(Ordering::Greater)
        );
        let numerics = ["-10.5", "-0.001", "0", "2", "2.50", "10000.0001", "NaN"];
        for a in numerics {
            for b in numerics {
                let (ba, bb) = (binary::numeric_binary(a), binary::numeric_binary(b));
                let got = ba
                    .zip(bb)
                    .and_then(|(x, y)| bin(Comparison::Numeric).compare(&x, &y));
                assert_eq!(got, compare_numeric(a, b), "{a} vs {b}");
            }
        }
        assert_eq!(
            bin(Comparison::Float).compare(&(-1.5f64).to_be_bytes(), &f64::NAN.to_be_bytes()),
            Some(Ordering::Less)
        );
    }
}
