//! After the workload: every row of `items` read from every shard directly and compared with
//! the acknowledged states and the owner of each key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use shardline_router::config::TableRule;
use shardline_router::KeyValue;

use super::ops::State;
use super::Report;

/// A row of `items` as found on a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRow {
    pub shard: usize,
    pub id: i64,
    pub owner: i32,
    pub val: i64,
    pub note: Option<String>,
}

/// How the rows of `items` sit on the shards. Counters are per key of the workload (every key
/// a client owns, touched or not); a key can count under several problems.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Keys the workload owns.
    pub keys: usize,
    /// Keys exactly as acknowledged: one row, on the owner, with the acknowledged
    /// `(val, note)` — or, for a key acknowledged absent, no row anywhere.
    pub exact: usize,
    /// Keys acknowledged present whose row is missing on their owner.
    pub lost: usize,
    /// Keys with rows on more than one shard.
    pub duplicated: usize,
    /// Keys acknowledged absent that have a row on their owner.
    pub resurrected: usize,
    /// Keys whose row on the owner differs from the acknowledged state.
    pub wrong_value: usize,
    /// Keys with a row on a shard that does not own them.
    pub left_on_old_owner: usize,
    /// One line per problem, naming the key.
    pub problems: Vec<String>,
    /// Rows whose id no workload client owns (rows the test loaded itself), by id.
    pub other_rows: BTreeMap<i64, Vec<FoundRow>>,
    /// Of those ids: how many have a row on a shard that does not own them.
    pub other_misplaced: usize,
    /// Of those ids: how many have rows on more than one shard.
    pub other_duplicated: usize,
}

impl Placement {
    /// True when every workload key is exact and no other row is misplaced or duplicated.
    pub fn is_perfect(&self) -> bool {
        self.exact == self.keys
            && self.lost == 0
            && self.duplicated == 0
            && self.resurrected == 0
            && self.wrong_value == 0
            && self.left_on_old_owner == 0
            && self.other_misplaced == 0
            && self.other_duplicated == 0
    }

    /// Number of rows whose id the workload does not own.
    pub fn other_row_count(&self) -> usize {
        self.other_rows.values().map(Vec::len).sum()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keys {}: exact {}, lost {}, duplicated {}, resurrected {}, wrong value {}, left on old owner {}; other rows {} (misplaced {}, duplicated {})",
            self.keys,
            self.exact,
            self.lost,
            self.duplicated,
            self.resurrected,
            self.wrong_value,
            self.left_on_old_owner,
            self.other_row_count(),
            self.other_misplaced,
            self.other_duplicated,
        )
    }
}

/// An owner function for [`check_placement`] from a table's sharding rule (the target layout's
/// `items` rule). Panics, naming the key, if the rule places no shard for it.
pub fn owner_by(rule: &TableRule) -> impl Fn(i64) -> usize + '_ {
    move |id| {
        rule.shard_for(&KeyValue::Int(id))
            .unwrap_or_else(|e| panic!("the layout places no shard for items id {id}: {e}"))
    }
}

/// Reads `SELECT id, owner, val, note FROM items` from every shard (`shards[i]` is shard `i`,
/// connected directly) and classifies every workload key and every row found. `owner(id)` is
/// the index of the shard that must hold `id`. Keys whose last outcome stayed unresolved are
/// accepted in any of their candidate states.
pub async fn check_placement(
    report: &Report,
    shards: &[tokio_postgres::Client],
    owner: impl Fn(i64) -> usize,
) -> anyhow::Result<Placement> {
    let mut found: BTreeMap<i64, Vec<FoundRow>> = BTreeMap::new();
    for (shard, client) in shards.iter().enumerate() {
        let rows = client
            .query("SELECT id, owner, val, note FROM items ORDER BY id", &[])
            .await
            .map_err(|e| anyhow::anyhow!("reading items on shard {shard}: {e:#}"))?;
        for row in rows {
            let id: i64 = row.try_get(0)?;
            found.entry(id).or_default().push(FoundRow {
                shard,
                id,
                owner: row.try_get(1)?,
                val: row.try_get(2)?,
                note: row.try_get(3)?,
            });
        }
    }
    let mut placement = Placement::default();
    let ids: BTreeSet<i64> = report.states.keys().chain(found.keys()).copied().collect();
    for id in ids {
        let owner_shard = owner(id);
        anyhow::ensure!(
            owner_shard < shards.len(),
            "owner({id}) = {owner_shard}, but there are {} shards",
            shards.len()
        );
        let rows = found.remove(&id).unwrap_or_default();
        let misplaced = rows.iter().any(|r| r.shard != owner_shard);
        let duplicated = rows.len() > 1;
        let Some(acknowledged) = report.states.get(&id) else {
            placement.other_misplaced += usize::from(misplaced);
            placement.other_duplicated += usize::from(duplicated);
            placement.other_rows.insert(id, rows);
            continue;
        };
        placement.keys += 1;
        let candidates: Vec<State> = match report.unresolved.get(&id) {
            Some(candidates) => candidates.clone(),
            None => vec![acknowledged.clone()],
        };
        let on_owner = rows.iter().find(|r| r.shard == owner_shard);
        let matches = |row: &FoundRow, state: &State| {
            state
                .as_ref()
                .is_some_and(|(val, note)| row.val == *val && row.note.as_ref() == Some(note))
        };
        let mut problems = Vec::new();
        if duplicated {
            placement.duplicated += 1;
            problems.push("rows on several shards");
        }
        if misplaced {
            placement.left_on_old_owner += 1;
            problems.push("a row on a shard that does not own it");
        }
        let any = candidates.is_empty();
        match on_owner {
            None if !any && candidates.iter().all(Option::is_some) => {
                placement.lost += 1;
                problems.push("lost");
            }
            Some(_) if !any && candidates.iter().all(Option::is_none) => {
                placement.resurrected += 1;
                problems.push("resurrected");
            }
            Some(row) if !any && !candidates.iter().any(|c| matches(row, c)) => {
                placement.wrong_value += 1;
                problems.push("wrong value");
            }
            _ => {}
        }
        if problems.is_empty() {
            placement.exact += 1;
        } else {
            let seen: Vec<String> = rows
                .iter()
                .map(|r| format!("shard {}: ({}, {:?})", r.shard, r.val, r.note))
                .collect();
            placement.problems.push(format!(
                "key {id} (owner shard {owner_shard}, acknowledged {}): {}; found [{}]",
                if report.unresolved.contains_key(&id) {
                    format!("one of {candidates:?}")
                } else {
                    format!("{acknowledged:?}")
                },
                problems.join(", "),
                seen.join(", ")
            ));
        }
    }
    Ok(placement)
}
