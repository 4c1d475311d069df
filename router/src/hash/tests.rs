//! Test vectors for the hash functions, checked against PostgreSQL itself.
//!
//! Every expected number below was produced by a real PostgreSQL 15.18 (x86_64, UTF8
//! database) — they are PostgreSQL-derived constants, not values computed by this code.
//! PostgreSQL prints the 64-bit hashes as signed `bigint`, so the tables keep them as `i64`
//! exactly as printed and the tests compare `hash as i64`.

use super::*;
use vectors::*;

/// The PostgreSQL-derived tables the tests check against.
#[path = "vectors.rs"]
mod vectors;

/// The strings of `TEXT_PREFIXES` are prefixes of this.
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

#[test]
fn seed_constant_matches_postgres_decimal() {
    // 8816678312871386365 is how the seed is written in SQL in the queries below.
    assert_eq!(HASH_PARTITION_SEED, 8_816_678_312_871_386_365);
}

#[test]
fn text_prefixes_exercise_every_tail_length() {
    for &(n, expected) in TEXT_PREFIXES {
        let s = &ALPHABET[..n];
        assert_eq!(hash_text(s) as i64, expected, "prefix of length {n}: {s:?}");
    }
}

#[test]
fn text_with_various_seeds() {
    for &(s, seed, expected) in TEXT_SEEDED {
        assert_eq!(
            hash_bytes_extended(s.as_bytes(), seed) as i64,
            expected,
            "hashtextextended({s:?}, {seed:#x})"
        );
    }
}

#[test]
fn long_text_keys() {
    for &(piece, n, expected) in TEXT_REPEATED {
        let s = piece.repeat(n);
        assert_eq!(hash_text(&s) as i64, expected, "repeat({piece:?}, {n})");
    }
}

/// Decodes a hex string from the test tables (test-only input, always valid).
fn hex_bytes(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        })
        .collect();
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

fn uuid_bytes(text: &str) -> [u8; 16] {
    let bytes = hex_bytes(text);
    let mut out = [0u8; 16];
    out.copy_from_slice(&bytes);
    out
}

#[test]
fn raw_bytes_including_non_utf8() {
    for &(hex, seed, expected) in BYTES_SEEDED {
        let bytes = hex_bytes(hex);
        assert_eq!(
            hash_bytes_extended(&bytes, seed) as i64,
            expected,
            "bytea \\x{hex} seed {seed:#x}"
        );
    }
}

#[test]
fn unaligned_input_hashes_like_aligned() {
    // PostgreSQL has separate aligned/unaligned code paths; ours has one. Check that the
    // position of the key in memory cannot matter.
    let buf: Vec<u8> = (0u8..=80).collect();
    for start in 0..4 {
        for len in 0..=40 {
            let key = &buf[start..start + len];
            let copy = key.to_vec();
            assert_eq!(
                hash_bytes_extended(key, HASH_PARTITION_SEED),
                hash_bytes_extended(&copy, HASH_PARTITION_SEED)
            );
        }
    }
}

#[test]
fn int8_values() {
    for &(v, seed, expected) in INT8 {
        assert_eq!(
            hash_int8_extended(v, seed) as i64,
            expected,
            "hashint8extended({v}, {seed:#x})"
        );
        if seed == HASH_PARTITION_SEED {
            assert_eq!(hash_int(v) as i64, expected, "hash_int({v})");
        }
    }
}

#[test]
fn int4_and_int2_agree_with_int8() {
    for &(v, h4, h2) in INT4_INT2 {
        assert_eq!(hash_int(i64::from(v)) as i64, h4, "hashint4extended({v})");
        assert_eq!(
            hash_uint32_extended(v as u32, HASH_PARTITION_SEED) as i64,
            h4,
            "hash_uint32_extended({v} as u32)"
        );
        if let Some(h2) = h2 {
            assert_eq!(hash_int(i64::from(v)) as i64, h2, "hashint2extended({v})");
        }
    }
}

#[test]
fn uint32_values() {
    for &(k, seed, expected) in UINT32 {
        assert_eq!(
            hash_uint32_extended(k, seed) as i64,
            expected,
            "hashoidextended({k}, {seed:#x})"
        );
    }
}

#[test]
fn uuid_values() {
    for &(text, seed, expected) in UUIDS {
        let bytes = uuid_bytes(text);
        assert_eq!(
            hash_bytes_extended(&bytes, seed) as i64,
            expected,
            "uuid_hash_extended({text}, {seed:#x})"
        );
        if seed == HASH_PARTITION_SEED {
            assert_eq!(hash_uuid(&bytes) as i64, expected, "hash_uuid({text})");
        }
    }
}

#[test]
fn partitions_of_int8_table() {
    for &(k, r) in PART_INT8_MOD4 {
        assert_eq!(partition_remainder([hash_int(k)], 4), r, "int8 key {k}");
    }
}

#[test]
fn partitions_of_int4_table() {
    for &(k, r) in PART_INT4_MOD7 {
        assert_eq!(
            partition_remainder([hash_int(i64::from(k))], 7),
            r,
            "int4 key {k}"
        );
    }
}

#[test]
fn partitions_of_text_table() {
    for &(k, r) in PART_TEXT_MOD3 {
        assert_eq!(partition_remainder([hash_text(k)], 3), r, "text key {k:?}");
    }
}

#[test]
fn partitions_of_uuid_table() {
    for &(k, r) in PART_UUID_MOD5 {
        assert_eq!(
            partition_remainder([hash_uuid(&uuid_bytes(k))], 5),
            r,
            "uuid key {k}"
        );
    }
}

/// Row hash inputs for a `(int4, text, uuid)` key, NULL columns left out as PostgreSQL does.
fn multi_hashes(a: Option<i32>, b: Option<&str>, c: Option<&str>) -> Vec<u64> {
    let mut hashes = Vec::new();
    if let Some(a) = a {
        hashes.push(hash_int(i64::from(a)));
    }
    if let Some(b) = b {
        hashes.push(hash_text(b));
    }
    if let Some(c) = c {
        hashes.push(hash_uuid(&uuid_bytes(c)));
    }
    hashes
}

#[test]
fn partitions_of_multi_column_table() {
    for &(a, b, c, r) in PART_MULTI_MOD8 {
        assert_eq!(
            partition_remainder(multi_hashes(a, b, c), 8),
            r,
            "({a:?}, {b:?}, {c:?})"
        );
    }
    for &(a, b, c, r) in MULTI_MOD65521 {
        assert_eq!(
            partition_remainder(multi_hashes(a, b, c), 65521),
            r,
            "({a:?}, {b:?}, {c:?}) mod 65521"
        );
    }
}

#[test]
fn combine_and_remainder_edge_cases() {
    // Combining into 0 with a zero hash is just the constant plus nothing else.
    assert_eq!(hash_combine64(0, 0), 0x49a0_f4dd_15e5_a8e3);
    // No key columns (all NULL) -> remainder 0, like PostgreSQL.
    assert_eq!(partition_remainder(std::iter::empty(), 8), 0);
    // A zero modulus does not panic.
    assert_eq!(partition_remainder([hash_int(1)], 0), 0);
    // Modulus 1 always gives remainder 0.
    assert_eq!(partition_remainder([hash_text("x"), hash_int(7)], 1), 0);
}
