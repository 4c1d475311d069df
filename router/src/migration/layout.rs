//! What a migration moves: the tables whose sharding differs between the source and the
//! target `shards.yaml`, and for each key, whether it moves and from which shard to which.
//!
//! Shards are matched between the two files by name, so a target layout may add shards,
//! drop shards that end up owning nothing, or keep them. Placement is the router's own
//! (`TableRule::shard_for`), the function every proxy routes with.

use std::collections::BTreeMap;

use crate::config::{Sharding, TableRule};
use crate::{Config, KeyType, KeyValue};

/// Why two layouts cannot be migrated between.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("table {table} is sharded in the source layout but not in the target; a migration keeps every sharded table sharded on the same key")]
    TableDropped { table: String },
    #[error("table {table} is keyed on {source_key} in the source layout and on {target_key} in the target; a migration moves rows, it cannot change a table's key")]
    KeyChanged {
        table: String,
        source_key: String,
        target_key: String,
    },
    #[error("the target layout changes nothing: every sharded table places every key where the source does")]
    NothingMoves,
    #[error("the target layout names shard {shard}, which its `shards:` list lacks")]
    UnknownShard { shard: String },
}

/// One table whose rows move.
#[derive(Debug, Clone)]
pub struct TableMove {
    pub table: String,
    pub key_column: String,
    pub key_type: KeyType,
    source: TableRule,
    target: TableRule,
    /// Names of the source shards holding rows of the table, in source shard order.
    pub source_shards: Vec<String>,
    /// Names of the target shards that will hold rows of the table.
    pub target_shards: Vec<String>,
    source_names: Vec<String>,
    target_names: Vec<String>,
}

/// Where one key lives before and after the migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement<'a> {
    pub from: &'a str,
    pub to: &'a str,
}

impl Placement<'_> {
    /// The key changes shard.
    pub fn moves(&self) -> bool {
        self.from != self.to
    }
}

impl TableMove {
    /// The key's owner in the source and in the target layout.
    pub fn place(&self, key: &KeyValue) -> Result<Placement<'_>, String> {
        let from = self.source.shard_for(key).map_err(|e| e.to_string())?;
        let to = self.target.shard_for(key).map_err(|e| e.to_string())?;
        Ok(Placement {
            from: self.source_names.get(from).map_or("?", String::as_str),
            to: self.target_names.get(to).map_or("?", String::as_str),
        })
    }

    /// The table's rule in the target layout.
    pub fn target_rule(&self) -> &TableRule {
        &self.target
    }

    /// The table's rule in the source layout.
    pub fn source_rule(&self) -> &TableRule {
        &self.source
    }

    /// The name of source shard `id`.
    pub fn source_name(&self, id: usize) -> Option<&str> {
        self.source_names.get(id).map(String::as_str)
    }

    /// The name of target shard `id`.
    pub fn target_name(&self, id: usize) -> Option<&str> {
        self.target_names.get(id).map(String::as_str)
    }

    /// Reads a key from its text form (as `key::text` prints it).
    pub fn parse_key(&self, text: &str) -> Result<KeyValue, String> {
        self.key_type.parse_text(text).map_err(|e| e.to_string())
    }
}

/// The migration from one layout to another.
#[derive(Debug, Clone)]
pub struct Layout {
    pub source: Config,
    pub target: Config,
    /// Tables whose placement changes, by name.
    pub tables: Vec<TableMove>,
}

impl Layout {
    /// Compares two layouts; an error when they cannot be migrated between or nothing moves.
    pub fn between(source: Config, target: Config) -> Result<Layout, LayoutError> {
        let source_names: Vec<String> = source.shards.iter().map(|s| s.name.clone()).collect();
        let target_names: Vec<String> = target.shards.iter().map(|s| s.name.clone()).collect();
        let sorted: BTreeMap<&String, &TableRule> = source.tables.iter().collect();
        let mut tables = Vec::new();
        for (name, rule) in sorted {
            let (Some(key_column), Some(key_type)) = (rule.key_column(), rule.key_type()) else {
                continue;
            };
            let Some(target_rule) = target.table(name) else {
                return Err(LayoutError::TableDropped {
                    table: name.clone(),
                });
            };
            if target_rule.key_column() != Some(key_column)
                || target_rule.key_type() != Some(key_type)
            {
                return Err(LayoutError::KeyChanged {
                    table: name.clone(),
                    source_key: format!("{key_column} ({key_type})"),
                    target_key: target_rule
                        .key_column()
                        .map_or_else(|| "nothing".to_owned(), |c| c.to_owned()),
                });
            }
            if same_placement(rule, target_rule, &source_names, &target_names) {
                continue;
            }
            let names = |rule: &TableRule, all: &[String]| -> Vec<String> {
                rule.shards(all.len())
                    .into_iter()
                    .filter_map(|id| all.get(id).cloned())
                    .collect()
            };
            tables.push(TableMove {
                table: name.clone(),
                key_column: key_column.to_owned(),
                key_type,
                source_shards: names(rule, &source_names),
                target_shards: names(target_rule, &target_names),
                source: rule.clone(),
                target: target_rule.clone(),
                source_names: source_names.clone(),
                target_names: target_names.clone(),
            });
        }
        if tables.is_empty() {
            return Err(LayoutError::NothingMoves);
        }
        Ok(Layout {
            source,
            target,
            tables,
        })
    }

    /// Every shard that receives rows of some moving table, once each, by name.
    pub fn receiving_shards(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .tables
            .iter()
            .flat_map(|t| t.target_shards.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The table move for `table`, if it moves.
    pub fn table(&self, table: &str) -> Option<&TableMove> {
        self.tables.iter().find(|t| t.table == table)
    }
}

/// Whether two rules place every key on the same-named shard.
fn same_placement(a: &TableRule, b: &TableRule, a_names: &[String], b_names: &[String]) -> bool {
    let names = |ids: &[usize], all: &[String]| -> Vec<String> {
        ids.iter().filter_map(|id| all.get(*id).cloned()).collect()
    };
    let a_named = a.directory.named(|id| a_names.get(id).map(String::as_str));
    if a_named != b.directory.named(|id| b_names.get(id).map(String::as_str)) {
        return false;
    }
    match (&a.sharding, &b.sharding) {
        (Sharding::Hash { shards: x, .. }, Sharding::Hash { shards: y, .. }) => {
            names(x, a_names) == names(y, b_names)
        }
        (Sharding::Range { ranges: x, .. }, Sharding::Range { ranges: y, .. }) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(r, s)| {
                    r.from == s.from && r.to == s.to && a_names.get(r.shard) == b_names.get(s.shard)
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(shards: usize, users: &str) -> Config {
        let mut yaml = String::from(
            "listen: 127.0.0.1:6432\nusers:\n  - {name: app, password: app}\nshards:\n",
        );
        for i in 0..shards {
            yaml.push_str(&format!(
                "  - {{name: shard{i}, host: 127.0.0.1, port: {}}}\n",
                5500 + i
            ));
        }
        yaml.push_str("tables:\n");
        yaml.push_str(users);
        match Config::from_yaml(&yaml) {
            Ok(config) => config,
            Err(e) => panic!("test config: {e}\n{yaml}"),
        }
    }

    fn hash(shards: usize) -> Config {
        let list: Vec<String> = (0..shards).map(|i| format!("shard{i}")).collect();
        config(
            shards,
            &format!(
                "  - {{name: users, sharding: hash, column: id, type: int8, shards: [{}]}}\n",
                list.join(", ")
            ),
        )
    }

    #[test]
    fn hash_two_to_four_moves_about_half_of_the_keys_to_the_new_shards() {
        let layout = match Layout::between(hash(2), hash(4)) {
            Ok(layout) => layout,
            Err(e) => panic!("{e}"),
        };
        let users = layout.table("users");
        assert!(users.is_some());
        let Some(users) = users else { return };
        let mut moved = 0;
        for id in 0..10_000i64 {
            let placement = users.place(&KeyValue::Int(id));
            assert!(placement.is_ok());
            let Ok(placement) = placement else { return };
            if placement.moves() {
                moved += 1;
                assert!(
                    placement.to == "shard2" || placement.to == "shard3",
                    "key {id} moves to {}, an old shard",
                    placement.to
                );
            }
        }
        assert!((4_000..6_000).contains(&moved), "{moved} of 10000 moved");
    }

    /// Keys of 0..10,000 that change shard between `from` and `to`, and where they go.
    fn moved(from: Config, to: Config) -> (usize, Vec<String>) {
        let layout = Layout::between(from, to).unwrap_or_else(|e| panic!("{e}"));
        let users = layout
            .table("users")
            .unwrap_or_else(|| panic!("users does not move"));
        let mut count = 0;
        let mut targets = Vec::new();
        for id in 0..10_000i64 {
            let placement = users
                .place(&KeyValue::Int(id))
                .unwrap_or_else(|e| panic!("{e}"));
            if placement.moves() {
                count += 1;
                if !targets.iter().any(|t| t == placement.to) {
                    targets.push(placement.to.to_owned());
                }
            }
        }
        targets.sort();
        (count, targets)
    }

    fn buckets(shards: usize, map: &str) -> Config {
        config(
            shards,
            &format!(
                "  - {{name: users, sharding: hash, column: id, type: int8, buckets: 60, bucket_map: [{map}]}}\n"
            ),
        )
    }

    #[test]
    fn buckets_move_whole_and_plain_hash_converts_to_buckets() {
        let three = "{from: 0, to: 20, shard: shard0}, {from: 20, to: 40, shard: shard1}, {from: 40, to: 60, shard: shard2}";
        let five = "{from: 0, to: 12, shard: shard0}, {from: 12, to: 20, shard: shard3}, {from: 20, to: 32, shard: shard1}, {from: 32, to: 36, shard: shard3}, {from: 36, to: 40, shard: shard4}, {from: 40, to: 52, shard: shard2}, {from: 52, to: 60, shard: shard4}";
        // 24 of 60 buckets change hands: about 40% of the keys, all to the new shards.
        let (count, targets) = moved(buckets(5, three), buckets(5, five));
        assert!((3_500..4_500).contains(&count), "{count} of 10000 moved");
        assert_eq!(targets, ["shard3", "shard4"]);
        // Plain hash 3 -> 5 moves far more.
        let (plain, _) = moved(
            config(5, "  - {name: users, sharding: hash, column: id, type: int8, shards: [shard0, shard1, shard2]}\n"),
            hash(5),
        );
        assert!(plain > 7_000, "{plain} of 10000 moved");
        // Plain hash over 3 shards to 60 buckets over the same 3: a layout change like any other.
        let (converted, targets) = moved(
            config(5, "  - {name: users, sharding: hash, column: id, type: int8, shards: [shard0, shard1, shard2]}\n"),
            buckets(5, three),
        );
        assert!(converted > 0 && converted < 10_000);
        assert_eq!(targets, ["shard0", "shard1", "shard2"]);
    }

    fn directory(entries: &str) -> Config {
        config(
            3,
            &format!(
                "  - {{name: users, sharding: directory, fallback: hash, column: id, type: int8, shards: [shard0, shard1], directory: [{entries}]}}\n"
            ),
        )
    }

    #[test]
    fn moving_one_directory_key_moves_only_that_key() {
        // A plain hash table gains a directory entry: only key 42 travels, to its own shard.
        let plain = config(
            3,
            "  - {name: users, sharding: hash, column: id, type: int8, shards: [shard0, shard1]}\n",
        );
        let hot = directory("{key: 42, shard: shard2}");
        let (count, targets) = moved(plain, hot.clone());
        assert_eq!((count, targets), (1, vec!["shard2".to_owned()]));
        // Another key joins it; 42 stays where it is.
        let (count, _) = moved(
            hot.clone(),
            directory("{key: 42, shard: shard2}, {key: 7, shard: shard2}"),
        );
        assert_eq!(count, 1);
        // Fence and cleanup agree with the router: shard2 owns exactly the listed keys.
        let layout = Layout::between(directory("{key: 7, shard: shard2}"), hot)
            .unwrap_or_else(|e| panic!("{e}"));
        let users = layout
            .table("users")
            .unwrap_or_else(|| panic!("users moves"));
        let owned = super::super::fence::owned_condition(users, "shard2", "k");
        assert_eq!(
            owned,
            "(k IN ($s$42$s$::int8) OR (k NOT IN ($s$42$s$::int8) AND (false)))"
        );
        let before = super::super::fence::owned_before_condition(users, "shard0", "k");
        assert!(
            before.starts_with("(k NOT IN ($s$7$s$::int8) AND ("),
            "{before}"
        );
    }

    #[test]
    fn ownership_sql_compares_text_keys_as_their_own_text() {
        let docs = |rule: &str| {
            config(
                3,
                &format!("  - {{name: users, column: name, type: text, {rule}}}\n"),
            )
        };
        let layout = Layout::between(
            docs("sharding: range, ranges: [{to: m, shard: shard0}, {from: m, shard: shard1}]"),
            docs("sharding: directory, fallback: range, ranges: [{to: m, shard: shard0}, {from: m, shard: shard1}], directory: [{key: acme, shard: shard2}]"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let users = layout
            .table("users")
            .unwrap_or_else(|| panic!("users moves"));
        let owned = super::super::fence::owned_condition(users, "shard0", "k");
        assert_eq!(
            owned,
            "(k NOT IN ($s$acme$s$::text) AND ((k COLLATE \"C\" < $s$m$s$::text)))"
        );
    }

    #[test]
    fn same_layout_moves_nothing_and_key_changes_are_refused() {
        assert_eq!(
            Layout::between(hash(2), hash(2)).err(),
            Some(LayoutError::NothingMoves)
        );
        let rekeyed = config(
            2,
            "  - {name: users, sharding: hash, column: name, type: text}\n",
        );
        assert!(matches!(
            Layout::between(hash(2), rekeyed).err(),
            Some(LayoutError::KeyChanged { .. })
        ));
    }

    #[test]
    fn a_range_split_moves_only_the_split_off_part() {
        let before = config(
            2,
            "  - {name: users, sharding: range, column: id, type: int8, ranges: [{to: 1000, shard: shard0}, {from: 1000, shard: shard1}]}\n",
        );
        let after = config(
            3,
            "  - {name: users, sharding: range, column: id, type: int8, ranges: [{to: 1000, shard: shard0}, {from: 1000, to: 5000, shard: shard1}, {from: 5000, shard: shard2}]}\n",
        );
        let layout = Layout::between(before, after);
        assert!(layout.is_ok(), "{:?}", layout.err());
        let Ok(layout) = layout else { return };
        let Some(users) = layout.table("users") else {
            panic!("users moves")
        };
        for (id, moves) in [
            (5, false),
            (1000, false),
            (4999, false),
            (5000, true),
            (90_000, true),
        ] {
            let placement = users.place(&KeyValue::Int(id));
            assert_eq!(placement.map(|p| p.moves()), Ok(moves), "key {id}");
        }
    }
}
