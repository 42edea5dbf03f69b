//! The query language: a [`Query`] AST with a builder, an aggregate pipeline,
//! and the reference evaluator every adapter must agree with.
//!
//! The rules are written down, with an example per rule, in `docs/QUERY.md`.

mod aggregate;
mod builder;
mod eval;
mod path;
mod serde_impl;
mod text;
mod value;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{Direction, Document};

pub use aggregate::{Accumulator, AggregateStage, aggregate};
pub use builder::{FieldRef, and, field, not, or, parse_pipeline};
pub use eval::{CompiledFilter, CompiledQuery, Match, count, evaluate};
pub use path::{FieldPath, MAX_PATH_LEN};
pub use text::words;
pub use value::{TypeBracket, compare_total, compare_values, type_bracket, values_equal};

/// Comparison operators of a [`Filter::Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Equal (any element of an array field; `null` matches null and missing).
    Eq,
    /// Not equal (also matches documents where the field is missing).
    Ne,
    /// Greater than, within one type bracket.
    Gt,
    /// Greater than or equal, within one type bracket.
    Gte,
    /// Less than, within one type bracket.
    Lt,
    /// Less than or equal, within one type bracket.
    Lte,
    /// Equal to any value of the array operand.
    In,
    /// Equal to none of the values of the array operand (also matches missing).
    Nin,
    /// The string field matches the regular expression (the `regex` crate's syntax).
    Regex,
    /// The field exists (operand `true`) or does not (operand `false`).
    Exists,
    /// Full-text match: every word of the operand occurs in the string field, case-insensitively.
    Text,
    /// The point `[x, y]` or `{x, y}` lies inside the box `{"min": [x, y], "max": [x, y]}` (bounds included).
    WithinBox,
}

impl Operator {
    /// The operator as written in the JSON form (`eq`, `within_box`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::Gt => "gt",
            Self::Gte => "gte",
            Self::Lt => "lt",
            Self::Lte => "lte",
            Self::In => "in",
            Self::Nin => "nin",
            Self::Regex => "regex",
            Self::Exists => "exists",
            Self::Text => "text",
            Self::WithinBox => "within_box",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A where clause.
///
/// Serialized as `{"field": "age", "op": "gt", "value": 30}`, `{"and": [...]}`,
/// `{"or": [...]}`, `{"not": {...}}` or `{"field": "address", "nested": {...}}`;
/// `Display` writes that JSON form on one line (for `explain` output and error context).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `field op value`.
    Condition {
        /// Dotted field path.
        field: String,
        /// Operator.
        op: Operator,
        /// Operand.
        value: Document,
    },
    /// Every clause holds (an empty list always holds).
    And(Vec<Filter>),
    /// Some clause holds (an empty list never holds).
    Or(Vec<Filter>),
    /// The clause does not hold.
    Not(Box<Filter>),
    /// The clause holds for the sub-document at `field`, or for some element of the array there.
    Nested {
        /// Dotted field path of the sub-document or array.
        field: String,
        /// Clause applied to it, with paths relative to it.
        filter: Box<Filter>,
    },
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

/// One `order_by` key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    /// Dotted field path.
    pub field: String,
    /// Direction.
    #[serde(default)]
    pub direction: Direction,
}

/// A query: filter, order, paging and projection.
///
/// Results are ordered by `order_by` (ties broken by key ascending; by key alone
/// without `order_by`), then `offset` entries are skipped, then at most `limit` returned.
///
/// Serialized as `{"where": filter, "order_by": [{"field": "age", "direction": "desc"}],
/// "limit": 10, "offset": 0, "select": ["name"]}`, every member optional
/// (`orderBy` is accepted for `order_by`); unknown members are rejected.
///
/// # Example
/// ```
/// use storage_core::query::field;
/// use storage_core::Query;
///
/// let q: Query = serde_json::from_str(
///     r#"{"where": {"field": "age", "op": "gt", "value": 30}, "order_by": [{"field": "age"}], "limit": 2}"#,
/// )?;
/// assert_eq!(q, Query::filter(field("age").gt(30)).order_asc("age").limit(2));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Filter; `None` matches everything.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Sort keys, most significant first.
    #[serde(alias = "orderBy", default, skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<OrderBy>,
    /// Maximum number of results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Results to skip after ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Field paths to project into [`crate::QueryResult::projection`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
}

/// Compiled queries are shared across threads by adapters that cache them.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledQuery>();
    assert_send_sync::<CompiledFilter>();
    assert_send_sync::<Filter>();
    assert_send_sync::<AggregateStage>();
};
