//! Shard key types and values: how a key arrives (SQL literal, text or binary parameter) and
//! how it is turned into the value the sharding functions hash or compare.

use std::cmp::Ordering;
use std::fmt;

use crate::hash;

/// The PostgreSQL type of a shard key column. It decides how literals and parameters are read
/// and which PostgreSQL hash function places the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Text,
    Uuid,
}

/// A shard key value after parsing, normalised so equal SQL values compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
}

/// Why a value could not be used as a shard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key_type} shard key {value:?}: {reason}")]
pub struct KeyError {
    pub key_type: KeyType,
    pub value: String,
    pub reason: &'static str,
}

impl KeyType {
    /// Parses the type names accepted in `shards.yaml` (PostgreSQL spellings and aliases).
    pub fn from_name(name: &str) -> Option<KeyType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "int2" | "smallint" => KeyType::Int2,
            "int4" | "int" | "integer" => KeyType::Int4,
            "int8" | "bigint" => KeyType::Int8,
            "text" | "varchar" | "character varying" => KeyType::Text,
            "uuid" => KeyType::Uuid,
            _ => return None,
        })
    }

    /// Reads a key from its text form (an SQL literal or a text-format Bind parameter).
    pub fn parse_text(self, text: &str) -> Result<KeyValue, KeyError> {
        let err = |reason| KeyError {
            key_type: self,
            value: text.to_owned(),
            reason,
        };
        match self {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => {
                let v: i64 = text.trim().parse().map_err(|_| err("not an integer"))?;
                self.int_key(v)
                    .ok_or_else(|| err("out of range for the column type"))
            }
            KeyType::Text => Ok(KeyValue::Text(text.to_owned())),
            KeyType::Uuid => parse_uuid(text)
                .map(KeyValue::Uuid)
                .ok_or_else(|| err("not a uuid")),
        }
    }

    /// Reads a key from a binary-format Bind parameter (network byte order).
    pub fn parse_binary(self, bytes: &[u8]) -> Result<KeyValue, KeyError> {
        let err = |reason| KeyError {
            key_type: self,
            value: format!("{bytes:02x?}"),
            reason,
        };
        match (self, bytes.len()) {
            // Drivers bind an integer at the width of its value, not of the column
            // (psycopg 3 sends a small int8 key as int2), so any width is decoded
            // and then checked against the column's range.
            (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, 2 | 4 | 8) => {
                let value = match *bytes {
                    [a, b] => i16::from_be_bytes([a, b]).into(),
                    [a, b, c, d] => i32::from_be_bytes([a, b, c, d]).into(),
                    [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
                    _ => return Err(err("wrong length for an integer")),
                };
                self.int_key(value)
                    .ok_or_else(|| err("out of range for the column type"))
            }
            (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, _) => {
                Err(err("wrong length for an integer"))
            }
            (KeyType::Text, _) => std::str::from_utf8(bytes)
                .map(|s| KeyValue::Text(s.to_owned()))
                .map_err(|_| err("not UTF-8")),
            (KeyType::Uuid, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(bytes);
                Ok(KeyValue::Uuid(b))
            }
            (KeyType::Uuid, _) => Err(err("a binary uuid is 16 bytes")),
        }
    }

    /// An integer key read straight from its text bytes when they are a plain integer that
    /// fits: the common case of a routed statement, without checking the text is UTF-8 first.
    /// `None` for the other key types, and for whatever [`KeyType::parse_text`] must judge
    /// (and word the error of): spaces, a bad digit, out of range.
    pub fn int_from_text(self, bytes: &[u8]) -> Option<KeyValue> {
        if !matches!(self, KeyType::Int2 | KeyType::Int4 | KeyType::Int8) {
            return None;
        }
        let (negative, digits) = match bytes {
            [b'-', rest @ ..] => (true, rest),
            [b'+', rest @ ..] => (false, rest),
            _ => (false, bytes),
        };
        if digits.is_empty() {
            return None;
        }
        // Summed as a negative number, so that i64::MIN fits.
        let mut below_zero: i64 = 0;
        for &digit in digits {
            if !digit.is_ascii_digit() {
                return None;
            }
            below_zero = below_zero
                .checked_mul(10)?
                .checked_sub(i64::from(digit - b'0'))?;
        }
        let value = if negative {
            below_zero
        } else {
            below_zero.checked_neg()?
        };
        self.int_key(value)
    }

    /// An integer key, if `v` fits the column's integer width.
    fn int_key(self, v: i64) -> Option<KeyValue> {
        let fits = match self {
            KeyType::Int2 => i16::try_from(v).is_ok(),
            KeyType::Int4 => i32::try_from(v).is_ok(),
            _ => true,
        };
        fits.then_some(KeyValue::Int(v))
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Int2 => "int2",
            KeyType::Int4 => "int4",
            KeyType::Int8 => "int8",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        })
    }
}

impl KeyValue {
    /// The value as PostgreSQL prints it (`key::text`), unquoted: the text SQL the proxy and
    /// the resharder build quotes as a literal. (`Display` quotes text keys, for messages.)
    pub fn sql_text(&self) -> String {
        match self {
            KeyValue::Text(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// PostgreSQL's extended hash of the value with the hash-partitioning seed.
    pub fn partition_hash(&self) -> u64 {
        match self {
            KeyValue::Int(v) => hash::hash_int(*v),
            KeyValue::Text(s) => hash::hash_text(s),
            KeyValue::Uuid(b) => hash::hash_uuid(b),
        }
    }

    /// Orders two keys of the same type the way range sharding needs (integers numerically,
    /// text bytewise as under the C collation, uuids bytewise as PostgreSQL does).
    pub fn compare(&self, other: &KeyValue) -> Option<Ordering> {
        match (self, other) {
            (KeyValue::Int(a), KeyValue::Int(b)) => Some(a.cmp(b)),
            (KeyValue::Text(a), KeyValue::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (KeyValue::Uuid(a), KeyValue::Uuid(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            KeyValue::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses the uuid spellings PostgreSQL accepts: optional braces, hyphens anywhere between
/// byte pairs, either case.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(trimmed);
    let digits: Vec<u8> = inner.bytes().filter(|b| *b != b'-').collect();
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_from_bytes_agree_with_parse_text() {
        let texts = [
            "0",
            "-0",
            "+0",
            "42",
            "-42",
            "+42",
            "007",
            "32767",
            "32768",
            "-32768",
            "-32769",
            "2147483647",
            "2147483648",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "",
            "-",
            "+",
            " 1",
            "1 ",
            "1_000",
            "0x10",
            "1e3",
            "--1",
            "+-1",
            "12a",
            "\u{661}",
        ];
        for key_type in [KeyType::Int2, KeyType::Int4, KeyType::Int8, KeyType::Text] {
            for text in texts {
                let fast = key_type.int_from_text(text.as_bytes());
                let parsed = key_type.parse_text(text).ok();
                if key_type == KeyType::Text {
                    assert_eq!(fast, None);
                    continue;
                }
                // What the fast read takes, it reads as parse_text does; what it leaves,
                // parse_text refuses or reads past spaces.
                match fast {
                    Some(value) => assert_eq!(Some(value), parsed, "{key_type} {text:?}"),
                    None => assert!(
                        parsed.is_none() || text.trim() != text,
                        "{key_type} {text:?}: parse_text reads {parsed:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn integers_parse_in_text_and_binary() {
        let cases: &[(KeyType, &str, Option<i64>)] = &[
            (KeyType::Int8, "42", Some(42)),
            (KeyType::Int8, " -7 ", Some(-7)),
            (KeyType::Int4, "2147483648", None),
            (KeyType::Int2, "32767", Some(32767)),
            (KeyType::Int2, "32768", None),
            (KeyType::Int8, "4x", None),
        ];
        for (ty, text, want) in cases {
            let got = ty.parse_text(text).ok();
            assert_eq!(got, want.map(KeyValue::Int), "{ty} {text:?}");
        }
        assert_eq!(
            KeyType::Int8.parse_binary(&(-5i64).to_be_bytes()),
            Ok(KeyValue::Int(-5))
        );
        assert_eq!(
            KeyType::Int8.parse_binary(&7i32.to_be_bytes()),
            Ok(KeyValue::Int(7))
        );
        assert_eq!(
            KeyType::Int4.parse_binary(&9i32.to_be_bytes()),
            Ok(KeyValue::Int(9))
        );
        assert_eq!(
            KeyType::Int8.parse_binary(&(-3i16).to_be_bytes()),
            Ok(KeyValue::Int(-3))
        );
        assert!(KeyType::Int2
            .parse_binary(&70_000i32.to_be_bytes())
            .is_err());
        assert!(KeyType::Int4.parse_binary(&[1, 2, 3]).is_err());
        assert!(KeyType::Int4.parse_binary(&i64::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn uuids_accept_postgres_spellings() {
        let canonical = KeyType::Uuid
            .parse_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            .ok();
        for spelling in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(
                KeyType::Uuid.parse_text(spelling).ok(),
                canonical,
                "{spelling}"
            );
        }
        assert!(KeyType::Uuid.parse_text("not-a-uuid").is_err());
        let shown = canonical.map(|v| v.to_string());
        assert_eq!(
            shown.as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
    }
}
