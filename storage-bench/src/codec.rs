//! The serializer layer (`storage_core::codec::Codec`) against the raw serde and
//! compression calls it wraps: `serde_json::to_vec`, `rmp_serde::to_vec_named`,
//! `postcard::to_allocvec` and their `from_slice`s, with `flate2`'s gzip encoder and
//! decoder, `lz4_flex`'s size-prepended block format and `snap`'s raw format. The codec
//! adds its five-byte header, JSON's strict checks (no NaN, no non-string map keys),
//! the decoded-size limit and the check that nothing trails the value; the raw calls do
//! none of that.
//!
//! Both sides do the same job on the same bytes: the run checks that every raw encoding
//! equals the codec's payload (its encoding minus the header), and the raw side decodes
//! from the codec's own encodings, past the header.

use std::io::{Read, Write};
use std::time::Duration;

use storage_core::codec::{Codec, Compression, Format, Header, SerializationConfig};
use storage_core::{ErrorCode, Result, StorageError};

use crate::measure::{ratio, start};
use crate::workload::Doc;

/// The configurations measured.
pub const CONFIGS: [(Format, Compression); 6] = [
    (Format::Json, Compression::None),
    (Format::Json, Compression::Gzip),
    (Format::MessagePack, Compression::None),
    (Format::MessagePack, Compression::Lz4),
    (Format::Postcard, Compression::None),
    (Format::Postcard, Compression::Snappy),
];

/// One configuration's times per value, and the encoded sizes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodecSample {
    /// Codec encode, per value.
    pub encode: Duration,
    /// Raw encode, per value.
    pub raw_encode: Duration,
    /// Codec decode, per value.
    pub decode: Duration,
    /// Raw decode, per value.
    pub raw_decode: Duration,
    /// Codec encode / raw encode: the median of the ratios of paired slices.
    pub encode_ratio: Option<f64>,
    /// Codec decode / raw decode: the median of the ratios of paired slices.
    pub decode_ratio: Option<f64>,
    /// Average encoded size through the codec, in bytes.
    pub size: usize,
    /// Average encoded size of the raw calls, in bytes.
    pub raw_size: usize,
}

/// One run's time per value in every slice, side by side.
#[derive(Debug, Clone, Default)]
pub struct CodecRun {
    encode: Vec<Duration>,
    raw_encode: Vec<Duration>,
    decode: Vec<Duration>,
    raw_decode: Vec<Duration>,
    size: usize,
    raw_size: usize,
}

fn raw_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(ErrorCode::SerializationFailed, format!("raw codec: {e}"))
}

// Each side is one out-of-line call per value, so neither is inlined into the timing
// loop while the other is not: where the optimizer happens to place a few hundred
// nanoseconds of decoding otherwise moves the ratio by several percent.

#[inline(never)]
fn codec_encode(codec: &Codec<Doc>, doc: &Doc) -> Result<Vec<u8>> {
    codec.encode(doc)
}

#[inline(never)]
fn codec_decode(codec: &Codec<Doc>, bytes: &[u8]) -> Result<Doc> {
    codec.decode(bytes)
}

#[inline(never)]
fn raw_encode(format: Format, compression: Compression, doc: &Doc) -> Result<Vec<u8>> {
    let plain = match format {
        Format::MessagePack => rmp_serde::to_vec_named(doc).map_err(raw_err)?,
        Format::Postcard => postcard::to_allocvec(doc).map_err(raw_err)?,
        _ => serde_json::to_vec(doc).map_err(raw_err)?,
    };
    Ok(match compression {
        Compression::None => plain,
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&plain)?;
            enc.finish()?
        }
        Compression::Lz4 => lz4_flex::compress_prepend_size(&plain),
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(&plain)
            .map_err(raw_err)?,
    })
}

#[inline(never)]
fn raw_decode(format: Format, compression: Compression, bytes: &[u8]) -> Result<Doc> {
    let owned;
    let plain: &[u8] = match compression {
        Compression::None => bytes,
        Compression::Gzip => {
            // A byte slice is already buffered: `bufread` inflates straight from it,
            // where `read::GzDecoder` would copy it through a 32 KiB buffer first.
            let mut out = Vec::new();
            flate2::bufread::GzDecoder::new(bytes).read_to_end(&mut out)?;
            owned = out;
            &owned
        }
        Compression::Lz4 => {
            owned = lz4_flex::decompress_size_prepended(bytes).map_err(raw_err)?;
            &owned
        }
        Compression::Snappy => {
            owned = snap::raw::Decoder::new()
                .decompress_vec(bytes)
                .map_err(raw_err)?;
            &owned
        }
    };
    match format {
        Format::MessagePack => rmp_serde::from_slice(plain).map_err(raw_err),
        Format::Postcard => postcard::from_bytes(plain).map_err(raw_err),
        _ => serde_json::from_slice(plain).map_err(raw_err),
    }
}

fn per_value(d: Duration, n: usize) -> Duration {
    d / u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

/// Values per timed slice: codec and raw alternate slice by slice, so a burst of other
/// load on the machine lands on both sides instead of on one.
pub const SLICE: usize = 250;

/// One run of one configuration over `docs`.
pub fn run(format: Format, compression: Compression, docs: &[Doc]) -> Result<CodecRun> {
    let codec = Codec::<Doc>::new(&SerializationConfig::new(format, compression))?;
    let n = docs.len();
    let mut out = CodecRun::default();
    let (mut encoded, mut raw) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, slice) in docs.chunks(SLICE).enumerate() {
        // Alternate which side goes first, so neither always meets a warmer cache.
        for side in [i % 2, 1 - i % 2] {
            let t = start();
            if side == 0 {
                for d in slice {
                    encoded.push(codec_encode(&codec, d)?);
                }
                out.encode.push(per_value(t.elapsed(), slice.len()));
            } else {
                for d in slice {
                    raw.push(raw_encode(format, compression, d)?);
                }
                out.raw_encode.push(per_value(t.elapsed(), slice.len()));
            }
        }
    }

    // The same job on the same bytes: each raw encoding is the codec's payload, and the
    // raw side decodes the codec's encodings from just past the header.
    let mut payloads = Vec::with_capacity(n);
    for (bytes, raw_bytes) in encoded.iter().zip(&raw) {
        let (_, payload) = Header::parse(bytes)?;
        if payload != raw_bytes.as_slice() {
            return Err(StorageError::new(
                ErrorCode::SerializationFailed,
                format!(
                    "{format:?}/{compression:?}: the codec's payload differs from the raw encoding"
                ),
            ));
        }
        payloads.push(payload);
    }
    let (mut decoded, mut raw_decoded) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, (slice, raw_slice)) in encoded
        .chunks(SLICE)
        .zip(payloads.chunks(SLICE))
        .enumerate()
    {
        for side in [i % 2, 1 - i % 2] {
            let t = start();
            if side == 0 {
                for b in slice {
                    decoded.push(codec_decode(&codec, b)?);
                }
                out.decode.push(per_value(t.elapsed(), slice.len()));
            } else {
                for b in raw_slice {
                    raw_decoded.push(raw_decode(format, compression, b)?);
                }
                out.raw_decode.push(per_value(t.elapsed(), raw_slice.len()));
            }
        }
    }

    if decoded != docs || raw_decoded != docs {
        return Err(StorageError::new(
            ErrorCode::SerializationFailed,
            format!("{format:?}/{compression:?} did not round-trip"),
        ));
    }
    out.size = encoded.iter().map(Vec::len).sum::<usize>() / n.max(1);
    out.raw_size = raw.iter().map(Vec::len).sum::<usize>() / n.max(1);
    Ok(out)
}

/// The median over every slice of every run, side by side: a slice hit by a burst of
/// other load is an outlier among hundreds instead of a seventh of the total. The
/// ratios are the medians of each slice's codec time over the raw time of the same
/// slice, timed right after or before it: load that changes from slice to slice then
/// lands on both sides of a ratio.
pub fn median(runs: &[CodecRun]) -> CodecSample {
    let paired = |ours: fn(&CodecRun) -> &Vec<Duration>, raw: fn(&CodecRun) -> &Vec<Duration>| {
        let mut v: Vec<f64> = runs
            .iter()
            .flat_map(|r| {
                ours(r)
                    .iter()
                    .zip(raw(r))
                    .filter_map(|(&a, &b)| ratio(a, b))
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len().saturating_sub(1) / 2).copied()
    };
    let pick = |f: fn(&CodecRun) -> &Vec<Duration>| {
        let mut v: Vec<Duration> = runs.iter().flat_map(|r| f(r).iter().copied()).collect();
        v.sort();
        v.get(v.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or_default()
    };
    CodecSample {
        encode: pick(|r| &r.encode),
        raw_encode: pick(|r| &r.raw_encode),
        decode: pick(|r| &r.decode),
        raw_decode: pick(|r| &r.raw_decode),
        encode_ratio: paired(|r| &r.encode, |r| &r.raw_encode),
        decode_ratio: paired(|r| &r.decode, |r| &r.raw_decode),
        size: runs.first().map_or(0, |r| r.size),
        raw_size: runs.first().map_or(0, |r| r.raw_size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    #[test]
    fn every_configuration_round_trips_both_ways() -> Result<()> {
        let w = Workload::new(20, 0, 0);
        let docs: Vec<Doc> = w.docs.into_iter().map(|(_, d)| d).collect();
        for (format, compression) in CONFIGS {
            let s = median(&[run(format, compression, &docs)?]);
            // The codec's header is the only difference in size.
            assert!(s.size >= s.raw_size, "{format:?}/{compression:?}");
            assert!(s.encode > Duration::ZERO && s.raw_decode > Duration::ZERO);
            assert!(s.encode_ratio.is_some_and(|r| r > 0.0));
            assert!(s.decode_ratio.is_some_and(|r| r > 0.0));
        }
        Ok(())
    }
}
