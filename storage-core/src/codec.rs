//! The serializer layer: formats, compression and a self-describing header.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::types::Document;

/// Converts a value to its JSON document form, refusing what JSON cannot hold faithfully.
///
/// # Errors
/// `InvalidValue` for non-finite floats (JSON has no NaN or infinity), 128-bit integers
/// outside the 64-bit range, and map keys that are not strings or integers.
pub fn to_document<T: Serialize + ?Sized>(value: &T) -> Result<Document> {
    let _ = value;
    todo!("codec helper")
}

/// Converts a JSON document back to a value.
///
/// # Errors
/// `SerializationFailed` when the document does not fit `T`.
pub fn from_document<T: DeserializeOwned>(doc: Document) -> Result<T> {
    let _ = doc;
    todo!("codec helper")
}
