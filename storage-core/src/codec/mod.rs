//! The serializer layer: formats, compression and a self-describing header.
//!
//! A [`Codec`] turns a value into the bytes an adapter stores and back. Every encoded
//! value starts with a small header, so bytes written under one [`SerializationConfig`]
//! are either read correctly under another or rejected with
//! [`ErrorCode::SerializationFailed`] — never misread as something else.
//!
//! # Stored layout
//! ```text
//! 0xF5 0x53 | version (1) | format id (1) | compression id (1) | [name len (1) | name] | payload
//! ```
//! - The magic starts with `0xF5`, a byte that never occurs in UTF-8, so an encoded
//!   value can never be mistaken for text (plain JSON, say) and vice versa.
//! - Format ids: 1 JSON, 2 MessagePack (named fields), 3 postcard, 4 custom. For a
//!   custom format the serializer's [`CustomSerializer::name`] follows, length-prefixed.
//! - Compression ids: 0 none, 1 gzip, 2 lz4 (block format, uncompressed length
//!   prepended as `u32` little-endian, as `lz4_flex::compress_prepend_size` writes it),
//!   3 snappy (raw format).
//!
//! # Which cross-configuration reads are accepted
//! The header, not the codec's current configuration, decides how a value is read:
//! - a value in JSON, MessagePack or postcard is decoded with the format and the
//!   compression its header names, whatever the codec now writes — so changing the
//!   configuration of an existing store keeps old values readable;
//! - a value written by a custom serializer is decoded only by a codec holding a custom
//!   serializer of the *same name*; any other codec rejects it;
//! - postcard is not self-describing, so a postcard value is only ever read as postcard
//!   (the header says so); reading it into the wrong type fails wherever postcard can
//!   tell, and the same holds for every format when the stored value does not fit `T`;
//! - bad magic, an unknown header version, an unknown format or compression id, a
//!   truncated header or payload, trailing bytes after the payload (or after a gzip
//!   stream), and payloads that fail to decompress are all rejected.
//!
//! Integrity: gzip carries a CRC-32, so any flipped bit in a gzip payload is detected.
//! lz4 and snappy (raw) carry no checksum: a flipped byte there is detected when it
//! breaks the compressed stream or the decoded payload, and otherwise can decode to a
//! different value of the same type. Adapters that need end-to-end integrity rely on
//! their backend's checksums (SQLite pages, the JSON journal's records).
//!
//! # Limits
//! A decoded payload may be at most [`SerializationConfig::max_decoded_len`] bytes
//! (64 MiB by default). The limit is checked *before* decompressing wherever the
//! compressed stream states its length (lz4, snappy) and enforced while inflating gzip,
//! so a small malicious value cannot make a reader allocate gigabytes. Encoding refuses
//! values whose payload exceeds the limit, so a codec never writes what it cannot read.
//!
//! # Strict JSON
//! The JSON format (and [`to_document`]) refuses what JSON cannot hold faithfully:
//! non-finite floats (`serde_json` alone would write `null`), 128-bit integers outside
//! the 64-bit range, and map keys that are neither strings nor integers. Such values
//! give [`ErrorCode::InvalidValue`] with a `path` context naming where the value sits.

mod strict;

use std::borrow::Cow;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{BoxError, ErrorCode, Result, StorageError};
use crate::types::Document;

use strict::{Guard, Strict};

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Codec<serde_json::Value>>();
    assert_send_sync::<SerializationConfig>();
};

/// The first two bytes of every encoded value.
pub const MAGIC: [u8; 2] = [0xF5, 0x53];

/// The header version this build writes and reads.
pub const HEADER_VERSION: u8 = 1;

/// The default of [`SerializationConfig::max_decoded_len`]: 64 MiB.
pub const DEFAULT_MAX_DECODED_LEN: u64 = 64 * 1024 * 1024;

/// Length of the fixed part of the header (magic, version, format, compression).
const FIXED_HEADER_LEN: usize = MAGIC.len() + 3;

/// Length of the `u32` uncompressed-size prefix of an lz4 payload.
const LZ4_SIZE_PREFIX: usize = 4;

/// The capacity a fresh payload buffer starts with (as `serde_json::to_vec` does).
const INITIAL_CAPACITY: usize = 128;

/// Room for the longest header: fixed part, name length, a 255-byte name.
const HEADER_RESERVE: usize = FIXED_HEADER_LEN + 1 + 255;

/// Converts a value to its JSON document form, refusing what JSON cannot hold faithfully.
///
/// # Example
/// ```
/// use storage_core::ErrorCode;
/// use storage_core::codec::to_document;
///
/// assert_eq!(to_document(&[1.5, 2.0])?, serde_json::json!([1.5, 2.0]));
/// let err = to_document(&[1.0, f64::NAN]).expect_err("must fail");
/// assert_eq!(err.code(), ErrorCode::InvalidValue);
/// assert_eq!(err.context_value("path"), Some("$.1"));
/// # Ok::<(), storage_core::StorageError>(())
/// ```
///
/// # Errors
/// `InvalidValue` for non-finite floats (JSON has no NaN or infinity), 128-bit integers
/// outside the 64-bit range, and map keys that are not strings or integers.
/// `SerializationFailed` when the value's own `Serialize` impl fails.
pub fn to_document<T: Serialize + ?Sized>(value: &T) -> Result<Document> {
    let guard = Guard::default();
    value
        .serialize(Strict {
            inner: serde_json::value::Serializer,
            guard: &guard,
        })
        .map_err(|err| json_encode_error::<T>(&guard, err))
}

/// Converts a JSON document back to a value.
///
/// # Errors
/// `SerializationFailed` when the document does not fit `T`.
pub fn from_document<T: DeserializeOwned>(doc: Document) -> Result<T> {
    serde_json::from_value(doc).map_err(|err| {
        StorageError::new(
            ErrorCode::SerializationFailed,
            format!("document does not fit the target type: {err}"),
        )
        .with_context("type", std::any::type_name::<T>())
        .with_source(err)
    })
}

/// Maps a failed strict JSON serialization to `InvalidValue` (refused by the proxy)
/// or `SerializationFailed` (anything else).
fn json_encode_error<T: ?Sized>(guard: &Guard, err: serde_json::Error) -> StorageError {
    match guard.take() {
        Some(rejection) => StorageError::new(
            ErrorCode::InvalidValue,
            format!("value cannot be stored as json: {}", rejection.reason),
        )
        .with_context("path", rejection.path())
        .with_context("type", std::any::type_name::<T>())
        .with_source(err),
        None => StorageError::new(
            ErrorCode::SerializationFailed,
            format!("json encoding failed: {err}"),
        )
        .with_context("type", std::any::type_name::<T>())
        .with_source(err),
    }
}

/// The serialization format of stored values.
///
/// Serde names: `json`, `msgpack` (alias `messagepack`), `postcard`, `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON through `serde_json`, strict (see the [module docs](self)). The default.
    #[default]
    Json,
    /// MessagePack through `rmp-serde`, structs as maps with field names, so fields
    /// may be added or reordered without breaking stored values.
    #[serde(rename = "msgpack", alias = "messagepack")]
    MessagePack,
    /// postcard: compact, not self-describing; a value must be read as the type it was
    /// written as.
    Postcard,
    /// A user-supplied [`CustomSerializer`] (for example protobuf through `prost`).
    Custom,
}

impl Format {
    /// Every format, in id order.
    pub const ALL: [Self; 4] = [Self::Json, Self::MessagePack, Self::Postcard, Self::Custom];

    /// The format's name as configuration files spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MessagePack => "msgpack",
            Self::Postcard => "postcard",
            Self::Custom => "custom",
        }
    }

    /// The id stored in the header.
    pub const fn id(self) -> u8 {
        match self {
            Self::Json => 1,
            Self::MessagePack => 2,
            Self::Postcard => 3,
            Self::Custom => 4,
        }
    }

    /// The format with a header id, if any.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Json),
            2 => Some(Self::MessagePack),
            3 => Some(Self::Postcard),
            4 => Some(Self::Custom),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The compression applied to the serialized payload.
///
/// Serde names: `none`, `gzip`, `lz4`, `snappy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression. The default.
    #[default]
    None,
    /// gzip (`flate2`, default level 6); carries a CRC-32 of the payload.
    Gzip,
    /// lz4 block format (`lz4_flex`) with the uncompressed length prepended.
    Lz4,
    /// Snappy raw format (`snap`).
    Snappy,
}

impl Compression {
    /// Every compression, in id order.
    pub const ALL: [Self; 4] = [Self::None, Self::Gzip, Self::Lz4, Self::Snappy];

    /// The compression's name as configuration files spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::Snappy => "snappy",
        }
    }

    /// The id stored in the header.
    pub const fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Lz4 => 2,
            Self::Snappy => 3,
        }
    }

    /// The compression with a header id, if any.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::None),
            1 => Some(Self::Gzip),
            2 => Some(Self::Lz4),
            3 => Some(Self::Snappy),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an adapter serializes values: the `serialization` section of a configuration.
///
/// ```
/// use storage_core::codec::{Compression, Format, SerializationConfig};
///
/// let cfg: SerializationConfig = toml::from_str("format = 'msgpack'\ncompression = 'lz4'").unwrap();
/// assert_eq!(cfg.format, Format::MessagePack);
/// assert_eq!(cfg.compression, Compression::Lz4);
/// assert_eq!(cfg.max_decoded_len, 64 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerializationConfig {
    /// The format new values are written in. Default: `json`.
    pub format: Format,
    /// The compression new values are written with. Default: `none`.
    pub compression: Compression,
    /// The largest serialized payload, in bytes, that is written or (after
    /// decompression) read; larger values fail with `QuotaExceeded`.
    /// Default: 67108864 (64 MiB). Also accepted as `maxDecodedLen`.
    #[serde(alias = "maxDecodedLen")]
    pub max_decoded_len: u64,
}

impl Default for SerializationConfig {
    fn default() -> Self {
        Self {
            format: Format::Json,
            compression: Compression::None,
            max_decoded_len: DEFAULT_MAX_DECODED_LEN,
        }
    }
}

impl SerializationConfig {
    /// A configuration with a format and compression and the default limit.
    pub fn new(format: Format, compression: Compression) -> Self {
        Self {
            format,
            compression,
            ..Self::default()
        }
    }
}

/// A user-supplied serializer, used when the format is [`Format::Custom`].
///
/// The intended real use is protobuf through `prost` (`Message::encode` /
/// `Message::decode`); any byte format works. The [`name`](Self::name) is written into
/// every value's header, and a value is only decoded by a serializer of the same name,
/// so give a new wire format a new name.
///
/// # Example
/// A hand-rolled format for a pair of numbers (a prost message plugs in the same way):
/// ```
/// use std::sync::Arc;
/// use storage_core::BoxError;
/// use storage_core::codec::{Codec, CustomSerializer, Format, SerializationConfig};
/// use storage_core::codec::Compression;
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Point { x: i32, y: i32 }
///
/// struct PointBytes;
///
/// impl CustomSerializer<Point> for PointBytes {
///     fn name(&self) -> &str {
///         "point-le-v1"
///     }
///     fn serialize(&self, p: &Point) -> Result<Vec<u8>, BoxError> {
///         let mut out = p.x.to_le_bytes().to_vec();
///         out.extend_from_slice(&p.y.to_le_bytes());
///         Ok(out)
///     }
///     fn deserialize(&self, bytes: &[u8]) -> Result<Point, BoxError> {
///         let arr: [u8; 8] = bytes.try_into()?;
///         let (x, y) = arr.split_at(4);
///         Ok(Point { x: i32::from_le_bytes(x.try_into()?), y: i32::from_le_bytes(y.try_into()?) })
///     }
/// }
///
/// let cfg = SerializationConfig::new(Format::Custom, Compression::None);
/// let codec = Codec::with_custom(&cfg, Arc::new(PointBytes))?;
/// let bytes = codec.encode(&Point { x: 1, y: -2 })?;
/// assert_eq!(codec.decode(&bytes)?, Point { x: 1, y: -2 });
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub trait CustomSerializer<T>: Send + Sync {
    /// A stable name for the wire format, 1 to 255 bytes of UTF-8 (`"prost:user.v1"`).
    fn name(&self) -> &str;

    /// Encodes a value.
    ///
    /// # Errors
    /// Any error; the codec reports it as `SerializationFailed` with this as its source.
    fn serialize(&self, value: &T) -> Result<Vec<u8>, BoxError>;

    /// Decodes a value from exactly the bytes [`serialize`](Self::serialize) produced.
    ///
    /// # Errors
    /// Any error; the codec reports it as `SerializationFailed` with this as its source.
    fn deserialize(&self, bytes: &[u8]) -> Result<T, BoxError>;

    /// Appends the encoding of a value to `out`. Override it when the format can
    /// write into a buffer directly (prost's `Message::encode(&mut out)`) to save a copy.
    ///
    /// # Errors
    /// As [`serialize`](Self::serialize).
    fn serialize_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.extend_from_slice(&self.serialize(value)?);
        Ok(())
    }
}

/// What the header of an encoded value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The header version (currently always [`HEADER_VERSION`]).
    pub version: u8,
    /// The payload's format.
    pub format: Format,
    /// The payload's compression.
    pub compression: Compression,
    /// The custom serializer's name, for [`Format::Custom`].
    pub custom_name: Option<&'a str>,
}

impl<'a> Header<'a> {
    /// Parses the header of an encoded value; returns it and the payload after it.
    ///
    /// # Errors
    /// `SerializationFailed` for bad magic, an unknown version, format or compression
    /// id, a truncated header, or a custom name that is empty or not UTF-8.
    pub fn parse(bytes: &'a [u8]) -> Result<(Self, &'a [u8])> {
        let Some((fixed, rest)) = bytes.split_first_chunk::<FIXED_HEADER_LEN>() else {
            return Err(
                if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
                    bad_magic()
                } else {
                    decode_error(format!(
                        "value of {} bytes is shorter than the {FIXED_HEADER_LEN}-byte codec header",
                        bytes.len()
                    ))
                },
            );
        };
        let [m0, m1, version, format_id, compression_id] = *fixed;
        if [m0, m1] != MAGIC {
            return Err(bad_magic());
        }
        if version != HEADER_VERSION {
            return Err(decode_error(format!(
                "codec header version {version} is not supported (this build reads version {HEADER_VERSION})"
            ))
            .with_context("version", version));
        }
        let format = Format::from_id(format_id).ok_or_else(|| {
            decode_error(format!("unknown format id {format_id} in codec header"))
        })?;
        let compression = Compression::from_id(compression_id).ok_or_else(|| {
            decode_error(format!(
                "unknown compression id {compression_id} in codec header"
            ))
        })?;
        let (custom_name, payload) = if format == Format::Custom {
            let Some((&len, rest)) = rest.split_first() else {
                return Err(decode_error("value truncated inside its codec header"));
            };
            let len = usize::from(len);
            if len == 0 {
                return Err(decode_error("empty custom serializer name in codec header"));
            }
            let Some((name, payload)) = rest.split_at_checked(len) else {
                return Err(decode_error("value truncated inside its codec header"));
            };
            let name = std::str::from_utf8(name).map_err(|err| {
                decode_error("custom serializer name in codec header is not utf-8").with_source(err)
            })?;
            (Some(name), payload)
        } else {
            (None, rest)
        };
        Ok((
            Self {
                version,
                format,
                compression,
                custom_name,
            },
            payload,
        ))
    }
}

fn decode_error(message: impl Into<Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::SerializationFailed, message).with_operation("decode")
}

fn bad_magic() -> StorageError {
    decode_error("value does not start with the codec magic bytes (not written by this codec)")
}

fn encode_error(message: impl Into<Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::SerializationFailed, message).with_operation("encode")
}

fn too_large(len: usize, max: usize, operation: &'static str) -> StorageError {
    StorageError::new(
        ErrorCode::QuotaExceeded,
        format!("serialized payload of {len} bytes exceeds max_decoded_len of {max} bytes"),
    )
    .with_operation(operation)
    .with_context("max_decoded_len", max)
}

/// Appends bytes to a `Vec` as postcard writes them, so postcard serializes straight
/// behind the header instead of into a buffer of its own.
struct AppendFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendFlavor<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes and decodes values of one type under one [`SerializationConfig`].
///
/// Cheap to clone (the custom serializer is shared).
///
/// # Example
/// ```
/// use storage_core::codec::{Codec, Compression, Format, SerializationConfig};
///
/// let gzip_msgpack = Codec::<Vec<String>>::new(&SerializationConfig::new(Format::MessagePack, Compression::Gzip))?;
/// let bytes = gzip_msgpack.encode(&vec!["a".to_owned(); 100])?;
///
/// // A codec configured otherwise still reads it: the header decides.
/// let plain_json = Codec::<Vec<String>>::new(&SerializationConfig::default())?;
/// assert_eq!(plain_json.decode(&bytes)?, vec!["a".to_owned(); 100]);
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub struct Codec<T> {
    format: Format,
    compression: Compression,
    max_decoded_len: usize,
    custom: Option<Arc<dyn CustomSerializer<T>>>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        Self {
            format: self.format,
            compression: self.compression,
            max_decoded_len: self.max_decoded_len,
            custom: self.custom.clone(),
        }
    }
}

impl<T> fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("format", &self.format)
            .field("compression", &self.compression)
            .field("max_decoded_len", &self.max_decoded_len)
            .field("custom", &self.custom.as_ref().map(|c| c.name()))
            .finish()
    }
}

impl<T> Default for Codec<T> {
    /// Strict JSON, no compression, the default limit.
    fn default() -> Self {
        Self {
            format: Format::Json,
            compression: Compression::None,
            max_decoded_len: limit_from_config(DEFAULT_MAX_DECODED_LEN),
            custom: None,
        }
    }
}

/// A configured limit as `usize`; a limit beyond the address space is no limit.
fn limit_from_config(max: u64) -> usize {
    usize::try_from(max).unwrap_or(usize::MAX)
}

impl<T> Codec<T> {
    /// A codec for a built-in format.
    ///
    /// # Errors
    /// `InvalidConfig` when the format is [`Format::Custom`] (use
    /// [`with_custom`](Self::with_custom)) or `max_decoded_len` is zero.
    pub fn new(config: &SerializationConfig) -> Result<Self> {
        Self::build(config, None)
    }

    /// A codec with a custom serializer. The serializer writes new values when the
    /// format is [`Format::Custom`]; with any other format it is used only to read
    /// values whose header names it (handy while migrating a store between formats).
    ///
    /// # Errors
    /// `InvalidConfig` when the serializer's name is empty or longer than 255 bytes,
    /// or `max_decoded_len` is zero.
    pub fn with_custom(
        config: &SerializationConfig,
        serializer: Arc<dyn CustomSerializer<T>>,
    ) -> Result<Self> {
        Self::build(config, Some(serializer))
    }

    fn build(
        config: &SerializationConfig,
        custom: Option<Arc<dyn CustomSerializer<T>>>,
    ) -> Result<Self> {
        if config.max_decoded_len == 0 {
            return Err(StorageError::new(
                ErrorCode::InvalidConfig,
                "serialization.max_decoded_len must be at least 1",
            ));
        }
        if let Some(c) = &custom {
            let len = c.name().len();
            if len == 0 || len > usize::from(u8::MAX) {
                return Err(StorageError::new(
                    ErrorCode::InvalidConfig,
                    format!("custom serializer name must be 1 to 255 bytes, got {len}"),
                ));
            }
        } else if config.format == Format::Custom {
            return Err(StorageError::new(
                ErrorCode::InvalidConfig,
                "serialization format `custom` needs a custom serializer (Codec::with_custom)",
            ));
        }
        Ok(Self {
            format: config.format,
            compression: config.compression,
            max_decoded_len: limit_from_config(config.max_decoded_len),
            custom,
        })
    }

    /// The format new values are written in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The compression new values are written with.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The largest payload written or read, in bytes.
    pub fn max_decoded_len(&self) -> usize {
        self.max_decoded_len
    }

    /// The custom serializer's name, if the codec has one.
    pub fn custom_name(&self) -> Option<&str> {
        self.custom.as_ref().map(|c| c.name())
    }

    /// Appends the header for the current configuration.
    fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            MAGIC[0],
            MAGIC[1],
            HEADER_VERSION,
            self.format.id(),
            self.compression.id(),
        ]);
        if self.format == Format::Custom
            && let Some(c) = &self.custom
        {
            let name = c.name().as_bytes();
            // `build` checked the length fits one byte.
            out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(name);
        }
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> {
    /// Encodes a value: header, then the (compressed) payload.
    ///
    /// # Errors
    /// `InvalidValue` when the format is JSON and the value holds what JSON cannot
    /// (see the [module docs](self)); `QuotaExceeded` when the serialized payload is
    /// larger than `max_decoded_len`; `SerializationFailed` when the value's
    /// `Serialize` impl or the custom serializer fails.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>> {
        // Uncompressed values are serialized straight into this buffer; compressed ones
        // size it exactly once their payload is known.
        let mut out = if self.compression == Compression::None {
            Vec::with_capacity(INITIAL_CAPACITY)
        } else {
            Vec::new()
        };
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Appends the encoding of a value to `out` (which is left as it was on error).
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let result = self.encode_inner(value, out);
        if result.is_err() {
            out.truncate(start);
        }
        result.map_err(|e| {
            e.with_operation("encode")
                .with_context("format", self.format)
                .with_context("compression", self.compression)
        })
    }

    fn encode_inner(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        if self.compression == Compression::None {
            // Serialize straight behind the header: no intermediate buffer.
            out.reserve(INITIAL_CAPACITY);
            self.write_header(out);
            let payload_start = out.len();
            self.serialize_into(value, out)?;
            let len = out.len() - payload_start;
            if len > self.max_decoded_len {
                return Err(too_large(len, self.max_decoded_len, "encode"));
            }
            return Ok(());
        }
        let mut payload = Vec::with_capacity(INITIAL_CAPACITY);
        self.serialize_into(value, &mut payload)?;
        if payload.len() > self.max_decoded_len {
            return Err(too_large(payload.len(), self.max_decoded_len, "encode"));
        }
        // One allocation sized for the worst case, so compressing never reallocates.
        out.reserve(HEADER_RESERVE + compressed_bound(self.compression, payload.len()));
        self.write_header(out);
        compress(self.compression, &payload, out)
    }

    fn serialize_into(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        match self.format {
            Format::Json => {
                let guard = Guard::default();
                let mut ser = serde_json::Serializer::new(&mut *out);
                value
                    .serialize(Strict {
                        inner: &mut ser,
                        guard: &guard,
                    })
                    .map_err(|err| json_encode_error::<T>(&guard, err))
            }
            Format::MessagePack => rmp_serde::encode::write_named(out, value).map_err(|err| {
                encode_error(format!("msgpack encoding failed: {err}")).with_source(err)
            }),
            Format::Postcard => {
                postcard::serialize_with_flavor(value, AppendFlavor(out)).map_err(|err| {
                    encode_error(format!("postcard encoding failed: {err}")).with_source(err)
                })
            }
            Format::Custom => {
                let custom = self.custom.as_ref().ok_or_else(|| {
                    StorageError::new(
                        ErrorCode::InvalidConfig,
                        "serialization format `custom` needs a custom serializer",
                    )
                })?;
                custom.serialize_into(value, out).map_err(|err| {
                    encode_error(format!(
                        "custom serializer `{}` failed: {err}",
                        custom.name()
                    ))
                    .with_context("serializer", custom.name())
                    .with_source(err)
                })
            }
        }
    }

    /// Decodes a value according to its header (see the [module docs](self) for which
    /// values written under another configuration are accepted).
    ///
    /// # Errors
    /// `SerializationFailed` when the header is missing, unknown or names a custom
    /// serializer this codec lacks, when the payload is truncated, corrupt or does not
    /// fit `T`; `QuotaExceeded` when the decoded payload would exceed `max_decoded_len`.
    pub fn decode(&self, bytes: &[u8]) -> Result<T> {
        // The common case — a built-in format under this header version — is read
        // straight from the fixed header. Custom serializers and every malformed header
        // go through `Header::parse`, which says what is wrong.
        if let Some((&[m0, m1, version, format_id, compression_id], payload)) =
            bytes.split_first_chunk::<FIXED_HEADER_LEN>()
            && [m0, m1] == MAGIC
            && version == HEADER_VERSION
            && let Some(compression) = Compression::from_id(compression_id)
        {
            match Format::from_id(format_id) {
                Some(Format::Json) => {
                    return self.decode_builtin(Format::Json, compression, payload);
                }
                Some(Format::MessagePack) => {
                    return self.decode_builtin(Format::MessagePack, compression, payload);
                }
                Some(Format::Postcard) => {
                    return self.decode_builtin(Format::Postcard, compression, payload);
                }
                Some(Format::Custom) | None => {}
            }
        }
        self.decode_parsed(bytes)
    }

    /// Decodes a payload of a built-in format. Inlined with a constant `format`, so
    /// each arm of [`decode`](Self::decode) holds one deserializer and moves the value
    /// once, from the deserializer's result into the caller's.
    #[inline]
    fn decode_builtin(
        &self,
        format: Format,
        compression: Compression,
        payload: &[u8],
    ) -> Result<T> {
        if compression == Compression::None {
            if payload.len() > self.max_decoded_len {
                return Err(decode_failed::<T>(
                    too_large(payload.len(), self.max_decoded_len, "decode"),
                    format,
                    compression,
                ));
            }
            return deserialize_builtin(format, compression, payload);
        }
        // A compressed payload is inflated into one buffer (sized from the stated
        // length for lz4 and snappy), as the compression crates' own `Vec`-returning
        // calls do, and deserialized from there.
        match decompress(compression, payload, self.max_decoded_len) {
            Ok(plain) => deserialize_builtin(format, compression, &plain),
            Err(err) => Err(decode_failed::<T>(err, format, compression)),
        }
    }

    /// The general path: parses the header in full (custom names included).
    #[inline(never)]
    fn decode_parsed(&self, bytes: &[u8]) -> Result<T> {
        let (header, payload) = Header::parse(bytes)?;
        if header.format != Format::Custom {
            return self.decode_builtin(header.format, header.compression, payload);
        }
        let custom = self.custom_named(header.custom_name.unwrap_or_default())?;
        let plain = decompress(header.compression, payload, self.max_decoded_len)
            .map_err(|err| decode_failed::<T>(err, header.format, header.compression))?;
        custom.deserialize(&plain).map_err(|err| {
            decode_failed::<T>(
                decode_error(format!(
                    "custom serializer `{}` could not decode the payload: {err}",
                    custom.name()
                ))
                .with_context("serializer", custom.name())
                .with_source(err),
                header.format,
                header.compression,
            )
        })
    }

    fn custom_named(&self, name: &str) -> Result<&dyn CustomSerializer<T>> {
        match &self.custom {
            Some(c) if c.name() == name => Ok(c.as_ref()),
            Some(c) => Err(decode_error(format!(
                "value was written by custom serializer `{name}`, this codec's is `{}`",
                c.name()
            ))
            .with_context("serializer", name)),
            None => Err(decode_error(format!(
                "value was written by custom serializer `{name}` and this codec has none"
            ))
            .with_context("serializer", name)),
        }
    }
}

/// Adds what every decode error carries: the operation, the format and compression
/// the header named, and the target type. Cold and out of line, as is every error
/// constructor below, so the success path stays a straight line.
#[cold]
#[inline(never)]
fn decode_failed<T>(err: StorageError, format: Format, compression: Compression) -> StorageError {
    err.with_operation("decode")
        .with_context("format", format)
        .with_context("compression", compression)
        .with_context("type", std::any::type_name::<T>())
}

/// Deserializes a whole uncompressed payload of a built-in format.
#[inline]
fn deserialize_builtin<T: DeserializeOwned>(
    format: Format,
    compression: Compression,
    payload: &[u8],
) -> Result<T> {
    match format {
        Format::MessagePack => msgpack_from_slice(compression, payload),
        Format::Postcard => postcard_from_slice(compression, payload),
        Format::Json | Format::Custom => match serde_json::from_slice(payload) {
            Ok(value) => Ok(value),
            Err(err) => Err(json_decode_error::<T>(err, compression)),
        },
    }
}

#[cold]
#[inline(never)]
fn json_decode_error<T>(err: serde_json::Error, compression: Compression) -> StorageError {
    decode_failed::<T>(
        decode_error(format!("json payload does not decode: {err}")).with_source(err),
        Format::Json,
        compression,
    )
}

/// Decodes one postcard value that must span the whole payload.
#[inline]
fn postcard_from_slice<T: DeserializeOwned>(compression: Compression, payload: &[u8]) -> Result<T> {
    let mut de = postcard::Deserializer::from_bytes(payload);
    match T::deserialize(&mut de) {
        Ok(value) => match de.finalize() {
            Ok([]) => Ok(value),
            Ok(rest) => Err(postcard_trailing::<T>(rest.len(), compression)),
            Err(err) => Err(postcard_decode_error::<T>(err, compression)),
        },
        Err(err) => Err(postcard_decode_error::<T>(err, compression)),
    }
}

#[cold]
#[inline(never)]
fn postcard_trailing<T>(trailing: usize, compression: Compression) -> StorageError {
    decode_failed::<T>(
        decode_error(format!("postcard payload has {trailing} trailing bytes")),
        Format::Postcard,
        compression,
    )
}

#[cold]
#[inline(never)]
fn postcard_decode_error<T>(err: postcard::Error, compression: Compression) -> StorageError {
    decode_failed::<T>(
        decode_error(format!("postcard payload does not decode: {err}")).with_source(err),
        Format::Postcard,
        compression,
    )
}

/// Decodes one MessagePack value that must span the whole payload.
///
/// rmp-serde does not expose how much of a borrowed slice it consumed, and its reader
/// over `io::Read` copies every string through a buffer (about 40% slower). So the
/// value is decoded from the borrowed slice and the deserializer is then asked for one
/// more marker: only "end of input while reading a marker" proves nothing follows.
/// (An `Option` asks for exactly one marker; rmp-serde's general `deserialize_any`
/// costs more even when it fails at once.)
#[inline]
fn msgpack_from_slice<T: DeserializeOwned>(compression: Compression, payload: &[u8]) -> Result<T> {
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    match T::deserialize(&mut de) {
        Ok(value) => match Option::<serde::de::IgnoredAny>::deserialize(&mut de) {
            Err(rmp_serde::decode::Error::InvalidMarkerRead(err))
                if err.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Ok(value)
            }
            _ => Err(msgpack_trailing::<T>(compression)),
        },
        Err(err) => Err(msgpack_decode_error::<T>(err, compression)),
    }
}

#[cold]
#[inline(never)]
fn msgpack_trailing<T>(compression: Compression) -> StorageError {
    decode_failed::<T>(
        decode_error("msgpack payload has trailing bytes after the value"),
        Format::MessagePack,
        compression,
    )
}

#[cold]
#[inline(never)]
fn msgpack_decode_error<T>(
    err: rmp_serde::decode::Error,
    compression: Compression,
) -> StorageError {
    decode_failed::<T>(
        decode_error(format!("msgpack payload does not decode: {err}")).with_source(err),
        Format::MessagePack,
        compression,
    )
}

/// The most bytes compressing `len` bytes can take (for gzip, a first guess).
fn compressed_bound(compression: Compression, len: usize) -> usize {
    match compression {
        Compression::None => len,
        Compression::Gzip => len / 2 + 32,
        Compression::Lz4 => LZ4_SIZE_PREFIX + lz4_flex::block::get_maximum_output_size(len),
        Compression::Snappy => snap::raw::max_compress_len(len),
    }
}

/// Compresses `input` onto the end of `out`.
fn compress(compression: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    match compression {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(&mut *out, flate2::Compression::default());
            enc.write_all(input)
                .and_then(|()| enc.finish().map(|_| ()))
                .map_err(|err| encode_error("gzip compression failed").with_source(err))?;
        }
        Compression::Lz4 => {
            let size = u32::try_from(input.len()).map_err(|_| {
                too_large(
                    input.len(),
                    usize::try_from(u32::MAX).unwrap_or(usize::MAX),
                    "encode",
                )
            })?;
            let start = out.len();
            out.extend_from_slice(&size.to_le_bytes());
            let body = start + LZ4_SIZE_PREFIX;
            out.resize(
                body + lz4_flex::block::get_maximum_output_size(input.len()),
                0,
            );
            let written = lz4_flex::block::compress_into(input, &mut out[body..])
                .map_err(|err| encode_error("lz4 compression failed").with_source(err))?;
            out.truncate(body + written);
        }
        Compression::Snappy => {
            let start = out.len();
            out.resize(start + snap::raw::max_compress_len(input.len()), 0);
            let written = snap::raw::Encoder::new()
                .compress(input, &mut out[start..])
                .map_err(|err| encode_error("snappy compression failed").with_source(err))?;
            out.truncate(start + written);
        }
    }
    Ok(())
}

/// Decompresses a payload, refusing output longer than `max`. An uncompressed payload
/// is handed back as it is, never copied.
///
/// Each compression has a function of its own, kept out of line: inlined into a larger
/// function, lz4's match copies stopped being inlined and the loop ran about 10% slower
/// than `lz4_flex`'s own `decompress_size_prepended`.
#[inline]
fn decompress(compression: Compression, input: &[u8], max: usize) -> Result<Cow<'_, [u8]>> {
    match compression {
        Compression::None => {
            if input.len() > max {
                return Err(too_large(input.len(), max, "decode"));
            }
            Ok(Cow::Borrowed(input))
        }
        Compression::Gzip => gunzip(input, max).map(Cow::Owned),
        Compression::Lz4 => lz4_decompress(input, max).map(Cow::Owned),
        Compression::Snappy => snappy_decompress(input, max).map(Cow::Owned),
    }
}

#[inline(never)]
fn gunzip(input: &[u8], max: usize) -> Result<Vec<u8>> {
    let mut dec = flate2::bufread::GzDecoder::new(input);
    let mut out = Vec::with_capacity(input.len().saturating_mul(2).min(max));
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    (&mut dec)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|err| decode_error("gzip payload does not decompress").with_source(err))?;
    if out.len() > max {
        return Err(too_large(out.len(), max, "decode"));
    }
    let trailing = dec.into_inner().len();
    if trailing != 0 {
        return Err(decode_error(format!(
            "gzip payload has {trailing} trailing bytes"
        )));
    }
    Ok(out)
}

#[inline(never)]
fn lz4_decompress(input: &[u8], max: usize) -> Result<Vec<u8>> {
    let Some((size, _)) = input.split_first_chunk::<LZ4_SIZE_PREFIX>() else {
        return Err(decode_error(
            "lz4 payload truncated inside its length prefix",
        ));
    };
    let size = usize::try_from(u32::from_le_bytes(*size)).unwrap_or(usize::MAX);
    if size > max {
        return Err(too_large(size, max, "decode"));
    }
    // The call the raw benchmark makes: a zeroed buffer of the prefix's size, truncated
    // to what was written.
    match lz4_flex::block::decompress_size_prepended(input) {
        Ok(out) if out.len() == size => Ok(out),
        Ok(out) => Err(decode_error(format!(
            "lz4 payload decompressed to {} bytes, its prefix says {size}",
            out.len()
        ))),
        Err(err) => Err(lz4_error(err)),
    }
}

#[cold]
#[inline(never)]
fn lz4_error(err: lz4_flex::block::DecompressError) -> StorageError {
    decode_error(format!("lz4 payload does not decompress: {err}")).with_source(err)
}

#[inline(never)]
fn snappy_decompress(input: &[u8], max: usize) -> Result<Vec<u8>> {
    let size = snap::raw::decompress_len(input).map_err(snappy_error)?;
    if size > max {
        return Err(too_large(size, max, "decode"));
    }
    let mut out = vec![0; size];
    match snap::raw::Decoder::new().decompress(input, &mut out) {
        Ok(written) if written == size => Ok(out),
        Ok(written) => Err(decode_error(format!(
            "snappy payload decompressed to {written} bytes, its header says {size}"
        ))),
        Err(err) => Err(snappy_error(err)),
    }
}

#[cold]
#[inline(never)]
fn snappy_error(err: snap::Error) -> StorageError {
    decode_error(format!("snappy payload does not decompress: {err}")).with_source(err)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Address {
        city: String,
        lines: Vec<String>,
        geo: Option<(f64, f64)>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Plain,
        Tagged(i32),
        Shaped { sides: u8 },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        empty: String,
        unicode: String,
        min: i64,
        max: i64,
        umax: u64,
        negative_zero: f64,
        address: Address,
        previous: Option<Box<Address>>,
        scores: BTreeMap<String, i32>,
        kinds: Vec<Kind>,
        big: String,
    }

    fn sample(big_len: usize) -> Sample {
        Sample {
            name: "Ada".into(),
            empty: String::new(),
            unicode: "Grüße, 世界 🦀 \u{0}\u{FFFF} \"quoted\" \\".into(),
            min: i64::MIN,
            max: i64::MAX,
            umax: u64::MAX,
            negative_zero: -0.0,
            address: Address {
                city: "Zürich".into(),
                lines: vec!["Bahnhofstrasse 1".into(), String::new()],
                geo: Some((47.37, 8.54)),
            },
            previous: Some(Box::new(Address {
                city: "Λονδίνο".into(),
                lines: vec![],
                geo: None,
            })),
            scores: [("a".to_owned(), -1), ("ß".to_owned(), i32::MAX)]
                .into_iter()
                .collect(),
            kinds: vec![Kind::Plain, Kind::Tagged(-7), Kind::Shaped { sides: 3 }],
            big: "x".repeat(big_len),
        }
    }

    /// A custom serializer that wraps serde_json, as a test double for prost.
    struct JsonCustom(&'static str);

    impl<T: Serialize + DeserializeOwned> CustomSerializer<T> for JsonCustom {
        fn name(&self) -> &str {
            self.0
        }
        fn serialize(&self, value: &T) -> Result<Vec<u8>, BoxError> {
            Ok(serde_json::to_vec(value)?)
        }
        fn deserialize(&self, bytes: &[u8]) -> Result<T, BoxError> {
            Ok(serde_json::from_slice(bytes)?)
        }
    }

    fn codec<T: Serialize + DeserializeOwned>(
        format: Format,
        compression: Compression,
    ) -> Codec<T> {
        let cfg = SerializationConfig::new(format, compression);
        let built = if format == Format::Custom {
            Codec::with_custom(&cfg, Arc::new(JsonCustom("test-json")))
        } else {
            Codec::new(&cfg)
        };
        built.unwrap_or_else(|e| panic!("codec for {format}/{compression}: {e}"))
    }

    fn all_configs() -> impl Iterator<Item = (Format, Compression)> {
        Format::ALL
            .into_iter()
            .flat_map(|f| Compression::ALL.into_iter().map(move |c| (f, c)))
    }

    #[test]
    fn every_format_and_compression_round_trips_a_nested_value() -> Result<()> {
        let value = sample(1024 * 1024);
        for (format, compression) in all_configs() {
            let c = codec::<Sample>(format, compression);
            let bytes = c.encode(&value)?;
            assert_eq!(bytes[..2], MAGIC);
            let back = c.decode(&bytes)?;
            assert_eq!(back, value, "{format}/{compression}");
            assert!(
                back.negative_zero.is_sign_negative(),
                "{format}/{compression} lost the sign of -0.0"
            );
            if compression != Compression::None {
                assert!(
                    bytes.len() < 64 * 1024,
                    "{format}/{compression} did not compress"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn header_names_format_compression_and_custom_name() -> Result<()> {
        let bytes = codec::<u8>(Format::Custom, Compression::Lz4).encode(&7)?;
        let (header, _) = Header::parse(&bytes)?;
        assert_eq!(
            header,
            Header {
                version: HEADER_VERSION,
                format: Format::Custom,
                compression: Compression::Lz4,
                custom_name: Some("test-json"),
            }
        );
        let plain = codec::<u8>(Format::Json, Compression::None).encode(&7)?;
        assert_eq!(plain, [0xF5, 0x53, 1, 1, 0, b'7']);
        Ok(())
    }

    #[test]
    fn values_written_under_another_builtin_config_are_read_by_their_header() -> Result<()> {
        let value = sample(100);
        for (wf, wc) in all_configs().filter(|(f, _)| *f != Format::Custom) {
            let bytes = codec::<Sample>(wf, wc).encode(&value)?;
            for (rf, rc) in all_configs() {
                let back = codec::<Sample>(rf, rc).decode(&bytes)?;
                assert_eq!(back, value, "written {wf}/{wc}, read by {rf}/{rc}");
            }
        }
        Ok(())
    }

    #[test]
    fn custom_values_need_the_same_named_serializer() -> Result<()> {
        let bytes = codec::<Sample>(Format::Custom, Compression::Gzip).encode(&sample(10))?;
        let other_name = Codec::<Sample>::with_custom(
            &SerializationConfig::new(Format::Custom, Compression::Gzip),
            Arc::new(JsonCustom("other")),
        )?;
        let err = other_name.decode(&bytes).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::SerializationFailed);
        assert_eq!(err.context_value("serializer"), Some("test-json"));
        let none = codec::<Sample>(Format::Json, Compression::Gzip);
        assert_eq!(
            none.decode(&bytes).expect_err("must fail").code(),
            ErrorCode::SerializationFailed
        );
        // A json codec that also holds the custom serializer reads old custom values.
        let migrating = Codec::<Sample>::with_custom(
            &SerializationConfig::default(),
            Arc::new(JsonCustom("test-json")),
        )?;
        assert_eq!(migrating.decode(&bytes)?, sample(10));
        assert_eq!(migrating.encode(&sample(1))?[3], Format::Json.id());
        Ok(())
    }

    #[test]
    fn custom_format_without_serializer_is_invalid_config() {
        let cfg = SerializationConfig::new(Format::Custom, Compression::None);
        let err = Codec::<u8>::new(&cfg).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        let long: &'static str = Box::leak("n".repeat(256).into_boxed_str());
        let err =
            Codec::<u8>::with_custom(&cfg, Arc::new(JsonCustom(long))).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        let err = Codec::<u8>::with_custom(&cfg, Arc::new(JsonCustom(""))).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        let zero = SerializationConfig {
            max_decoded_len: 0,
            ..SerializationConfig::default()
        };
        assert_eq!(
            Codec::<u8>::new(&zero).expect_err("must fail").code(),
            ErrorCode::InvalidConfig
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Other {
        id: u32,
        label: String,
    }

    #[test]
    fn a_value_of_another_type_is_rejected() -> Result<()> {
        for (format, compression) in all_configs() {
            let bytes = codec::<Sample>(format, compression).encode(&sample(3))?;
            let err = codec::<Other>(format, compression)
                .decode(&bytes)
                .expect_err("must fail");
            assert_eq!(
                err.code(),
                ErrorCode::SerializationFailed,
                "{format}/{compression}"
            );
            assert!(
                err.context_value("type")
                    .is_some_and(|t| t.contains("Other"))
            );
        }
        let postcard = codec::<u64>(Format::Postcard, Compression::None).encode(&5)?;
        let err = codec::<String>(Format::MessagePack, Compression::None)
            .decode(&postcard)
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::SerializationFailed);
        Ok(())
    }

    #[test]
    fn bad_headers_are_rejected() -> Result<()> {
        let good = codec::<Other>(Format::Json, Compression::None).encode(&Other {
            id: 1,
            label: "x".into(),
        })?;
        let reader = codec::<Other>(Format::Json, Compression::None);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut bad = good.clone();
        bad[0] = b'{';
        cases.push(("bad magic", bad));
        cases.push(("plain json", br#"{"id":1,"label":"x"}"#.to_vec()));
        let mut bad = good.clone();
        bad[2] = 2;
        cases.push(("future version", bad));
        let mut bad = good.clone();
        bad[2] = 0;
        cases.push(("version zero", bad));
        for id in [0, 5, 0xFF] {
            let mut bad = good.clone();
            bad[3] = id;
            cases.push(("unknown format", bad));
        }
        for id in [4, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[4] = id;
            cases.push(("unknown compression", bad));
        }
        cases.push(("empty", Vec::new()));
        cases.push(("empty custom name", vec![0xF5, 0x53, 1, 4, 0, 0, b'1']));
        cases.push((
            "non-utf8 custom name",
            vec![0xF5, 0x53, 1, 4, 0, 1, 0xFF, b'1'],
        ));
        cases.push(("garbage", b"\x00\x01\x02garbage".to_vec()));
        for (what, bytes) in cases {
            let err = reader.decode(&bytes).expect_err("must fail");
            assert_eq!(err.code(), ErrorCode::SerializationFailed, "{what}");
            assert!(!err.to_string().contains('\n'), "{what}");
        }
        Ok(())
    }

    #[test]
    fn every_truncation_of_a_small_value_is_rejected() -> Result<()> {
        let value = Other {
            id: 300,
            label: "héllo wörld, héllo wörld".into(),
        };
        for (format, compression) in all_configs() {
            let c = codec::<Other>(format, compression);
            let bytes = c.encode(&value)?;
            for len in 0..bytes.len() {
                let result = c.decode(&bytes[..len]);
                assert!(
                    result.is_err(),
                    "{format}/{compression}: prefix of {len} of {} bytes decoded",
                    bytes.len()
                );
                assert_eq!(
                    result.expect_err("must fail").code(),
                    ErrorCode::SerializationFailed,
                    "{format}/{compression} at {len}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn trailing_bytes_are_rejected() -> Result<()> {
        for format in [Format::Json, Format::MessagePack, Format::Postcard] {
            for compression in [Compression::None, Compression::Gzip] {
                let c = codec::<Other>(format, compression);
                let clean = c.encode(&Other {
                    id: 1,
                    label: "a".into(),
                })?;
                // A whole value, a marker missing its data, a reserved marker, a space.
                for extra in [&[0x01_u8][..], &[0xCD], &[0xC1], b" "] {
                    let mut bytes = clean.clone();
                    bytes.extend_from_slice(extra);
                    let result = c.decode(&bytes);
                    if format == Format::Json && compression == Compression::None && extra == b" " {
                        // Trailing whitespace is still the same JSON text.
                        assert!(result.is_ok());
                        continue;
                    }
                    assert_eq!(
                        result.expect_err("must fail").code(),
                        ErrorCode::SerializationFailed,
                        "{format}/{compression} + {extra:?}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn flipped_bits_never_panic_and_never_misread_gzip() -> Result<()> {
        let value = Other {
            id: 42,
            label: "the quick brown fox jumps over the lazy dog, twice: the quick brown fox".into(),
        };
        // Uncompressed payloads are included only to prove decoding never panics:
        // without a checksum a flipped byte can be another valid value.
        for (format, compression) in all_configs() {
            let c = codec::<Other>(format, compression);
            let bytes = c.encode(&value)?;
            let (_, payload) = Header::parse(&bytes)?;
            let start = bytes.len() - payload.len();
            for i in start..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[i] ^= 1 << bit;
                    // Must not panic; gzip's CRC-32 covers the content, so a flip there
                    // either fails or touches only header fields such as the mtime.
                    let result = c.decode(&flipped);
                    if compression == Compression::Gzip
                        && let Ok(read) = result
                    {
                        assert_eq!(read, value, "{format}/gzip flip at {i}:{bit} misread");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn non_finite_floats_under_json_are_invalid_values() -> Result<()> {
        for compression in Compression::ALL {
            let c = codec::<Address>(Format::Json, compression);
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let err = c
                    .encode(&Address {
                        city: "x".into(),
                        lines: vec![],
                        geo: Some((1.0, bad)),
                    })
                    .expect_err("must fail");
                assert_eq!(err.code(), ErrorCode::InvalidValue);
                assert_eq!(err.context_value("path"), Some("$.geo.1"));
                assert_eq!(err.operation(), Some("encode"));
            }
        }
        let err = codec::<Vec<f32>>(Format::Json, Compression::None)
            .encode(&vec![0.5, f32::NAN])
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidValue);
        // The binary formats hold NaN faithfully.
        for format in [Format::MessagePack, Format::Postcard] {
            let c = codec::<Vec<f64>>(format, Compression::None);
            let back = c.decode(&c.encode(&vec![f64::NAN, f64::INFINITY])?)?;
            assert!(back[0].is_nan() && back[1] == f64::INFINITY);
        }
        Ok(())
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Shape {
        Circle { r: f64 },
        Labelled(Labelled),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Labelled {
        label: String,
        #[serde(flatten)]
        extra: BTreeMap<String, f64>,
    }

    #[test]
    fn tagged_and_flattened_types_pass_through_the_strict_proxy() -> Result<()> {
        let shapes = vec![
            Shape::Circle { r: 1.5 },
            Shape::Labelled(Labelled {
                label: "x".into(),
                extra: BTreeMap::from([("w".to_owned(), 2.0)]),
            }),
        ];
        assert_eq!(
            to_document(&shapes)?,
            serde_json::json!([{"kind": "circle", "r": 1.5}, {"kind": "labelled", "label": "x", "w": 2.0}])
        );
        let c = codec::<Vec<Shape>>(Format::Json, Compression::None);
        assert_eq!(c.decode(&c.encode(&shapes)?)?, shapes);
        let bad = vec![Shape::Labelled(Labelled {
            label: "x".into(),
            extra: BTreeMap::from([("w".to_owned(), f64::NAN)]),
        })];
        assert_eq!(
            c.encode(&bad).expect_err("must fail").code(),
            ErrorCode::InvalidValue
        );
        Ok(())
    }

    #[test]
    fn encode_into_leaves_the_buffer_unchanged_on_error() {
        let c = codec::<Vec<f64>>(Format::Json, Compression::Lz4);
        let mut out = b"prefix".to_vec();
        assert!(c.encode_into(&vec![1.0, f64::NAN], &mut out).is_err());
        assert_eq!(out, b"prefix");
    }

    #[test]
    fn to_document_refuses_what_json_cannot_hold() -> Result<()> {
        assert_eq!(
            to_document(&i128::from(i64::MIN))?,
            serde_json::json!(i64::MIN)
        );
        assert_eq!(
            to_document(&u128::from(u64::MAX))?,
            serde_json::json!(u64::MAX)
        );
        let cases: Vec<(&str, StorageError)> = vec![
            ("nan", to_document(&f64::NAN).expect_err("must fail")),
            (
                "i128",
                to_document(&(i128::from(i64::MIN) - 1)).expect_err("must fail"),
            ),
            (
                "u128",
                to_document(&(u128::from(u64::MAX) + 1)).expect_err("must fail"),
            ),
            (
                "bool key",
                to_document(&HashMap::from([(true, 1)])).expect_err("must fail"),
            ),
            (
                "tuple key",
                to_document(&BTreeMap::from([((1, 2), 1)])).expect_err("must fail"),
            ),
            (
                "nested inf",
                to_document(&BTreeMap::from([("a", vec![Some(f32::INFINITY)])]))
                    .expect_err("must fail"),
            ),
        ];
        for (what, err) in cases {
            assert_eq!(err.code(), ErrorCode::InvalidValue, "{what}: {err}");
        }
        assert_eq!(
            to_document(&BTreeMap::from([(7_u8, 'c'), (9, 'd')]))?,
            serde_json::json!({"7": "c", "9": "d"})
        );
        assert_eq!(
            to_document(&BTreeMap::from([('k', 1)]))?,
            serde_json::json!({"k": 1})
        );
        let err =
            to_document(&BTreeMap::from([("a", vec![1.0, f64::NAN])])).expect_err("must fail");
        assert_eq!(err.context_value("path"), Some("$.<value 0>.1"));
        Ok(())
    }

    #[test]
    fn from_document_reports_a_mismatch() -> Result<()> {
        let doc = to_document(&sample(3))?;
        assert_eq!(from_document::<Sample>(doc.clone())?, sample(3));
        let err = from_document::<Other>(doc).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::SerializationFailed);
        Ok(())
    }

    #[test]
    fn decompression_is_bounded() -> Result<()> {
        let small = SerializationConfig {
            max_decoded_len: 1024,
            ..SerializationConfig::default()
        };
        let limited = Codec::<String>::new(&small)?;
        // An lz4 value claiming 4 GiB is refused before anything is allocated.
        let mut bomb = vec![0xF5, 0x53, 1, Format::Json.id(), Compression::Lz4.id()];
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        bomb.extend_from_slice(&[0x1F, b'"']);
        assert_eq!(
            Codec::<String>::default()
                .decode(&bomb)
                .expect_err("must fail")
                .code(),
            ErrorCode::QuotaExceeded
        );
        for compression in Compression::ALL {
            let big = codec::<String>(Format::Json, compression).encode(&"z".repeat(100_000))?;
            let err = limited.decode(&big).expect_err("must fail");
            assert_eq!(err.code(), ErrorCode::QuotaExceeded, "{compression}");
            assert_eq!(err.context_value("max_decoded_len"), Some("1024"));
            let limited_writer = Codec::<String>::new(&SerializationConfig {
                compression,
                ..small.clone()
            })?;
            assert_eq!(
                limited_writer
                    .encode(&"z".repeat(2000))
                    .expect_err("must fail")
                    .code(),
                ErrorCode::QuotaExceeded
            );
            assert_eq!(
                limited.decode(&limited_writer.encode(&"z".repeat(1000))?)?,
                "z".repeat(1000)
            );
        }
        Ok(())
    }

    #[test]
    fn config_names_and_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let cfg: SerializationConfig = serde_json::from_str("{}")?;
        assert_eq!(cfg, SerializationConfig::default());
        assert_eq!(cfg.format, Format::Json);
        assert_eq!(cfg.compression, Compression::None);
        let cfg: SerializationConfig =
            serde_json::from_str(r#"{"format":"messagepack","compression":"snappy"}"#)?;
        assert_eq!(cfg.format, Format::MessagePack);
        assert_eq!(cfg.compression, Compression::Snappy);
        for f in Format::ALL {
            assert_eq!(serde_json::to_value(f)?, serde_json::json!(f.name()));
            assert_eq!(Format::from_id(f.id()), Some(f));
        }
        for c in Compression::ALL {
            assert_eq!(serde_json::to_value(c)?, serde_json::json!(c.name()));
            assert_eq!(Compression::from_id(c.id()), Some(c));
        }
        assert!(serde_json::from_str::<SerializationConfig>(r#"{"format":"xml"}"#).is_err());
        assert!(serde_json::from_str::<SerializationConfig>(r#"{"fromat":"json"}"#).is_err());
        Ok(())
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Arbitrary {
        text: String,
        signed: i64,
        unsigned: u64,
        float: f64,
        flag: bool,
        list: Vec<u16>,
        maybe: Option<String>,
        map: BTreeMap<String, i32>,
    }

    fn arbitrary() -> impl Strategy<Value = Arbitrary> {
        (
            any::<String>(),
            any::<i64>(),
            any::<u64>(),
            any::<f64>().prop_filter("json needs finite", |f| f.is_finite()),
            any::<bool>(),
            proptest::collection::vec(any::<u16>(), 0..20),
            proptest::option::of(any::<String>()),
            proptest::collection::btree_map(any::<String>(), any::<i32>(), 0..5),
        )
            .prop_map(|(text, signed, unsigned, float, flag, list, maybe, map)| {
                Arbitrary {
                    text,
                    signed,
                    unsigned,
                    float,
                    flag,
                    list,
                    maybe,
                    map,
                }
            })
    }

    proptest! {
        #[test]
        fn any_value_round_trips_under_any_config(
            value in arbitrary(),
            format in proptest::sample::select(Format::ALL.to_vec()),
            compression in proptest::sample::select(Compression::ALL.to_vec()),
        ) {
            let c = codec::<Arbitrary>(format, compression);
            let back = c.decode(&c.encode(&value)?)?;
            prop_assert_eq!(back.float.to_bits(), value.float.to_bits());
            prop_assert_eq!(back, value);
        }

        #[test]
        fn any_value_round_trips_through_a_document(value in arbitrary()) {
            let doc = to_document(&value)?;
            prop_assert_eq!(&doc, &serde_json::to_value(&value).map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!(from_document::<Arbitrary>(doc)?, value);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            format in 0_u8..6,
            compression in 0_u8..5,
        ) {
            let mut framed = vec![0xF5, 0x53, 1, format, compression];
            framed.extend_from_slice(&bytes);
            let c = codec::<Arbitrary>(Format::Custom, Compression::None);
            let _ = c.decode(&bytes);
            let _ = c.decode(&framed);
        }
    }
}
