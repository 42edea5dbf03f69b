//! The value types the suites store, and the edge cases they draw from.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A typed document, as applications store them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// A name.
    pub name: String,
    /// A signed integer.
    pub count: i64,
    /// An unsigned integer.
    pub big: u64,
    /// A float.
    pub ratio: f64,
    /// Tags.
    pub tags: Vec<String>,
    /// An optional nested document.
    pub child: Option<Box<Doc>>,
    /// A map.
    pub attrs: BTreeMap<String, i64>,
}

impl Doc {
    /// A small document whose fields derive from `n`.
    pub fn sample(n: i64) -> Self {
        Self {
            name: format!("doc {n} é🦀"),
            count: n,
            big: u64::MAX - n.unsigned_abs(),
            ratio: 0.5,
            tags: vec!["a".into(), "b\"c".into()],
            child: Some(Box::new(Self {
                name: "child".into(),
                count: -n,
                big: 0,
                ratio: -0.0,
                tags: Vec::new(),
                child: None,
                attrs: BTreeMap::new(),
            })),
            attrs: BTreeMap::from([("min".into(), i64::MIN), ("max".into(), i64::MAX)]),
        }
    }
}

/// A measurement whose float may be NaN or infinite: JSON cannot hold those.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The measured value.
    pub value: f64,
}

impl Reading {
    /// Whether two readings are the same, NaN included.
    pub fn same(&self, other: &Self) -> bool {
        self.value.to_bits() == other.value.to_bits()
            || (self.value.is_nan() && other.value.is_nan())
    }
}

/// A string `depth` levels of nesting deep, alternating objects and arrays.
pub fn deeply_nested(depth: usize) -> Value {
    let mut v = json!("bottom");
    for i in 0..depth {
        v = if i % 2 == 0 {
            json!({ "d": v })
        } else {
            json!([v])
        };
    }
    v
}

/// Invalid keys, each named: every one must give `InvalidKey`.
pub fn bad_keys() -> Vec<(&'static str, String)> {
    vec![
        ("empty key", String::new()),
        ("1025 ascii bytes", "k".repeat(1025)),
        (
            "1025 bytes of multi-byte characters",
            format!("{}a", "é".repeat(512)),
        ),
        (
            "1026 bytes ending in a 4-byte character",
            format!("{}🦀", "k".repeat(1022)),
        ),
        ("64 KiB key", "k".repeat(64 * 1024)),
        ("nul at the start", "\0key".into()),
        ("nul in the middle", "ke\0y".into()),
        ("nul at the end", "key\0".into()),
        ("only a nul", "\0".into()),
    ]
}

/// Valid keys that look dangerous to a backend's language: each must round-trip exactly.
pub fn hostile_keys() -> Vec<(&'static str, String)> {
    vec![
        ("sql injection", "'; DROP TABLE x;--".into()),
        ("sql tautology", "\" OR 1=1 --".into()),
        ("cypher injection", "}) MATCH (n) DETACH DELETE n //".into()),
        ("cypher quote", "a' }) RETURN 1 //".into()),
        ("backticks", "`x`.`y`".into()),
        ("query parameter", "$key".into()),
        ("like wildcards", "100% _done_".into()),
        ("glob characters", "*?[a-z]\\".into()),
        ("regex characters", "^.*(a|b)+$".into()),
        ("backslashes", "a\\b\\\\c\\".into()),
        (
            "control characters",
            "line\nbreak\ttab\rreturn\u{1b}[0m".into(),
        ),
        ("emoji and joiners", "🦀👩‍👩‍👧 ZWJ".into()),
        ("right-to-left text", "\u{202e}abc مرحبا".into()),
        ("combining characters", "e\u{301}a\u{308}".into()),
        ("whitespace only", "   ".into()),
        ("null word", "null".into()),
        ("byte order mark", "\u{feff}bom".into()),
        ("highest code point", "\u{10ffff}".into()),
        ("json text", "{\"a\":[1,2]}".into()),
        ("path traversal", "../../etc/passwd".into()),
        ("resp protocol", "*1\r\n$4\r\nPING\r\n".into()),
        (
            "1024 bytes ending in a 4-byte character",
            format!("{}🦀", "k".repeat(1020)),
        ),
        ("1024 ascii bytes", "k".repeat(1024)),
        ("dotted path", "a.b.0.c".into()),
        ("colon separated", "user:1:profile".into()),
    ]
}

/// JSON values at the edges of what stores hold, each named: each must round-trip exactly.
pub fn edge_values() -> Vec<(&'static str, Value)> {
    vec![
        ("empty string", json!("")),
        ("nul inside a string", json!("a\0b\0")),
        (
            "quotes and backslashes",
            json!("it's \"quoted\" \\ back\\slash"),
        ),
        ("sql injection string", json!("'); DROP TABLE x;--")),
        (
            "cypher injection string",
            json!("}) MATCH (n) DETACH DELETE n //"),
        ),
        ("unicode string", json!("日本語 🦀 e\u{301} \u{10ffff}")),
        ("u64 max", json!(u64::MAX)),
        ("i64 min", json!(i64::MIN)),
        ("i64 max", json!(i64::MAX)),
        ("negative zero", json!(-0.0)),
        ("smallest subnormal", json!(5e-324)),
        ("huge float", json!(1e308)),
        ("float with fraction", json!(0.1)),
        ("integral float", json!(1.0)),
        ("null", Value::Null),
        ("true", json!(true)),
        ("empty object", json!({})),
        ("empty array", json!([])),
        ("deep nesting", deeply_nested(100)),
        (
            "odd object keys",
            json!({ "": 1, "a.b": 2, "$where": 3, "`x`": 4, "é": 5, "a\0b": 6 }),
        ),
        (
            "large array",
            Value::Array((0..10_000).map(Value::from).collect()),
        ),
        (
            "mixed array",
            json!([1, 1.5, "s", null, true, {"k": [1]}, []]),
        ),
    ]
}

/// A key pool for random operations: few enough to collide, with edge cases mixed in.
pub fn key_strategy() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "k1", "k10", "k2", "é", "🦀", "A"]).prop_map(String::from),
        1 => Just("k".repeat(1024)),
        1 => Just("'; DROP TABLE x;--".to_owned()),
        1 => "[a-c\u{e9}\u{1f980}]{1,3}",
    ]
    .boxed()
}

/// Keys that must be refused, for the random sequences.
pub fn bad_key_strategy() -> BoxedStrategy<String> {
    prop::sample::select(bad_keys().into_iter().map(|(_, k)| k).collect::<Vec<_>>()).boxed()
}

/// Floats every format round-trips exactly.
fn float_strategy() -> BoxedStrategy<f64> {
    prop_oneof![
        (-1_000_000i32..1_000_000).prop_map(|n| f64::from(n) / 8.0),
        prop::sample::select(vec![-0.0, 0.1, 1.0, 1e308, -1e-300, 5e-324, 2.5e-10]),
    ]
    .boxed()
}

/// Random JSON values: scalars from the edge cases, nested objects and arrays, (rarely)
/// nesting up to 99 levels deep, and (more rarely) a 1 MiB string.
pub fn value_strategy() -> BoxedStrategy<Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1]).prop_map(Value::from),
        prop::sample::select(vec![u64::MAX, u64::MAX - 1, 1 << 63]).prop_map(Value::from),
        float_strategy().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(vec!["", "a\0b", "'; DROP TABLE x;--", "\"\\"]).prop_map(Value::from),
    ];
    let tree = scalar.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z.$]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        200 => tree,
        2 => (1usize..100).prop_map(deeply_nested),
        1 => Just(Value::String("x".repeat(1 << 20))),
    ]
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_bad_and_hostile_keys_are_valid() {
        for (name, key) in bad_keys() {
            assert!(storage_core::validate_key(&key).is_err(), "{name}");
        }
        for (name, key) in hostile_keys() {
            assert!(storage_core::validate_key(&key).is_ok(), "{name}");
        }
    }

    #[test]
    fn edge_values_survive_json_text() -> Result<(), serde_json::Error> {
        for (name, value) in edge_values() {
            let back: Value = serde_json::from_str(&serde_json::to_string(&value)?)?;
            assert_eq!(back, value, "{name}");
        }
        Ok(())
    }

    #[test]
    fn nesting_has_the_asked_depth() {
        let mut v = &deeply_nested(3);
        let mut depth = 0;
        loop {
            v = match v {
                Value::Object(m) => &m["d"],
                Value::Array(a) => &a[0],
                _ => break,
            };
            depth += 1;
        }
        assert_eq!(depth, 3);
    }
}
