//! The fence: a trigger the resharder installs on an old owner at cutover, refusing any write
//! to a key the shard no longer owns. A proxy that missed the routing switch then gets an
//! error from the shard itself instead of writing where nobody will read.
//!
//! Ownership is decided in the database with PostgreSQL's own functions:
//! `satisfies_hash_partition` (the check behind hash partitions, which the router's hashing
//! reproduces) for hash tables, plain comparisons for ranges. Cleanup, which must delete moved
//! rows from the old owner, passes by setting `shardline.cleanup` for its transaction.

use crate::config::{Sharding, TableRule};
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
         {parent}\n\
         CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {body};",
        parent = hash_parent_sql(table.key_type),
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

/// An empty hash-partitioned table whose partition key has the key's type (in schema
/// `shardline`, which must exist): the parent `satisfies_hash_partition` needs to hash a value as a hash partition of that type would.
pub fn hash_parent_sql(key_type: KeyType) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS shardline.hash_{key_type} (k {key_type}) PARTITION BY HASH (k);"
    )
}

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

/// SQL true when the key `expr` belonged to shard `shard` in the source layout.
pub fn owned_before_condition(table: &TableMove, shard: &str, expr: &str) -> String {
    owned_in(
        table.source_rule(),
        &|id| table.source_name(id),
        shard,
        expr,
    )
}

/// SQL true when `rule` places the key `expr` on the shard named `shard`.
fn owned_in<'a>(
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
            for (remainder, id) in shards.iter().enumerate() {
                if name_of(*id) == Some(shard) {
                    owned.push(format!(
                        "satisfies_hash_partition('shardline.hash_{key_type}'::regclass, {}, {remainder}, {expr})",
                        shards.len()
                    ));
                }
            }
        }
        Sharding::Range {
            key_type, ranges, ..
        } => {
            for range in ranges.iter().filter(|r| name_of(r.shard) == Some(shard)) {
                let mut bounds = Vec::new();
                if let Some(from) = &range.from {
                    bounds.push(format!(
                        "{expr} >= {}::{key_type}",
                        literal(&from.to_string())
                    ));
                }
                if let Some(to) = &range.to {
                    bounds.push(format!("{expr} < {}::{key_type}", literal(&to.to_string())));
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
