//! Table-driven tests of the decision: statements in, [`Target`]s out ([`route`]); routed
//! requests and session states in, [`Action`]s out ([`decide`]); statements and transaction
//! phases in, local answers out. Expected shards come from the config (`shard_for`), never
//! from hard-coded hash results.

mod actions;
mod local;
mod route;

use shardline_router::{Config, KeyValue, ShardId};

use super::*;
use crate::client::auth::Credentials;
use crate::context::Loaded;

const CONFIG: &str = "
users:
  - name: app
    password: app
shards:
  - {name: s0, port: 5432}
  - {name: s1, port: 5433}
  - {name: s2, port: 5434}
  - {name: s3, port: 5435}
tables:
  - {name: users, sharding: hash, column: id, type: int8}
  - name: events
    sharding: range
    column: id
    type: int8
    ranges:
      - {to: 1000, shard: s0}
      - {from: 1000, to: 2000, shard: s1}
      - {from: 2000, shard: s2}
  - {name: countries, sharding: reference}
";

pub(super) fn loaded() -> Loaded {
    let config = match Config::from_yaml(CONFIG) {
        Ok(config) => config,
        Err(e) => panic!("test config rejected: {e}"),
    };
    Loaded {
        credentials: Credentials::from_config(&config),
        config,
        migration: None,
        version: 1,
        stats: Default::default(),
    }
}

/// The shard that owns `key` of `table`, as the config computes it.
pub(super) fn owner(loaded: &Loaded, table: &str, key: i64) -> ShardId {
    match loaded
        .config
        .table(table)
        .map(|rule| rule.shard_for(&KeyValue::Int(key)))
    {
        Some(Ok(shard)) => shard,
        other => panic!("no owner for {table} key {key}: {other:?}"),
    }
}

/// Two keys of `users` that live on different shards.
pub(super) fn keys_on_two_shards(loaded: &Loaded) -> (i64, i64) {
    let first = owner(loaded, "users", 1);
    let other = (2..100)
        .find(|k| owner(loaded, "users", *k) != first)
        .unwrap_or_else(|| panic!("every key on one shard"));
    (1, other)
}

pub(super) fn names(shards: &[ShardId]) -> String {
    let names: Vec<String> = shards.iter().map(|s| format!("s{s}")).collect();
    names.join(",")
}

/// A target as a short text, for tables.
pub(super) fn target_text(loaded: &Loaded, target: &Target) -> String {
    let shards = names(&target.shards(&loaded.config).unwrap_or_default());
    match target {
        Target::Session => "session".to_owned(),
        Target::Shard(_) => format!("shard {shards}"),
        Target::Scatter(_) => format!("scatter {shards}"),
        Target::Gather(_) => format!("gather {shards}"),
        Target::Split(_) => format!("split {shards}"),
        Target::Copy(_) => format!("copy {shards}"),
        Target::Pull { tables, .. } => format!("pull {} to {shards}", table_names(tables)),
        Target::InsertSelect(plan) => {
            format!(
                "insert-select pulling {} into {shards}",
                table_names(&plan.pulled)
            )
        }
    }
}

/// Names of pulled tables, comma-separated.
fn table_names(tables: &[shardline_router::pull::PulledTable]) -> String {
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    names.join(",")
}

/// An action as a short text, for tables.
pub(super) fn action_text(action: &Action<'_>) -> String {
    match action {
        Action::Local => "local".to_owned(),
        Action::Finish { commit: true } => "finish commit".to_owned(),
        Action::Finish { commit: false } => "finish rollback".to_owned(),
        Action::Everywhere => "everywhere".to_owned(),
        Action::CommitDual { old } => format!("commit-dual s{old}"),
        Action::AwaitCutover => "await-cutover".to_owned(),
        Action::Single {
            shard,
            starts_transaction: true,
        } => format!("single s{shard}"),
        Action::Single {
            shard,
            starts_transaction: false,
        } => format!("single s{shard} (no data)"),
        Action::DualWrite { old } => format!("dual-write s{old}"),
        Action::Scatter(shards) => format!("scatter {}", names(shards)),
        Action::Gather(shards) => format!("gather {}", names(shards)),
        Action::Split(_) => "split".to_owned(),
        Action::Copy(_) => "copy".to_owned(),
        Action::Pull(tables) => format!("pull {}", table_names(tables)),
        Action::InsertSelect(plan) => {
            format!("insert-select pulling {}", table_names(&plan.pulled))
        }
        Action::Spread => "spread".to_owned(),
        Action::Refuse(error) => format!("refuse {}", error.sqlstate),
        Action::RunThenRefuse(error) => format!("run, then refuse {}", error.sqlstate),
    }
}
