//! Comparing JSON values: equality and order across numbers, type brackets, the total order.
//!
//! Numbers compare exactly by value whatever their representation: `1 == 1.0`,
//! and `u64::MAX` is compared with a float without first rounding either side
//! to a common type (a lossy conversion would make `u64::MAX == 2^64 as f64`).

use std::cmp::Ordering;

use serde_json::Number;

use crate::types::Document;

/// The type brackets of the total order: null < numbers < strings < objects < arrays < booleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeBracket {
    /// `null` (and missing, when sorting).
    Null,
    /// Integers and floats, compared by value.
    Number,
    /// Strings, compared by bytes.
    String,
    /// Objects.
    Object,
    /// Arrays.
    Array,
    /// Booleans.
    Bool,
}

/// The bracket of a value.
pub fn type_bracket(value: &Document) -> TypeBracket {
    match value {
        Document::Null => TypeBracket::Null,
        Document::Number(_) => TypeBracket::Number,
        Document::String(_) => TypeBracket::String,
        Document::Object(_) => TypeBracket::Object,
        Document::Array(_) => TypeBracket::Array,
        Document::Bool(_) => TypeBracket::Bool,
    }
}

/// Equality as the evaluator sees it: numbers by value (`1 == 1.0`), the rest structurally.
///
/// Arrays are equal when they have the same length and equal elements in order;
/// objects when they have the same keys with equal values (key order is irrelevant).
pub fn values_equal(a: &Document, b: &Document) -> bool {
    match (a, b) {
        (Document::Null, Document::Null) => true,
        (Document::Bool(x), Document::Bool(y)) => x == y,
        (Document::Number(x), Document::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Document::String(x), Document::String(y)) => x == y,
        (Document::Array(x), Document::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Document::Object(x), Document::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => false,
    }
}

/// Order within one bracket, `None` across brackets (what `gt`/`lt` use).
pub fn compare_values(a: &Document, b: &Document) -> Option<Ordering> {
    if type_bracket(a) == type_bracket(b) {
        Some(compare_same_bracket(a, b))
    } else {
        None
    }
}

/// The total order `order_by` uses; `None` stands for a missing field and sorts as null.
///
/// Brackets first (null < numbers < strings < objects < arrays < booleans), then within
/// a bracket: numbers by value, strings by bytes, `false < true`, arrays element by
/// element (a proper prefix first), objects as their `(key, value)` pairs sorted by key
/// bytes, compared pair by pair (key bytes, then value), a proper prefix first.
pub fn compare_total(a: Option<&Document>, b: Option<&Document>) -> Ordering {
    let a = a.unwrap_or(&Document::Null);
    let b = b.unwrap_or(&Document::Null);
    type_bracket(a)
        .cmp(&type_bracket(b))
        .then_with(|| compare_same_bracket(a, b))
}

/// Compares two values of the same bracket (values of different brackets compare by bracket).
fn compare_same_bracket(a: &Document, b: &Document) -> Ordering {
    match (a, b) {
        (Document::Number(x), Document::Number(y)) => compare_numbers(x, y),
        (Document::String(x), Document::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Document::Bool(x), Document::Bool(y)) => x.cmp(y),
        (Document::Array(x), Document::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let ord = compare_total(Some(p), Some(q));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            x.len().cmp(&y.len())
        }
        (Document::Object(x), Document::Object(y)) => {
            let mut xs: Vec<(&String, &Document)> = x.iter().collect();
            let mut ys: Vec<(&String, &Document)> = y.iter().collect();
            // A map may keep insertion order (serde_json's `preserve_order`), so sort explicitly.
            xs.sort_unstable_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            ys.sort_unstable_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            for ((xk, xv), (yk, yv)) in xs.iter().zip(&ys) {
                let ord = xk
                    .as_bytes()
                    .cmp(yk.as_bytes())
                    .then_with(|| compare_total(Some(xv), Some(yv)));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => type_bracket(a).cmp(&type_bracket(b)),
    }
}

/// A JSON number in the representation `serde_json` chose for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    /// An integer (every `i64` and `u64` fits).
    Int(i128),
    /// A finite float.
    Float(f64),
}

impl Num {
    /// The number of a JSON number.
    pub(crate) fn of(n: &Number) -> Self {
        if let Some(i) = n.as_i64() {
            Self::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Self::Int(i128::from(u))
        } else {
            // serde_json never holds NaN or infinities, and a number that is
            // neither i64 nor u64 is an f64.
            Self::Float(n.as_f64().unwrap_or(0.0))
        }
    }

    /// Exact comparison by value.
    pub(crate) fn cmp_exact(self, other: Self) -> Ordering {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.cmp(&b),
            (Self::Float(a), Self::Float(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Self::Int(a), Self::Float(b)) => cmp_int_float(a, b),
            (Self::Float(a), Self::Int(b)) => cmp_int_float(b, a).reverse(),
        }
    }
}

/// Compares two JSON numbers exactly by value.
pub(crate) fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    Num::of(a).cmp_exact(Num::of(b))
}

/// Compares an integer (from an `i64` or `u64`, so `|i| < 2^64`) with a finite float
/// exactly, by splitting the float into its integral part and whether it has a fraction,
/// straight from its bits (no lossy conversion either way).
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        // Unreachable with serde_json values; any fixed answer keeps the order total.
        return Ordering::Less;
    }
    let bits = f.to_bits();
    let negative = bits >> 63 == 1;
    let exp_bits = (bits >> 52) & 0x7ff;
    let fraction_bits = bits & ((1_u64 << 52) - 1);
    if exp_bits == 0x7ff {
        // Infinity: beyond every integer.
        return if negative {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    let (mantissa, exponent): (u64, i32) = if exp_bits == 0 {
        (fraction_bits, -1074)
    } else {
        // `exp_bits` is at most 0x7fe here, so it fits an i32.
        (
            fraction_bits | (1_u64 << 52),
            i32::try_from(exp_bits).unwrap_or(0) - 1075,
        )
    };
    // |f| = mantissa * 2^exponent, mantissa < 2^53.
    let (integral, has_fraction): (u128, bool) = if exponent >= 0 {
        if exponent > 60 {
            // |f| >= 2^112, beyond every i64/u64.
            return if negative {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        (u128::from(mantissa) << exponent, false)
    } else {
        let shift = exponent.unsigned_abs();
        if shift >= 64 {
            (0, mantissa != 0)
        } else {
            (
                u128::from(mantissa >> shift),
                mantissa & ((1_u64 << shift) - 1) != 0,
            )
        }
    };
    // integral < 2^113, so it fits an i128.
    let integral = i128::try_from(integral).unwrap_or(i128::MAX);
    let truncated = if negative { -integral } else { integral };
    match i.cmp(&truncated) {
        Ordering::Equal if !has_fraction => Ordering::Equal,
        // f = truncated - fraction (negative) or truncated + fraction (positive).
        Ordering::Equal if negative => Ordering::Greater,
        Ordering::Equal => Ordering::Less,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integers_and_floats_compare_by_value() {
        assert!(values_equal(&json!(1), &json!(1.0)));
        assert!(values_equal(&json!(-3), &json!(-3.0)));
        assert!(!values_equal(&json!(1), &json!(1.5)));
        assert_eq!(
            compare_values(&json!(2), &json!(1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_values(&json!(-2), &json!(-1.5)),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_values(&json!(-1), &json!(-1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_values(&json!(0), &json!(-0.0)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_values(&json!(0), &json!(5e-324)),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn u64_max_is_not_equal_to_the_nearest_float() {
        // u64::MAX as f64 rounds to 2^64, which is one more than u64::MAX.
        let two_pow_64 = json!(18_446_744_073_709_551_616.0_f64);
        assert!(!values_equal(&json!(u64::MAX), &two_pow_64));
        assert_eq!(
            compare_values(&json!(u64::MAX), &two_pow_64),
            Some(Ordering::Less)
        );
        // i64::MAX as f64 is 2^63, one more than i64::MAX.
        let two_pow_63 = json!(9_223_372_036_854_775_808.0_f64);
        assert_eq!(
            compare_values(&json!(i64::MAX), &two_pow_63),
            Some(Ordering::Less)
        );
        assert!(values_equal(&json!(1_u64 << 63), &two_pow_63));
        assert!(values_equal(
            &json!(i64::MIN),
            &json!(-9_223_372_036_854_775_808.0_f64)
        ));
        assert_eq!(
            compare_values(&json!(i64::MIN), &json!(-1e300)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_values(&json!(u64::MAX), &json!(1e300)),
            Some(Ordering::Less)
        );
        assert!(values_equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert_eq!(
            compare_values(&json!(u64::MAX), &json!(i64::MAX)),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn brackets_order_null_numbers_strings_objects_arrays_booleans() {
        let ordered = [
            json!(null),
            json!(-5),
            json!(2.5),
            json!(""),
            json!("b"),
            json!({}),
            json!({"a": 1}),
            json!([]),
            json!([1]),
            json!(false),
            json!(true),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare_total(Some(a), Some(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(compare_total(None, Some(&json!(null))), Ordering::Equal);
        assert_eq!(compare_total(None, Some(&json!(0))), Ordering::Less);
    }

    #[test]
    fn compare_values_is_none_across_brackets() {
        assert_eq!(compare_values(&json!("10"), &json!(5)), None);
        assert_eq!(compare_values(&json!(true), &json!(1)), None);
        assert_eq!(compare_values(&json!(null), &json!(0)), None);
        assert_eq!(
            compare_values(&json!(true), &json!(false)),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn strings_compare_by_bytes() {
        assert_eq!(
            compare_values(&json!("B"), &json!("a")),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_values(&json!("é"), &json!("z")),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn arrays_and_objects_compare_element_wise() {
        assert_eq!(
            compare_total(Some(&json!([1, 2])), Some(&json!([1, 3]))),
            Ordering::Less
        );
        assert_eq!(
            compare_total(Some(&json!([1, 2])), Some(&json!([1]))),
            Ordering::Greater
        );
        assert_eq!(
            compare_total(Some(&json!({"a": 1, "b": 2})), Some(&json!({"b": 1}))),
            Ordering::Less
        );
        assert_eq!(
            compare_total(Some(&json!({"a": 2})), Some(&json!({"a": 1, "b": 0}))),
            Ordering::Greater
        );
        assert!(values_equal(
            &json!({"a": [1, {"b": 2}]}),
            &json!({"a": [1.0, {"b": 2.0}]})
        ));
        assert!(!values_equal(&json!({"a": 1}), &json!({"a": 1, "b": 1})));
        assert!(!values_equal(&json!([1, 2]), &json!([2, 1])));
    }
}

#[cfg(test)]
pub(crate) mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Numbers at the edges of every representation, mixed with ordinary ones.
    pub(crate) fn number() -> impl Strategy<Value = Document> {
        prop_oneof![
            any::<i64>().prop_map(Document::from),
            any::<u64>().prop_map(Document::from),
            (-5_i64..5).prop_map(Document::from),
            prop::sample::select(vec![
                json!(i64::MIN),
                json!(i64::MAX),
                json!(u64::MAX),
                json!(9_223_372_036_854_775_808.0_f64),
                json!(18_446_744_073_709_551_616.0_f64),
                json!(-9_223_372_036_854_775_808.0_f64),
                json!(0.5),
                json!(-0.0),
                json!(1.0),
                json!(5e-324),
            ]),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Document::from),
            (-5_i32..5).prop_map(|i| Document::from(f64::from(i) / 2.0)),
        ]
    }

    /// Arbitrary JSON values, a few levels deep, with small alphabets so that equal and
    /// nearly equal values are common.
    pub(crate) fn value() -> impl Strategy<Value = Document> {
        let leaf = prop_oneof![
            Just(Document::Null),
            any::<bool>().prop_map(Document::Bool),
            number(),
            "[ab]{0,2}".prop_map(Document::String),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Document::Array),
                prop::collection::btree_map("[ab]", inner, 0..3)
                    .prop_map(|m| Document::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The exact order of an integer and a float, computed another way: through the
    /// float's floor, which is an exactly representable integer.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    fn reference_int_float(i: i128, f: f64) -> Ordering {
        if f >= 1e30 {
            return Ordering::Less;
        }
        if f <= -1e30 {
            return Ordering::Greater;
        }
        // |floor(f)| < 1e30 < 2^127 and floor(f) is integral, so the cast is exact.
        let floor = f.floor() as i128;
        match i.cmp(&floor) {
            Ordering::Equal if f.fract() == 0.0 => Ordering::Equal,
            Ordering::Equal => Ordering::Less,
            other => other,
        }
    }

    proptest! {
        #[test]
        fn integer_float_comparison_is_exact(i in prop_oneof![any::<i64>().prop_map(i128::from), any::<u64>().prop_map(i128::from)], f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            prop_assert_eq!(cmp_int_float(i, f), reference_int_float(i, f));
        }

        #[test]
        fn an_integer_equals_its_float_when_the_float_is_exact(i in -(1_i64 << 53)..(1_i64 << 53)) {
            #[allow(clippy::cast_precision_loss)] // |i| ≤ 2^53: exact.
            let f = i as f64;
            prop_assert!(values_equal(&json!(i), &json!(f)));
        }

        #[test]
        fn the_total_order_is_a_total_order(a in value(), b in value(), c in value()) {
            let ab = compare_total(Some(&a), Some(&b));
            prop_assert_eq!(ab, compare_total(Some(&b), Some(&a)).reverse());
            prop_assert_eq!(compare_total(Some(&a), Some(&a)), Ordering::Equal);
            let bc = compare_total(Some(&b), Some(&c));
            if ab != Ordering::Greater && bc != Ordering::Greater {
                prop_assert_ne!(compare_total(Some(&a), Some(&c)), Ordering::Greater);
            }
        }

        #[test]
        fn equality_is_the_total_orders_equality(a in value(), b in value()) {
            prop_assert_eq!(values_equal(&a, &b), compare_total(Some(&a), Some(&b)) == Ordering::Equal);
            prop_assert!(values_equal(&a, &a));
        }

        #[test]
        fn compare_values_is_the_total_order_within_a_bracket(a in value(), b in value()) {
            let same_bracket = type_bracket(&a) == type_bracket(&b);
            let expected = same_bracket.then(|| compare_total(Some(&a), Some(&b)));
            prop_assert_eq!(compare_values(&a, &b), expected);
        }
    }
}
