//! Whether the rows of a SELECT that an outer query combines can come from several shards:
//! aggregates, DISTINCT, window functions and LIMIT across shard keys only give the right
//! answer when every row they combine comes from one shard.

use std::collections::HashSet;

use sqlparser::ast::{Expr, Query, Select};

use super::walker::{name_parts, Alt, Columns, OccId, Walker};

/// What a SELECT list computes, collected while walking its expressions.
#[derive(Debug, Default)]
pub(super) struct Aggregation<'a> {
    /// An aggregate function call (count, sum, ...).
    aggregate: bool,
    /// Window specifications of window function calls.
    windows: Vec<&'a sqlparser::ast::WindowSpec>,
    /// A window function referring to a named window.
    named_window: bool,
}

/// Aggregate functions of PostgreSQL, by name (calls with FILTER or WITHIN GROUP count too).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_objectagg",
    "json_arrayagg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

impl<'a> Walker<'a> {
    /// Records a function call of the SELECT list being walked.
    pub(super) fn note_function(&mut self, f: &'a sqlparser::ast::Function) {
        let Some(current) = self.aggregations.last_mut() else {
            return;
        };
        match &f.over {
            Some(sqlparser::ast::WindowType::WindowSpec(spec)) => current.windows.push(spec),
            Some(sqlparser::ast::WindowType::NamedWindow(_)) => current.named_window = true,
            None => {
                let name = name_parts(&f.name)
                    .last()
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default();
                if AGGREGATES.contains(&name.as_str())
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                {
                    current.aggregate = true;
                }
            }
        }
    }

    /// Whether a SELECT whose rows an outer query combines computes each row from one shard
    /// key's rows only: no aggregation, DISTINCT, window or LIMIT across keys. Grouping or
    /// partitioning by the shard key, or correlation to the outer query on the key, keeps rows
    /// local; the proxy merges aggregation only at the top level.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows_stay_on_their_shard(
        &mut self,
        select: &'a Select,
        query: Option<&'a Query>,
        aggregation: &Aggregation<'a>,
        columns: &Columns,
        alts: &[Alt],
        occs_before: usize,
        links_before: usize,
    ) -> bool {
        let anchors: HashSet<OccId> = alts
            .iter()
            .flat_map(|a| a.anchors.iter().copied())
            .collect();
        if anchors.is_empty() {
            return true;
        }
        let limited = query.is_some_and(|q| q.limit_clause.is_some() || q.fetch.is_some());
        let grouped = match &select.group_by {
            sqlparser::ast::GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
            sqlparser::ast::GroupByExpr::All(_) => true,
        };
        let distinct = matches!(
            select.distinct,
            Some(sqlparser::ast::Distinct::Distinct | sqlparser::ast::Distinct::On(_))
        );
        if !(limited
            || grouped
            || distinct
            || aggregation.aggregate
            || aggregation.named_window
            || !aggregation.windows.is_empty())
        {
            return true;
        }
        // Correlated on the shard key: computed once per outer key, on that key's shard.
        let correlated = self
            .links
            .get(links_before..)
            .unwrap_or_default()
            .iter()
            .any(|(a, b)| {
                (anchors.contains(a) && *b < occs_before)
                    || (anchors.contains(b) && *a < occs_before)
            });
        if correlated {
            return true;
        }
        if limited || aggregation.named_window {
            return false;
        }
        let output_has_key = columns
            .known
            .iter()
            .any(|(_, lineage)| lineage.iter().any(|o| anchors.contains(o)));
        let keyed = |w: &mut Walker<'a>, exprs: &'a [Expr]| {
            exprs
                .iter()
                .any(|e| w.key_ref(e).iter().any(|o| anchors.contains(o)))
        };
        if grouped {
            let by_key = match &select.group_by {
                sqlparser::ast::GroupByExpr::Expressions(exprs, _) => keyed(self, exprs),
                sqlparser::ast::GroupByExpr::All(_) => output_has_key,
            };
            if !by_key {
                return false;
            }
        } else if aggregation.aggregate {
            return false;
        }
        match &select.distinct {
            Some(sqlparser::ast::Distinct::Distinct) if !output_has_key => return false,
            Some(sqlparser::ast::Distinct::On(exprs)) if !keyed(self, exprs) => return false,
            _ => {}
        }
        let windows = aggregation.windows.clone();
        windows.iter().all(|spec| keyed(self, &spec.partition_by))
    }
}
