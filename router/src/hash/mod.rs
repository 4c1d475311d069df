//! PostgreSQL-compatible hash functions for hash sharding.
//!
//! shardline's `hash` sharding puts a row on shard `r` exactly when a PostgreSQL table declared
//! `PARTITION BY HASH (key)` with `MODULUS n` would put it in the partition with `REMAINDER r`.
//! To get there we compute the very same numbers PostgreSQL 15 computes:
//!
//! * `hash_bytes_extended` — Bob Jenkins' lookup3 hash as adapted in PostgreSQL's
//!   `src/common/hashfn.c`, with a 64-bit seed folded into the initial state. Used for text and
//!   varchar (under a deterministic collation), bytea and uuid. Not for `char(n)`: PostgreSQL
//!   hashes bpchar with its trailing spaces stripped, so a caller must strip them first.
//! * `hash_uint32_extended` — the single-word variant of the same hash.
//! * `hashint8extended` — folds the high half of an `int8` into the low half so that int2, int4
//!   and int8 keys with the same value hash alike.
//! * `hash_combine64` — how the per-column hashes of a multi-column key are combined.
//!
//! All values are what PostgreSQL produces on a little-endian machine (x86_64, aarch64); SQL
//! functions such as `hashint8extended` print the same 64 bits as a signed `bigint`.
//! Everything here is pure arithmetic on wrapping 32/64-bit integers, with no I/O and no
//! allocation.

/// The seed PostgreSQL passes to every extended hash function when it routes a row to a hash
/// partition (`HASH_PARTITION_SEED` in `src/include/catalog/partition.h`). Sharding must use it
/// too, or our shard numbers would not match PostgreSQL's partition remainders.
pub const HASH_PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// lookup3's constant start value ("golden ratio"), before the length and PG's extra offset.
const INIT: u32 = 0x9e37_79b9;

/// PostgreSQL adds this to the initial state of every hash (`3923095` in hashfn.c).
const PG_OFFSET: u32 = 3_923_095;

/// Mixes three 32-bit words reversibly (lookup3 `mix`).
#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// Final avalanche of three 32-bit words (lookup3 `final`).
#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Initial `(a, b, c)` for a key of `len` bytes, with the seed folded in the way PostgreSQL
/// does it: a non-zero seed is treated as one extra 12-byte block (high half into `a`, low half
/// into `b`, nothing into `c`) mixed in before the data; a zero seed changes nothing.
#[inline(always)]
fn initial_state(len: u32, seed: u64) -> (u32, u32, u32) {
    let init = INIT.wrapping_add(len).wrapping_add(PG_OFFSET);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// Reads up to four bytes as a little-endian word, treating missing bytes as zero.
#[inline(always)]
fn le_word(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .take(4)
        .enumerate()
        .fold(0u32, |acc, (i, &byte)| acc | (u32::from(byte) << (8 * i)))
}

/// PostgreSQL's `hash_bytes_extended` (what `hash_any_extended` calls): the hash of a byte
/// string that `hashtextextended`, `hashvarlenaextended` and `uuid_hash_extended` return.
///
/// PostgreSQL has separate code paths for word-aligned and unaligned input; on a little-endian
/// machine both read the bytes as little-endian 32-bit words, which is what this does. The
/// result is `(b << 32) | c` of lookup3's final state.
///
/// PostgreSQL takes the length as a C `int` and folds it into the state as 32 bits; keys longer
/// than 4 GiB are not a thing in PostgreSQL (a varlena is at most 1 GiB), and here the length is
/// likewise truncated to 32 bits.
pub fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = initial_state(key.len() as u32, seed);

    let mut blocks = key.chunks_exact(12);
    for block in &mut blocks {
        a = a.wrapping_add(le_word(&block[0..4]));
        b = b.wrapping_add(le_word(&block[4..8]));
        c = c.wrapping_add(le_word(&block[8..12]));
        mix(&mut a, &mut b, &mut c);
    }

    // The last 0..=11 bytes. The lowest byte of `c` is reserved for the length in lookup3, so
    // tail bytes 8..11 go into bits 8..31 of `c`.
    let tail = blocks.remainder();
    let tail_at = |from: usize| tail.get(from..).unwrap_or(&[]);
    if !tail.is_empty() {
        a = a.wrapping_add(le_word(tail));
    }
    if tail.len() > 4 {
        b = b.wrapping_add(le_word(tail_at(4)));
    }
    if tail.len() > 8 {
        c = c.wrapping_add(le_word(tail_at(8)) << 8);
    }

    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// PostgreSQL's `hash_bytes_uint32_extended`: the hash of one 32-bit word. It is what
/// `hashint4extended` and `hashoidextended` return, and the last step of `hashint8extended`.
///
/// Note it is *not* `hash_bytes_extended` of the four bytes: the word is added to `a` without
/// any `mix` before the final avalanche.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = initial_state(4, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// PostgreSQL's `hashint8extended`. It folds the high 32 bits into the low 32 bits
/// (complemented for negative values) so that any value that fits in an int4 hashes exactly as
/// `hashint4extended` would: int2, int4 and int8 keys with equal values land on the same shard.
pub fn hash_int8_extended(v: i64, seed: u64) -> u64 {
    let lohalf = v as u32;
    let hihalf = (v >> 32) as u32;
    let folded = lohalf ^ if v >= 0 { hihalf } else { !hihalf };
    hash_uint32_extended(folded, seed)
}

/// PostgreSQL's `hash_combine64`: how the hashes of the columns of a multi-column partition key
/// are folded into one row hash (left to right, starting from 0).
pub fn hash_combine64(a: u64, b: u64) -> u64 {
    // 0x49a0f4dd15e5a8e3 is PostgreSQL's "64bit random data".
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// The partition remainder (= shard number) PostgreSQL's hash partition routing computes for a
/// row whose key columns hash to `key_hashes` (each computed with [`HASH_PARTITION_SEED`]):
/// `row_hash` starts at 0, each column hash is folded in with [`hash_combine64`], and the
/// result is `row_hash % modulus`.
///
/// PostgreSQL skips NULL key columns (they contribute nothing, not a hash of zero): leave them
/// out of `key_hashes`. A row whose key columns are all NULL thus has remainder 0.
///
/// `modulus` must be non-zero; a zero modulus returns 0 rather than panicking.
pub fn partition_remainder(key_hashes: impl IntoIterator<Item = u64>, modulus: u64) -> u64 {
    let row_hash = key_hashes.into_iter().fold(0u64, hash_combine64);
    row_hash.checked_rem(modulus).unwrap_or(0)
}

/// Hash of a `text` / `varchar` key for partitioning: `hashtextextended(s, HASH_PARTITION_SEED)`
/// under a deterministic collation (the default), i.e. the UTF-8 bytes through
/// [`hash_bytes_extended`].
pub fn hash_text(s: &str) -> u64 {
    hash_bytes_extended(s.as_bytes(), HASH_PARTITION_SEED)
}

/// Hash of a `uuid` key for partitioning: `uuid_hash_extended(u, HASH_PARTITION_SEED)`, i.e. the
/// 16 raw bytes (network order, as in the textual form) through [`hash_bytes_extended`].
pub fn hash_uuid(bytes: &[u8; 16]) -> u64 {
    hash_bytes_extended(bytes, HASH_PARTITION_SEED)
}

/// Hash of an `int2` / `int4` / `int8` key for partitioning:
/// `hashint8extended(v, HASH_PARTITION_SEED)`, which PostgreSQL makes agree across the integer
/// family, so one function serves all three.
pub fn hash_int(v: i64) -> u64 {
    hash_int8_extended(v, HASH_PARTITION_SEED)
}

#[cfg(test)]
mod tests;
