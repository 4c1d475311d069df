//! DML statements: INSERT (keys from the rows), UPDATE and DELETE (keys from WHERE, shard-key
//! changes checked), MERGE.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Insert, Merge, ObjectName,
    OnConflictAction, OnInsert, SelectItem, SetExpr, TableAlias, TableFactor, TableObject, Update,
    UpdateTableFromKind,
};

use super::value::key_value;
use super::walker::{
    column_parts, name_parts, norm, Alt, Columns, Formula, Item, OccId, QueryOut, TableKind, Walker,
};
use crate::plan::RouteError;
use crate::sqlstate;

impl<'a> Walker<'a> {
    /// The target of a DML statement: registers the occurrence as an anchor.
    fn dml_target(
        &mut self,
        name: &'a ObjectName,
        alias: Option<&'a TableAlias>,
        alts: &mut [Alt],
    ) -> Option<OccId> {
        let id = self.table_occurrence(name, alias, true, alts)?;
        if let Some(occ) = self.occs.get(id) {
            if occ.kind == TableKind::Reference && self.reference_write.is_none() {
                self.reference_write = Some(occ.name.clone());
            }
        }
        Some(id)
    }

    /// The table a DML statement writes: a plain table is its target (see
    /// [`Walker::dml_target`]); anything else is walked like a FROM item.
    fn dml_relation(&mut self, relation: &'a TableFactor, alts: &mut Vec<Alt>) -> Option<OccId> {
        match relation {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => self.dml_target(name, alias.as_ref(), alts),
            other => {
                self.factor(other, true, alts);
                None
            }
        }
    }

    /// Opens the level of a DML statement (which writes) and returns its one alternative.
    fn begin_dml(&mut self) -> Vec<Alt> {
        self.writes = true;
        let level = self.new_level();
        self.push_scope(level);
        vec![Alt::at(level)]
    }

    /// Closes the level of a DML statement; its RETURNING list gives the output columns.
    fn end_dml(&mut self, returning: Option<&'a [SelectItem]>, alts: Vec<Alt>) -> QueryOut {
        let columns = match returning {
            Some(items) => self.projection(items),
            None => Columns::default(),
        };
        self.pop_scope();
        QueryOut { columns, alts }
    }

    pub(super) fn walk_update(&mut self, update: &'a Update) -> QueryOut {
        let mut alts = self.begin_dml();
        let target = self.dml_relation(&update.table.relation, &mut alts);
        for join in &update.table.joins {
            self.factor(&join.relation, true, &mut alts);
        }
        if let Some(from) = &update.from {
            let tables = match from {
                UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t) => t,
            };
            for twj in tables {
                self.table_with_joins(twj, true, &mut alts);
            }
        }
        if let Some(selection) = &update.selection {
            let formula = self.formula(selection, true, true, Some(&mut alts));
            self.add_formula(formula);
        }
        self.assignments(&update.assignments, target, false);
        self.end_dml(update.returning.as_deref(), alts)
    }

    /// Checks SET targets for the shard key and walks the values. `on_conflict`: the SET of
    /// `ON CONFLICT DO UPDATE`, where only `key = excluded.key` (no change) is allowed.
    fn assignments(
        &mut self,
        assignments: &'a [Assignment],
        target: Option<OccId>,
        on_conflict: bool,
    ) {
        let key_column = target
            .and_then(|t| self.occs.get(t))
            .filter(|o| o.kind == TableKind::Sharded)
            .and_then(|o| o.rule.as_ref())
            .and_then(|r| self.config.tables.get(r))
            .and_then(|r| r.key_column())
            .map(str::to_owned);
        for assignment in assignments {
            let (columns, values): (Vec<&ObjectName>, Vec<&Expr>) =
                match (&assignment.target, &assignment.value) {
                    (AssignmentTarget::ColumnName(c), v) => (vec![c], vec![v]),
                    (AssignmentTarget::Tuple(cs), Expr::Tuple(vs)) if cs.len() == vs.len() => {
                        (cs.iter().collect(), vs.iter().collect())
                    }
                    (AssignmentTarget::Tuple(cs), v) => (cs.iter().collect(), vec![v]),
                };
            self.walk_expr(&assignment.value);
            for (i, column) in columns.iter().enumerate() {
                self.visit_name(column);
                let Some(last) = name_parts(column).last().map(|i| norm(i)) else {
                    continue;
                };
                let (Some(key), Some(target)) = (&key_column, target) else {
                    continue;
                };
                if &last != key {
                    continue;
                }
                let value = if values.len() == columns.len() {
                    values.get(i).copied()
                } else {
                    None
                };
                self.key_assignment(target, key, value, on_conflict);
            }
        }
    }

    /// `SET key = value` on a sharded table: fine when the value is the row's own key (or the
    /// proposed row's key in ON CONFLICT); a literal or parameter is checked at routing time
    /// (the row must stay on its shard); anything else cannot be routed.
    fn key_assignment(
        &mut self,
        target: OccId,
        key: &str,
        value: Option<&'a Expr>,
        on_conflict: bool,
    ) {
        let table = self
            .occs
            .get(target)
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let refuse = |w: &mut Walker<'a>| {
            w.fail(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("changing the shard key {table}.{key} with UPDATE is not supported: the row would have to move to another shard; move the row by DELETE and INSERT"),
            );
        };
        let Some(value) = value else {
            return refuse(self);
        };
        if column_parts(value).is_some() {
            // `SET key = key` (or `= excluded.key` in ON CONFLICT): the key does not change.
            let same_column = self.key_ref(value).contains(&target);
            if same_column {
                return;
            }
            return refuse(self);
        }
        match key_value(value) {
            Some(expr) if !on_conflict => {
                if self.key_update.is_some() {
                    return refuse(self);
                }
                self.key_update = Some((target, expr));
            }
            _ => refuse(self),
        }
    }

    pub(super) fn walk_delete(&mut self, delete: &'a Delete) -> QueryOut {
        let mut alts = self.begin_dml();
        let tables = match &delete.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
        };
        for twj in tables {
            self.dml_relation(&twj.relation, &mut alts);
            for join in &twj.joins {
                self.factor(&join.relation, true, &mut alts);
            }
        }
        for name in &delete.tables {
            self.visit_name(name);
        }
        if let Some(using) = &delete.using {
            for twj in using {
                self.table_with_joins(twj, true, &mut alts);
            }
        }
        if let Some(selection) = &delete.selection {
            let formula = self.formula(selection, true, true, Some(&mut alts));
            self.add_formula(formula);
        }
        self.end_dml(delete.returning.as_deref(), alts)
    }

    pub(super) fn walk_insert(&mut self, insert: &'a Insert) -> QueryOut {
        let mut alts = self.begin_dml();
        if let Some(alias) = &insert.table_alias {
            self.visit(&alias.alias);
        }
        let alias = insert.table_alias.as_ref().map(|a| norm(&a.alias));
        let target = match &insert.table {
            TableObject::TableName(name) => {
                let id = self.dml_target(name, None, &mut alts);
                if let Some(alias) = &alias {
                    self.rename_last_item(alias);
                }
                id
            }
            TableObject::TableFunction(f) => {
                self.walk_function(f);
                None
            }
            TableObject::TableQuery(q) => {
                let out = self.walk_query(q);
                self.nest(&out.alts);
                None
            }
        };
        let target_occ = target.and_then(|t| self.occs.get(t).cloned());
        let sharded = target_occ.as_ref().filter(|o| o.kind == TableKind::Sharded);
        let key_column = sharded
            .and_then(|o| o.rule.as_ref())
            .and_then(|r| self.config.tables.get(r))
            .and_then(|r| r.key_column())
            .map(str::to_owned);
        let table_name = target_occ
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        for c in &insert.columns {
            self.visit_name(c);
        }

        match &insert.source {
            Some(source) => {
                let rows = match source.body.as_ref() {
                    SetExpr::Values(values) if source.with.is_none() => Some(values),
                    _ => None,
                };
                match (rows, &key_column) {
                    (Some(values), Some(key)) => {
                        let position = insert.columns.iter().position(|c| {
                            name_parts(c).last().map(|i| norm(i)).as_deref() == Some(key.as_str())
                        });
                        for row in &values.rows {
                            for e in row.iter() {
                                self.walk_expr(e);
                            }
                        }
                        match position {
                            None if insert.columns.is_empty() => self.fail(
                                sqlstate::FEATURE_NOT_SUPPORTED,
                                format!("INSERT into sharded table {table_name} needs an explicit column list (INSERT INTO {table_name} ({key}, …) VALUES …) so shardline can find the shard key {key}"),
                            ),
                            None => self.fail(
                                sqlstate::FEATURE_NOT_SUPPORTED,
                                format!("INSERT into sharded table {table_name} must set the shard key column {key}; shardline cannot route the row otherwise"),
                            ),
                            Some(position) => {
                                let mut keys = Vec::with_capacity(values.rows.len());
                                for row in &values.rows {
                                    match row.get(position).and_then(key_value) {
                                        Some(k) => keys.push(k),
                                        None => {
                                            self.fail(
                                                sqlstate::FEATURE_NOT_SUPPORTED,
                                                format!("the shard key {table_name}.{key} in an INSERT must be a literal or a $n parameter, not an expression (DEFAULT and function calls cannot be routed); compute the key in the application"),
                                            );
                                            break;
                                        }
                                    }
                                }
                                if values.rows.len() > 1 {
                                    self.single_only = Some(RouteError::new(
                                        sqlstate::FEATURE_NOT_SUPPORTED,
                                        "multi-row INSERT whose rows belong to different shards is not supported yet; insert the rows separately",
                                    ));
                                }
                                if let Some(t) = target {
                                    self.add_formula(Formula::Atom {
                                        occs: vec![t],
                                        keys,
                                        insert: true,
                                    });
                                }
                            }
                        }
                    }
                    (_, Some(_)) => {
                        let out = self.walk_query(source);
                        self.nest(&out.alts);
                        self.fail(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!("INSERT … SELECT into sharded table {table_name} is not supported yet; insert the rows with INSERT … VALUES"),
                        );
                    }
                    (_, None) => {
                        let out = self.walk_query(source);
                        alts = self.cross(alts, out.alts);
                    }
                }
            }
            None => {
                if let Some(key) = &key_column {
                    self.fail(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("INSERT into sharded table {table_name} must set the shard key column {key}; DEFAULT VALUES cannot be routed"),
                    );
                }
            }
        }

        if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
            match &on_conflict.conflict_target {
                Some(sqlparser::ast::ConflictTarget::Columns(columns)) => {
                    columns.iter().for_each(|c| self.visit(c))
                }
                Some(sqlparser::ast::ConflictTarget::OnConstraint(name)) => self.visit_name(name),
                None => {}
            }
            if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                let level = self.new_level();
                self.push_scope(level);
                if let Some(occ) = &target_occ {
                    let mut columns = Columns::open();
                    if let Some(key) = &key_column {
                        columns.known.push((key.clone(), vec![target.unwrap_or(0)]));
                    }
                    self.add_item(Item {
                        name: Some(alias.clone().unwrap_or_else(|| occ.name.clone())),
                        table: Some(occ.name.clone()),
                        columns: columns.clone(),
                    });
                    self.add_item(Item {
                        name: Some("excluded".into()),
                        table: None,
                        columns,
                    });
                }
                self.assignments(&update.assignments, target, true);
                if let Some(selection) = &update.selection {
                    self.walk_expr(selection);
                }
                self.pop_scope();
                if let Some(l) = self.levels.get_mut(level) {
                    l.nested_in = Some(
                        alts.first()
                            .and_then(|a| a.levels.first().copied())
                            .unwrap_or(level),
                    );
                }
            }
        }
        self.end_dml(insert.returning.as_deref(), alts)
    }

    /// MERGE: the target is refused when sharded over several shards (key values of inserted
    /// rows come from the source and cannot be checked here yet).
    pub(super) fn walk_merge(&mut self, merge: &'a Merge) -> QueryOut {
        let mut alts = self.begin_dml();
        let target = self.dml_relation(&merge.table, &mut alts);
        self.factor(&merge.source, true, &mut alts);
        let _links_only = self.formula(&merge.on, false, true, None);
        for clause in &merge.clauses {
            if let Some(p) = &clause.predicate {
                self.walk_expr(p);
            }
            match &clause.action {
                sqlparser::ast::MergeAction::Insert(insert) => {
                    for c in &insert.columns {
                        self.visit_name(c);
                    }
                    if let sqlparser::ast::MergeInsertKind::Values(values) = &insert.kind {
                        for row in &values.rows {
                            for e in row.iter() {
                                self.walk_expr(e);
                            }
                        }
                    }
                }
                sqlparser::ast::MergeAction::Update(update) => {
                    if let sqlparser::ast::MergeUpdateKind::Set(assignments) = &update.kind {
                        for a in assignments {
                            let columns: Vec<&ObjectName> = match &a.target {
                                AssignmentTarget::ColumnName(c) => vec![c],
                                AssignmentTarget::Tuple(cs) => cs.iter().collect(),
                            };
                            for c in columns {
                                self.visit_name(c);
                            }
                            self.walk_expr(&a.value);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(occ) = target.and_then(|t| self.occs.get(t)) {
            if occ.kind == TableKind::Sharded {
                self.single_only = Some(RouteError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("MERGE into sharded table {} is not supported yet when it spans several shards; use INSERT … ON CONFLICT, UPDATE or DELETE", occ.name),
                ));
            }
        }
        self.pop_scope();
        QueryOut {
            columns: Columns::open(),
            alts,
        }
    }
}
