//! The leaves of a value (see [`crate::cypher::visit_leaves`]), taken straight from its
//! `Serialize` implementation instead of from a JSON document built first.
//!
//! A write needs a value's leaves (its promoted properties and opaque paths) but not
//! the document itself, unless unique indexes must be checked. Building the document
//! (a tree of maps and strings) and freeing it again cost a batch of 10,000 small
//! documents more than serializing and escaping everything it sends; walking the value
//! once with [`Walker`] records the same leaves into two buffers.
//!
//! The walker answers exactly as `visit_leaves(&to_document(value))` would, or not at
//! all: it follows what `serde_json`'s value serializer builds (behind the strict
//! proxy of `storage_core::codec`) only for the shapes whose result is plain —
//! objects with string keys, arrays, strings, booleans, integers up to 64 bits, finite
//! floats, nulls and unit variants — and gives up ([`Leaves::of_value_in`] returns
//! `None`) on anything else: enum variants with data, 128-bit integers, other map
//! keys, non-finite floats, `serde_json`'s own private types, or an object that names
//! a key twice (where a document keeps the last value). The caller then builds the
//! document as before, which also reports the errors a document build reports.

use std::fmt;
use std::ops::Range;

use serde::ser::{self, Serialize};
use storage_core::Document;

use crate::cypher::{
    Leaf, MAX_PROMOTED_STRING, leaf_of_float, leaf_of_int, nameable, visit_leaves,
};

/// A value's leaves, in the order the value lists its fields: each a promoted name
/// (`.path`) and what is stored for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Leaves {
    /// The names and string values, back to back.
    text: String,
    items: Vec<(Range<usize>, Stored)>,
}

/// A leaf as kept in [`Leaves`]: strings as ranges of its text.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Str(Range<usize>),
    Bool(bool),
    Int(i64),
    Float(f64),
    Opaque,
    Object,
}

impl Leaves {
    /// The leaves of a document, by [`visit_leaves`].
    pub(crate) fn of_document(doc: &Document) -> Self {
        let mut out = Self::default();
        visit_leaves(doc, &mut |name, leaf| out.push(name, leaf));
        out
    }

    /// [`Leaves::of_value_in`] with a fresh scratch.
    #[cfg(test)]
    pub(crate) fn of_value<T: Serialize + ?Sized>(value: &T) -> Option<Self> {
        Self::of_value_in(value, &mut WalkScratch::default())
    }

    /// The leaves of `value` as [`Leaves::of_document`] would find them in its
    /// document, or `None` when the value has a shape the walker leaves to the document
    /// (see the module docs); sized from the previous value walked with `scratch`: the
    /// values of a batch are mostly alike, and growing two buffers field by field cost
    /// the walk about as much as everything else it does.
    pub(crate) fn of_value_in<T: Serialize + ?Sized>(
        value: &T,
        scratch: &mut WalkScratch,
    ) -> Option<Self> {
        let mut name = std::mem::take(&mut scratch.name);
        name.clear();
        name.push('.');
        let mut walker = Walker {
            out: Self {
                text: String::with_capacity(scratch.text + scratch.text / 4),
                items: Vec::with_capacity(scratch.items),
            },
            name,
            record: true,
            root: true,
            key: std::mem::take(&mut scratch.key),
        };
        let outcome = value.serialize(&mut walker);
        scratch.name = walker.name;
        scratch.key = walker.key;
        outcome.ok()?;
        scratch.text = walker.out.text.len();
        scratch.items = walker.out.items.len();
        (!walker.out.names_repeat()).then_some(walker.out)
    }

    fn push(&mut self, name: &str, leaf: Leaf<'_>) {
        let start = self.text.len();
        self.text.push_str(name);
        let name = start..self.text.len();
        let stored = match leaf {
            Leaf::Str(s) => {
                let start = self.text.len();
                self.text.push_str(s);
                Stored::Str(start..self.text.len())
            }
            Leaf::Bool(b) => Stored::Bool(b),
            Leaf::Int(i) => Stored::Int(i),
            Leaf::Float(f) => Stored::Float(f),
            Leaf::Opaque => Stored::Opaque,
            Leaf::Object => Stored::Object,
        };
        self.items.push((name, stored));
    }

    /// Calls `f(name, leaf)` for every leaf, as [`visit_leaves`] does for a document.
    pub(crate) fn visit<'s>(&'s self, f: &mut impl FnMut(&'s str, Leaf<'s>)) {
        for (name, stored) in &self.items {
            let text = |range: &Range<usize>| self.text.get(range.clone()).unwrap_or_default();
            let leaf = match stored {
                Stored::Str(range) => Leaf::Str(text(range)),
                Stored::Bool(b) => Leaf::Bool(*b),
                Stored::Int(i) => Leaf::Int(*i),
                Stored::Float(x) => Leaf::Float(*x),
                Stored::Opaque => Leaf::Opaque,
                Stored::Object => Leaf::Object,
            };
            f(text(name), leaf);
        }
    }

    /// Whether a name comes twice: only when an object named a key twice, which a
    /// document resolves (the last value wins) and the walk does not.
    fn names_repeat(&self) -> bool {
        let name = |i: usize| {
            self.items
                .get(i)
                .and_then(|(r, _)| self.text.get(r.clone()))
        };
        let n = self.items.len();
        if n <= 16 {
            return (0..n).any(|i| (i + 1..n).any(|j| name(i) == name(j)));
        }
        let mut names: Vec<&str> = (0..n).filter_map(name).collect();
        names.sort_unstable();
        names.windows(2).any(|pair| pair[0] == pair[1])
    }
}

/// What one walk leaves to the next: the sizes of the last value's leaves, and the
/// walker's name and key buffers.
#[derive(Debug, Default)]
pub(crate) struct WalkScratch {
    name: String,
    key: String,
    text: usize,
    items: usize,
}

/// The walk gave up: the caller builds the document instead.
#[derive(Debug)]
struct Fallback;

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("left to the document")
    }
}

impl std::error::Error for Fallback {}

impl ser::Error for Fallback {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Fallback
    }
}

/// The walk's position: the promoted name of the value being serialized, whether its
/// leaves are recorded (not inside arrays, which are opaque as a whole, nor below a
/// key no field path can name), and whether it is the root (which has no name of its
/// own: a root object records no `Object`, a root scalar nothing, a root array an
/// opaque `.`).
struct Walker {
    out: Leaves,
    name: String,
    record: bool,
    root: bool,
    /// The key of the map entry being serialized.
    key: String,
}

impl Walker {
    fn leaf(&mut self, leaf: Leaf<'_>) {
        if self.record && !self.root {
            self.out.push(&self.name, leaf);
        }
    }

    fn string(&mut self, s: &str) {
        if s.len() <= MAX_PROMOTED_STRING && !s.contains('\0') {
            self.leaf(Leaf::Str(s));
        } else {
            self.leaf(Leaf::Opaque);
        }
    }

    fn array(&mut self) -> Nested<'_> {
        if self.record {
            // At the root, `name` is ".", the name `visit_leaves` gives a root array.
            self.out.push(&self.name, Leaf::Opaque);
        }
        let saved = (self.name.len(), self.record, self.root);
        self.record = false;
        self.root = false;
        Nested { w: self, saved }
    }

    fn object(&mut self) -> Nested<'_> {
        if self.record && !self.root {
            self.out.push(&self.name, Leaf::Object);
        }
        let saved = (self.name.len(), self.record, self.root);
        Nested { w: self, saved }
    }
}

/// An array or object being walked, and the position to return to after it.
struct Nested<'w> {
    w: &'w mut Walker,
    saved: (usize, bool, bool),
}

impl Nested<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        value.serialize(&mut *self.w)
    }

    /// Serializes the value of field `key` at its own position.
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Fallback> {
        let (len, record, root) = self.saved;
        let w = &mut *self.w;
        if !root {
            w.name.push('.');
        }
        w.name.push_str(key);
        w.record = record && nameable(key);
        w.root = false;
        let result = value.serialize(&mut *w);
        w.name.truncate(len);
        result
    }

    fn end(self) {
        let (len, record, root) = self.saved;
        self.w.name.truncate(len);
        self.w.record = record;
        self.w.root = root;
    }
}

/// Integer methods that widen their argument losslessly and hand it to the method
/// that decides for the whole family (`$to`).
macro_rules! widen {
    ($to:ident($wide:ty): $($method:ident($narrow:ty)),+ $(,)?) => {$(
        fn $method(self, v: $narrow) -> Result<Self::Ok, Self::Error> {
            self.$to(<$wide>::from(v))
        }
    )+};
}

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = Fallback;
    type SerializeSeq = Nested<'a>;
    type SerializeTuple = Nested<'a>;
    type SerializeTupleStruct = Nested<'a>;
    type SerializeTupleVariant = ser::Impossible<(), Fallback>;
    type SerializeMap = Nested<'a>;
    type SerializeStruct = Nested<'a>;
    type SerializeStructVariant = ser::Impossible<(), Fallback>;

    fn serialize_bool(self, v: bool) -> Result<(), Fallback> {
        self.leaf(Leaf::Bool(v));
        Ok(())
    }

    widen!(serialize_i64(i64): serialize_i8(i8), serialize_i16(i16), serialize_i32(i32));
    // u8 to u32 always fit in an i64.
    widen!(serialize_i64(i64): serialize_u8(u8), serialize_u16(u16), serialize_u32(u32));

    fn serialize_i64(self, v: i64) -> Result<(), Fallback> {
        self.leaf(leaf_of_int(Some(v)));
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Fallback> {
        // Above i64::MAX it is opaque, as any integer beyond ±2^53 is.
        self.leaf(leaf_of_int(i64::try_from(v).ok()));
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Fallback> {
        // `serde_json` stores an f32 as the f64 it converts to.
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Fallback> {
        if !v.is_finite() {
            // Refused by the strict proxy: the document build reports it.
            return Err(Fallback);
        }
        self.leaf(leaf_of_float(v));
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Fallback> {
        self.string(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Fallback> {
        self.string(v);
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), Fallback> {
        // An array of numbers in a document.
        self.array().end();
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Fallback> {
        self.leaf(Leaf::Opaque);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Fallback> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Fallback> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Fallback> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Fallback> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        // `serde_json`'s private number and raw-value types reach a document their own way.
        if name.starts_with("$serde_json") {
            return Err(Fallback);
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Fallback> {
        Err(Fallback)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Nested<'a>, Fallback> {
        Ok(self.array())
    }

    fn serialize_tuple(self, _: usize) -> Result<Nested<'a>, Fallback> {
        Ok(self.array())
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Nested<'a>, Fallback> {
        Ok(self.array())
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Fallback> {
        Err(Fallback)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Nested<'a>, Fallback> {
        Ok(self.object())
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Nested<'a>, Fallback> {
        if name.starts_with("$serde_json") {
            return Err(Fallback);
        }
        Ok(self.object())
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Fallback> {
        Err(Fallback)
    }
}

// A sequence, a tuple and a tuple struct are walked alike: element by element.
macro_rules! sequence_like {
    ($($trait:ident::$method:ident),+) => {$(
        impl ser::$trait for Nested<'_> {
            type Ok = ();
            type Error = Fallback;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
                self.element(value)
            }

            fn end(self) -> Result<(), Fallback> {
                Nested::end(self);
                Ok(())
            }
        }
    )+};
}

sequence_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

impl ser::SerializeStruct for Nested<'_> {
    type Ok = ();
    type Error = Fallback;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Fallback> {
        Nested::end(self);
        Ok(())
    }
}

impl ser::SerializeMap for Nested<'_> {
    type Ok = ();
    type Error = Fallback;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Fallback> {
        self.w.key.clear();
        key.serialize(KeyText(&mut self.w.key))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        let key = std::mem::take(&mut self.w.key);
        let result = self.field(&key, value);
        self.w.key = key;
        result
    }

    fn end(self) -> Result<(), Fallback> {
        Nested::end(self);
        Ok(())
    }
}

/// Takes a map key that is a string (or a `char`); any other key is left to the
/// document, which turns integers into strings and refuses the rest.
struct KeyText<'k>(&'k mut String);

/// The key serializer's methods that leave the key to the document.
macro_rules! key_falls_back {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), Fallback> {
            Err(Fallback)
        })*
    };
}

impl ser::Serializer for KeyText<'_> {
    type Ok = ();
    type Error = Fallback;
    type SerializeSeq = ser::Impossible<(), Fallback>;
    type SerializeTuple = ser::Impossible<(), Fallback>;
    type SerializeTupleStruct = ser::Impossible<(), Fallback>;
    type SerializeTupleVariant = ser::Impossible<(), Fallback>;
    type SerializeMap = ser::Impossible<(), Fallback>;
    type SerializeStruct = ser::Impossible<(), Fallback>;
    type SerializeStructVariant = ser::Impossible<(), Fallback>;

    fn serialize_str(self, v: &str) -> Result<(), Fallback> {
        self.0.push_str(v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Fallback> {
        self.0.push(v);
        Ok(())
    }

    key_falls_back!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_bytes(&[u8]),
        serialize_none(),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Fallback> {
        Err(Fallback)
    }

    key_falls_back!(
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Fallback> {
        Err(Fallback)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Fallback> {
        Err(Fallback)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Fallback> {
        Err(Fallback)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Fallback> {
        Err(Fallback)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Fallback> {
        Err(Fallback)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Fallback> {
        Err(Fallback)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Fallback> {
        Err(Fallback)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Fallback> {
        Err(Fallback)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Fallback> {
        Err(Fallback)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{Value, json};
    use storage_core::codec::to_document;

    use super::*;

    thread_local! {
        /// One scratch for every walk of a test thread, as a batch shares one: each
        /// walk starts from the buffers and size hints the previous one (of whatever
        /// shape, given up or not) left.
        static SCRATCH: std::cell::RefCell<WalkScratch> = std::cell::RefCell::default();
    }

    /// The walker's leaves, which must be the document's whenever it answers, and the
    /// same with a fresh scratch as with a used one.
    fn check<T: Serialize + ?Sized>(value: &T) -> Option<Leaves> {
        let walked = SCRATCH.with(|s| Leaves::of_value_in(value, &mut s.borrow_mut()));
        assert_eq!(walked, Leaves::of_value(value));
        if let Some(walked) = &walked {
            let doc = to_document(value).ok();
            assert!(doc.is_some(), "walked a value the document refuses");
            let doc = doc.unwrap_or_default();
            // A document orders its keys; the walk keeps the value's order.
            let sorted = |l: &Leaves| {
                let mut v = Vec::new();
                l.visit(&mut |n, leaf| v.push(format!("{n} {leaf:?}")));
                v.sort();
                v
            };
            assert_eq!(sorted(walked), sorted(&Leaves::of_document(&doc)), "{doc}");
        }
        walked
    }

    #[derive(Serialize)]
    struct Doc {
        id: u64,
        author: String,
        score: f64,
        ratio: f32,
        tags: Vec<String>,
        body: String,
        nested: Inner,
        maybe: Option<i32>,
        #[serde(rename = "a.b")]
        dotted: i32,
        kind: Kind,
        map: BTreeMap<String, Vec<f64>>,
        bytes: serde_bytes_like::Bytes,
        ch: char,
    }

    #[derive(Serialize)]
    struct Inner {
        big: u64,
        neg: i64,
        flag: bool,
        nul: String,
        unit: (),
    }

    #[derive(Serialize)]
    enum Kind {
        Plain,
    }

    mod serde_bytes_like {
        /// Serializes as bytes, as `serde_bytes` would.
        pub(super) struct Bytes(pub(super) Vec<u8>);

        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    #[test]
    fn structs_walk_as_their_documents() {
        let doc = Doc {
            id: 7,
            author: "author-01".into(),
            score: 1.5,
            ratio: 0.1,
            tags: vec!["a".into()],
            body: "x".repeat(MAX_PROMOTED_STRING + 1),
            nested: Inner {
                big: u64::MAX,
                neg: -(1 << 53) - 1,
                flag: true,
                nul: "a\0b".into(),
                unit: (),
            },
            maybe: None,
            dotted: 3,
            kind: Kind::Plain,
            map: BTreeMap::from([("k".into(), vec![1.0]), (String::new(), vec![])]),
            bytes: serde_bytes_like::Bytes(vec![1, 2]),
            ch: 'c',
        };
        assert!(check(&doc).is_some());
        assert!(check(&vec![1, 2]).is_some());
        assert!(check(&"root string").is_some());
        assert!(check(&json!({"a": [{"b": 1}], "c": null, "d": {"e": "f"}})).is_some());
    }

    /// Names a key twice.
    struct Twice;
    impl Serialize for Twice {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("a", &json!({"b": 1}))?;
            m.serialize_entry("a", &2)?;
            m.end()
        }
    }

    #[test]
    fn unusual_shapes_are_left_to_the_document() {
        #[derive(Serialize)]
        enum WithData {
            New(i32),
        }
        assert!(check(&WithData::New(1)).is_none());
        assert!(check(&[f64::NAN]).is_none());
        assert!(check(&BTreeMap::from([(1, 2)])).is_none());
        assert!(check(&1_i128).is_none());
        assert!(check(&Twice).is_none());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e16..1e16_f64).prop_map(Value::from),
            "(?s).{0,4}|[a.`]{0,3}|x{120,140}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c.`]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn documents_walk_as_themselves(value in json_value()) {
            prop_assert!(check(&value).is_some());
        }
    }
}
