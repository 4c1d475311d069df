//! Expressions: shard-key conditions (formulas and links), shard-key values (literals and
//! parameters), and the walk that visits every other expression to find subqueries.

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArguments, Query, Subscript, UnaryOperator, Value,
    WindowFrameBound, WindowSpec, WindowType,
};

use super::query::{column_parts, Alt, Formula, OccId, Walker};
use crate::key::KeyType;

/// A shard-key value as written in the statement, before the key type reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyExpr {
    /// A literal's text (numbers normalised to decimal).
    Literal(String),
    /// Literal NULL.
    Null,
    /// `$n` (0-based).
    Param(usize),
    /// `= ANY($n)` with an array parameter (0-based).
    ParamArray(usize),
    /// A literal that cannot be a key at all (malformed array literal, ...).
    Invalid(String),
}

/// The families of types whose casts keep a shard-key value intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Int,
    Numeric,
    Text,
    Uuid,
}

/// The family of a cast's target type, or `None` when the cast may change the value in a way
/// routing cannot follow (`varchar(3)` truncates, `numeric(4,1)` rounds, custom types...).
fn family(data_type: &DataType) -> Option<Family> {
    match data_type {
        DataType::Int2(None)
        | DataType::SmallInt(None)
        | DataType::Int(None)
        | DataType::Int4(None)
        | DataType::Integer(None)
        | DataType::Int8(None)
        | DataType::BigInt(None) => Some(Family::Int),
        DataType::Numeric(sqlparser::ast::ExactNumberInfo::None)
        | DataType::Decimal(sqlparser::ast::ExactNumberInfo::None) => Some(Family::Numeric),
        DataType::Text
        | DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::CharVarying(None) => Some(Family::Text),
        DataType::Uuid => Some(Family::Uuid),
        DataType::Custom(name, modifiers) if modifiers.is_empty() => {
            let last = super::query::name_parts(name)
                .last()
                .map(|i| i.value.to_ascii_lowercase())?;
            match last.as_str() {
                "int2" | "int4" | "int8" => Some(Family::Int),
                "text" | "varchar" => Some(Family::Text),
                "uuid" => Some(Family::Uuid),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a column of `key_type` cast to `family` still compares like the key itself.
fn keeps_key(key_type: KeyType, family: Family) -> bool {
    matches!(
        (key_type, family),
        (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, Family::Int)
            | (KeyType::Text, Family::Text)
            | (KeyType::Uuid, Family::Uuid)
    )
}

/// Removes redundant parentheses.
fn strip_nested(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// Normalises an integer literal's text: `1_000` → `1000`, `0x1F` → `31`.
fn number_text(text: &str) -> String {
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let (sign, digits) = match cleaned.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", cleaned.as_str()),
    };
    let lower = digits.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(body) = lower.strip_prefix(prefix) {
            if let Ok(v) = i128::from_str_radix(body, radix) {
                return format!("{sign}{v}");
            }
        }
    }
    cleaned
}

/// The parameter index of `$n`.
fn placeholder(text: &str) -> Option<usize> {
    let n: usize = text.strip_prefix('$')?.parse().ok()?;
    n.checked_sub(1)
}

/// A shard-key value written as a literal or parameter, seen through harmless casts.
pub(super) fn key_value(expr: &Expr) -> Option<KeyExpr> {
    match strip_nested(expr) {
        Expr::Value(v) => match &v.value {
            Value::Number(text, _) => Some(KeyExpr::Literal(number_text(text))),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(KeyExpr::Literal(s.clone())),
            Value::DollarQuotedString(d) => Some(KeyExpr::Literal(d.value.clone())),
            Value::HexStringLiteral(h) => Some(match i128::from_str_radix(h, 16) {
                Ok(v) => KeyExpr::Literal(v.to_string()),
                Err(_) => KeyExpr::Invalid(format!("0x{h} is not a valid shard key")),
            }),
            Value::Null => Some(KeyExpr::Null),
            Value::Placeholder(p) => placeholder(p).map(KeyExpr::Param),
            _ => None,
        },
        Expr::TypedString(ts) => {
            family(&ts.data_type)?;
            match &ts.value.value {
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => Some(KeyExpr::Literal(s.clone())),
                Value::DollarQuotedString(d) => Some(KeyExpr::Literal(d.value.clone())),
                _ => None,
            }
        }
        Expr::Cast {
            kind,
            expr,
            data_type,
            format: None,
        } if !matches!(kind, CastKind::TryCast | CastKind::SafeCast) => {
            family(data_type)?;
            key_value(expr)
        }
        Expr::UnaryOp { op, expr } => match (op, strip_nested(expr)) {
            (UnaryOperator::Minus, Expr::Value(v)) => match &v.value {
                Value::Number(text, _) => Some(KeyExpr::Literal(number_text(&format!("-{text}")))),
                _ => None,
            },
            (UnaryOperator::Plus, inner @ Expr::Value(v))
                if matches!(v.value, Value::Number(..)) =>
            {
                key_value(inner)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Literal and parameter elements of an array expression for `= ANY(...)`.
fn array_values(expr: &Expr) -> Option<Vec<KeyExpr>> {
    match strip_nested(expr) {
        Expr::Cast {
            expr, format: None, ..
        } => array_values(expr),
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => placeholder(p).map(|i| vec![KeyExpr::ParamArray(i)]),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                Some(match super::array::parse_text_array(s) {
                    Ok(elements) => elements
                        .into_iter()
                        .map(|e| e.map_or(KeyExpr::Null, KeyExpr::Literal))
                        .collect(),
                    Err(why) => vec![KeyExpr::Invalid(format!(
                        "malformed array literal {s:?}: {why}"
                    ))],
                })
            }
            Value::Null => Some(Vec::new()),
            _ => None,
        },
        Expr::Array(array) => array.elem.iter().map(key_value).collect(),
        _ => None,
    }
}

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
                    return if atoms {
                        Formula::Atom {
                            occs,
                            keys: vec![value],
                            insert: false,
                        }
                    } else {
                        Formula::True
                    };
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
                return if atoms {
                    Formula::Atom {
                        occs,
                        keys,
                        insert: false,
                    }
                } else {
                    Formula::True
                };
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
                return if atoms {
                    Formula::Atom {
                        occs,
                        keys,
                        insert: false,
                    }
                } else {
                    Formula::True
                };
            }
        }
        self.walk_expr(column);
        self.walk_expr(array);
        Formula::True
    }

    /// `column IN (SELECT …)`: the subquery's single output column, when it carries a shard key,
    /// is linked to `column` (a semi-join on the key only needs rows with that key). In a
    /// filtering position its one alternative is merged, so its restrictions count.
    fn in_subquery(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_literals_are_normalised() {
        for (text, want) in [
            ("1_000", "1000"),
            ("0x1F", "31"),
            ("-0x10", "-16"),
            ("0b101", "5"),
            ("0o17", "15"),
            ("42", "42"),
        ] {
            assert_eq!(number_text(text), want, "{text}");
        }
        assert_eq!(placeholder("$1"), Some(0));
        assert_eq!(placeholder("$0"), None);
        assert_eq!(placeholder("?"), None);
    }
}
