//! Route evaluation, the per-execution part of a plan: turns a [`Target`] into the shards it
//! needs, for one config and one set of Bind parameters, and explains why a statement cannot
//! be routed when its parts would need rows from different shards.

use crate::config::{Config, ShardId, TableRule};
use crate::params::Params;
use crate::sqlstate;

use super::shard_set::{all_shards, table_shards};
use super::target::{Branch, ClassInfo, KeySrc, KeyUpdate, Keyed, Restr, Target};
use super::{join_names, shard_name, Route, RouteError, ShardSet};

/// Result of evaluating a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// Any single shard; the default shard is used.
    Anywhere,
    /// These shards; empty means no row can match (any one shard of `fallback` answers).
    Shards(ShardSet, ShardId),
}

impl Placement {
    /// The route of this placement: empty and "anywhere" placements pick one shard.
    pub(super) fn into_route(self, config: &Config) -> Route {
        match self {
            Placement::Anywhere => Route::Single(config.default_shard),
            Placement::Shards(set, fallback) => match set.len() {
                0 => Route::Single(fallback),
                1 => Route::Single(set.first().unwrap_or(fallback)),
                _ => Route::Multi(set.iter().collect()),
            },
        }
    }
}

/// Where a lone key ([`Keyed::lone_key`]) runs.
pub(super) enum LoneShard {
    /// The shard that owns the key's value.
    Owner(ShardId),
    /// The key is NULL: no row can match, and this shard answers.
    NoRows(ShardId),
}

/// Evaluates targets against one config and one set of parameters.
pub(super) struct Eval<'a> {
    pub(super) config: &'a Config,
    pub(super) params: &'a dyn Params,
    /// Parameter values seen, when explaining.
    pub(super) explain: bool,
    pub(super) notes: Vec<String>,
}

/// The rules of a target's classes, looked up once per evaluation; the first few are kept
/// inline so routing does not allocate.
#[derive(Default)]
struct Rules<'c> {
    inline: [Option<&'c TableRule>; 4],
    len: usize,
    more: Vec<&'c TableRule>,
}

impl<'c> Rules<'c> {
    fn push(&mut self, rule: &'c TableRule) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = Some(rule),
            None => self.more.push(rule),
        }
        self.len += 1;
    }

    fn get(&self, index: usize) -> Option<&'c TableRule> {
        match self.inline.get(index) {
            Some(slot) => *slot,
            None => self.more.get(index - self.inline.len()).copied(),
        }
    }
}

/// What pins a branch to a single shard.
#[derive(Debug, Clone, Copy)]
enum Pin {
    /// A table not in shards.yaml (default shard).
    Unlisted,
    /// A subquery on this class, not linked to the rows by the key.
    Subquery(usize),
}

/// Where a branch's rows come from.
enum BranchOut {
    /// No row can come out of this branch.
    Nothing,
    /// Rows are spread over these shards (each shard answers for its own keys).
    Spread(ShardSet),
    /// The branch must run exactly once, on this shard if given.
    Once(Option<ShardId>),
}

impl<'a> Eval<'a> {
    /// An evaluator; `explain` records the parameter values it reads in `notes`.
    pub(super) fn new(config: &'a Config, params: &'a dyn Params, explain: bool) -> Eval<'a> {
        Eval {
            config,
            params,
            explain,
            notes: Vec::new(),
        }
    }

    /// Where `target` runs, or why it cannot be routed.
    pub(super) fn target(&mut self, target: &Target) -> Result<Placement, RouteError> {
        let config = self.config;
        match target {
            Target::Anywhere(_) => Ok(Placement::Anywhere),
            Target::Default(_) => Ok(Placement::Shards(
                ShardSet::single(config.default_shard),
                config.default_shard,
            )),
            Target::AllShards(_) => Ok(Placement::Shards(all_shards(config), config.default_shard)),
            Target::Tables(tables, _) => {
                let mut set = ShardSet::new();
                for table in tables {
                    match table.as_ref().and_then(|t| config.tables.get(t)) {
                        Some(rule) => set.union_with(&table_shards(rule, config.shards.len())),
                        None => set.insert(config.default_shard),
                    }
                }
                Ok(Placement::Shards(set, config.default_shard))
            }
            Target::Error(e) => Err(e.clone()),
            Target::Keyed(k) => self.keyed(k),
            Target::Compound(parts) => {
                let mut union = ShardSet::new();
                for part in parts {
                    if let Placement::Shards(set, fallback) = self.target(part)? {
                        if set.is_empty() {
                            union.insert(fallback);
                        } else {
                            union.union_with(&set);
                        }
                    }
                }
                if union.len() > 1 {
                    return Err(RouteError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "a multi-statement query must stay on one shard, but this one needs {}; send the statements separately",
                            self.names(&union)
                        ),
                    ));
                }
                Ok(match union.first() {
                    Some(id) => Placement::Shards(union, id),
                    None => Placement::Anywhere,
                })
            }
        }
    }

    /// The sharding rule of `class` in the current config.
    fn rule_of(&self, class: &ClassInfo) -> Result<&'a TableRule, RouteError> {
        match self.config.tables.get(&class.rule) {
            Some(rule) if rule.key_column().is_some() => Ok(rule),
            _ => Err(RouteError::new(
                sqlstate::OBJECT_NOT_IN_STATE,
                format!(
                    "the sharding of table {} changed since this statement was planned; prepare the statement again",
                    class.tables.first().map_or("?", String::as_str)
                ),
            )),
        }
    }

    /// Where a statement whose rows one key value places runs ([`Keyed::lone_key`]): the
    /// general combination below, for its only possible case.
    fn lone_key(&mut self, class: &ClassInfo, src: &KeySrc) -> Result<Placement, RouteError> {
        Ok(match self.lone_shard(class, src)? {
            LoneShard::Owner(shard) => Placement::Shards(ShardSet::single(shard), shard),
            LoneShard::NoRows(shard) => Placement::Shards(ShardSet::new(), shard),
        })
    }

    /// The shard of a lone key ([`Keyed::lone_key`]): the one its value places, or the one
    /// that answers when the key is NULL and no row can match.
    pub(super) fn lone_shard(
        &mut self,
        class: &ClassInfo,
        src: &KeySrc,
    ) -> Result<LoneShard, RouteError> {
        let rule = self.rule_of(class)?;
        let mut owner = None;
        self.key_values(class, src, &mut |value| {
            // A lone key stands for one value at most (`lone_key` lets no array through).
            debug_assert!(owner.is_none(), "a lone key stood for several values");
            owner = Some(super::keys::place(rule, value)?);
            Ok(())
        })?;
        Ok(match owner {
            Some(shard) => LoneShard::Owner(shard),
            None => LoneShard::NoRows(self.no_rows_shard(Some(rule))),
        })
    }

    /// The shard that answers a statement no row can match: one of its first table's (the
    /// default shard if it has one).
    fn no_rows_shard(&self, rule: Option<&TableRule>) -> ShardId {
        let config = self.config;
        rule.map_or(config.default_shard, |rule| {
            let shards = table_shards(rule, config.shards.len());
            if shards.contains(config.default_shard) {
                config.default_shard
            } else {
                shards.first().unwrap_or(config.default_shard)
            }
        })
    }

    fn keyed(&mut self, k: &Keyed) -> Result<Placement, RouteError> {
        if let Some((class, src)) = k.lone_key() {
            return self.lone_key(class, src);
        }
        let config = self.config;
        let mut rules = Rules::default();
        for class in &k.classes {
            rules.push(self.rule_of(class)?);
        }

        let mut spread = ShardSet::new();
        let mut once: Vec<Option<ShardId>> = Vec::new();
        for branch in &k.branches {
            match self.branch(k, &rules, branch)? {
                BranchOut::Nothing => {}
                BranchOut::Spread(set) => spread.union_with(&set),
                BranchOut::Once(at) => once.push(at),
            }
        }

        // Combine branches: spread rows are concatenated; a branch that must run once can only
        // join a single-shard result.
        let mut result = spread;
        for at in once {
            match (result.len(), at) {
                (0, Some(id)) => result.insert(id),
                (0, None) | (1, None) => {}
                (1, Some(id)) if result.contains(id) => {}
                _ => {
                    return Err(RouteError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "part of this statement reads {} while another part must run on exactly one shard; split the statement",
                            self.names(&result)
                        ),
                    ))
                }
            }
        }

        if result.len() > 1 {
            if let Some(err) = &k.single_only {
                return Err(err.clone());
            }
        }
        if let Some(update) = &k.key_update {
            self.check_key_update(k, &rules, update, &result)?;
        }
        if !result.is_empty() {
            let first = result.first().unwrap_or(config.default_shard);
            return Ok(Placement::Shards(result, first));
        }
        if k.branches.iter().all(|b| b.anchored.is_empty()) {
            return Ok(Placement::Anywhere);
        }
        // No row can match: any shard of the table answers.
        Ok(Placement::Shards(result, self.no_rows_shard(rules.get(0))))
    }

    fn branch(
        &mut self,
        k: &Keyed,
        rules: &Rules<'_>,
        branch: &Branch,
    ) -> Result<BranchOut, RouteError> {
        // Anchored classes: each yields the shards its rows can be on; unlinked classes must all
        // be on the same single shard, or the join would need rows from several shards at once.
        let mut anchored: Option<(usize, ShardSet)> = None;
        let mut no_rows = false;
        for (class, restr) in &branch.anchored {
            let set = self.restr(k, rules, *class, restr)?;
            if set.is_empty() {
                no_rows = true;
                continue;
            }
            match &anchored {
                None => anchored = Some((*class, set)),
                Some((first, existing)) => {
                    if *existing != set || set.len() != 1 {
                        return Err(self.cross_shard(k, *first, *class));
                    }
                }
            }
        }

        if branch.single {
            if let Some((class, set)) = &anchored {
                if set.len() > 1 {
                    let tables = k
                        .classes
                        .get(*class)
                        .map_or_else(String::new, |c| join_names(&c.tables));
                    return Err(RouteError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "this query aggregates, de-duplicates or limits rows of {tables} (aggregates, GROUP BY, DISTINCT, LIMIT, window functions) across {}, which shardline cannot merge yet: restrict it to one shard key or group by the shard key",
                            self.names(set)
                        ),
                    ));
                }
            }
        }

        // Floating classes (read by subqueries not tied to the rows by the key) must each sit
        // on one shard, the same one as everything else.
        let mut pin: Option<(Pin, ShardId)> = None;
        if branch.unlisted.is_some() {
            pin = Some((Pin::Unlisted, self.config.default_shard));
        }
        for (class, restr) in &branch.floating {
            let set = self.restr(k, rules, *class, restr)?;
            match (set.only(), &pin) {
                (None, _) if set.is_empty() => {}
                (None, _) => {
                    return Err(RouteError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "{} would read {}; a subquery that is not joined to the outer rows on the shard key must stay on one shard: restrict it by {} or run it separately",
                            self.pin_text(k, branch, Pin::Subquery(*class)),
                            self.names(&set),
                            k.classes.get(*class).map_or("its shard key", |c| c.column.as_str())
                        ),
                    ))
                }
                (Some(id), Some((other, existing))) if *existing != id => {
                    return Err(RouteError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "{} needs shard {} but {} needs shard {}; shardline cannot combine rows from different shards in one statement",
                            self.pin_text(k, branch, Pin::Subquery(*class)),
                            self.name(id),
                            self.pin_text(k, branch, *other),
                            self.name(*existing)
                        ),
                    ))
                }
                (Some(_), Some(_)) => {}
                (Some(id), None) => pin = Some((Pin::Subquery(*class), id)),
            }
        }

        if no_rows {
            return Ok(BranchOut::Nothing);
        }
        match (anchored, pin) {
            (None, pin) => Ok(BranchOut::Once(pin.map(|p| p.1))),
            (Some((_, set)), None) => Ok(BranchOut::Spread(set)),
            (Some((_, set)), Some((_, id))) if set.only() == Some(id) => Ok(BranchOut::Spread(set)),
            (Some((class, set)), Some((what, id))) => {
                let tables = k
                    .classes
                    .get(class)
                    .map_or_else(String::new, |c| join_names(&c.tables));
                let advice = match what {
                    Pin::Unlisted => "list the table in shards.yaml (for example as a reference table) or query it separately",
                    Pin::Subquery(_) => "restrict both to the same shard key or run the subquery separately",
                };
                Err(RouteError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "{} ({}), but sharded table {tables} is read on {}; {advice}",
                        self.pin_text(k, branch, what),
                        self.name(id),
                        self.names(&set)
                    ),
                ))
            }
        }
    }

    /// Describes what pins a branch to one shard, for messages.
    fn pin_text(&self, k: &Keyed, branch: &Branch, pin: Pin) -> String {
        match pin {
            Pin::Unlisted => format!(
                "table {}, which is not in shards.yaml, lives only on the default shard",
                branch.unlisted.as_deref().unwrap_or("?")
            ),
            Pin::Subquery(class) => format!(
                "a subquery on sharded table {}",
                k.classes
                    .get(class)
                    .map_or("?", |c| c.tables.first().map_or("?", String::as_str))
            ),
        }
    }

    fn cross_shard(&self, k: &Keyed, a: usize, b: usize) -> RouteError {
        let name = |c: usize| {
            k.classes
                .get(c)
                .map_or_else(String::new, |c| join_names(&c.tables))
        };
        if name(a) == name(b) {
            return RouteError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "this statement combines rows of {} from different shards (a self-join, UNION, INTERSECT or EXCEPT not linked by the shard key), which is not supported; link them by the shard key, use UNION ALL, or split the statement",
                    name(a)
                ),
            );
        }
        RouteError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "cross-shard join of {} and {} is not supported; join co-located tables on their shard key",
                name(a),
                name(b)
            ),
        )
    }

    fn check_key_update(
        &mut self,
        k: &Keyed,
        rules: &Rules<'_>,
        update: &KeyUpdate,
        result: &ShardSet,
    ) -> Result<(), RouteError> {
        let column = k
            .classes
            .get(update.class)
            .map_or("the shard key", |c| c.column.as_str());
        let err = || {
            RouteError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "changing the shard key {column} with UPDATE is not supported when the row could move to another shard; move the row by DELETE and INSERT"
                ),
            )
        };
        let Some(current) = result.only() else {
            return Err(err());
        };
        let mut target = ShardSet::new();
        let rule = rules.get(update.class).ok_or_else(err)?;
        let class = k.classes.get(update.class).ok_or_else(err)?;
        self.key(class, rule, &update.value, &mut target)?;
        match target.only() {
            Some(id) if id == current => Ok(()),
            _ => Err(err()),
        }
    }

    fn restr(
        &mut self,
        k: &Keyed,
        rules: &Rules<'_>,
        class: usize,
        restr: &Restr,
    ) -> Result<ShardSet, RouteError> {
        let (Some(info), Some(rule)) = (k.classes.get(class), rules.get(class)) else {
            return Ok(ShardSet::new());
        };
        match restr {
            Restr::All => Ok(table_shards(rule, self.config.shards.len())),
            Restr::Keys(keys) => {
                let mut set = ShardSet::new();
                for key in keys {
                    self.key(info, rule, key, &mut set)?;
                }
                Ok(set)
            }
            Restr::And(parts) => {
                let mut acc: Option<ShardSet> = None;
                for part in parts {
                    let set = self.restr(k, rules, class, part)?;
                    match &mut acc {
                        None => acc = Some(set),
                        Some(a) => a.intersect_with(&set),
                    }
                }
                Ok(acc.unwrap_or_else(|| table_shards(rule, self.config.shards.len())))
            }
            Restr::Or(parts) => {
                let mut acc = ShardSet::new();
                for part in parts {
                    acc.union_with(&self.restr(k, rules, class, part)?);
                }
                Ok(acc)
            }
        }
    }

    fn name(&self, id: ShardId) -> String {
        shard_name(self.config, id)
    }

    fn names(&self, set: &ShardSet) -> String {
        let names: Vec<String> = set.iter().map(|id| self.name(id)).collect();
        match names.len() {
            1 => format!("shard {}", names.join("")),
            _ => format!("shards {}", names.join(", ")),
        }
    }
}
