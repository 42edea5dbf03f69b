//! How the store keeps a value in memory: [`Stored`], its compact JSON text, with
//! the JSON document (the tree queries and indexes read) parsed from it when first
//! needed.
//!
//! A set used to build a `serde_json::Value` tree of the value (an allocation per
//! field name, string and array), serialize that tree again for the journal line,
//! and walk it to free it when the key was next overwritten. Now the value is
//! serialized once, straight into its canonical compact text ([`Encoder`]:
//! object fields in ascending byte order, as the document's own serialization
//! writes them), which is both the journal line's `value` and the stored form: one
//! allocation, freed in one call. The tree is parsed from the text only when a
//! query, an index or an event needs it, and then kept beside it.

use std::fmt;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize, Serializer};
use storage_core::Document;

/// A stored value: its compact JSON text, its document, or both.
///
/// Invariant: at least one of the two is present. Values read from the files hold
/// the document (the files were parsed into it); values written since hold the text,
/// and gain the document when something reads the tree.
pub(crate) struct Stored {
    /// UTF-8 by construction (the encoder writes `str`s and ASCII only), kept as
    /// bytes so that nothing validates it again.
    text: Option<Box<[u8]>>,
    doc: OnceLock<Document>,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.text, self.doc.get()) {
            (Some(text), _) => f.write_str(&String::from_utf8_lossy(text)),
            (None, Some(doc)) => write!(f, "{doc}"),
            (None, None) => f.write_str("null"),
        }
    }
}

impl Stored {
    /// A value read as a document (from the main file or the journal).
    pub(crate) fn from_doc(doc: Document) -> Self {
        Self {
            text: None,
            doc: OnceLock::from(doc),
        }
    }

    /// A value serialized by [`Encoder`].
    fn from_text(text: &[u8]) -> Self {
        Self {
            text: Some(Box::from(text)),
            doc: OnceLock::new(),
        }
    }

    /// Encodes a value for storage: its canonical text when [`Encoder`] can
    /// write it, otherwise through [`storage_core::codec::to_document`] (which also
    /// gives the typed error for what JSON cannot hold).
    ///
    /// # Errors
    /// What `to_document` gives: `InvalidValue` (NaN, a 128-bit integer beyond 64 bits,
    /// a map key that is not a string or an integer), `SerializationFailed`.
    pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> storage_core::Result<Self> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Encoder> = std::cell::RefCell::new(Encoder::default());
        }
        let fast = SCRATCH.with(|cell| {
            let Ok(mut encoder) = cell.try_borrow_mut() else {
                // A value's `Serialize` impl that stores a value itself: no scratch to share.
                return None;
            };
            encoder.encode(value).map(Self::from_text)
        });
        match fast {
            Some(stored) => Ok(stored),
            None => storage_core::codec::to_document(value).map(Self::from_doc),
        }
    }

    /// Whether the value is held as a document only (read from the files, or built
    /// as one), not as text.
    pub(crate) fn is_tree(&self) -> bool {
        self.text.is_none()
    }

    /// The document, parsed from the text the first time it is needed.
    pub(crate) fn doc(&self) -> &Document {
        self.doc.get_or_init(|| {
            let text = self.text.as_deref().unwrap_or(b"null");
            // The text is `Encoder`'s output: valid JSON, nested at most
            // `MAX_DEPTH` deep, so it parses (the default is never used).
            serde_json::from_slice(text).unwrap_or_else(|e| {
                tracing::error!(error = %e, "a stored value's text does not parse");
                Document::Null
            })
        })
    }

    /// The value as `T`: from the document when it is at hand, else from the text.
    ///
    /// # Errors
    /// When the value does not fit `T`.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        if let Some(doc) = self.doc.get() {
            return T::deserialize(doc);
        }
        match &self.text {
            Some(text) => serde_json::from_slice(text),
            None => T::deserialize(self.doc()),
        }
    }

    /// Appends the compact JSON of the value, as the journal holds it.
    ///
    /// # Errors
    /// Only if serializing a document fails, which it does not for documents.
    pub(crate) fn write_compact(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match (&self.text, self.doc.get()) {
            (Some(text), _) => {
                out.extend_from_slice(text);
                Ok(())
            }
            (None, Some(doc)) => serde_json::to_writer(out, doc),
            (None, None) => {
                out.extend_from_slice(b"null");
                Ok(())
            }
        }
    }
}

impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        // Equal canonical texts are equal documents; unequal ones may still be
        // (`-0.0` and `0.0` compare equal as numbers), so those go by the documents.
        matches!((&self.text, &other.text), (Some(a), Some(b)) if a == b)
            || self.doc() == other.doc()
    }
}

impl Serialize for Stored {
    /// Serializes the document (for the main file). A value held as text only is
    /// parsed into a document that is dropped afterwards, so writing the file does
    /// not make every entry keep a tree.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(doc) = self.doc.get() {
            return doc.serialize(serializer);
        }
        let text = self.text.as_deref().unwrap_or(b"null");
        let doc: Document = serde_json::from_slice(text).map_err(ser::Error::custom)?;
        doc.serialize(serializer)
    }
}

/// How deep [`Encoder`] nests before it leaves the value to `to_document`:
/// below `serde_json`'s parser limit (128), so the text always parses back.
const MAX_DEPTH: usize = 100;

/// Why [`Encoder`] left a value to the slower path. Not an error the caller
/// sees: `to_document` then decides.
#[derive(Debug)]
struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("left to to_document")
    }
}

impl std::error::Error for GiveUp {}

impl ser::Error for GiveUp {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Self
    }
}

/// One `"key":value` member of an object being written, for sorting.
#[derive(Clone, Copy)]
struct Member {
    /// The unescaped key, in [`Encoder::keys`].
    key: (usize, usize),
    /// The member's bytes in [`Encoder::out`] (no comma).
    bytes: (usize, usize),
}

/// A serializer writing the compact JSON text of `to_document(value)` without
/// building it: the same bytes `serde_json::to_vec(&to_document(value)?)` gives.
///
/// Objects are written member by member and then, if their keys were not in
/// ascending byte order already (struct fields are in declaration order), their
/// members are moved into order: `serde_json`'s map is a `BTreeMap`. It gives up
/// (and `to_document` decides) on anything where the two might differ or where
/// `to_document` refuses the value: non-finite floats, 128-bit integers beyond 64
/// bits, map keys that are neither strings nor integers, duplicate keys, raw or
/// arbitrary-precision `serde_json` tokens, nesting deeper than [`MAX_DEPTH`], and
/// any error of the value's own `Serialize` impl.
#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
    /// Members of the objects being written, innermost last.
    members: Vec<Member>,
    keys: Vec<u8>,
    /// Where an object's members are copied while they are put in order.
    spare: Vec<u8>,
    order: Vec<usize>,
    depth: usize,
}

/// The largest scratch buffer kept between encodings.
const SCRATCH_KEPT: usize = 64 << 10;

impl Encoder {
    /// The canonical text of `value`, or `None` to leave it to `to_document`.
    fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Option<&[u8]> {
        self.out.clear();
        self.members.clear();
        self.keys.clear();
        self.depth = 0;
        if self.out.capacity() > SCRATCH_KEPT {
            *self = Self::default();
        }
        value.serialize(&mut *self).ok()?;
        Some(&self.out)
    }

    fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut self.out)
    }

    fn enter(&mut self) -> Result<(), GiveUp> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        Ok(())
    }

    fn open_object(&mut self) -> Result<Object<'_>, GiveUp> {
        self.enter()?;
        self.out.push(b'{');
        Ok(Object {
            first_member: self.members.len(),
            first_key: self.keys.len(),
            start: self.out.len(),
            pending: None,
            enc: self,
        })
    }

    fn open_array(&mut self) -> Result<Array<'_>, GiveUp> {
        self.enter()?;
        self.out.push(b'[');
        Ok(Array {
            first: true,
            enc: self,
        })
    }

    /// `{"variant":` before a variant's content.
    fn open_variant(&mut self, variant: &str) -> Result<(), GiveUp> {
        self.enter()?;
        self.out.push(b'{');
        self.json().serialize_str(variant).map_err(|_| GiveUp)?;
        self.out.push(b':');
        Ok(())
    }

    fn close_variant(&mut self) {
        self.out.push(b'}');
        self.depth -= 1;
    }
}

/// An array being written.
struct Array<'a> {
    enc: &'a mut Encoder,
    first: bool,
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GiveUp> {
        if !self.first {
            self.enc.out.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.enc)
    }

    fn close(self) {
        self.enc.out.push(b']');
        self.enc.depth -= 1;
    }
}

/// An object being written; its members are put in key order when it closes.
struct Object<'a> {
    enc: &'a mut Encoder,
    first_member: usize,
    first_key: usize,
    /// Where the members start (after `{`).
    start: usize,
    /// A map key written, waiting for its value: (its key, where the member starts).
    pending: Option<((usize, usize), usize)>,
}

impl<'a> Object<'a> {
    /// Writes `"key":` and returns (the key's place in `keys`, the member's start).
    fn key_str(&mut self, key: &str) -> Result<((usize, usize), usize), GiveUp> {
        let enc = &mut *self.enc;
        if enc.members.len() > self.first_member || self.pending.is_some() {
            enc.out.push(b',');
        }
        let start = enc.out.len();
        enc.json().serialize_str(key).map_err(|_| GiveUp)?;
        let k = enc.keys.len();
        enc.keys.extend_from_slice(key.as_bytes());
        Ok(((k, enc.keys.len()), start))
    }

    fn value<T: Serialize + ?Sized>(
        &mut self,
        key: (usize, usize),
        start: usize,
        value: &T,
    ) -> Result<(), GiveUp> {
        self.enc.out.push(b':');
        value.serialize(&mut *self.enc)?;
        let end = self.enc.out.len();
        self.enc.members.push(Member {
            key,
            bytes: (start, end),
        });
        Ok(())
    }

    /// Puts the members in ascending key order (if they are not already) and
    /// closes the object.
    fn close(self) -> Result<&'a mut Encoder, GiveUp> {
        if self.pending.is_some() {
            return Err(GiveUp);
        }
        let enc = self.enc;
        let Encoder {
            out,
            members,
            keys,
            spare,
            order,
            depth,
        } = &mut *enc;
        let mine = &members[self.first_member..];
        let key = |m: &Member| &keys[m.key.0..m.key.1];
        if !mine.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            order.clear();
            order.extend(0..mine.len());
            order.sort_unstable_by(|a, b| key(&mine[*a]).cmp(key(&mine[*b])));
            if order
                .windows(2)
                .any(|w| key(&mine[w[0]]) == key(&mine[w[1]]))
            {
                // The document keeps the last of equal keys; leave that to it.
                return Err(GiveUp);
            }
            spare.clear();
            spare.extend_from_slice(&out[self.start..]);
            out.truncate(self.start);
            for (i, at) in order.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let (from, to) = mine[*at].bytes;
                out.extend_from_slice(&spare[from - self.start..to - self.start]);
            }
        }
        members.truncate(self.first_member);
        keys.truncate(self.first_key);
        out.push(b'}');
        *depth -= 1;
        Ok(enc)
    }
}

/// The prefix `serde_json` gives the names of its private raw-value and number
/// types, which its own serializers treat specially.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// Integer methods that widen their argument losslessly and hand it to the method
/// that decides for the whole family (`$to`).
macro_rules! widen {
    ($to:ident($wide:ty): $($method:ident($narrow:ty)),+ $(,)?) => {$(
        fn $method(self, v: $narrow) -> Result<Self::Ok, Self::Error> {
            self.$to(<$wide>::from(v))
        }
    )+};
}

impl<'a> Serializer for &'a mut Encoder {
    type Ok = ();
    type Error = GiveUp;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), GiveUp> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    widen!(serialize_i64(i64): serialize_i8(i8), serialize_i16(i16), serialize_i32(i32));
    widen!(serialize_u64(u64): serialize_u8(u8), serialize_u16(u16), serialize_u32(u32));

    fn serialize_i64(self, v: i64) -> Result<(), GiveUp> {
        self.json().serialize_i64(v).map_err(|_| GiveUp)
    }

    fn serialize_i128(self, v: i128) -> Result<(), GiveUp> {
        if let Ok(v) = u64::try_from(v) {
            return self.serialize_u64(v);
        }
        i64::try_from(v)
            .map_err(|_| GiveUp)
            .and_then(|v| self.serialize_i64(v))
    }

    fn serialize_u64(self, v: u64) -> Result<(), GiveUp> {
        self.json().serialize_u64(v).map_err(|_| GiveUp)
    }

    fn serialize_u128(self, v: u128) -> Result<(), GiveUp> {
        u64::try_from(v)
            .map_err(|_| GiveUp)
            .and_then(|v| self.serialize_u64(v))
    }

    fn serialize_f32(self, v: f32) -> Result<(), GiveUp> {
        // The document holds an f32 as the f64 of the same value.
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), GiveUp> {
        if !v.is_finite() {
            return Err(GiveUp);
        }
        self.json().serialize_f64(v).map_err(|_| GiveUp)
    }

    fn serialize_char(self, v: char) -> Result<(), GiveUp> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), GiveUp> {
        self.json().serialize_str(v).map_err(|_| GiveUp)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), GiveUp> {
        let mut array = self.open_array()?;
        for b in v {
            array.element(b)?;
        }
        array.close();
        Ok(())
    }

    fn serialize_none(self) -> Result<(), GiveUp> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), GiveUp> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), GiveUp> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), GiveUp> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), GiveUp> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), GiveUp> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(GiveUp);
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), GiveUp> {
        self.open_variant(variant)?;
        value.serialize(&mut *self)?;
        self.close_variant();
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, GiveUp> {
        self.open_array()
    }

    fn serialize_tuple(self, _len: usize) -> Result<Array<'a>, GiveUp> {
        self.open_array()
    }

    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Array<'a>, GiveUp> {
        self.open_array()
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>, GiveUp> {
        self.open_variant(variant)?;
        self.open_array()
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, GiveUp> {
        self.open_object()
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Object<'a>, GiveUp> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(GiveUp);
        }
        self.open_object()
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, GiveUp> {
        self.open_variant(variant)?;
        self.open_object()
    }
}

// A sequence, a tuple and a tuple struct are written alike: elements, then `]`.
macro_rules! sequence_like {
    ($($trait:ident::$method:ident),+) => {$(
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = GiveUp;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GiveUp> {
                self.element(value)
            }

            fn end(self) -> Result<(), GiveUp> {
                self.close();
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

impl ser::SerializeTupleVariant for Array<'_> {
    type Ok = ();
    type Error = GiveUp;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GiveUp> {
        self.element(value)
    }

    fn end(self) -> Result<(), GiveUp> {
        let enc = &mut *self.enc;
        enc.out.push(b']');
        enc.depth -= 1;
        enc.close_variant();
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = GiveUp;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), GiveUp> {
        if self.pending.is_some() {
            return Err(GiveUp);
        }
        let text = key.serialize(KeyText)?;
        self.pending = Some(self.key_str(&text)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GiveUp> {
        let (key, start) = self.pending.take().ok_or(GiveUp)?;
        self.value(key, start, value)
    }

    fn end(self) -> Result<(), GiveUp> {
        self.close().map(|_| ())
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = GiveUp;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), GiveUp> {
        let (k, start) = self.key_str(key)?;
        self.value(k, start, value)
    }

    fn end(self) -> Result<(), GiveUp> {
        self.close().map(|_| ())
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = GiveUp;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), GiveUp> {
        let (k, start) = self.key_str(key)?;
        self.value(k, start, value)
    }

    fn end(self) -> Result<(), GiveUp> {
        self.close()?.close_variant();
        Ok(())
    }
}

/// A map key as the document's map holds it: a string, or an integer in decimal.
/// Anything else is left to `to_document` (which refuses what `Strict` refuses).
struct KeyText;

impl KeyText {
    #[allow(clippy::unnecessary_wraps)] // the shape every key method returns
    fn int(v: impl fmt::Display) -> Result<String, GiveUp> {
        Ok(v.to_string())
    }
}

macro_rules! key_gives_up {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, GiveUp> {
            Err(GiveUp)
        })*
    };
}

impl Serializer for KeyText {
    type Ok = String;
    type Error = GiveUp;
    type SerializeSeq = ser::Impossible<Self::Ok, GiveUp>;
    type SerializeTuple = ser::Impossible<Self::Ok, GiveUp>;
    type SerializeTupleStruct = ser::Impossible<Self::Ok, GiveUp>;
    type SerializeTupleVariant = ser::Impossible<Self::Ok, GiveUp>;
    type SerializeMap = ser::Impossible<Self::Ok, GiveUp>;
    type SerializeStruct = ser::Impossible<Self::Ok, GiveUp>;
    type SerializeStructVariant = ser::Impossible<Self::Ok, GiveUp>;

    fn serialize_str(self, v: &str) -> Result<Self::Ok, GiveUp> {
        Ok(v.to_owned())
    }

    fn serialize_i8(self, v: i8) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_i16(self, v: i16) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_i32(self, v: i32) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_i64(self, v: i64) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_u8(self, v: u8) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_u16(self, v: u16) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_u32(self, v: u32) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_u64(self, v: u64) -> Result<Self::Ok, GiveUp> {
        Self::int(v)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _value: &T,
    ) -> Result<Self::Ok, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<Self::Ok, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Self::Ok, GiveUp> {
        Err(GiveUp)
    }

    key_gives_up!(
        serialize_bool(bool),
        serialize_i128(i128),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, GiveUp> {
        Err(GiveUp)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, GiveUp> {
        Err(GiveUp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;
    use serde_json::json;
    use storage_core::codec::to_document;

    /// The text the store kept before: the document's own compact serialization.
    fn via_document<T: Serialize>(value: &T) -> Option<String> {
        to_document(value)
            .ok()
            .and_then(|d| serde_json::to_string(&d).ok())
    }

    fn fast<T: Serialize>(value: &T) -> Option<String> {
        Encoder::default()
            .encode(value)
            .and_then(|t| String::from_utf8(t.to_vec()).ok())
    }

    /// The fast text, where there is one, is the document's text byte for byte.
    fn same<T: Serialize>(value: &T) -> Result<(), String> {
        let expected = via_document(value).ok_or("to_document refused the value")?;
        let got = fast(value).ok_or("the encoder gave up")?;
        if got != expected {
            return Err(format!("encoder wrote {got}, the document {expected}"));
        }
        let stored = Stored::encode(value).map_err(|e| e.to_string())?;
        let doc = to_document(value).map_err(|e| e.to_string())?;
        if stored.doc() != &doc {
            return Err("the parsed text differs from the document".to_owned());
        }
        Ok(())
    }

    #[derive(Serialize)]
    struct User {
        name: String,
        age: u32,
        tags: Vec<String>,
        email: Option<String>,
        score: f32,
        ratio: f64,
        nested: Inner,
    }

    #[derive(Serialize)]
    struct Inner {
        z: i64,
        a: (u8, char),
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        m: BTreeMap<String, u8>,
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(u8, String),
        Struct { y: u8, x: u8 },
    }

    #[derive(Serialize)]
    struct Wrapper(Vec<u8>);

    #[derive(Serialize)]
    struct Flat {
        b: u8,
        #[serde(flatten)]
        rest: HashMap<String, u8>,
        a: u8,
    }

    #[test]
    fn structs_come_out_as_their_documents_with_sorted_fields() -> Result<(), String> {
        let user = User {
            name: "Carol \"C\" \\ \u{1} é 😀".to_owned(),
            age: 40,
            tags: vec!["a".to_owned(), String::new()],
            email: None,
            score: 0.1,
            ratio: -0.0,
            nested: Inner {
                z: -5,
                a: (7, 'ß'),
                skipped: None,
                m: [("b".to_owned(), 1), ("a".to_owned(), 2)].into(),
            },
        };
        same(&user)?;
        let text = fast(&user).ok_or("gave up")?;
        assert!(
            text.starts_with("{\"age\":40,\"email\":null,\"name\":"),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn scalars_enums_maps_and_bytes_match_the_document() -> Result<(), String> {
        same(&json!(null))?;
        same(&true)?;
        same(&u64::MAX)?;
        same(&i64::MIN)?;
        same(&1.5e300)?;
        same(&"x")?;
        same(&'c')?;
        same(&())?;
        same(&Some(3))?;
        same(&vec![
            Shape::Unit,
            Shape::Newtype(1),
            Shape::Tuple(2, "t".to_owned()),
        ])?;
        same(&Shape::Struct { y: 1, x: 2 })?;
        same(&Wrapper(vec![1, 2, 3]))?;
        same(&serde_bytes_like())?;
        same(&u128::from(u64::MAX))?;
        same(&i128::from(i64::MIN))?;
        let mut ints: HashMap<u32, &str> = HashMap::new();
        ints.insert(10, "ten");
        ints.insert(9, "nine");
        ints.insert(100, "hundred");
        same(&ints)?;
        let mut strings: HashMap<String, Vec<u8>> = HashMap::new();
        for i in 0..20 {
            strings.insert(format!("k{i}"), vec![i]);
        }
        same(&strings)?;
        same(&Flat {
            b: 1,
            rest: [("c".to_owned(), 3), ("0".to_owned(), 0)].into(),
            a: 2,
        })?;
        same(&json!({"b": {"d": [1, {"f": 1, "e": 2}], "c": {}}, "a": []}))?;
        same(&BTreeMap::<String, u8>::new())?;
        same(&Vec::<u8>::new())?;
        Ok(())
    }

    /// `serialize_bytes`, as a byte-buffer type writes it.
    fn serde_bytes_like() -> impl Serialize {
        struct Bytes;
        impl Serialize for Bytes {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&[0, 255, 7])
            }
        }
        Bytes
    }

    #[test]
    fn what_the_document_refuses_or_rewrites_is_left_to_it() {
        // Refused by `to_document`: the encoder gives up, so the caller gets its error.
        assert!(fast(&f64::NAN).is_none());
        assert!(fast(&vec![1.0, f64::INFINITY]).is_none());
        assert!(fast(&u128::MAX).is_none());
        let mut bools = BTreeMap::new();
        bools.insert(true, 1);
        assert!(fast(&bools).is_none());
        assert!(Stored::encode(&f64::NAN).is_err());
        // Accepted by `to_document`, with a rewrite the encoder does not attempt.
        let dup = Flat {
            b: 1,
            rest: [("a".to_owned(), 9)].into(),
            a: 2,
        };
        assert!(fast(&dup).is_none());
        let stored = Stored::encode(&dup).map_err(|e| e.to_string());
        assert_eq!(stored.map(|s| s.doc().clone()).ok(), to_document(&dup).ok());
        // Deeper than the parser takes back: left to the document.
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        assert!(fast(&deep).is_none());
        assert!(fast(&json!([[[1]]])).is_some());
    }

    #[test]
    fn a_stored_value_decodes_from_its_text_and_its_document() -> Result<(), String> {
        let value = json!({"b": [1, 2.5, "é"], "a": null});
        let stored = Stored::encode(&value).map_err(|e| e.to_string())?;
        let from_text: serde_json::Value = stored.decode().map_err(|e| e.to_string())?;
        assert_eq!(from_text, value);
        assert_eq!(stored.doc(), &value);
        let from_doc: serde_json::Value = stored.decode().map_err(|e| e.to_string())?;
        assert_eq!(from_doc, value);
        let mut compact = Vec::new();
        stored
            .write_compact(&mut compact)
            .map_err(|e| e.to_string())?;
        assert_eq!(
            String::from_utf8(compact).ok().as_deref(),
            Some(r#"{"a":null,"b":[1,2.5,"é"]}"#)
        );
        let loaded = Stored::from_doc(value.clone());
        assert!(loaded == stored);
        // Equality is the documents', whatever the texts: -0.0 equals 0.0.
        let zeros = (Stored::encode(&-0.0), Stored::encode(&0.0));
        assert!(matches!(zeros, (Ok(a), Ok(b)) if a == b));
        let (one, two) = (Stored::encode(&1), Stored::encode(&2));
        assert!(matches!((one, two), (Ok(a), Ok(b)) if a != b));
        assert_eq!(
            serde_json::to_string(&loaded).map_err(|e| e.to_string())?,
            serde_json::to_string(&stored).map_err(|e| e.to_string())?
        );
        Ok(())
    }
}
