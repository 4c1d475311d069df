//! Turns the walker's facts into a [`Target`]: equivalence classes of linked occurrences,
//! per-alternative restrictions, and the floating reads that must stay on one shard.

use std::collections::HashMap;

use super::value::KeyExpr;
use super::walker::{Alt, Formula, LevelId, OccId, TableKind, Walker};
use crate::key::KeyType;
use crate::plan::{
    join_names, null_key, Branch, ClassInfo, KeySrc, KeyUpdate, Keyed, Restr, RouteError, Target,
};
use crate::sqlstate;

/// Union-find over occurrences.
struct Classes {
    parent: Vec<usize>,
}

impl Classes {
    fn new(n: usize) -> Classes {
        Classes {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while let Some(&p) = self.parent.get(x) {
            if p == x {
                break;
            }
            let grand = self.parent.get(p).copied().unwrap_or(p);
            if let Some(slot) = self.parent.get_mut(x) {
                *slot = grand;
            }
            x = p;
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            if let Some(slot) = self.parent.get_mut(ra) {
                *slot = rb;
            }
        }
    }
}

/// The compiler's state: classes being numbered as branches refer to them.
struct Compiler<'w, 'a> {
    w: &'w Walker<'a>,
    classes: Classes,
    /// Union-find root → index in `infos`.
    index: HashMap<usize, usize>,
    infos: Vec<ClassInfo>,
    key_types: Vec<KeyType>,
    /// Union-find root of each class.
    roots: Vec<usize>,
}

/// Builds the routing target for a walked statement whose rows come from `alts`.
pub(super) fn compile(w: &Walker<'_>, alts: &[Alt]) -> Target {
    if let Some(err) = &w.error {
        return Target::Error(err.clone());
    }
    if let Some(table) = &w.reference_write {
        let other = w
            .occs
            .iter()
            .find(|o| matches!(o.kind, TableKind::Sharded | TableKind::Unlisted));
        return match other {
            Some(o) => Target::Error(RouteError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "a write to reference table {table} must produce the same rows on every shard, so it cannot read {} table {}; compute the values in the application or write them literally",
                    if o.kind == TableKind::Sharded { "sharded" } else { "unlisted" },
                    o.name
                ),
            )),
            None => Target::AllShards(format!("write to reference table {table}: every shard")),
        };
    }

    let mut c = Compiler {
        w,
        classes: Classes::new(w.occs.len()),
        index: HashMap::new(),
        infos: Vec::new(),
        key_types: Vec::new(),
        roots: Vec::new(),
    };
    for (a, b) in &w.links {
        c.classes.union(*a, *b);
    }

    // Which levels each level contains (nested subqueries), to find what an alternative reads.
    let mut children: Vec<Vec<LevelId>> = vec![Vec::new(); w.levels.len()];
    for (id, level) in w.levels.iter().enumerate() {
        if let Some(parent) = level.nested_in {
            if let Some(list) = children.get_mut(parent) {
                list.push(id);
            }
        }
    }
    let mut reached = vec![false; w.levels.len()];
    let mut branches = Vec::with_capacity(alts.len());
    let mut describe = Vec::new();
    for alt in alts {
        let levels = closure(&alt.levels, &children);
        for l in &levels {
            if let Some(r) = reached.get_mut(*l) {
                *r = true;
            }
        }
        let (branch, text) = c.branch(alt, &levels);
        branches.push(branch);
        describe.push(text);
    }
    // Levels no alternative reaches (should not happen) are read by every branch, to stay safe.
    let orphans: Vec<LevelId> = (0..w.levels.len())
        .filter(|l| !reached.get(*l).copied().unwrap_or(true))
        .collect();
    if !orphans.is_empty() {
        let extra = closure(&orphans, &children);
        for branch in &mut branches {
            c.add_reads(branch, &[], &extra);
        }
    }

    let key_update = match &w.key_update {
        Some((occ, value)) => match c.class_of(*occ) {
            Some(class) => {
                let key_type = c.key_types.get(class).copied().unwrap_or(KeyType::Int8);
                let column = c
                    .infos
                    .get(class)
                    .map(|i| i.column.clone())
                    .unwrap_or_default();
                Some(KeyUpdate {
                    class,
                    value: key_src(value, key_type, true, &column),
                })
            }
            None => None,
        },
        None => None,
    };

    if c.infos.is_empty() {
        let unlisted = branches.iter().find_map(|b| b.unlisted.clone());
        return match unlisted {
            Some(table) => Target::Default(format!(
                "table {table} is not in shards.yaml: default shard"
            )),
            None if w.occs.iter().any(|o| o.kind == TableKind::Reference) => {
                Target::Anywhere("reference tables only: any shard (the default)".into())
            }
            None if w.occs.iter().any(|o| o.kind == TableKind::Catalog) => {
                Target::Anywhere("catalog tables only: default shard".into())
            }
            None => Target::Anywhere("no tables: default shard".into()),
        };
    }
    describe.dedup();
    Target::Keyed(Box::new(Keyed {
        classes: c.infos,
        branches,
        single_only: w.single_only.clone(),
        key_update,
        describe: describe.join(" UNION ALL "),
    }))
}

/// `levels` and every level nested inside them.
fn closure(levels: &[LevelId], children: &[Vec<LevelId>]) -> Vec<LevelId> {
    let mut out: Vec<LevelId> = Vec::new();
    let mut stack: Vec<LevelId> = levels.to_vec();
    while let Some(l) = stack.pop() {
        if out.contains(&l) {
            continue;
        }
        out.push(l);
        if let Some(kids) = children.get(l) {
            stack.extend(kids);
        }
    }
    out
}

impl Compiler<'_, '_> {
    /// The class index of a sharded occurrence, numbering it on first use.
    fn class_of(&mut self, occ: OccId) -> Option<usize> {
        let o = self.w.occs.get(occ)?;
        if o.kind != TableKind::Sharded {
            return None;
        }
        let rule_key = o.rule.clone()?;
        let rule = self.w.config.tables.get(&rule_key)?;
        let root = self.classes.find(occ);
        let class = match self.index.get(&root) {
            Some(c) => *c,
            None => {
                let c = self.infos.len();
                self.index.insert(root, c);
                self.infos.push(ClassInfo {
                    rule: rule_key,
                    key_type: rule.key_type()?,
                    column: format!("{}.{}", o.name, rule.key_column().unwrap_or("?")),
                    tables: Vec::new(),
                });
                self.key_types.push(rule.key_type()?);
                self.roots.push(root);
                c
            }
        };
        if let Some(info) = self.infos.get_mut(class) {
            if !info.tables.contains(&o.name) {
                info.tables.push(o.name.clone());
            }
        }
        Some(class)
    }

    /// One branch: anchored classes with their restrictions, then everything else it reads.
    fn branch(&mut self, alt: &Alt, levels: &[LevelId]) -> (Branch, String) {
        let mut branch = Branch {
            single: alt.single,
            ..Branch::default()
        };
        let mut anchored: Vec<usize> = Vec::new();
        for occ in &alt.anchors {
            if let Some(class) = self.class_of(*occ) {
                if !anchored.contains(&class) {
                    anchored.push(class);
                }
            }
        }
        let mut texts = Vec::new();
        for class in &anchored {
            let parts: Vec<Restr> = alt
                .levels
                .iter()
                .filter_map(|l| self.w.levels.get(*l))
                .flat_map(|l| l.formulas.iter())
                .map(|f| self.project(f, *class))
                .collect();
            let restr = and(parts);
            texts.push(self.describe(*class, &restr));
            branch.anchored.push((*class, restr));
        }
        self.add_reads(&mut branch, &anchored, levels);
        for (class, restr) in &branch.floating {
            texts.push(format!("subquery {}", self.describe(*class, restr)));
        }
        if let Some(table) = &branch.unlisted {
            texts.push(format!("unlisted table {table} (default shard)"));
        }
        if texts.is_empty() {
            texts.push("no sharded tables".into());
        }
        (branch, texts.join(", "))
    }

    /// Adds the occurrences of `levels` that are not anchored: floating classes (with what
    /// their own level needs) and unlisted tables.
    fn add_reads(&mut self, branch: &mut Branch, anchored: &[usize], levels: &[LevelId]) {
        for level in levels {
            let Some(l) = self.w.levels.get(*level) else {
                continue;
            };
            for occ in &l.occs {
                let Some(o) = self.w.occs.get(*occ) else {
                    continue;
                };
                match o.kind {
                    TableKind::Unlisted => {
                        if branch.unlisted.is_none() {
                            branch.unlisted = Some(o.name.clone());
                        }
                    }
                    TableKind::Sharded => {
                        let Some(class) = self.class_of(*occ) else {
                            continue;
                        };
                        if anchored.contains(&class) {
                            continue;
                        }
                        let parts: Vec<Restr> =
                            l.formulas.iter().map(|f| self.project(f, class)).collect();
                        let need = and(parts);
                        match branch.floating.iter_mut().find(|(c, _)| *c == class) {
                            Some((_, existing)) => {
                                let previous = std::mem::replace(existing, Restr::All);
                                *existing = or(vec![previous, need]);
                            }
                            None => branch.floating.push((class, need)),
                        }
                    }
                    TableKind::Reference | TableKind::Catalog => {}
                }
            }
        }
    }

    /// The part of a formula that speaks about `class`.
    fn project(&mut self, formula: &Formula, class: usize) -> Restr {
        match formula {
            Formula::True => Restr::All,
            Formula::Atom { occs, keys, insert } => {
                let Some(root) = self.roots.get(class).copied() else {
                    return Restr::All;
                };
                let hits = occs.iter().any(|o| {
                    self.w
                        .occs
                        .get(*o)
                        .is_some_and(|occ| occ.kind == TableKind::Sharded)
                        && self.classes.find(*o) == root
                });
                if !hits {
                    return Restr::All;
                }
                let key_type = self.key_types.get(class).copied().unwrap_or(KeyType::Int8);
                let column = self
                    .infos
                    .get(class)
                    .map(|i| i.column.clone())
                    .unwrap_or_default();
                Restr::Keys(
                    keys.iter()
                        .map(|k| key_src(k, key_type, *insert, &column))
                        .collect(),
                )
            }
            Formula::And(parts) => {
                let parts = parts.iter().map(|p| self.project(p, class)).collect();
                and(parts)
            }
            Formula::Or(parts) => {
                let parts = parts.iter().map(|p| self.project(p, class)).collect();
                or(parts)
            }
        }
    }

    fn describe(&self, class: usize, restr: &Restr) -> String {
        let Some(info) = self.infos.get(class) else {
            return String::new();
        };
        match restr {
            Restr::All => format!(
                "no shard key restriction on {}: all its shards",
                join_names(&info.tables)
            ),
            other => restr_text(&info.column, other),
        }
    }
}

/// Reads a key value with the class's key type.
fn key_src(key: &KeyExpr, key_type: KeyType, insert: bool, column: &str) -> KeySrc {
    match key {
        KeyExpr::Literal(text) => match key_type.parse_text(text) {
            Ok(v) => KeySrc::Value(v),
            Err(e) => KeySrc::Fail(RouteError::new(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                e.to_string(),
            )),
        },
        KeyExpr::Null if insert => KeySrc::Fail(null_key(column)),
        KeyExpr::Null => KeySrc::Null,
        KeyExpr::Param(i) if insert => KeySrc::InsertParam(*i),
        KeyExpr::Param(i) => KeySrc::Param(*i),
        KeyExpr::ParamArray(i) => KeySrc::ParamArray(*i),
        KeyExpr::Invalid(why) => KeySrc::Fail(RouteError::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            why.clone(),
        )),
    }
}

/// AND of restrictions, simplified (unrestricted parts drop out).
fn and(parts: Vec<Restr>) -> Restr {
    let mut out = Vec::new();
    for p in parts {
        match p {
            Restr::All => {}
            Restr::And(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Restr::All,
        1 => out.pop().unwrap_or(Restr::All),
        _ => Restr::And(out),
    }
}

/// OR of restrictions, simplified (one unrestricted part makes the whole unrestricted; key
/// lists merge).
fn or(parts: Vec<Restr>) -> Restr {
    let mut keys: Vec<KeySrc> = Vec::new();
    let mut others = Vec::new();
    let mut stack = parts;
    while let Some(p) = stack.pop() {
        match p {
            Restr::All => return Restr::All,
            Restr::Or(inner) => stack.extend(inner),
            Restr::Keys(k) => keys.extend(k),
            other => others.push(other),
        }
    }
    if !keys.is_empty() {
        others.push(Restr::Keys(keys));
    }
    match others.len() {
        0 => Restr::Keys(Vec::new()),
        1 => others.pop().unwrap_or(Restr::All),
        _ => Restr::Or(others),
    }
}

fn src_text(src: &KeySrc) -> String {
    match src {
        KeySrc::Value(v) => v.to_string(),
        KeySrc::Null => "NULL".into(),
        KeySrc::Param(i) | KeySrc::InsertParam(i) => format!("${}", i + 1),
        KeySrc::ParamArray(i) => format!("ANY(${})", i + 1),
        KeySrc::Fail(_) => "<invalid>".into(),
    }
}

fn restr_text(column: &str, restr: &Restr) -> String {
    match restr {
        Restr::All => format!("{column}: any"),
        Restr::Keys(keys) => match keys.as_slice() {
            [KeySrc::ParamArray(i)] => format!("{column} = ANY(${})", i + 1),
            [one] => format!("{column} = {}", src_text(one)),
            many => format!(
                "{column} IN ({})",
                many.iter().map(src_text).collect::<Vec<_>>().join(", ")
            ),
        },
        Restr::And(parts) => parts
            .iter()
            .map(|p| restr_text(column, p))
            .collect::<Vec<_>>()
            .join(" AND "),
        Restr::Or(parts) => format!(
            "({})",
            parts
                .iter()
                .map(|p| restr_text(column, p))
                .collect::<Vec<_>>()
                .join(" OR ")
        ),
    }
}
