//! Directory sharding in `shards.yaml`: `sharding: directory` places the keys listed under
//! `directory:` on the shard each entry names (a hot tenant on a shard of its own) and every
//! other key by the table's `fallback:` strategy (`hash`, bucketed hash or `range`, with that
//! strategy's own fields).
//!
//! The map is part of the layout, so it changes the way every layout changes: a copy of
//! `shards.yaml` with the new entry is the target of a `shardline-reshard` migration, whose
//! record in the catalog (on the default shard) every proxy reads and confirms before the
//! cutover switches the key, and whose fence refuses writes from a proxy that missed it. A key
//! therefore never has two owners that two proxies disagree about while it has rows.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::raw::{RawTable, Scalar};
use super::validate::Problems;
use super::ShardId;
use crate::key::{KeyType, KeyValue};

/// Keys placed explicitly, ahead of the table's own strategy. Cheap to clone: configs are
/// cloned on every reload and migration overlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory(Arc<HashMap<KeyValue, ShardId>>);

/// One entry of `directory:`: `key` lives on `shard`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectoryEntry {
    pub key: Spanned<Scalar>,
    pub shard: Spanned<String>,
}

impl Directory {
    /// The shard listed for `key`, if it is listed.
    pub fn get(&self, key: &KeyValue) -> Option<ShardId> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(key).copied()
    }

    /// True when no key is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The listed keys and their shards, in key order (for displays and SQL).
    pub fn sorted(&self) -> Vec<(&KeyValue, ShardId)> {
        let mut entries: Vec<(&KeyValue, ShardId)> = self.0.iter().map(|(k, s)| (k, *s)).collect();
        entries.sort_by(|a, b| {
            a.0.compare(b.0)
                .unwrap_or_else(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        entries
    }

    /// The shards some listed key lives on.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.0.values().copied()
    }

    /// The same directory with every shard id passed through `renumber`.
    pub fn renumbered(&self, renumber: impl Fn(ShardId) -> ShardId) -> Directory {
        Directory(Arc::new(
            self.0
                .iter()
                .map(|(k, s)| (k.clone(), renumber(*s)))
                .collect(),
        ))
    }

    /// The entries with each shard id turned into a name by `name_of`, for comparing
    /// directories of two configs whose shards are numbered differently.
    pub fn named<'a>(
        &'a self,
        name_of: impl Fn(ShardId) -> Option<&'a str>,
    ) -> HashMap<&'a KeyValue, Option<&'a str>> {
        self.0.iter().map(|(k, s)| (k, name_of(*s))).collect()
    }
}

/// The strategy that places a table's keys when its `sharding:` is `directory`: its `fallback:`
/// (default `hash`). For any other sharding, the sharding itself, with `fallback:` refused.
pub(super) fn strategy<'a>(t: &'a RawTable, problems: &mut Problems) -> Option<&'a str> {
    let name = &t.name.value;
    if t.sharding.value != "directory" {
        if let Some(fallback) = &t.fallback {
            problems.at(
                fallback,
                format!("table {name:?}: `fallback` is for `sharding: directory`"),
            );
        }
        return Some(&t.sharding.value);
    }
    match t.fallback.as_ref() {
        None => Some("hash"),
        Some(f) if matches!(f.value.as_str(), "hash" | "range") => Some(&f.value),
        Some(f) => {
            problems.at(
                f,
                format!(
                    "table {name:?}: fallback {:?} must be hash or range (the strategy for keys the directory does not list)",
                    f.value
                ),
            );
            None
        }
    }
}

/// The `directory:` entries of `t`, keys read as `key_type`; entries on a table that is not
/// `sharding: directory` are refused.
pub(super) fn entries(
    t: &RawTable,
    key_type: Option<KeyType>,
    shard_ids: &HashMap<String, usize>,
    problems: &mut Problems,
) -> Directory {
    let name = &t.name.value;
    let Some(listed) = t.directory.as_deref() else {
        return Directory::default();
    };
    let Some(key_type) = key_type.filter(|_| t.sharding.value == "directory") else {
        if let Some(first) = listed.first() {
            problems.at(
                &first.key,
                format!("table {name:?}: `directory` entries need `sharding: directory`"),
            );
        }
        return Directory::default();
    };
    let mut map = HashMap::with_capacity(listed.len());
    for entry in listed {
        let text = match &entry.key.value {
            Scalar::Int(i) => i.to_string(),
            Scalar::Text(s) => s.clone(),
        };
        let key = match key_type.parse_text(&text) {
            Ok(key) => key,
            Err(e) => {
                problems.at(&entry.key, format!("table {name:?}: directory key: {e}"));
                continue;
            }
        };
        let Some(shard) = shard_ids.get(&entry.shard.value).copied() else {
            problems.at(
                &entry.shard,
                format!(
                    "shard {:?} is not defined under `shards:`",
                    entry.shard.value
                ),
            );
            continue;
        };
        if map.insert(key, shard).is_some() {
            problems.at(
                &entry.key,
                format!("table {name:?}: directory key {text} is listed twice"),
            );
        }
    }
    Directory(Arc::new(map))
}

/// The directory of table `name` in `config` as (key, shard name) pairs, sorted.
fn named_entries(config: &super::Config, name: &str) -> Vec<(String, Option<String>)> {
    let Some(rule) = config.tables.get(name) else {
        return Vec::new();
    };
    let mut listed: Vec<(String, Option<String>)> = rule
        .directory
        .sorted()
        .into_iter()
        .map(|(key, id)| {
            (
                key.to_string(),
                config.shards.get(id).map(|s| s.name.clone()),
            )
        })
        .collect();
    listed.sort();
    listed
}

/// Why serving `next` in place of `served` would move a directory key without its rows: a
/// listed key added, dropped or sent elsewhere by an edit of `shards.yaml`. Directory keys move
/// only through `shardline-reshard`, which copies the rows first; a reload that tries is
/// refused with this message.
pub fn reload_moves_a_key(served: &super::Config, next: &super::Config) -> Option<String> {
    let mut names: Vec<&String> = next.tables.keys().chain(served.tables.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (before, after) = (named_entries(served, name), named_entries(next, name));
        if before == after {
            continue;
        }
        let changed = after
            .iter()
            .find(|e| !before.contains(e))
            .or_else(|| before.iter().find(|e| !after.contains(e)))
            .map_or_else(String::new, |(key, _)| format!(" (key {key})"));
        return Some(format!(
            "the directory of table {name} changes{changed}; a reload cannot move a key without its rows: give the new shards.yaml to shardline-reshard as --to (start, verify, cutover, cleanup) and install it after the cutover"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::key::KeyValue;

    const BASE: &str = "listen: 127.0.0.1:6432\nusers:\n  - {name: app, password: app}\nshards:\n  - {name: s0, host: 127.0.0.1, port: 5500}\n  - {name: s1, host: 127.0.0.1, port: 5501}\n  - {name: hot, host: 127.0.0.1, port: 5502}\ntables:\n";

    fn load(tables: &str) -> Result<Config, String> {
        Config::from_yaml(&format!("{BASE}{tables}")).map_err(|e| e.to_string())
    }

    #[test]
    fn listed_keys_go_to_their_shard_and_the_rest_follow_the_fallback() {
        let config = load(
            "  - {name: events, sharding: directory, fallback: hash, column: tenant, type: int8, shards: [s0, s1], directory: [{key: 42, shard: hot}, {key: 7, shard: s0}]}\n  - {name: plain, sharding: hash, column: tenant, type: int8, shards: [s0, s1]}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (Some(events), Some(plain)) = (config.table("events"), config.table("plain")) else {
            panic!("tables missing");
        };
        assert_eq!(events.shard_for(&KeyValue::Int(42)), Ok(2));
        assert_eq!(events.shard_for(&KeyValue::Int(7)), Ok(0));
        for key in (0..1000).filter(|k| *k != 42 && *k != 7) {
            let key = KeyValue::Int(key);
            assert_eq!(events.shard_for(&key), plain.shard_for(&key), "{key}");
        }
        assert_eq!(events.shards(3), [0, 1, 2]);
        let shown = config.to_string();
        assert!(shown.contains("directory keys (2)"), "{shown}");
        assert!(shown.contains("key 42 -> hot"), "{shown}");
    }

    #[test]
    fn a_range_fallback_and_text_keys() {
        let config = load(
            "  - {name: docs, sharding: directory, fallback: range, column: owner, type: text, ranges: [{to: m, shard: s0}, {from: m, shard: s1}], directory: [{key: acme, shard: hot}]}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let docs = config.table("docs");
        let place = |k: &str| docs.map(|d| d.shard_for(&KeyValue::Text(k.to_owned())));
        assert_eq!(place("acme"), Some(Ok(2)));
        assert_eq!(place("abc"), Some(Ok(0)));
        assert_eq!(place("zed"), Some(Ok(1)));
    }

    #[test]
    fn a_reload_may_not_move_a_directory_key() {
        let rule = |entries: &str| {
            load(&format!("  - {{name: t, sharding: directory, column: id, shards: [s0, s1], directory: [{entries}]}}\n"))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let served = rule("{key: 1, shard: hot}");
        assert_eq!(
            super::reload_moves_a_key(&served, &rule("{key: 1, shard: hot}")),
            None
        );
        for next in [
            "{key: 1, shard: s0}",
            "{key: 1, shard: hot}, {key: 2, shard: hot}",
            "",
        ] {
            let refused = super::reload_moves_a_key(&served, &rule(next));
            assert!(
                refused.is_some_and(|m| m.contains("shardline-reshard")),
                "{next}"
            );
        }
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let cases = [
            ("  - {name: t, sharding: directory, fallback: reference, column: id}\n", "must be hash or range"),
            ("  - {name: t, sharding: hash, fallback: range, column: id}\n", "`fallback` is for `sharding: directory`"),
            ("  - {name: t, sharding: hash, column: id, directory: [{key: 1, shard: s0}]}\n", "need `sharding: directory`"),
            ("  - {name: t, sharding: directory, column: id, directory: [{key: x, shard: s0}]}\n", "directory key"),
            ("  - {name: t, sharding: directory, column: id, directory: [{key: 1, shard: nope}]}\n", "not defined"),
            ("  - {name: t, sharding: directory, column: id, directory: [{key: 1, shard: s0}, {key: 1, shard: s1}]}\n", "listed twice"),
        ];
        for (table, needle) in cases {
            let err = load(table).err().unwrap_or_default();
            assert!(
                err.contains(needle) && err.contains("line 9"),
                "{table}: {err}"
            );
        }
    }
}
