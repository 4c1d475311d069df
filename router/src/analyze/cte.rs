//! WITH queries: binding CTEs to names in scope (RECURSIVE included), walking a CTE's body
//! where it is referenced, and data-modifying CTEs, which are walked once at the definition.

use sqlparser::ast::{Cte, SetExpr, TableAlias};

use super::walker::{norm, Alt, Columns, CteBinding, Item, QueryOut, Walker};
use crate::plan::RouteError;
use crate::sqlstate;

impl<'a> Walker<'a> {
    pub(super) fn find_cte(&self, name: &str) -> Option<usize> {
        self.ctes.iter().rposition(|c| c.name == name)
    }

    /// Makes the CTEs of a WITH clause visible; data-modifying ones are walked right away.
    pub(super) fn bind_ctes(&mut self, ctes: &'a [Cte], recursive: bool) -> usize {
        let first = self.ctes.len();
        for cte in ctes {
            self.visit_alias(&cte.alias);
            let position = self.ctes.len();
            let binding = CteBinding {
                name: norm(&cte.alias.name),
                query: &cte.query,
                alias_columns: cte.alias.columns.iter().map(|c| norm(&c.name)).collect(),
                scope_depth: self.scopes.len(),
                visible: if recursive { position + 1 } else { position },
                recursive,
                dml_columns: None,
                refs: 0,
            };
            let dml = matches!(
                *cte.query.body,
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            );
            self.ctes.push(binding);
            if dml {
                self.writes = true;
                let out = self.walk_query(&cte.query);
                let renamed = out.columns.rename(
                    &cte.alias
                        .columns
                        .iter()
                        .map(|c| norm(&c.name))
                        .collect::<Vec<_>>(),
                );
                self.dml_alts.push(out.alts);
                if let Some(b) = self.ctes.get_mut(position) {
                    b.dml_columns = Some(renamed);
                }
            }
        }
        if recursive {
            // WITH RECURSIVE: every query of the list may refer to any other (and itself).
            let end = self.ctes.len();
            for binding in self.ctes.get_mut(first..).unwrap_or_default() {
                binding.visible = end;
            }
        }
        first
    }

    /// Unbinds CTEs from `first` on; SELECT CTEs never referenced are still looked at, so the
    /// mention check knows their tables were seen (PostgreSQL does not run them).
    pub(super) fn unbind_ctes(&mut self, first: usize) {
        let unused: Vec<usize> = (first..self.ctes.len())
            .filter(|i| {
                self.ctes
                    .get(*i)
                    .is_some_and(|c| c.refs == 0 && c.dml_columns.is_none())
            })
            .collect();
        for index in unused {
            self.dry_walk_cte(index);
        }
        self.ctes.truncate(first);
    }

    /// Walks a CTE body only to look at it: identifiers count as seen and self-references are
    /// counted, but no facts are kept. Returns the number of self-references.
    fn dry_walk_cte(&mut self, index: usize) -> usize {
        let (occs, levels, links) = (self.occs.len(), self.levels.len(), self.links.len());
        let (error, single_only, self_refs) =
            (self.error.clone(), self.single_only.clone(), self.self_refs);
        self.walk_cte_body(index);
        let found = self.self_refs - self_refs;
        self.occs.truncate(occs);
        self.levels.truncate(levels);
        self.links.truncate(links);
        self.error = error;
        self.single_only = single_only;
        self.self_refs = self_refs;
        found
    }

    /// Walks a CTE body in the scope of its definition.
    pub(super) fn walk_cte_body(&mut self, index: usize) -> QueryOut {
        let Some(binding) = self.ctes.get(index).cloned() else {
            return QueryOut::default();
        };
        let visible = binding.visible;
        let saved_scopes = self
            .scopes
            .split_off(binding.scope_depth.min(self.scopes.len()));
        let saved_ctes = self.ctes.split_off(visible.min(self.ctes.len()));
        self.walking_ctes.push(index);
        self.check_next = true;
        let out = self.walk_query(binding.query);
        self.walking_ctes.pop();
        self.ctes.extend(saved_ctes);
        self.scopes.extend(saved_scopes);
        out
    }

    /// A FROM reference to a CTE.
    pub(super) fn cte_reference(
        &mut self,
        index: usize,
        alias: Option<&'a TableAlias>,
        mandatory: bool,
        alts: &mut Vec<Alt>,
    ) {
        let Some(binding) = self.ctes.get_mut(index) else {
            return;
        };
        binding.refs += 1;
        let binding = binding.clone();
        if let Some(alias) = alias {
            self.visit_alias(alias);
        }
        let exposed = alias.map_or_else(|| binding.name.clone(), |a| norm(&a.name));
        let alias_names: Vec<String> = alias
            .map(|a| a.columns.iter().map(|c| norm(&c.name)).collect())
            .unwrap_or_default();
        let columns = if let Some(columns) = &binding.dml_columns {
            if binding.refs > 1 && self.single_only.is_none() {
                self.single_only = Some(RouteError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "the data-modifying WITH query {} is used more than once, which shardline can only run on a single shard; restrict it by the shard key or split the statement",
                        binding.name
                    ),
                ));
            }
            columns.clone()
        } else if self.walking_ctes.contains(&index) {
            // The recursive term's reference to its own CTE: rows of earlier iterations.
            self.self_refs += 1;
            Columns::open()
        } else if binding.recursive && self.dry_walk_cte(index) > 0 {
            // A recursive CTE: its rows depend on earlier iterations, which may come from any
            // shard, so its tables must stay on one shard (they are walked as nested).
            let out = self.walk_cte_body(index);
            self.nest(&out.alts);
            Columns::open()
        } else {
            let out = self.walk_cte_body(index);
            let columns = out.columns.rename(&binding.alias_columns);
            if mandatory {
                let current = std::mem::take(alts);
                *alts = self.cross(current, out.alts);
            } else {
                self.nest(&out.alts);
            }
            columns
        };
        self.add_item(Item {
            name: Some(exposed),
            table: None,
            columns: columns.rename(&alias_names),
        });
    }
}
