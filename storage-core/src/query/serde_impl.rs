//! The readable serialized form of filters and group accumulators.
//!
//! A filter is one JSON object of one of these shapes:
//! - condition `{"field": "age", "op": "gt", "value": 30}` (`operator` is accepted for `op`);
//! - `{"and": [filter, …]}`, `{"or": [filter, …]}`, `{"not": filter}`;
//! - nested `{"field": "address", "nested": filter}`;
//! - the interface design's logical form `{"operator": "and" | "or" | "not", "conditions":
//!   [filter, …]}` is accepted when reading (`not` over several conditions negates their `and`).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::query::{Filter, Operator};
use crate::types::Document;

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Condition { field, op, value } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("field", field)?;
                map.serialize_entry("op", op)?;
                map.serialize_entry("value", value)?;
                map.end()
            }
            Self::And(items) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("and", items)?;
                map.end()
            }
            Self::Or(items) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("or", items)?;
                map.end()
            }
            Self::Not(inner) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("not", inner)?;
                map.end()
            }
            Self::Nested { field, filter } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("field", field)?;
                map.serialize_entry("nested", filter)?;
                map.end()
            }
        }
    }
}

/// `op`/`operator` holds a comparison operator or, in the interface design's
/// logical form, `and`/`or`/`not`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum AnyOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Regex,
    Exists,
    Text,
    WithinBox,
    And,
    Or,
    Not,
}

impl AnyOp {
    fn comparison(self) -> Option<Operator> {
        Some(match self {
            Self::Eq => Operator::Eq,
            Self::Ne => Operator::Ne,
            Self::Gt => Operator::Gt,
            Self::Gte => Operator::Gte,
            Self::Lt => Operator::Lt,
            Self::Lte => Operator::Lte,
            Self::In => Operator::In,
            Self::Nin => Operator::Nin,
            Self::Regex => Operator::Regex,
            Self::Exists => Operator::Exists,
            Self::Text => Operator::Text,
            Self::WithinBox => Operator::WithinBox,
            Self::And | Self::Or | Self::Not => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Field,
    #[serde(alias = "operator")]
    Op,
    Value,
    And,
    Or,
    Not,
    Nested,
    Conditions,
}

struct FilterVisitor;

fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for FilterVisitor {
    type Value = Filter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            r#"a filter: {"field","op","value"}, {"and":[..]}, {"or":[..]}, {"not":{..}} or {"field","nested":{..}}"#,
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Filter, A::Error> {
        let mut field: Option<String> = None;
        let mut op: Option<AnyOp> = None;
        let mut value: Option<Document> = None;
        let mut and: Option<Vec<Filter>> = None;
        let mut or: Option<Vec<Filter>> = None;
        let mut not: Option<Filter> = None;
        let mut nested: Option<Filter> = None;
        let mut conditions: Option<Vec<Filter>> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Field => set_once(&mut field, map.next_value()?, "field")?,
                Key::Op => set_once(&mut op, map.next_value()?, "op")?,
                // Read as a value so that an explicit `null` is kept as the operand.
                Key::Value => set_once(&mut value, map.next_value()?, "value")?,
                Key::And => set_once(&mut and, map.next_value()?, "and")?,
                Key::Or => set_once(&mut or, map.next_value()?, "or")?,
                Key::Not => set_once(&mut not, map.next_value()?, "not")?,
                Key::Nested => set_once(&mut nested, map.next_value()?, "nested")?,
                Key::Conditions => set_once(&mut conditions, map.next_value()?, "conditions")?,
            }
        }
        let shape = (field, op, value, and, or, not, nested, conditions);
        match shape {
            (Some(field), Some(op), Some(value), None, None, None, None, None) => {
                let op = op.comparison().ok_or_else(|| {
                    de::Error::custom("and/or/not take \"conditions\", not a field and value")
                })?;
                Ok(Filter::Condition { field, op, value })
            }
            (Some(_), Some(_), None, None, None, None, None, None) => {
                Err(de::Error::missing_field("value"))
            }
            (None, None, None, Some(items), None, None, None, None) => Ok(Filter::And(items)),
            (None, None, None, None, Some(items), None, None, None) => Ok(Filter::Or(items)),
            (None, None, None, None, None, Some(inner), None, None) => {
                Ok(Filter::Not(Box::new(inner)))
            }
            (Some(field), None, None, None, None, None, Some(inner), None) => Ok(Filter::Nested {
                field,
                filter: Box::new(inner),
            }),
            (None, Some(op), None, None, None, None, None, Some(items)) => match op {
                AnyOp::And => Ok(Filter::And(items)),
                AnyOp::Or => Ok(Filter::Or(items)),
                AnyOp::Not => {
                    let mut items = items;
                    let inner = if items.len() == 1 {
                        items.remove(0)
                    } else {
                        Filter::And(items)
                    };
                    Ok(Filter::Not(Box::new(inner)))
                }
                _ => Err(de::Error::custom(
                    "\"conditions\" goes with the operator and, or or not",
                )),
            },
            _ => Err(de::Error::custom(
                r#"a filter must be exactly one of {"field","op","value"}, {"and":[..]}, {"or":[..]}, {"not":{..}}, {"field","nested":{..}}"#,
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FilterVisitor)
    }
}

/// Group accumulators as an ordered map `{"name": accumulator, …}`; a list of
/// `["name", accumulator]` pairs is also read, for formats whose maps lose order.
pub(crate) mod accumulators {
    use std::fmt;

    use serde::de::{MapAccess, SeqAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    use crate::query::Accumulator;

    #[allow(clippy::ptr_arg)]
    pub(crate) fn serialize<S: Serializer>(
        items: &Vec<(String, Accumulator)>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(items.len()))?;
        for (name, acc) in items {
            map.serialize_entry(name, acc)?;
        }
        map.end()
    }

    struct AccVisitor;

    impl<'de> Visitor<'de> for AccVisitor {
        type Value = Vec<(String, Accumulator)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of accumulator names to accumulators")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, Accumulator>()? {
                out.push(entry);
            }
            Ok(out)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = seq.next_element::<(String, Accumulator)>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, Accumulator)>, D::Error> {
        deserializer.deserialize_any(AccVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::query::{AggregateStage, Filter, Query, field, not, or};
    use crate::types::Direction;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn round_trip_json(q: &Query) -> TestResult {
        let text = serde_json::to_string(q)?;
        let back: Query = serde_json::from_str(&text)?;
        assert_eq!(&back, q, "{text}");
        Ok(())
    }

    #[test]
    fn conditions_read_and_write_as_field_op_value() -> TestResult {
        let f = field("age").gt(30);
        assert_eq!(
            serde_json::to_value(&f)?,
            json!({"field": "age", "op": "gt", "value": 30})
        );
        let back: Filter =
            serde_json::from_value(json!({"field": "age", "operator": "gt", "value": 30}))?;
        assert_eq!(back, f);
        Ok(())
    }

    #[test]
    fn filters_display_as_their_json_form() {
        let f = field("a").gt(1).and(!field("b").eq("x"));
        assert_eq!(
            f.to_string(),
            r#"{"and":[{"field":"a","op":"gt","value":1},{"not":{"field":"b","op":"eq","value":"x"}}]}"#
        );
        assert_eq!(crate::Operator::WithinBox.to_string(), "within_box");
    }

    #[test]
    fn operator_names_agree_with_serde() -> TestResult {
        use crate::Operator::{Eq, Exists, Gt, Gte, In, Lt, Lte, Ne, Nin, Regex, Text, WithinBox};
        for op in [
            Eq, Ne, Gt, Gte, Lt, Lte, In, Nin, Regex, Exists, Text, WithinBox,
        ] {
            assert_eq!(serde_json::to_value(op)?, json!(op.as_str()));
        }
        Ok(())
    }

    #[test]
    fn an_explicit_null_operand_is_kept() -> TestResult {
        let f: Filter = serde_json::from_str(r#"{"field": "a", "op": "eq", "value": null}"#)?;
        assert_eq!(f, field("a").eq(serde_json::Value::Null));
        Ok(())
    }

    #[test]
    fn logical_and_nested_forms_round_trip() -> TestResult {
        let f = field("a")
            .eq(1)
            .and(or(vec![
                field("b").is_in(["x", "y"]),
                not(field("c").exists(true)),
            ]))
            .and(field("addr").nested(field("city").regex("^O")))
            .and(field("t").text("quick fox"))
            .and(field("p").within_box([0, 0], [1.5, 2.0]));
        let value = serde_json::to_value(&f)?;
        assert_eq!(
            value["and"][1]["or"][1],
            json!({"not": {"field": "c", "op": "exists", "value": true}})
        );
        assert_eq!(
            value["and"][2],
            json!({"field": "addr", "nested": {"field": "city", "op": "regex", "value": "^O"}})
        );
        assert_eq!(
            value["and"][4]["value"],
            json!({"min": [0, 0], "max": [1.5, 2.0]})
        );
        let back: Filter = serde_json::from_value(value)?;
        assert_eq!(back, f);
        Ok(())
    }

    #[test]
    fn the_interface_designs_logical_form_is_read() -> TestResult {
        let f: Filter = serde_json::from_value(json!({
            "operator": "or",
            "conditions": [
                {"field": "a", "operator": "eq", "value": 1},
                {"operator": "not", "conditions": [{"field": "b", "operator": "eq", "value": 2}]},
                {"operator": "not", "conditions": [
                    {"field": "c", "operator": "eq", "value": 3},
                    {"field": "d", "operator": "eq", "value": 4}
                ]}
            ]
        }))?;
        let expected = or(vec![
            field("a").eq(1),
            !field("b").eq(2),
            !field("c").eq(3).and(field("d").eq(4)),
        ]);
        assert_eq!(f, expected);
        Ok(())
    }

    #[test]
    fn malformed_filters_are_rejected() {
        let bad = [
            json!({"field": "a", "op": "eq"}),
            json!({"field": "a", "op": "bogus", "value": 1}),
            json!({"field": "a", "op": "and", "value": 1}),
            json!({"and": [], "or": []}),
            json!({"field": "a", "op": "eq", "value": 1, "extra": 2}),
            json!({"field": "a", "op": "eq", "value": 1, "and": []}),
            json!({"operator": "eq", "conditions": []}),
            json!({"nested": {"and": []}}),
            json!({}),
            json!([]),
            json!("a"),
        ];
        for value in bad {
            assert!(
                serde_json::from_value::<Filter>(value.clone()).is_err(),
                "{value}"
            );
        }
    }

    #[test]
    fn queries_round_trip_through_json() -> TestResult {
        round_trip_json(&Query::new())?;
        round_trip_json(
            &Query::filter(field("age").gte(18))
                .order_desc("age")
                .order_asc("name")
                .offset(3)
                .limit(10)
                .select(["name", "address.city"]),
        )?;
        assert_eq!(serde_json::to_value(Query::new())?, json!({}));
        Ok(())
    }

    #[test]
    fn query_json_uses_where_and_order_by() -> TestResult {
        let q: Query = serde_json::from_value(json!({
            "where": {"field": "author", "op": "eq", "value": "Alice"},
            "orderBy": [{"field": "createdAt", "direction": "desc"}],
            "limit": 10
        }))?;
        assert_eq!(
            q,
            Query::filter(field("author").eq("Alice"))
                .order_by("createdAt", Direction::Desc)
                .limit(10)
        );
        let written = serde_json::to_value(&q)?;
        assert_eq!(
            written["order_by"],
            json!([{"field": "createdAt", "direction": "desc"}])
        );
        assert!(serde_json::from_value::<Query>(json!({"limt": 3})).is_err());
        assert!(serde_json::from_value::<Query>(json!({"limit": -1})).is_err());
        Ok(())
    }

    #[test]
    fn queries_read_from_toml_both_natively_and_as_embedded_json() -> TestResult {
        #[derive(serde::Deserialize)]
        struct Case {
            query: String,
            native: Query,
        }
        let case: Case = toml::from_str(
            r#"
            query = '{"where": {"field": "tags", "op": "in", "value": ["a", "b"]}, "limit": 2}'
            [native]
            limit = 2
            where = { field = "tags", op = "in", value = ["a", "b"] }
            "#,
        )?;
        let embedded: Query = serde_json::from_str(&case.query)?;
        assert_eq!(embedded, case.native);
        assert_eq!(
            embedded,
            Query::filter(field("tags").is_in(["a", "b"])).limit(2)
        );
        Ok(())
    }

    #[test]
    fn queries_round_trip_through_messagepack() -> TestResult {
        let q = Query::filter(
            field("a")
                .eq(serde_json::Value::Null)
                .or(!field("b").is_in([1, 2])),
        )
        .order_desc("c")
        .limit(4)
        .select(["a"]);
        let bytes = rmp_serde::to_vec_named(&q)?;
        let back: Query = rmp_serde::from_slice(&bytes)?;
        assert_eq!(back, q);
        Ok(())
    }

    #[test]
    fn queries_and_pipelines_read_from_yaml() -> TestResult {
        let q: Query = serde_saphyr::from_str(
            "where:\n  or:\n    - {field: age, op: gte, value: 18}\n    - {field: nick, op: eq, value: null}\norder_by:\n  - {field: age, direction: desc}\nlimit: 3\n",
        )?;
        assert_eq!(
            q,
            Query::filter(or(vec![
                field("age").gte(18),
                field("nick").eq(serde_json::Value::Null)
            ]))
            .order_desc("age")
            .limit(3)
        );
        let pipeline: Vec<AggregateStage> = serde_saphyr::from_str(
            "- group:\n    by: author\n    accumulators:\n      z: count\n      a: {sum: score}\n- limit: 1\n",
        )?;
        assert_eq!(
            pipeline,
            [
                AggregateStage::group_by("author")
                    .count("z")
                    .sum("a", "score"),
                AggregateStage::limit(1)
            ]
        );
        Ok(())
    }

    #[test]
    fn pipelines_round_trip_and_keep_accumulator_order() -> TestResult {
        let pipeline = vec![
            AggregateStage::matching(field("score").gt(1)),
            AggregateStage::group_by("author")
                .sum("total", "score")
                .count("n")
                .avg("mean", "score")
                .min("lo", "score")
                .max("hi", "score"),
            AggregateStage::group_all().count("all"),
            AggregateStage::sort_desc("total").then_asc("_id"),
            AggregateStage::skip(3),
            AggregateStage::limit(2),
            AggregateStage::project(["a", "b.c"]),
        ];
        let text = serde_json::to_string(&pipeline)?;
        assert!(
            text.contains(r#"{"group":{"by":"author","accumulators":{"total":{"sum":"score"},"n":"count","mean":{"avg":"score"},"lo":{"min":"score"},"hi":{"max":"score"}}}}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"group":{"accumulators":{"all":"count"}}}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"skip":3},{"limit":2},{"project":["a","b.c"]}"#),
            "{text}"
        );
        let back: Vec<AggregateStage> = serde_json::from_str(&text)?;
        assert_eq!(back, pipeline);
        Ok(())
    }

    #[test]
    fn accumulators_may_be_given_as_pairs() -> TestResult {
        let stage: AggregateStage = serde_json::from_value(json!({
            "group": {"by": "a", "accumulators": [["z", "count"], ["a", {"sum": "v"}]]}
        }))?;
        assert_eq!(
            stage,
            AggregateStage::group_by("a").count("z").sum("a", "v")
        );
        assert!(
            serde_json::from_value::<AggregateStage>(json!({"group": {"by": "a", "bogus": 1}}))
                .is_err()
        );
        assert!(serde_json::from_value::<AggregateStage>(json!({"shuffle": 1})).is_err());
        Ok(())
    }
}
