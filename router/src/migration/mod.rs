//! Resharding as routing knowledge, with no I/O: what a migration between two layouts moves
//! ([`layout`]), the phases it goes through ([`Phase`]), the config a proxy serves while it
//! runs ([`Layout::overlay`]), and the SQL both the resharder and the proxies run on shards to
//! copy row images ([`images`]) and to fence old owners ([`fence`]).
//!
//! It lives in the router because the proxy (dual writes, routing after cutover) and the
//! resharder (plan, backfill, cutover) must agree on every one of these decisions.

pub mod fence;
pub mod images;
pub mod layout;

pub use layout::{Layout, LayoutError, Placement, TableMove};

use crate::config::{Config, Sharding, TableRule};

/// Where a migration stands, as the catalog (`schema/catalog.sql`) records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Proxies dual-write the moving keys; the backfill runs or can be resumed.
    Started,
    /// Every moving row was copied; dual writes go on.
    Backfilled,
    /// Copies were compared with their old owners and repaired; dual writes go on.
    Verified,
    /// Routing switched to the target layout; old owners are fenced.
    Cutover,
    /// Moved rows were deleted from their old owners.
    Done,
    /// Given up before cutover: the old layout stands, copies removed.
    Aborted,
}

impl Phase {
    /// The catalog's name of the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Started => "started",
            Phase::Backfilled => "backfilled",
            Phase::Verified => "verified",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
            Phase::Aborted => "aborted",
        }
    }

    /// The phase the catalog names `text`, if it is one.
    pub fn parse(text: &str) -> Option<Phase> {
        Some(match text {
            "started" => Phase::Started,
            "backfilled" => Phase::Backfilled,
            "verified" => Phase::Verified,
            "cutover" => Phase::Cutover,
            "done" => Phase::Done,
            "aborted" => Phase::Aborted,
            _ => return None,
        })
    }

    /// Proxies write every change of a moving key to its old and its new owner.
    pub fn dual_writes(self) -> bool {
        matches!(self, Phase::Started | Phase::Backfilled | Phase::Verified)
    }

    /// Proxies route the moving tables by the target layout.
    pub fn routes_by_target(self) -> bool {
        matches!(self, Phase::Cutover | Phase::Done)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Layout {
    /// The config a proxy serves during the migration, built from its own `shards.yaml`
    /// (`file`): the target's shards that `file` lacks are added (dual writes and, later,
    /// routing need pools for them), and once `phase` routes by the target, every moving
    /// table takes its target rule. A `file` that already is the target layout is returned
    /// unchanged in effect, so an operator who installs the target file after cutover sees no
    /// difference, and a reload of any file during the migration keeps its phase.
    pub fn overlay(&self, file: &Config, phase: Phase) -> Config {
        let mut config = file.clone();
        for shard in &self.target.shards {
            if config.shard_id(&shard.name).is_none() {
                config.shards.push(shard.clone());
            }
        }
        if phase.routes_by_target() {
            for table in &self.tables {
                if let Some(rule) = self.target.table(&table.table) {
                    let moved = remap(rule, &self.target, &config);
                    config.tables.insert(moved.name.clone(), moved);
                }
            }
        }
        config
    }
}

/// `rule` of `from` with its shard ids renumbered for `to`, matching shards by name.
fn remap(rule: &TableRule, from: &Config, to: &Config) -> TableRule {
    let id = |shard: usize| {
        from.shards
            .get(shard)
            .and_then(|s| to.shard_id(&s.name))
            .unwrap_or(shard)
    };
    let sharding = match &rule.sharding {
        Sharding::Hash {
            column,
            key_type,
            shards,
        } => Sharding::Hash {
            column: column.clone(),
            key_type: *key_type,
            shards: shards.iter().map(|s| id(*s)).collect(),
        },
        Sharding::Range {
            column,
            key_type,
            ranges,
        } => Sharding::Range {
            column: column.clone(),
            key_type: *key_type,
            ranges: ranges
                .iter()
                .map(|r| crate::config::KeyRange {
                    from: r.from.clone(),
                    to: r.to.clone(),
                    shard: id(r.shard),
                })
                .collect(),
        },
        Sharding::Reference => Sharding::Reference,
    };
    TableRule {
        name: rule.name.clone(),
        sharding,
        directory: rule.directory.renumbered(id),
    }
}
