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
