//! Comparing JSON values: equality and order across numbers, type brackets, the total order.

use std::cmp::Ordering;

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
    let _ = value;
    todo!("query helper")
}

/// Equality as the evaluator sees it: numbers by value (`1 == 1.0`), the rest structurally.
pub fn values_equal(a: &Document, b: &Document) -> bool {
    let _ = (a, b);
    todo!("query helper")
}

/// Order within one bracket, `None` across brackets (what `gt`/`lt` use).
pub fn compare_values(a: &Document, b: &Document) -> Option<Ordering> {
    let _ = (a, b);
    todo!("query helper")
}

/// The total order `order_by` uses; `None` stands for a missing field and sorts as null.
pub fn compare_total(a: Option<&Document>, b: Option<&Document>) -> Ordering {
    let _ = (a, b);
    todo!("query helper")
}
