//! A builder that reads well in Rust: `field("age").gt(30)`.
//!
//! ```
//! use storage_core::query::{field, or};
//! use storage_core::{Direction, Query};
//!
//! let q = Query::filter(field("age").gte(18).and(field("city").is_in(["Oslo", "Bergen"])))
//!     .and_where(or(vec![field("vip").eq(true), field("tags").eq("staff")]))
//!     .order_by("age", Direction::Desc)
//!     .order_asc("name")
//!     .offset(10)
//!     .limit(5)
//!     .select(["name", "address.city"]);
//! assert_eq!(q.limit, Some(5));
//! ```

use serde_json::Value;

use crate::error::{ErrorCode, Result, StorageError};
use crate::query::{AggregateStage, Filter, Operator, OrderBy, Query};
use crate::types::Direction;

/// A field reference that builds conditions.
#[derive(Debug, Clone)]
pub struct FieldRef {
    path: String,
}

/// Starts a condition on a dotted field path.
///
/// Paths are validated when the query is compiled, not here.
pub fn field(path: impl Into<String>) -> FieldRef {
    FieldRef { path: path.into() }
}

impl FieldRef {
    /// The path as written.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn condition(self, op: Operator, value: Value) -> Filter {
        Filter::Condition {
            field: self.path,
            op,
            value,
        }
    }

    /// `field == value` (any element of an array field; `null` also matches missing).
    pub fn eq(self, value: impl Into<Value>) -> Filter {
        self.condition(Operator::Eq, value.into())
    }

    /// `field != value` (also matches documents where the field is missing).
    pub fn ne(self, value: impl Into<Value>) -> Filter {
        self.condition(Operator::Ne, value.into())
    }

    /// `field > value`, within the value's type bracket.
    pub fn gt(self, value: impl Into<Value>) -> Filter {
        self.condition(Operator::Gt, value.into())
    }

    /// `field >= value`, within the value's type bracket.
    pub fn gte(self, value: impl Into<Value>) -> Filter {
        self.condition(Operator::Gte, value.into())
    }

    /// `field < value`, within the value's type bracket.
    pub fn lt(self, value: impl Into<Value>) -> Filter {
        self.condition(Operator::Lt, value.into())
    }

    /// `field <= value`, within the value's type bracket.
    pub fn lte(self, value: impl Into<Value>) -> Filter {
        self.condition(Operator::Lte, value.into())
    }

    /// The field equals one of `values`.
    pub fn is_in<V: Into<Value>>(self, values: impl IntoIterator<Item = V>) -> Filter {
        let values = values.into_iter().map(Into::into).collect();
        self.condition(Operator::In, Value::Array(values))
    }

    /// The field equals none of `values` (also matches missing).
    pub fn not_in<V: Into<Value>>(self, values: impl IntoIterator<Item = V>) -> Filter {
        let values = values.into_iter().map(Into::into).collect();
        self.condition(Operator::Nin, Value::Array(values))
    }

    /// The string field matches the regular expression (unanchored, `regex` crate syntax).
    pub fn regex(self, pattern: impl Into<String>) -> Filter {
        self.condition(Operator::Regex, Value::String(pattern.into()))
    }

    /// The field is present (`true`) or absent (`false`).
    pub fn exists(self, present: bool) -> Filter {
        self.condition(Operator::Exists, Value::Bool(present))
    }

    /// Every word of `words` occurs in the string field, case-insensitively.
    pub fn text(self, words: impl Into<String>) -> Filter {
        self.condition(Operator::Text, Value::String(words.into()))
    }

    /// The point at the field (`[x, y]` or `{"x", "y"}`) lies in the box, bounds included.
    pub fn within_box<A: Into<Value>, B: Into<Value>>(self, min: [A; 2], max: [B; 2]) -> Filter {
        let [min_x, min_y] = min;
        let [max_x, max_y] = max;
        let operand = serde_json::json!({
            "min": [min_x.into(), min_y.into()],
            "max": [max_x.into(), max_y.into()],
        });
        self.condition(Operator::WithinBox, operand)
    }

    /// `filter` holds for the sub-document at the field, or for some object element
    /// of the array there; paths in `filter` are relative to it.
    pub fn nested(self, filter: Filter) -> Filter {
        Filter::Nested {
            field: self.path,
            filter: Box::new(filter),
        }
    }
}

/// Every filter holds (an empty list always holds).
pub fn and(filters: Vec<Filter>) -> Filter {
    Filter::And(filters)
}

/// Some filter holds (an empty list never holds).
pub fn or(filters: Vec<Filter>) -> Filter {
    Filter::Or(filters)
}

/// The filter does not hold.
pub fn not(filter: Filter) -> Filter {
    Filter::Not(Box::new(filter))
}

impl Filter {
    /// Every filter holds (an empty list always holds).
    pub fn all(filters: Vec<Filter>) -> Self {
        Self::And(filters)
    }

    /// Some filter holds (an empty list never holds).
    pub fn any(filters: Vec<Filter>) -> Self {
        Self::Or(filters)
    }

    /// Both hold; extends `self` when it already is an `and`.
    #[must_use]
    pub fn and(self, other: Filter) -> Self {
        match self {
            Self::And(mut items) => {
                items.push(other);
                Self::And(items)
            }
            first => Self::And(vec![first, other]),
        }
    }

    /// Either holds; extends `self` when it already is an `or`.
    #[must_use]
    pub fn or(self, other: Filter) -> Self {
        match self {
            Self::Or(mut items) => {
                items.push(other);
                Self::Or(items)
            }
            first => Self::Or(vec![first, other]),
        }
    }
}

/// Reads an aggregate pipeline (a JSON array of stages) from its JSON form.
///
/// # Errors
/// `InvalidQuery` when the text is not a well-formed pipeline.
///
/// ```
/// use storage_core::query::parse_pipeline;
/// use storage_core::AggregateStage;
/// let p = parse_pipeline(r#"[{"group": {"by": "a", "accumulators": {"n": "count"}}}, {"limit": 2}]"#)?;
/// assert_eq!(p, [AggregateStage::group_by("a").count("n"), AggregateStage::limit(2)]);
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub fn parse_pipeline(text: &str) -> Result<Vec<AggregateStage>> {
    serde_json::from_str(text).map_err(|e| {
        StorageError::new(ErrorCode::InvalidQuery, format!("malformed pipeline: {e}"))
            .with_source(e)
    })
}

impl std::ops::Not for Filter {
    type Output = Filter;

    /// `!f` is the filter that holds when `f` does not.
    fn not(self) -> Filter {
        Filter::Not(Box::new(self))
    }
}

impl Query {
    /// A query that matches everything, ordered by key.
    pub fn new() -> Self {
        Self::default()
    }

    /// A query with a filter.
    ///
    /// ```
    /// use storage_core::query::field;
    /// use storage_core::Query;
    /// let q = Query::filter(field("age").gt(30));
    /// assert!(q.filter.is_some());
    /// ```
    pub fn filter(filter: Filter) -> Self {
        Self {
            filter: Some(filter),
            ..Self::default()
        }
    }

    /// Sets (replaces) the filter.
    #[must_use]
    pub fn where_(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Adds a filter that must hold too (`and` with the current one, if any).
    #[must_use]
    pub fn and_where(mut self, filter: Filter) -> Self {
        self.filter = Some(match self.filter.take() {
            Some(current) => current.and(filter),
            None => filter,
        });
        self
    }

    /// Adds a sort key (after those already given).
    #[must_use]
    pub fn order_by(mut self, field: impl Into<String>, direction: Direction) -> Self {
        self.order_by.push(OrderBy {
            field: field.into(),
            direction,
        });
        self
    }

    /// Adds an ascending sort key.
    #[must_use]
    pub fn order_asc(self, field: impl Into<String>) -> Self {
        self.order_by(field, Direction::Asc)
    }

    /// Adds a descending sort key.
    #[must_use]
    pub fn order_desc(self, field: impl Into<String>) -> Self {
        self.order_by(field, Direction::Desc)
    }

    /// Returns at most `n` results.
    #[must_use]
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` results (after ordering).
    #[must_use]
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }

    /// Reads a query from its JSON form (see `docs/QUERY.md`).
    ///
    /// # Errors
    /// `InvalidQuery` when the text is not a well-formed query; paths and operands are
    /// checked later, when the query is compiled.
    ///
    /// ```
    /// use storage_core::query::field;
    /// use storage_core::Query;
    /// let q = Query::from_json(r#"{"where": {"field": "n", "op": "lt", "value": 3}, "limit": 1}"#)?;
    /// assert_eq!(q, Query::filter(field("n").lt(3)).limit(1));
    /// # Ok::<(), storage_core::StorageError>(())
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            StorageError::new(ErrorCode::InvalidQuery, format!("malformed query: {e}"))
                .with_source(e)
        })
    }

    /// The query's JSON form (the inverse of [`Query::from_json`]).
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Projects these paths into each result's `projection`.
    #[must_use]
    pub fn select<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.select = Some(paths.into_iter().map(Into::into).collect());
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn field_methods_build_conditions() {
        let cases = [
            (field("a").eq(1), Operator::Eq, json!(1)),
            (field("a").ne("x"), Operator::Ne, json!("x")),
            (field("a").gt(1.5), Operator::Gt, json!(1.5)),
            (field("a").gte(2), Operator::Gte, json!(2)),
            (field("a").lt(true), Operator::Lt, json!(true)),
            (field("a").lte(u64::MAX), Operator::Lte, json!(u64::MAX)),
            (field("a").is_in([1, 2]), Operator::In, json!([1, 2])),
            (field("a").not_in(["x"]), Operator::Nin, json!(["x"])),
            (field("a").regex("^x"), Operator::Regex, json!("^x")),
            (field("a").exists(false), Operator::Exists, json!(false)),
            (
                field("a").text("hi there"),
                Operator::Text,
                json!("hi there"),
            ),
            (
                field("a").within_box([0, 1], [2.5, 3.5]),
                Operator::WithinBox,
                json!({"min": [0, 1], "max": [2.5, 3.5]}),
            ),
        ];
        for (built, op, value) in cases {
            assert_eq!(
                built,
                Filter::Condition {
                    field: "a".into(),
                    op,
                    value
                }
            );
        }
        assert_eq!(
            field("a").nested(field("b").eq(1)),
            Filter::Nested {
                field: "a".into(),
                filter: Box::new(field("b").eq(1))
            }
        );
    }

    #[test]
    fn and_or_extend_instead_of_nesting() {
        let f = field("a").eq(1).and(field("b").eq(2)).and(field("c").eq(3));
        assert_eq!(
            f,
            Filter::all(vec![field("a").eq(1), field("b").eq(2), field("c").eq(3)])
        );
        let g = field("a").eq(1).or(field("b").eq(2)).or(field("c").eq(3));
        assert_eq!(
            g,
            or(vec![field("a").eq(1), field("b").eq(2), field("c").eq(3)])
        );
        assert_eq!(Filter::any(vec![]), Filter::Or(vec![]));
        assert_eq!(and(vec![]), Filter::And(vec![]));
        assert_eq!(!field("a").eq(1), not(field("a").eq(1)));
    }

    #[test]
    fn json_text_converts_with_invalid_query_errors() -> Result<()> {
        let q = Query::filter(field("a").eq(1)).order_desc("b").limit(3);
        assert_eq!(Query::from_json(&q.to_json())?, q);
        for bad in ["", "{", r#"{"limit": "x"}"#, r#"{"where": {"field": "a"}}"#] {
            assert_eq!(
                Query::from_json(bad).err().map(|e| e.code()),
                Some(ErrorCode::InvalidQuery)
            );
        }
        assert_eq!(
            parse_pipeline(r#"[{"sort": "x"}]"#).err().map(|e| e.code()),
            Some(ErrorCode::InvalidQuery)
        );
        Ok(())
    }

    #[test]
    fn query_builder_sets_every_part() {
        let q = Query::filter(field("a").eq(1))
            .and_where(field("b").eq(2))
            .order_by("a", Direction::Desc)
            .order_asc("b")
            .order_desc("c")
            .offset(4)
            .limit(2)
            .select(["a", "b.c"]);
        assert_eq!(q.filter, Some(field("a").eq(1).and(field("b").eq(2))));
        let dirs: Vec<(&str, Direction)> = q
            .order_by
            .iter()
            .map(|o| (o.field.as_str(), o.direction))
            .collect();
        assert_eq!(
            dirs,
            [
                ("a", Direction::Desc),
                ("b", Direction::Asc),
                ("c", Direction::Desc)
            ]
        );
        assert_eq!((q.offset, q.limit), (Some(4), Some(2)));
        assert_eq!(q.select, Some(vec!["a".to_owned(), "b.c".to_owned()]));
        assert_eq!(
            Query::new()
                .where_(field("x").eq(1))
                .where_(field("y").eq(2))
                .filter,
            Some(field("y").eq(2))
        );
        assert_eq!(
            Query::new().and_where(field("x").eq(1)).filter,
            Some(field("x").eq(1))
        );
    }
}
