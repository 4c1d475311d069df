//! The fence: a trigger the resharder installs on an old owner at cutover, refusing any write
//! to a key the shard no longer owns. A proxy that missed the routing switch then gets an
//! error from the shard itself instead of writing where nobody will read.
//!
//! Ownership is decided in the database with PostgreSQL's own functions: for hash tables the
//! key's bucket (its hash-partition remainder) is computed once from the type's extended hash
//! function with the partition seed, exactly as `PARTITION BY HASH` does (the hash oracle test
//! checks it against real partitions), and compared with the buckets the shard owns; plain
//! comparisons for ranges. Cleanup, which must delete moved
//! rows from the old owner, passes by setting `shardline.cleanup` for its transaction.

use crate::config::{Sharding, TableRule};
use crate::hash::HASH_PARTITION_SEED;
use crate::key::KeyType;

use super::images::{ident, literal};
use super::layout::TableMove;

/// The trigger's name on every fenced table.
pub const TRIGGER: &str = "shardline_fence";

/// The setting that lets cleanup delete moved rows through the fence.
pub const CLEANUP_SETTING: &str = "shardline.cleanup";

/// SQL creating (not yet arming) the fence of `table` on the shard named `shard`, for
/// migration `migration`: run before the cutover's pause, so the pause only arms it.
pub fn prepare_sql(table: &TableMove, shard: &str, migration: i64) -> String {
    let key = ident(&table.key_column);
    let owns = |row: &str| owned_condition(table, shard, &format!("{row}.{key}"));
    let refuse = |row: &str| {
        format!(
            "RAISE EXCEPTION USING ERRCODE = '55000', \
             MESSAGE = format({message}, {row}.{key}), \
             HINT = {hint};",
            message = literal(&format!(
                "key %s of table {} moved off shard {shard} at the cutover of migration {migration}; this write came through a proxy still routing by the old layout",
                table.table
            )),
            hint = literal("run RESHARD on that proxy's admin console (or restart it) and retry"),
        )
    };
    format!(
        "CREATE SCHEMA IF NOT EXISTS shardline;\n\
         CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {body};",
        function = function_name(&table.table),
        body = literal(&format!(
            "BEGIN\n\
               IF coalesce(current_setting({setting}, true), '') <> 'on' THEN\n\
                 IF TG_OP <> 'DELETE' AND NOT ({new_owned}) THEN {refuse_new} END IF;\n\
                 IF TG_OP <> 'INSERT' AND NOT ({old_owned}) THEN {refuse_old} END IF;\n\
               END IF;\n\
               IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;\n\
               RETURN NEW;\n\
             END",
            setting = literal(CLEANUP_SETTING),
            new_owned = owns("NEW"),
            old_owned = owns("OLD"),
            refuse_new = refuse("NEW"),
            refuse_old = refuse("OLD"),
        )),
    )
}

/// SQL arming the prepared fence of `table`: from its commit on, writes to keys the shard no
/// longer owns fail.
pub fn arm_sql(table: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {TRIGGER} ON {t}; CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE ON {t} \
         FOR EACH ROW EXECUTE FUNCTION {function}();",
        t = ident(table),
        function = function_name(table),
    )
}

/// SQL removing the fence of `table` (when a cutover backs out).
pub fn remove_sql(table: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {TRIGGER} ON {t}; DROP FUNCTION IF EXISTS {function}();",
        t = ident(table),
        function = function_name(table),
    )
}

fn function_name(table: &str) -> String {
    format!("shardline.{}", ident(&format!("fence_{table}")))
}

/// SQL computing the bucket PostgreSQL's hash partitioning gives the key `expr` of type
/// `key_type` under `MODULUS modulus`: the type's extended hash with `HASH_PARTITION_SEED`,
/// folded into a row hash as `hash_combine64(0, h)` (`h + 0x49a0f4dd15e5a8e3`, wrapping) and
/// taken modulo `modulus` as an unsigned number — in `numeric`, which has no overflow.
pub fn remainder_sql(key_type: KeyType, expr: &str, modulus: usize) -> String {
    let hash = match key_type {
        KeyType::Int2 => "hashint2extended",
        KeyType::Int4 => "hashint4extended",
        KeyType::Int8 => "hashint8extended",
        KeyType::Text => "hashtextextended",
        KeyType::Uuid => "uuid_hash_extended",
    };
    // The seed is below 2^63, so it is a plain bigint literal.
    let seed = HASH_PARTITION_SEED;
    let two64 = "18446744073709551616";
    format!(
        "((({hash}({expr}, {seed})::numeric + {COMBINE_OFFSET}) % {two64} + {two64}) % {two64} % {modulus})"
    )
}

/// What `hash_combine64(0, h)` adds to a single column's hash.
const COMBINE_OFFSET: u64 = 0x49a0_f4dd_15e5_a8e3;

/// SQL true when the key `expr` belongs to shard `shard` in the target layout (cleanup
/// deletes the rows for which it is false).
pub fn owned_condition(table: &TableMove, shard: &str, expr: &str) -> String {
    owned_in(
        table.target_rule(),
        &|id| table.target_name(id),
        shard,
        expr,
    )
}

/// SQL true for a row of `shard` (a source shard) that leaves it: its key `expr` is owned
/// elsewhere in the target layout. A row whose key is NULL belongs to no shard in either
/// layout and never leaves, also where `shard` keeps no keys at all (its `owned` is `false`).
pub fn leaving_condition(table: &TableMove, shard: &str, expr: &str) -> String {
    format!(
        "{expr} IS NOT NULL AND NOT ({})",
        owned_condition(table, shard, expr)
    )
}

/// SQL true for a row of `shard` (a target shard) that arrived there: its key `expr` was
/// owned elsewhere in the source layout (never one whose key is NULL).
pub fn arrived_condition(table: &TableMove, shard: &str, expr: &str) -> String {
    format!(
        "{expr} IS NOT NULL AND NOT ({})",
        owned_before_condition(table, shard, expr)
    )
}

/// SQL true when the key `expr` belonged to shard `shard` in the source layout.
pub fn owned_before_condition(table: &TableMove, shard: &str, expr: &str) -> String {
    owned_in(
        table.source_rule(),
        &|id| table.source_name(id),
        shard,
        expr,
    )
}

/// SQL true when `rule` places the key `expr` on the shard named `shard`: a key the directory
/// lists is owned where its entry says, any other key where the table's strategy puts it.
fn owned_in<'a>(
    rule: &TableRule,
    name_of: &dyn Fn(usize) -> Option<&'a str>,
    shard: &str,
    expr: &str,
) -> String {
    let by_strategy = owned_by_strategy(rule, name_of, shard, expr);
    let Some(key_type) = rule.key_type().filter(|_| !rule.directory.is_empty()) else {
        return by_strategy;
    };
    let listed = rule.directory.sorted();
    let typed = |key: &crate::KeyValue| format!("{}::{key_type}", literal(&key.sql_text()));
    let here: Vec<String> = listed
        .iter()
        .filter(|(_, id)| name_of(*id) == Some(shard))
        .map(|(key, _)| typed(key))
        .collect();
    let all: Vec<String> = listed.iter().map(|(key, _)| typed(key)).collect();
    let elsewhere = format!("({expr} NOT IN ({}) AND ({by_strategy}))", all.join(", "));
    if here.is_empty() {
        elsewhere
    } else {
        format!("({expr} IN ({}) OR {elsewhere})", here.join(", "))
    }
}

/// SQL true when the table's strategy (its directory aside) places `expr` on `shard`.
fn owned_by_strategy<'a>(
    rule: &TableRule,
    name_of: &dyn Fn(usize) -> Option<&'a str>,
    shard: &str,
    expr: &str,
) -> String {
    let mut owned = Vec::new();
    match &rule.sharding {
        Sharding::Hash {
            key_type, shards, ..
        } => {
            let held: Vec<String> = shards
                .iter()
                .enumerate()
                .filter(|(_, id)| name_of(**id) == Some(shard))
                .map(|(remainder, _)| remainder.to_string())
                .collect();
            if held.len() == shards.len() {
                owned.push("true".to_owned());
            } else if !held.is_empty() {
                owned.push(format!(
                    "{} IN ({})",
                    remainder_sql(*key_type, expr, shards.len()),
                    held.join(", ")
                ));
            }
        }
        Sharding::Range {
            key_type, ranges, ..
        } => {
            // The router orders text keys bytewise; so must the database, whatever the
            // column's collation.
            let collate = if *key_type == KeyType::Text {
                " COLLATE \"C\""
            } else {
                ""
            };
            for range in ranges.iter().filter(|r| name_of(r.shard) == Some(shard)) {
                let mut bounds = Vec::new();
                if let Some(from) = &range.from {
                    bounds.push(format!(
                        "{expr}{collate} >= {}::{key_type}",
                        literal(&from.sql_text())
                    ));
                }
                if let Some(to) = &range.to {
                    bounds.push(format!(
                        "{expr}{collate} < {}::{key_type}",
                        literal(&to.sql_text())
                    ));
                }
                owned.push(if bounds.is_empty() {
                    "true".to_owned()
                } else {
                    format!("({})", bounds.join(" AND "))
                });
            }
        }
        Sharding::Reference => owned.push("true".to_owned()),
    }
    if owned.is_empty() {
        "false".to_owned()
    } else {
        owned.join(" OR ")
    }
}
