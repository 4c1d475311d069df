//! Shard-key conditions: WHERE and ON clauses as formulas over shard keys (`=`, `IN`,
//! `= ANY`, AND/OR), the links that equalities between shard keys create, and `IN` / `EXISTS`
//! subqueries in filtering position.

use sqlparser::ast::{BinaryOperator, Expr, Query};

use super::value::{array_values, family, keeps_key, key_value, strip_nested, KeyExpr};
use super::walker::{column_parts, Alt, Formula, OccId, Walker};
use crate::key::KeyType;

impl<'a> Walker<'a> {
    /// The sharded occurrences whose shard key `expr` denotes: a column reference, possibly in
    /// parentheses or cast to a type that compares like the key.
    pub(super) fn key_ref(&mut self, expr: &'a Expr) -> Vec<OccId> {
        match strip_nested(expr) {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match column_parts(expr) {
                Some(parts) => self.resolve_column(&parts),
                None => Vec::new(),
            },
            Expr::Cast {
                expr,
                data_type,
                format: None,
                ..
            } => {
                let Some(family) = family(data_type) else {
                    self.walk_expr(expr);
                    return Vec::new();
                };
                let occs = self.key_ref(expr);
                occs.into_iter()
                    .filter(|o| self.occ_key_type(*o).is_some_and(|t| keeps_key(t, family)))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn occ_key_type(&self, occ: OccId) -> Option<KeyType> {
        let rule = self.occs.get(occ)?.rule.as_ref()?;
        self.config.tables.get(rule)?.key_type()
    }

    /// A condition as a formula over shard keys. `atoms`: whether key restrictions may be
    /// recorded (false for outer-join ON clauses, which do not filter the preserved side).
    /// `conj`: whether the condition is reached through ANDs only, so equalities between keys
    /// hold in every row and link the tables. `alts`: the alternatives of the current level,
    /// into which EXISTS / IN subqueries in filtering position are merged.
    pub(super) fn formula(
        &mut self,
        expr: &'a Expr,
        atoms: bool,
        conj: bool,
        mut alts: Option<&mut Vec<Alt>>,
    ) -> Formula {
        let expr = strip_nested(expr);
        if let Expr::BinaryOp {
            op: op @ (BinaryOperator::And | BinaryOperator::Or),
            ..
        } = expr
        {
            let parts = flatten(expr, op);
            if *op == BinaryOperator::And {
                let mut out = Vec::with_capacity(parts.len());
                for part in parts {
                    out.push(self.formula(part, atoms, conj, alts.as_deref_mut()));
                }
                return Formula::And(out);
            }
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                out.push(self.formula(part, atoms, false, None));
            }
            return Formula::Or(out);
        }
        match expr {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => self.equality(left, right, atoms, conj),
            Expr::InList {
                expr: column,
                list,
                negated: false,
            } => self.in_list(column, list, atoms, conj),
            Expr::InSubquery {
                expr: column,
                subquery,
                negated,
            } => {
                self.walk_expr(column);
                self.in_subquery(column, subquery, !negated, conj && !negated, alts);
                Formula::True
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => match strip_nested(right) {
                Expr::Subquery(q) => {
                    self.walk_expr(left);
                    self.in_subquery(left, q, true, conj, alts);
                    Formula::True
                }
                _ => self.any_values(left, right, atoms),
            },
            Expr::Exists { subquery, negated } => {
                let out = self.walk_query(subquery);
                match alts {
                    Some(alts) if conj && !negated && out.alts.len() == 1 => {
                        let current = std::mem::take(alts);
                        *alts = self.cross(current, out.alts);
                    }
                    _ => self.nest(&out.alts),
                }
                Formula::True
            }
            _ => {
                self.walk_expr(expr);
                Formula::True
            }
        }
    }

    fn equality(&mut self, left: &'a Expr, right: &'a Expr, atoms: bool, conj: bool) -> Formula {
        if let (Expr::Tuple(l), Expr::Tuple(r)) = (strip_nested(left), strip_nested(right)) {
            if l.len() == r.len() {
                let mut parts = Vec::with_capacity(l.len());
                for (a, b) in l.iter().zip(r) {
                    parts.push(self.equality(a, b, atoms, conj));
                }
                return Formula::And(parts);
            }
        }
        let lk = self.key_ref(left);
        let rk = self.key_ref(right);
        if !lk.is_empty() && !rk.is_empty() {
            if conj {
                self.link(&lk, &rk);
            }
            return Formula::True;
        }
        for (occs, other) in [(lk, right), (rk, left)] {
            if !occs.is_empty() {
                if let Some(value) = key_value(other) {
                    return key_atom(occs, vec![value], atoms);
                }
            }
        }
        self.walk_expr(left);
        self.walk_expr(right);
        Formula::True
    }

    fn in_list(&mut self, column: &'a Expr, list: &'a [Expr], atoms: bool, conj: bool) -> Formula {
        if let Expr::Tuple(columns) = strip_nested(column) {
            let rows: Option<Vec<&'a Vec<Expr>>> = list
                .iter()
                .map(|item| match strip_nested(item) {
                    Expr::Tuple(values) if values.len() == columns.len() => Some(values),
                    _ => None,
                })
                .collect();
            if let Some(rows) = rows {
                let mut alternatives = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut parts = Vec::with_capacity(columns.len());
                    for (c, v) in columns.iter().zip(row) {
                        parts.push(self.equality(c, v, atoms, conj && list.len() == 1));
                    }
                    alternatives.push(Formula::And(parts));
                }
                return Formula::Or(alternatives);
            }
        }
        let occs = self.key_ref(column);
        if !occs.is_empty() {
            let keys: Option<Vec<KeyExpr>> = list.iter().map(key_value).collect();
            if let Some(keys) = keys {
                return key_atom(occs, keys, atoms);
            }
        }
        self.walk_expr(column);
        for e in list {
            self.walk_expr(e);
        }
        Formula::True
    }

    fn any_values(&mut self, column: &'a Expr, array: &'a Expr, atoms: bool) -> Formula {
        let occs = self.key_ref(column);
        if !occs.is_empty() {
            if let Some(keys) = array_values(array) {
                return key_atom(occs, keys, atoms);
            }
        }
        self.walk_expr(column);
        self.walk_expr(array);
        Formula::True
    }

    /// `column IN (SELECT …)`: the subquery's single output column, when it carries a shard key,
    /// is linked to `column` (a semi-join on the key only needs rows with that key). In a
    /// filtering position its one alternative is merged, so its restrictions count.
    pub(super) fn in_subquery(
        &mut self,
        column: &'a Expr,
        subquery: &'a Query,
        link: bool,
        filter: bool,
        alts: Option<&mut Vec<Alt>>,
    ) {
        self.check_next = true;
        let out = self.walk_query(subquery);
        if link {
            match strip_nested(column) {
                Expr::Tuple(columns) => {
                    if !out.columns.open && out.columns.known.len() == columns.len() {
                        for (c, (_, lineage)) in columns.iter().zip(&out.columns.known) {
                            let occs = self.key_ref(c);
                            self.link(&occs, lineage);
                        }
                    }
                }
                _ => {
                    if let [(_, lineage)] = out.columns.known.as_slice() {
                        let occs = self.key_ref(column);
                        self.link(&occs, lineage);
                    }
                }
            }
        }
        match alts {
            Some(alts) if filter && out.alts.len() == 1 => {
                let current = std::mem::take(alts);
                *alts = self.cross(current, out.alts);
            }
            _ => self.nest(&out.alts),
        }
    }
}

/// The operands of a chain of one operator (`a AND b AND c`), without recursion.
fn flatten<'e>(expr: &'e Expr, op: &BinaryOperator) -> Vec<&'e Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match strip_nested(e) {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                stack.push(right);
                stack.push(left);
            }
            other => out.push(other),
        }
    }
    out
}

/// The restriction `key ∈ keys` on `occs`, when key restrictions may be recorded (`atoms`);
/// otherwise no information.
fn key_atom(occs: Vec<OccId>, keys: Vec<KeyExpr>, atoms: bool) -> Formula {
    if atoms {
        Formula::Atom {
            occs,
            keys,
            insert: false,
        }
    } else {
        Formula::True
    }
}
