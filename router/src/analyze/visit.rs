//! The walk that visits every part of an expression: identifiers (for the check that every
//! configured table named in the text was seen) and subqueries (walked as nested levels).

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, Query, Subscript, WindowFrameBound, WindowSpec, WindowType,
};

use super::value::strip_nested;
use super::walker::Walker;

impl<'a> Walker<'a> {
    /// A subquery in an expression that does not filter the current rows.
    fn nested_query(&mut self, query: &'a Query) {
        let out = self.walk_query(query);
        self.nest(&out.alts);
    }

    /// Visits every part of an expression: identifiers (for the mention check) and subqueries
    /// (walked as nested). Iterative, so long operator chains cannot exhaust the stack.
    pub(super) fn walk_expr(&mut self, root: &'a Expr) {
        let mut stack: Vec<&'a Expr> = vec![root];
        while let Some(expr) = stack.pop() {
            match expr {
                Expr::Identifier(i) => self.visit(i),
                Expr::CompoundIdentifier(parts) => parts.iter().for_each(|p| self.visit(p)),
                Expr::CompoundFieldAccess { root, access_chain } => {
                    stack.push(root);
                    for access in access_chain {
                        match access {
                            sqlparser::ast::AccessExpr::Dot(e) => stack.push(e),
                            sqlparser::ast::AccessExpr::Subscript(Subscript::Index { index }) => {
                                stack.push(index)
                            }
                            sqlparser::ast::AccessExpr::Subscript(Subscript::Slice {
                                lower_bound,
                                upper_bound,
                                stride,
                            }) => {
                                stack.extend(lower_bound.iter().chain(upper_bound).chain(stride));
                            }
                        }
                    }
                }
                Expr::JsonAccess { value, .. } => stack.push(value),
                Expr::IsFalse(e)
                | Expr::IsNotFalse(e)
                | Expr::IsTrue(e)
                | Expr::IsNotTrue(e)
                | Expr::IsNull(e)
                | Expr::IsNotNull(e)
                | Expr::IsUnknown(e)
                | Expr::IsNotUnknown(e)
                | Expr::Nested(e)
                | Expr::OuterJoin(e)
                | Expr::Prior(e) => stack.push(e),
                Expr::IsJson { expr, .. } | Expr::IsNormalized { expr, .. } => stack.push(expr),
                Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                    stack.push(a);
                    stack.push(b);
                }
                Expr::InList { expr, list, .. } => {
                    stack.push(expr);
                    stack.extend(list);
                }
                Expr::InSubquery {
                    expr,
                    subquery,
                    negated,
                } => {
                    stack.push(expr);
                    self.in_subquery(expr, subquery, !negated, false, None);
                }
                Expr::InUnnest {
                    expr, array_expr, ..
                } => {
                    stack.push(expr);
                    stack.push(array_expr);
                }
                Expr::Between {
                    expr, low, high, ..
                } => {
                    stack.push(expr);
                    stack.push(low);
                    stack.push(high);
                }
                Expr::BinaryOp { left, right, .. } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::Like {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::ILike {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::SimilarTo {
                    expr,
                    pattern,
                    escape_char,
                    ..
                } => {
                    stack.push(expr);
                    stack.push(pattern);
                    stack.extend(escape_char.as_deref());
                }
                Expr::RLike { expr, pattern, .. } => {
                    stack.push(expr);
                    stack.push(pattern);
                }
                Expr::AnyOp {
                    left,
                    compare_op,
                    right,
                    ..
                } => {
                    stack.push(left);
                    match strip_nested(right) {
                        Expr::Subquery(q) => self.in_subquery(
                            left,
                            q,
                            *compare_op == BinaryOperator::Eq,
                            false,
                            None,
                        ),
                        _ => stack.push(right),
                    }
                }
                Expr::AllOp { left, right, .. } => {
                    stack.push(left);
                    stack.push(right);
                }
                Expr::UnaryOp { expr, .. }
                | Expr::Cast { expr, .. }
                | Expr::Extract { expr, .. }
                | Expr::Ceil { expr, .. }
                | Expr::Floor { expr, .. }
                | Expr::Collate { expr, .. }
                | Expr::Named { expr, .. } => stack.push(expr),
                Expr::Convert { expr, styles, .. } => {
                    stack.push(expr);
                    stack.extend(styles);
                }
                Expr::AtTimeZone {
                    timestamp,
                    time_zone,
                } => {
                    stack.push(timestamp);
                    stack.push(time_zone);
                }
                Expr::Position { expr, r#in } => {
                    stack.push(expr);
                    stack.push(r#in);
                }
                Expr::Substring {
                    expr,
                    substring_from,
                    substring_for,
                    ..
                } => {
                    stack.push(expr);
                    stack.extend(substring_from.as_deref());
                    stack.extend(substring_for.as_deref());
                }
                Expr::Trim {
                    expr,
                    trim_what,
                    trim_characters,
                    ..
                } => {
                    stack.push(expr);
                    stack.extend(trim_what.as_deref());
                    stack.extend(trim_characters.iter().flatten());
                }
                Expr::Overlay {
                    expr,
                    overlay_what,
                    overlay_from,
                    overlay_for,
                } => {
                    stack.push(expr);
                    stack.push(overlay_what);
                    stack.push(overlay_from);
                    stack.extend(overlay_for.as_deref());
                }
                Expr::Value(_)
                | Expr::TypedString(_)
                | Expr::Wildcard(_)
                | Expr::MatchAgainst { .. } => {}
                Expr::QualifiedWildcard(name, _) => self.visit_name(name),
                Expr::Prefixed { value, .. } => stack.push(value),
                Expr::Function(f) => self.walk_function(f),
                Expr::Case {
                    operand,
                    conditions,
                    else_result,
                    ..
                } => {
                    stack.extend(operand.as_deref());
                    for when in conditions {
                        stack.push(&when.condition);
                        stack.push(&when.result);
                    }
                    stack.extend(else_result.as_deref());
                }
                Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => {
                    self.nested_query(subquery)
                }
                Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                    stack.extend(sets.iter().flatten())
                }
                Expr::Tuple(items) => stack.extend(items),
                Expr::Struct { values, .. } => stack.extend(values),
                Expr::Array(array) => stack.extend(&array.elem),
                Expr::Interval(interval) => stack.push(&interval.value),
                Expr::Dictionary(fields) => stack.extend(fields.iter().map(|f| f.value.as_ref())),
                Expr::Map(map) => {
                    for entry in &map.entries {
                        stack.push(&entry.key);
                        stack.push(&entry.value);
                    }
                }
                Expr::Lambda(lambda) => stack.push(&lambda.body),
                Expr::MemberOf(member) => {
                    stack.push(&member.value);
                    stack.push(&member.array);
                }
            }
        }
    }

    /// Visits a function call: name, arguments, FILTER, WITHIN GROUP, OVER.
    pub(super) fn walk_function(&mut self, f: &'a Function) {
        self.visit_name(&f.name);
        self.note_function(f);
        for args in [&f.parameters, &f.args] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => self.nested_query(q),
                FunctionArguments::List(list) => {
                    for arg in &list.args {
                        self.function_arg(arg);
                    }
                    for clause in &list.clauses {
                        match clause {
                            FunctionArgumentClause::Where(e) | FunctionArgumentClause::Limit(e) => {
                                self.walk_expr(e)
                            }
                            FunctionArgumentClause::OrderBy(items) => {
                                items.iter().for_each(|o| self.walk_expr(&o.expr))
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        if let Some(filter) = &f.filter {
            self.walk_expr(filter);
        }
        for o in &f.within_group {
            self.walk_expr(&o.expr);
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.window_spec(spec);
        }
    }

    pub(super) fn function_arg(&mut self, arg: &'a FunctionArg) {
        let value = match arg {
            FunctionArg::Named { arg, .. } => arg,
            FunctionArg::ExprNamed { name, arg, .. } => {
                self.walk_expr(name);
                arg
            }
            FunctionArg::Unnamed(arg) => arg,
        };
        match value {
            FunctionArgExpr::Expr(e) => self.walk_expr(e),
            FunctionArgExpr::QualifiedWildcard(name) => self.visit_name(name),
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {}
        }
    }

    pub(super) fn window_spec(&mut self, spec: &'a WindowSpec) {
        for e in &spec.partition_by {
            self.walk_expr(e);
        }
        for o in &spec.order_by {
            self.walk_expr(&o.expr);
        }
        if let Some(frame) = &spec.window_frame {
            for bound in std::iter::once(&frame.start_bound).chain(frame.end_bound.as_ref()) {
                if let WindowFrameBound::Preceding(Some(e)) | WindowFrameBound::Following(Some(e)) =
                    bound
                {
                    self.walk_expr(e);
                }
            }
        }
    }
}
