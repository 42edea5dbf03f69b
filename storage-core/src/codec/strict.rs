//! A serializer proxy that refuses what JSON cannot hold faithfully.
//!
//! `serde_json` quietly turns NaN and infinities into `null`, writes 128-bit integers
//! that no reader can parse back without loss, and accepts booleans and floats as map
//! keys. [`Strict`] sits between a value's `Serialize` impl and any `serde_json`
//! serializer (the `Value` builder or the byte writer), forwards everything JSON can
//! represent, and records a [`Rejection`] (with the path to the offending field) for
//! everything else. Keeping the rejection in a side cell rather than in the error
//! message lets the caller map it to `InvalidValue` while any other failure (a custom
//! `Serialize` impl, an I/O error) stays `SerializationFailed`.

use std::cell::RefCell;
use std::fmt;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// Why a value was refused, and where in the value it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// What was refused, one lowercase phrase.
    pub(crate) reason: String,
    /// Path segments from the innermost outwards (reversed when rendered).
    segments: Vec<String>,
}

impl Rejection {
    /// The dotted path to the refused value (`$` for the root).
    pub(crate) fn path(&self) -> String {
        if self.segments.is_empty() {
            return "$".to_owned();
        }
        let mut out = String::from("$");
        for seg in self.segments.iter().rev() {
            out.push('.');
            out.push_str(seg);
        }
        out
    }
}

/// Shared record of the first rejection seen during one serialization.
#[derive(Default)]
pub(crate) struct Guard {
    rejection: RefCell<Option<Rejection>>,
}

impl Guard {
    fn reject<E: ser::Error>(&self, reason: String) -> E {
        let err = E::custom(&reason);
        *self.rejection.borrow_mut() = Some(Rejection {
            reason,
            segments: Vec::new(),
        });
        err
    }

    /// Prepends a path segment to a rejection raised below this point.
    #[inline]
    fn annotate<T, E>(
        &self,
        result: Result<T, E>,
        segment: impl FnOnce() -> String,
    ) -> Result<T, E> {
        if result.is_err() {
            self.push_segment(segment);
        }
        result
    }

    // Kept out of line so the success path of every field stays a plain forward.
    #[cold]
    #[inline(never)]
    fn push_segment(&self, segment: impl FnOnce() -> String) {
        if let Some(rej) = self.rejection.borrow_mut().as_mut() {
            rej.segments.push(segment());
        }
    }

    /// The rejection recorded, if any.
    pub(crate) fn take(&self) -> Option<Rejection> {
        self.rejection.borrow_mut().take()
    }
}

/// The proxy serializer: `S` is the real `serde_json` serializer.
pub(crate) struct Strict<'g, S> {
    pub(crate) inner: S,
    pub(crate) guard: &'g Guard,
}

/// A value to be serialized through a [`Strict`] proxy.
struct Checked<'g, 'v, T: ?Sized> {
    value: &'v T,
    guard: &'g Guard,
}

impl<T: Serialize + ?Sized> Serialize for Checked<'_, '_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Strict {
            inner: serializer,
            guard: self.guard,
        })
    }
}

/// A map key to be serialized through a [`KeyCheck`] proxy.
struct CheckedKey<'g, 'v, T: ?Sized> {
    value: &'v T,
    guard: &'g Guard,
}

impl<T: Serialize + ?Sized> Serialize for CheckedKey<'_, '_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(KeyCheck {
            inner: serializer,
            guard: self.guard,
        })
    }
}

#[inline]
fn check<'g, 'v, T: ?Sized>(guard: &'g Guard, value: &'v T) -> Checked<'g, 'v, T> {
    Checked { value, guard }
}

/// Forwards the primitives JSON holds exactly (integers up to 64 bits, `char`,
/// strings) to the inner serializer, and narrows 128-bit integers to 64 bits or
/// refuses them; `Strict` and `KeyCheck` treat these the same way.
macro_rules! forward_exact_primitives {
    ($what:literal) => {
        forward_exact_primitives!(@plain
            serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
            serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
            serialize_char: char, serialize_str: &str);
        #[inline]
        fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
            if let Ok(small) = i64::try_from(v) {
                self.inner.serialize_i64(small)
            } else if let Ok(small) = u64::try_from(v) {
                self.inner.serialize_u64(small)
            } else {
                Err(self.guard.reject(wide_integer_reason($what, v)))
            }
        }
        #[inline]
        fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
            match u64::try_from(v) {
                Ok(small) => self.inner.serialize_u64(small),
                Err(_) => Err(self.guard.reject(wide_integer_reason($what, v))),
            }
        }
    };
    (@plain $($method:ident: $ty:ty),*) => {
        $(
            #[inline]
            fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
                self.inner.$method(v)
            }
        )*
    };
}

fn wide_integer_reason(what: &str, v: impl fmt::Display) -> String {
    format!("{what} {v} is outside the 64-bit range json readers keep")
}

fn float_reason(kind: &str, v: impl fmt::Display) -> String {
    format!("non-finite {kind} {v} has no json representation")
}

impl<'g, S: Serializer> Serializer for Strict<'g, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'g, S::SerializeSeq>;
    type SerializeTuple = Compound<'g, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'g, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'g, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'g, S::SerializeMap>;
    type SerializeStruct = Compound<'g, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'g, S::SerializeStructVariant>;

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<S::Ok, S::Error> {
        self.inner.serialize_bool(v)
    }
    forward_exact_primitives!("integer");
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f32(v)
        } else {
            Err(self.guard.reject(float_reason("f32", v)))
        }
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f64(v)
        } else {
            Err(self.guard.reject(float_reason("f64", v)))
        }
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        self.inner.serialize_bytes(v)
    }
    #[inline]
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(&check(self.guard, value))
    }
    #[inline]
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }
    #[inline]
    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_struct(name)
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner
            .serialize_newtype_struct(name, &check(self.guard, value))
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let guard = self.guard;
        let result =
            self.inner
                .serialize_newtype_variant(name, index, variant, &check(guard, value));
        guard.annotate(result, || variant.to_owned())
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Ok(Compound::new(self.inner.serialize_seq(len)?, self.guard))
    }
    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        Ok(Compound::new(self.inner.serialize_tuple(len)?, self.guard))
    }
    #[inline]
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Ok(Compound::new(
            self.inner.serialize_tuple_struct(name, len)?,
            self.guard,
        ))
    }
    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Ok(Compound::new(
            self.inner
                .serialize_tuple_variant(name, index, variant, len)?,
            self.guard,
        ))
    }
    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Ok(Compound::new(self.inner.serialize_map(len)?, self.guard))
    }
    #[inline]
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Ok(Compound::new(
            self.inner.serialize_struct(name, len)?,
            self.guard,
        ))
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Ok(Compound::new(
            self.inner
                .serialize_struct_variant(name, index, variant, len)?,
            self.guard,
        ))
    }
}

/// Wraps every compound serializer so its elements go through the proxy as well.
pub(crate) struct Compound<'g, C> {
    inner: C,
    guard: &'g Guard,
    /// Position of the next element, for error paths.
    index: usize,
}

impl<'g, C> Compound<'g, C> {
    fn new(inner: C, guard: &'g Guard) -> Self {
        Self {
            inner,
            guard,
            index: 0,
        }
    }

    fn next_index(&mut self) -> usize {
        let i = self.index;
        self.index += 1;
        i
    }
}

/// The compounds whose elements have a position (sequences, tuples): each element
/// goes through the proxy, and a refusal below it is annotated with its index.
macro_rules! positional_compound {
    ($($trait:ident :: $method:ident),*) => {
        $(
            impl<C: $trait> $trait for Compound<'_, C> {
                type Ok = C::Ok;
                type Error = C::Error;
                #[inline]
                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                    let i = self.next_index();
                    let result = self.inner.$method(&check(self.guard, value));
                    self.guard.annotate(result, || i.to_string())
                }
                #[inline]
                fn end(self) -> Result<C::Ok, C::Error> {
                    self.inner.end()
                }
            }
        )*
    };
}

positional_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<C: SerializeMap> SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        let i = self.next_index();
        let result = self.inner.serialize_key(&CheckedKey {
            value: key,
            guard: self.guard,
        });
        self.guard.annotate(result, || format!("<key {i}>"))
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        // The key is already written and not kept; the entry's position still
        // narrows the search down for the caller.
        let i = self.index.saturating_sub(1);
        let result = self.inner.serialize_value(&check(self.guard, value));
        self.guard.annotate(result, || format!("<value {i}>"))
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

/// The compounds whose fields have a name (structs, struct variants): each field goes
/// through the proxy, and a refusal below it is annotated with the field's name.
macro_rules! named_compound {
    ($($trait:ident),*) => {
        $(
            impl<C: $trait> $trait for Compound<'_, C> {
                type Ok = C::Ok;
                type Error = C::Error;
                #[inline]
                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result<(), C::Error> {
                    let result = self.inner.serialize_field(key, &check(self.guard, value));
                    self.guard.annotate(result, || key.to_owned())
                }
                #[inline]
                fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                    self.inner.skip_field(key)
                }
                #[inline]
                fn end(self) -> Result<C::Ok, C::Error> {
                    self.inner.end()
                }
            }
        )*
    };
}

named_compound!(SerializeStruct, SerializeStructVariant);

/// The map-key proxy: strings and integers (and what serializes as one, such as a
/// `char` or a unit enum variant) pass; every other key is refused.
struct KeyCheck<'g, S> {
    inner: S,
    guard: &'g Guard,
}

impl<S: Serializer> KeyCheck<'_, S> {
    #[inline]
    fn refuse(&self, what: &str) -> S::Error {
        self.guard.reject(format!(
            "a {what} map key has no faithful json representation"
        ))
    }
}

impl<S: Serializer> Serializer for KeyCheck<'_, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = ser::Impossible<S::Ok, S::Error>;
    type SerializeTuple = ser::Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = ser::Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = ser::Impossible<S::Ok, S::Error>;
    type SerializeMap = ser::Impossible<S::Ok, S::Error>;
    type SerializeStruct = ser::Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = ser::Impossible<S::Ok, S::Error>;

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    #[inline]
    fn serialize_bool(self, _: bool) -> Result<S::Ok, S::Error> {
        Err(self.refuse("boolean"))
    }
    forward_exact_primitives!("integer map key");
    #[inline]
    fn serialize_f32(self, _: f32) -> Result<S::Ok, S::Error> {
        Err(self.refuse("floating-point"))
    }
    #[inline]
    fn serialize_f64(self, _: f64) -> Result<S::Ok, S::Error> {
        Err(self.refuse("floating-point"))
    }
    #[inline]
    fn serialize_bytes(self, _: &[u8]) -> Result<S::Ok, S::Error> {
        Err(self.refuse("byte-string"))
    }
    #[inline]
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        Err(self.refuse("null"))
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(self.refuse("optional"))
    }
    #[inline]
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        Err(self.refuse("unit"))
    }
    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result<S::Ok, S::Error> {
        Err(self.refuse("unit struct"))
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let guard = self.guard;
        self.inner
            .serialize_newtype_struct(name, &CheckedKey { value, guard })
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(self.refuse("enum"))
    }
    #[inline]
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Err(self.refuse("sequence"))
    }
    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, S::Error> {
        Err(self.refuse("tuple"))
    }
    #[inline]
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Err(self.refuse("tuple struct"))
    }
    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Err(self.refuse("enum"))
    }
    #[inline]
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Err(self.refuse("map"))
    }
    #[inline]
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Err(self.refuse("struct"))
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Err(self.refuse("enum"))
    }
}
