//! The files on disk: the main JSON document, the append-only journal beside
//! it, atomic compaction of the one into the other, and group commit.
//!
//! Crash safety rests on three orderings:
//! - a journal record is one line ending in `\n` and carrying a CRC-32 of its
//!   bytes, so a record torn by a crash is recognised and dropped, never misread;
//! - compaction writes the whole state to `<file>.tmp`, fsyncs it, renames it
//!   over the main file and fsyncs the directory *before* it empties the journal,
//!   so at every instant either the old main file plus the full journal or the
//!   new main file (plus a journal whose records it already holds) is on disk;
//! - the main file names the last journal sequence number it contains, and
//!   replay skips records at or below it, which makes a crash between the
//!   rename and the truncation harmless.
//!
//! The journal is preallocated: it grows by zero-filled chunks that are fsync'd
//! (size and blocks) before records land in them, so an append changes no
//! metadata and `fdatasync` is enough to make it durable. Replay takes the
//! zeros after the last record as the journal's end.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use storage_core::{Document, IndexDefinition};

use crate::error::JsonError;
use crate::value::Stored;

/// The `format` tag of the main file.
pub(crate) const FORMAT: &str = "storage-json/1";

/// The trailer every journal line ends with: `,"crc":"xxxxxxxx"}`.
const CRC_TRAILER_LEN: usize = 18;

/// The three files that belong to one store.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) main: PathBuf,
    pub(crate) journal: PathBuf,
    pub(crate) temp: PathBuf,
    pub(crate) journal_temp: PathBuf,
    pub(crate) lock: PathBuf,
    pub(crate) dir: PathBuf,
}

impl Paths {
    pub(crate) fn new(main: &Path) -> Self {
        let with_suffix = |suffix: &str| {
            let mut name = main.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let dir = match main.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            main: main.to_path_buf(),
            journal: with_suffix(".journal"),
            temp: with_suffix(".tmp"),
            journal_temp: with_suffix(".journal.tmp"),
            lock: with_suffix(".lock"),
            dir,
        }
    }
}

/// A write set ready to be made durable: index definitions created or dropped
/// (a record of their own), an optional clear, then the final value (or
/// deletion) of every key the commit touched.
#[derive(Debug, Default, Clone)]
pub(crate) struct Commit {
    pub(crate) index_ops: Vec<IndexOp>,
    pub(crate) cleared: bool,
    pub(crate) writes: BTreeMap<String, Option<Arc<Stored>>>,
}

/// A change to the set of index definitions, journaled like a write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IndexOp {
    Create(IndexDefinition),
    Drop(String),
}

/// Applies index operations to a list of definitions, in order.
pub(crate) fn apply_index_ops(definitions: &mut Vec<IndexDefinition>, ops: Vec<IndexOp>) {
    for op in ops {
        match op {
            IndexOp::Create(definition) => {
                definitions.retain(|d| d.name != definition.name);
                definitions.push(definition);
            }
            IndexOp::Drop(name) => definitions.retain(|d| d.name != name),
        }
    }
}

/// One replayed journal record.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) commit: Commit,
    /// Byte offset of the record's line in the journal.
    pub(crate) offset: u64,
}

/// Serializes one journal line: `{"seq":N,"ops":[…],"crc":"xxxxxxxx"}\n`.
///
/// The CRC covers every byte before `,"crc"`, so the line stays plain JSON
/// that any parser reads, and the checksum is still verifiable byte for byte.
/// (The store appends through [`JournalWriter::append_record`], which writes the
/// same bytes without this function's buffer.)
#[cfg(test)]
pub(crate) fn encode_record(seq: u64, commit: &Commit) -> Result<Vec<u8>, serde_json::Error> {
    let ops = encode_ops(commit)?;
    let mut buf = Vec::with_capacity(48 + ops.len());
    write_record(&mut buf, seq, &ops);
    Ok(buf)
}

/// Appends a journal line to `buf` from the record number and the encoded
/// operations ([`encode_ops`]): the part of [`encode_record`] that needs the record
/// number, so writers can encode their operations before they take the store lock.
pub(crate) fn write_record(buf: &mut Vec<u8>, seq: u64, ops: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    // Digits by hand rather than through `fmt`: this runs once per record, under
    // the store lock.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = seq;
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
    buf.extend_from_slice(b",\"ops\":[");
    buf.extend_from_slice(ops);
    buf.push(b']');
    let crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(b",\"crc\":\"");
    for shift in (0..8).rev() {
        let nibble = (crc >> (shift * 4)) & 0xf;
        buf.push(b"0123456789abcdef"[usize::try_from(nibble).unwrap_or(0)]);
    }
    buf.extend_from_slice(b"\"}\n");
}

/// The operations of a journal line, comma-separated, without the brackets.
pub(crate) fn encode_ops(commit: &Commit) -> Result<Vec<u8>, serde_json::Error> {
    // Room for a small document per write, so a typical record needs no reallocation.
    let mut buf = Vec::with_capacity(commit.writes.len().saturating_mul(256) + 64);
    encode_ops_into(commit, &mut buf)?;
    Ok(buf)
}

/// [`encode_ops`] into a buffer of the caller's (appended to it).
pub(crate) fn encode_ops_into(commit: &Commit, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut first = true;
    for op in &commit.index_ops {
        if !first {
            buf.push(b',');
        }
        first = false;
        match op {
            IndexOp::Create(definition) => {
                buf.extend_from_slice(b"{\"op\":\"create_index\",\"index\":");
                serde_json::to_writer(&mut *buf, definition)?;
            }
            IndexOp::Drop(name) => {
                buf.extend_from_slice(b"{\"op\":\"drop_index\",\"name\":");
                serde_json::to_writer(&mut *buf, name)?;
            }
        }
        buf.push(b'}');
    }
    if commit.cleared {
        if !first {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"op\":\"clear\"}");
        first = false;
    }
    for (key, value) in &commit.writes {
        if !first {
            buf.push(b',');
        }
        first = false;
        if let Some(doc) = value {
            buf.extend_from_slice(b"{\"op\":\"set\",\"key\":");
            serde_json::to_writer(&mut *buf, key)?;
            buf.extend_from_slice(b",\"value\":");
            doc.write_compact(buf)?;
        } else {
            buf.extend_from_slice(b"{\"op\":\"delete\",\"key\":");
            serde_json::to_writer(&mut *buf, key)?;
        }
        buf.push(b'}');
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    seq: u64,
    ops: Vec<RawOp>,
    #[allow(dead_code)]
    crc: String,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum RawOp {
    Set { key: String, value: Document },
    Delete { key: String },
    Clear,
    CreateIndex { index: IndexDefinition },
    DropIndex { name: String },
}

/// Why a journal line is not a record.
#[derive(Debug)]
enum LineError {
    /// The line fails its checksum or lacks one: what a crash mid-append leaves.
    Torn(String),
    /// The checksum holds but the content is not a valid record: never a crash's doing.
    Invalid(String),
}

/// Decodes one line (without its `\n`), or says why it is not a record.
fn decode_line(line: &[u8]) -> Result<Record, LineError> {
    use LineError::{Invalid, Torn};
    if line.len() < CRC_TRAILER_LEN + 2 {
        return Err(Torn("line too short to be a record".to_owned()));
    }
    let (body, trailer) = line.split_at(line.len() - CRC_TRAILER_LEN);
    let hex = trailer
        .strip_prefix(b",\"crc\":\"")
        .and_then(|t| t.strip_suffix(b"\"}"))
        .ok_or_else(|| Torn("line does not end with a crc".to_owned()))?;
    let expected = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| Torn("crc is not hexadecimal".to_owned()))?;
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(Torn(format!(
            "checksum mismatch (stored {expected:08x}, computed {actual:08x})"
        )));
    }
    let raw: RawRecord =
        serde_json::from_slice(line).map_err(|e| Invalid(format!("record is not valid: {e}")))?;
    let mut commit = Commit::default();
    for op in raw.ops {
        match op {
            RawOp::Set { key, value } => {
                check_key(&key).map_err(Invalid)?;
                commit
                    .writes
                    .insert(key, Some(Arc::new(Stored::from_doc(value))));
            }
            RawOp::Delete { key } => {
                check_key(&key).map_err(Invalid)?;
                commit.writes.insert(key, None);
            }
            RawOp::Clear => {
                commit.cleared = true;
                commit.writes.clear();
            }
            RawOp::CreateIndex { index } => commit.index_ops.push(IndexOp::Create(index)),
            RawOp::DropIndex { name } => commit.index_ops.push(IndexOp::Drop(name)),
        }
    }
    Ok(Record {
        seq: raw.seq,
        commit,
        offset: 0,
    })
}

fn check_key(key: &str) -> Result<(), String> {
    storage_core::validate_key(key).map_err(|e| format!("invalid key {key:?}: {}", e.message()))
}

/// What reading the journal found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub(crate) records: Vec<Record>,
    /// Length of the valid prefix: where the next record goes.
    pub(crate) valid_len: u64,
    /// Length of the file as read.
    pub(crate) file_len: u64,
    /// Bytes after `valid_len` are a torn tail to cut off (rather than nothing, or
    /// the zeros of the preallocated space, which is where records continue).
    pub(crate) torn: bool,
}

/// The sector size below which a run of zeros is not taken for space the disk never
/// wrote: a missing write shows as zeros up to a sector (in practice, page) boundary.
const SECTOR: usize = 512;

/// Where a run of NUL bytes starting at `from` ends (the first non-zero byte, or the end).
fn zero_run_end(data: &[u8], from: usize) -> usize {
    data[from..]
        .iter()
        .position(|b| *b != 0)
        .map_or(data.len(), |i| from + i)
}

/// Reads and verifies the journal. A missing journal is an empty one.
///
/// # Behavior
/// - the journal ends at its first NUL byte where a record would start, when only
///   NUL bytes follow: that is the zero-filled space preallocated for appends, not
///   damage, and records continue there;
/// - a bad line followed only by bad lines (or nothing, or that zero-filled space)
///   is a torn tail: it is dropped (reported through `torn` and `valid_len`), never
///   misread;
/// - a line running into zeros that reach a sector boundary, with data after them,
///   is a write that never reached the disk although later pages did (an operating
///   system crash between an append and its fsync): fsyncs are taken in append
///   order, so nothing from that line on was acknowledged, and it is dropped as a
///   torn tail too;
/// - any other bad line followed by a good one is corruption in the middle:
///   `Corrupt` with the byte offset of the bad line;
/// - sequence numbers must increase strictly.
pub(crate) fn read_journal(path: &Path) -> Result<Replay, JsonError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => return Err(JsonError::io("read", path, e)),
    };
    let mut replay = Replay {
        file_len: to_u64(data.len()),
        ..Replay::default()
    };
    let mut first_bad: Option<(usize, String)> = None;
    let mut last_seq: Option<u64> = None;
    let mut pos = 0usize;
    while pos < data.len() {
        let (line, next, terminated) = match data[pos..].iter().position(|b| *b == b'\n') {
            Some(i) => (&data[pos..pos + i], pos + i + 1, true),
            None => (&data[pos..], data.len(), false),
        };
        if let Some(z) = line.iter().position(|b| *b == 0) {
            let run_end = zero_run_end(&data, pos + z);
            if run_end == data.len() || run_end.is_multiple_of(SECTOR) {
                let clean = z == 0 && run_end == data.len() && first_bad.is_none();
                if !clean && run_end < data.len() {
                    tracing::warn!(
                        file = %path.display(),
                        position = pos,
                        "the journal holds a write that never reached the disk; dropping it and every later (unacknowledged) byte"
                    );
                }
                replay.torn = !clean;
                return Ok(replay);
            }
        }
        let decoded = if terminated {
            decode_line(line)
        } else {
            Err(LineError::Torn(
                "line has no terminating newline".to_owned(),
            ))
        };
        match decoded {
            Ok(mut record) => {
                record.offset = to_u64(pos);
                if let Some((at, why)) = first_bad.take() {
                    return Err(JsonError::corrupt(
                        path,
                        to_u64(at),
                        format!("journal record is damaged ({why}) and valid records follow it"),
                    ));
                }
                if last_seq.is_some_and(|s| record.seq <= s) {
                    return Err(JsonError::corrupt(
                        path,
                        to_u64(pos),
                        format!(
                            "journal record {} does not follow record {}",
                            record.seq,
                            last_seq.unwrap_or_default()
                        ),
                    ));
                }
                last_seq = Some(record.seq);
                replay.records.push(record);
                replay.valid_len = to_u64(next);
            }
            Err(LineError::Invalid(why)) => {
                let (at, why) = first_bad.take().unwrap_or((pos, why));
                return Err(JsonError::corrupt(path, to_u64(at), why));
            }
            Err(LineError::Torn(why)) => {
                if first_bad.is_none() {
                    first_bad = Some((pos, why));
                }
            }
        }
        pos = next;
    }
    replay.torn = replay.valid_len < replay.file_len;
    Ok(replay)
}

/// The main file as loaded.
#[derive(Debug, Default)]
pub(crate) struct MainFile {
    pub(crate) indexes: Vec<IndexDefinition>,
    pub(crate) entries: BTreeMap<String, Arc<Stored>>,
    pub(crate) seq: u64,
    pub(crate) len: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMain {
    format: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    indexes: Vec<IndexDefinition>,
    entries: BTreeMap<String, Document>,
}

/// Reads the main file; `None` when it does not exist yet.
///
/// # Errors
/// `Corrupt` naming the byte position for an empty file, a byte-order mark,
/// invalid JSON, a wrong shape or format tag, or an invalid key.
pub(crate) fn read_main(path: &Path) -> Result<Option<MainFile>, JsonError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JsonError::io("read", path, e)),
    };
    if data.is_empty() {
        return Err(JsonError::corrupt(
            path,
            0,
            format!("file is empty; expected a JSON object with \"format\": \"{FORMAT}\""),
        ));
    }
    if data.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(JsonError::corrupt(
            path,
            0,
            "file starts with a utf-8 byte-order mark, which JSON (RFC 8259) forbids; remove the first 3 bytes",
        ));
    }
    if let Some(first) = data.iter().position(|b| !b.is_ascii_whitespace())
        && data[first] != b'{'
    {
        return Err(JsonError::corrupt(
            path,
            to_u64(first),
            format!("expected a JSON object with \"format\": \"{FORMAT}\""),
        ));
    }
    let raw: RawMain = serde_json::from_slice(&data).map_err(|e| {
        let position = if e.is_eof() {
            to_u64(data.len())
        } else {
            byte_offset(&data, e.line(), e.column())
        };
        JsonError::corrupt(path, position, format!("invalid JSON document: {e}"))
    })?;
    if raw.format != FORMAT {
        return Err(JsonError::corrupt(
            path,
            find(&data, b"\"format\"").unwrap_or(0),
            format!("unknown format {:?}; expected {FORMAT:?}", raw.format),
        ));
    }
    let mut entries = BTreeMap::new();
    for (key, value) in raw.entries {
        if let Err(why) = check_key(&key) {
            let needle = serde_json::to_vec(&key).unwrap_or_default();
            return Err(JsonError::corrupt(
                path,
                find(&data, &needle).unwrap_or(0),
                why,
            ));
        }
        entries.insert(key, Arc::new(Stored::from_doc(value)));
    }
    Ok(Some(MainFile {
        indexes: raw.indexes,
        entries,
        seq: raw.seq,
        len: to_u64(data.len()),
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<u64> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .map(to_u64)
}

/// The byte offset of serde_json's 1-based line and column.
fn byte_offset(data: &[u8], line: usize, column: usize) -> u64 {
    let mut start = 0usize;
    if line > 1 {
        start = data.len();
        let mut current = 1usize;
        for (i, b) in data.iter().enumerate() {
            if *b == b'\n' {
                current += 1;
                if current == line {
                    start = i + 1;
                    break;
                }
            }
        }
    }
    to_u64((start + column.saturating_sub(1)).min(data.len()))
}

pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

struct EntriesRef<'a>(&'a BTreeMap<String, Arc<Stored>>);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, &**v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct MainRef<'a, E> {
    format: &'static str,
    seq: u64,
    #[serde(skip_serializing_if = "<[IndexDefinition]>::is_empty")]
    indexes: &'a [IndexDefinition],
    entries: E,
}

/// Writes the whole state to the temp file, fsyncs it, renames it over the
/// main file and fsyncs the directory. Returns the new main file's length.
///
/// The journal is not touched here: the caller empties it only after this
/// returned, so a crash anywhere in between leaves a readable pair of files.
pub(crate) fn write_main(
    paths: &Paths,
    entries: &BTreeMap<String, Arc<Stored>>,
    indexes: &[IndexDefinition],
    seq: u64,
    pretty: bool,
) -> Result<u64, JsonError> {
    write_main_from(paths, EntriesRef(entries), indexes, seq, pretty)
}

/// [`write_main`] with the entries produced by any serializable map, such as one
/// that reads the live state chunk by chunk.
pub(crate) fn write_main_from(
    paths: &Paths,
    entries: impl Serialize,
    indexes: &[IndexDefinition],
    seq: u64,
    pretty: bool,
) -> Result<u64, JsonError> {
    let file = File::create(&paths.temp).map_err(|e| JsonError::io("create", &paths.temp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let doc = MainRef {
        format: FORMAT,
        seq,
        indexes,
        entries,
    };
    let written = if pretty {
        serde_json::to_writer_pretty(&mut out, &doc)
    } else {
        serde_json::to_writer(&mut out, &doc)
    };
    written.map_err(|e| {
        JsonError::io(
            "write",
            &paths.temp,
            e.io_error_kind()
                .map_or_else(|| io::Error::other(e.to_string()), io::Error::from),
        )
    })?;
    out.write_all(b"\n")
        .map_err(|e| JsonError::io("write", &paths.temp, e))?;
    let file = out
        .into_inner()
        .map_err(|e| JsonError::io("write", &paths.temp, e.into_error()))?;
    file.sync_all()
        .map_err(|e| JsonError::io("fsync", &paths.temp, e))?;
    let len = file
        .metadata()
        .map_err(|e| JsonError::io("stat", &paths.temp, e))?
        .len();
    drop(file);
    fs::rename(&paths.temp, &paths.main).map_err(|e| JsonError::io("rename", &paths.main, e))?;
    sync_dir(&paths.dir)?;
    Ok(len)
}

/// Fsyncs a directory so a rename in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JsonError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| JsonError::io("fsync directory", dir, e))
    }
    #[cfg(not(unix))]
    {
        // Other platforms cannot open a directory as a file; their rename is
        // made durable by the file system's own metadata journal.
        let _ = dir;
        Ok(())
    }
}

/// How much zero-filled space the journal grows by when an append reaches its end.
///
/// Appending into space that was written (with zeros) and fsync'd before changes
/// no file metadata, so `fdatasync` has only the data to flush; appending past
/// the end of the file also changes its size and allocates blocks, which costs a
/// journal commit of the file system on every fsync. One growth (write the zeros,
/// `fsync`) serves about a megabyte of records.
pub(crate) const GROW_CHUNK: u64 = 1 << 20;

/// Zeros for growing the journal's preallocated space.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The largest line buffer a [`JournalWriter`] keeps for the next record.
const SCRATCH_KEPT: usize = 64 << 10;

/// The append handle of the journal.
///
/// With `preallocate`, the file is kept longer than its records: `len..allocated`
/// holds zeros, fsync'd, which readers take as the journal's end.
#[derive(Debug)]
pub(crate) struct JournalWriter {
    path: PathBuf,
    file: File,
    /// Bytes of records: where the next one goes.
    len: u64,
    /// Length of the file (`>= len`; the bytes after `len` are zeros).
    allocated: u64,
    records: u64,
    preallocate: bool,
    /// With group commit, appends collect here and reach the file in one `write`
    /// per group ([`JournalWriter::flush`]), instead of one per record under the
    /// store lock. They are the last `pending.len()` bytes of `len`.
    pending: Vec<u8>,
    /// Records in `pending`.
    pending_records: u64,
    buffered: bool,
    /// Where [`JournalWriter::append_record`] builds a line (kept to reuse its memory).
    scratch: Vec<u8>,
}

impl JournalWriter {
    /// Opens (creating) the journal for appending; its first `len` bytes are valid
    /// and hold `records` records, and anything after them is zeros.
    pub(crate) fn open(
        path: &Path,
        records: u64,
        len: u64,
        preallocate: bool,
    ) -> Result<Self, JsonError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| JsonError::io("open", path, e))?;
        let allocated = file
            .metadata()
            .map_err(|e| JsonError::io("stat", path, e))?
            .len();
        let mut writer = Self {
            path: path.to_path_buf(),
            file,
            len: len.min(allocated),
            allocated,
            records,
            preallocate,
            pending: Vec::new(),
            pending_records: 0,
            buffered: false,
            scratch: Vec::new(),
        };
        writer.seek_to_end()?;
        Ok(writer)
    }

    /// Opens a journal that holds exactly `records` records and nothing after them.
    pub(crate) fn open_exact(
        path: &Path,
        records: u64,
        preallocate: bool,
    ) -> Result<Self, JsonError> {
        Self::open(path, records, u64::MAX, preallocate)
    }

    /// Bytes of records, including those not yet flushed to the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes of records in the file: what a reader of the file sees.
    pub(crate) fn flushed_len(&self) -> u64 {
        self.len - to_u64(self.pending.len())
    }

    /// Makes appends collect in memory until [`JournalWriter::flush`] (group commit).
    #[must_use]
    pub(crate) fn buffered(mut self, on: bool) -> Self {
        self.buffered = on;
        self
    }

    /// Whether appends collect in memory until a flush.
    pub(crate) fn is_buffered(&self) -> bool {
        self.buffered
    }

    /// Writes the collected appends to the file in one `write`. On failure they are
    /// dropped (the file is cut back to where they began) and the error returned:
    /// the caller must refuse further writes, since those records were applied.
    pub(crate) fn flush(&mut self) -> Result<(), JsonError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let start = self.flushed_len();
        let written = self.file.write_all(&self.pending);
        let count = self.pending_records;
        self.pending.clear();
        self.pending_records = 0;
        if let Err(e) = written {
            self.records = self.records.saturating_sub(count);
            // Even if the cut fails the caller stops writing; the torn tail is dropped on replay.
            let _ = self.cut_to(start);
            return Err(JsonError::io("append", &self.path, e));
        }
        Ok(())
    }

    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// Whether appends go into preallocated, zero-filled space.
    pub(crate) fn preallocates(&self) -> bool {
        self.preallocate
    }

    /// A second handle on the same file, for the group-commit thread.
    pub(crate) fn clone_file(&self) -> Result<File, JsonError> {
        self.file
            .try_clone()
            .map_err(|e| JsonError::io("duplicate handle", &self.path, e))
    }

    fn seek_to_end(&mut self) -> Result<(), JsonError> {
        let at = self.flushed_len();
        io::Seek::seek(&mut self.file, io::SeekFrom::Start(at))
            .map(|_| ())
            .map_err(|e| JsonError::io("seek", &self.path, e))
    }

    /// Extends the zero-filled space so that `end` bytes fit, and fsyncs the file
    /// (its size, its new blocks) so later appends need only `fdatasync`.
    fn grow(&mut self, end: u64) -> Result<(), JsonError> {
        let target = end.max(self.allocated.saturating_add(GROW_CHUNK));
        let grown = (|| {
            io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.allocated))?;
            // Zeros from a static block rather than a megabyte allocated here: this runs
            // under the store lock, and an allocation that large makes glibc's malloc
            // first consolidate every small chunk freed since its last one.
            let mut left = target - self.allocated;
            while left > 0 {
                let n = usize::try_from(left).map_or(ZEROS.len(), |l| l.min(ZEROS.len()));
                self.file.write_all(&ZEROS[..n])?;
                left -= to_u64(n);
            }
            self.file.sync_all()
        })();
        // Wherever the write stopped, appends continue at `len`.
        let positioned = self.seek_to_end();
        grown.map_err(|e| JsonError::io("preallocate", &self.path, e))?;
        positioned?;
        self.allocated = target;
        Ok(())
    }

    /// Appends record `seq` made of the encoded operations `ops` ([`write_record`]),
    /// as [`JournalWriter::append`] does.
    pub(crate) fn append_record(&mut self, seq: u64, ops: &[u8]) -> Result<(), (JsonError, bool)> {
        if self.buffered {
            // Straight into the group's buffer.
            let start = self.pending.len();
            write_record(&mut self.pending, seq, ops);
            let line_len = to_u64(self.pending.len() - start);
            self.len += line_len;
            self.pending_records += 1;
            self.records += 1;
            self.make_room(self.len, line_len);
            self.allocated = self.allocated.max(self.len);
            return Ok(());
        }
        let mut line = std::mem::take(&mut self.scratch);
        line.clear();
        write_record(&mut line, seq, ops);
        let appended = self.append(&line);
        // A big batch's buffer is not worth keeping.
        if line.capacity() <= SCRATCH_KEPT {
            self.scratch = line;
        }
        appended
    }

    /// Grows the zero-filled space so that records up to `end` fit, when a
    /// `line_len`-byte record reaches past it.
    fn make_room(&mut self, end: u64, line_len: u64) {
        // A record as large as a chunk (a big batch) is appended past the end: zeroing
        // its space first would write it twice, for one fsync saved.
        if self.preallocate && end > self.allocated && line_len < GROW_CHUNK {
            // Preallocation is an optimisation: if it fails the append may still work.
            if let Err(e) = self.grow(end) {
                tracing::debug!(error = %e, "could not preallocate journal space");
            }
        }
    }

    /// Appends one line. On failure the journal is cut back to where it was;
    /// if even that fails the error says so and the caller must stop writing.
    pub(crate) fn append(&mut self, line: &[u8]) -> Result<(), (JsonError, bool)> {
        let end = self.len + to_u64(line.len());
        self.make_room(end, to_u64(line.len()));
        if self.buffered {
            self.pending.extend_from_slice(line);
            self.pending_records += 1;
            self.len = end;
            self.allocated = self.allocated.max(end);
            self.records += 1;
            return Ok(());
        }
        match self.file.write_all(line) {
            Ok(()) => {
                self.len = end;
                self.allocated = self.allocated.max(end);
                self.records += 1;
                Ok(())
            }
            Err(e) => {
                let restored = self.cut_to(self.len).is_ok();
                Err((JsonError::io("append", &self.path, e), restored))
            }
        }
    }

    /// Shortens the file to `len` (dropping its zero-filled space too) and appends
    /// from there.
    fn cut_to(&mut self, len: u64) -> Result<(), JsonError> {
        self.pending.clear();
        self.pending_records = 0;
        self.file
            .set_len(len)
            .map_err(|e| JsonError::io("truncate", &self.path, e))?;
        self.len = len;
        self.allocated = len;
        self.seek_to_end()
    }

    /// Best effort to take back the last append after its fsync failed, so a write
    /// reported as failed is not replayed on the next open.
    pub(crate) fn cut_back(&mut self, len: u64) {
        if self.cut_to(len).is_ok() {
            self.records = self.records.saturating_sub(1);
            // The fsync that failed may fail again; the handle is unusable either way.
            let _ = self.file.sync_all();
        }
    }

    /// Fsyncs the appended data. Appends land in space allocated and fsync'd
    /// before, so `fdatasync` covers them (a growth already synced the size).
    pub(crate) fn sync(&mut self) -> Result<(), JsonError> {
        self.flush()?;
        self.file
            .sync_data()
            .map_err(|e| JsonError::io("fsync", &self.path, e))
    }

    /// Empties the journal after a compaction made its records redundant.
    pub(crate) fn reset(&mut self) -> Result<(), JsonError> {
        self.cut_to(0)?;
        self.file
            .sync_all()
            .map_err(|e| JsonError::io("fsync", &self.path, e))?;
        self.records = 0;
        Ok(())
    }
}

/// Cuts a torn tail off the journal before the first append after opening.
pub(crate) fn truncate_file(path: &Path, len: u64) -> Result<(), JsonError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JsonError::io("open", path, e))?;
    file.set_len(len)
        .map_err(|e| JsonError::io("truncate", path, e))?;
    file.sync_all().map_err(|e| JsonError::io("fsync", path, e))
}

/// The answer a group-commit waiter gets: `Err` carries the fsync failure.
pub(crate) type SyncOutcome = Result<(), String>;

struct SyncState {
    file: Arc<File>,
    /// The highest record number appended and registered.
    written: u64,
    /// The highest record number an fsync covered (also in [`SyncShared::synced`],
    /// which a waiter reads without this lock).
    synced: u64,
    /// The writers waiting in [`SyncWait`] (the next group), with their record
    /// number and task, woken once an fsync covers it (or fails).
    waiters: Vec<(u64, Waker)>,
    /// Released writers still to be woken, by the first released writer whose wait
    /// is polled (see [`wake_released`]).
    relay: Vec<Waker>,
    /// An emptied list of wakers, kept for the next release: the lists of a group
    /// of 64 take 1 KiB or more, and an allocation that large makes glibc's `malloc`
    /// consolidate its free lists (the small chunks writers freed since), which the
    /// reuse avoids once per group.
    spare: Vec<Waker>,
    /// Why records that no fsync covered will never be: the first fsync (or flush)
    /// failure, or the thread's end. Every later waiter not covered gets it.
    failed: Option<String>,
    /// When the oldest waiting writer registered.
    oldest: Option<Instant>,
    /// When the last writer registered.
    last_arrival: Instant,
    /// How long recent fsyncs took (a moving average).
    fsync_time: Duration,
    /// How many writers the last fsync released: the size of group to wait for,
    /// since writers that wait for their acknowledgement come back together.
    expected: usize,
    /// Fsyncs taken so far.
    fsyncs: u64,
    shutdown: bool,
}

/// Writes the journal's collected appends to the file (taking the store lock);
/// `Err` fails the group, as a failed fsync does.
pub(crate) type FlushHook = Box<dyn Fn() -> SyncOutcome + Send + Sync>;

struct SyncShared {
    state: Mutex<SyncState>,
    /// [`SyncState::synced`], readable without the lock: a waiter polled after its
    /// record was covered returns without touching the lock.
    synced: AtomicU64,
    /// Whether [`SyncState::relay`] holds wakers.
    relay_pending: AtomicBool,
    wake: Condvar,
    flush: FlushHook,
    max_writes: usize,
    max_delay: Duration,
}

impl SyncShared {
    /// The group state, locked, taking over a poisoned lock rather than failing the
    /// caller.
    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shortest quiet spell that closes a group short of its expected size.
const MIN_QUIET: Duration = Duration::from_micros(20);

/// Group commit: a thread that fsyncs the journal and then releases every writer
/// whose record the fsync covered (every record appended before it started).
///
/// A group closes, and its fsync starts, when as many writers wait as the last
/// fsync released (writers waiting for their acknowledgement come back together;
/// at most `max_writes`), when no writer has arrived for half the recent fsync time
/// (at least [`MIN_QUIET`]: fewer came back), or when the oldest has waited
/// `max_delay`. So a lone writer's group closes at once, and concurrent writers
/// share one fsync however many they are. Writers keep appending (into the journal's
/// buffer: see [`JournalWriter::flush`], which the thread calls through its
/// [`FlushHook`] before each fsync) while an fsync runs.
///
/// Waiters share one "synced up to record N" mark instead of a channel each: a
/// writer's [`SyncWait`] compares its record number with the mark, and the thread
/// wakes, after each fsync, the tasks whose records it covered (outside its lock).
pub(crate) struct GroupSync {
    shared: Arc<SyncShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What a writer awaits after registering: completes once an fsync covered its
/// record (`Ok`), or with the failure that means none will (`Err`).
///
/// Created right after the record is appended and polled at once (in the same poll
/// of the writer's future), so every appended record is registered.
pub(crate) struct SyncWait {
    shared: Arc<SyncShared>,
    seq: u64,
    registered: bool,
    done: bool,
}

impl Drop for SyncWait {
    fn drop(&mut self) {
        if !self.registered || self.done {
            return;
        }
        // A writer that stops waiting must not be the one the thread wakes to relay
        // the others' wake-ups (nothing would poll it), and if it already was, it
        // relays them now.
        let mut st = self.shared.state();
        st.waiters.retain(|(seq, _)| *seq != self.seq);
        drop(st);
        relay_wakes(&self.shared);
    }
}

/// Wakes the released writers the thread left to be relayed (see [`wake_released`]).
fn relay_wakes(shared: &SyncShared) {
    if !shared.relay_pending.load(Ordering::Acquire) {
        return;
    }
    let mut relay = {
        let mut st = shared.state();
        shared.relay_pending.store(false, Ordering::Release);
        std::mem::take(&mut st.relay)
    };
    relay.drain(..).for_each(Waker::wake);
    // The emptied list goes back for the next group (see `SyncState::spare`).
    let mut st = shared.state();
    if st.spare.capacity() < relay.capacity() {
        st.spare = relay;
    }
}

/// Wakes the writers an fsync released. The thread wakes only one of them and
/// leaves the rest to it: waking a task from outside its executor is expensive (a
/// lock on the executor's shared queue and a thread to unpark, about 1 µs each
/// here), while the first writer to resume wakes the others from an executor thread,
/// where it is a push onto that thread's own queue. Whichever released (or
/// dropped) wait runs first does the relay, so a writer that stopped waiting holds
/// nobody up.
fn wake_released(shared: &SyncShared, mut woken: Vec<Waker>) {
    const DIRECT: usize = 2;
    if woken.len() <= DIRECT {
        woken.into_iter().for_each(Waker::wake);
        return;
    }
    let first = woken.pop();
    {
        let mut st = shared.state();
        if st.relay.is_empty() {
            // No allocation: the list itself becomes the relay.
            std::mem::swap(&mut st.relay, &mut woken);
        } else {
            st.relay.append(&mut woken);
        }
        if st.spare.capacity() < woken.capacity() {
            st.spare = woken;
        }
        shared.relay_pending.store(true, Ordering::Release);
    }
    if let Some(first) = first {
        first.wake();
    }
}

impl Future for SyncWait {
    type Output = SyncOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SyncOutcome> {
        let this = self.get_mut();
        let (shared, seq) = (&*this.shared, this.seq);
        if shared.synced.load(Ordering::Acquire) >= seq {
            this.done = true;
            relay_wakes(shared);
            return Poll::Ready(Ok(()));
        }
        let mut st = shared.state();
        // Checked again under the lock: a release between the load above and here
        // has already taken the wakers, so this one must not be left behind.
        if st.synced >= seq {
            drop(st);
            this.done = true;
            relay_wakes(shared);
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = &st.failed {
            this.done = true;
            return Poll::Ready(Err(why.clone()));
        }
        if this.registered {
            if let Some((_, waker)) = st.waiters.iter_mut().find(|(s, _)| *s == seq) {
                waker.clone_from(cx.waker());
            }
            return Poll::Pending;
        }
        this.registered = true;
        let wake_thread = register(&mut st, seq, cx.waker().clone(), shared.max_writes);
        drop(st);
        if wake_thread {
            // Otherwise the thread is syncing, or waiting for a deadline it rechecks.
            shared.wake.notify_one();
        }
        Poll::Pending
    }
}

/// Adds a waiting writer; returns whether the sync thread must be woken (the first
/// writer of a group, or the one that fills it).
fn register(st: &mut SyncState, seq: u64, waker: Waker, max_writes: usize) -> bool {
    st.written = st.written.max(seq);
    let now = Instant::now();
    st.last_arrival = now;
    let first = st.waiters.is_empty();
    if first {
        st.oldest = Some(now);
    }
    st.waiters.push((seq, waker));
    first || st.waiters.len() == st.expected.clamp(1, max_writes)
}

impl GroupSync {
    pub(crate) fn start(
        file: File,
        max_writes: usize,
        max_delay: Duration,
        flush: FlushHook,
    ) -> Result<Self, JsonError> {
        let shared = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                file: Arc::new(file),
                written: 0,
                synced: 0,
                waiters: Vec::new(),
                relay: Vec::new(),
                spare: Vec::new(),
                failed: None,
                oldest: None,
                last_arrival: Instant::now(),
                fsync_time: Duration::ZERO,
                expected: 1,
                fsyncs: 0,
                shutdown: false,
            }),
            synced: AtomicU64::new(0),
            relay_pending: AtomicBool::new(false),
            wake: Condvar::new(),
            flush,
            max_writes: max_writes.max(1),
            max_delay,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("storage-json-sync".to_owned())
            .spawn(move || run_group_sync(&worker))
            .map_err(|e| JsonError::io("spawn group-commit thread for", "journal", e))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The wait of the writer of record `seq` (already appended): it registers on
    /// its first poll and completes once an fsync covered the record. Records up to
    /// the highest registered one are in the journal's buffer by then, so a group
    /// covers them all even when their writers register out of order.
    pub(crate) fn wait_for(&self, seq: u64) -> SyncWait {
        SyncWait {
            shared: Arc::clone(&self.shared),
            seq,
            registered: false,
            done: false,
        }
    }

    /// How many fsyncs the thread has taken.
    #[cfg(test)]
    fn fsyncs(&self) -> u64 {
        self.shared.state().fsyncs
    }

    /// Releases every writer up to `seq`: something else (a compaction) made them durable.
    pub(crate) fn mark_synced(&self, seq: u64) {
        let mut st = self.shared.state();
        let woken = release(&self.shared, &mut st, seq, None);
        drop(st);
        woken.into_iter().for_each(Waker::wake);
    }

    /// Replaces the file the thread fsyncs (after the journal was reopened).
    pub(crate) fn set_file(&self, file: File) {
        let mut st = self.shared.state();
        st.file = Arc::new(file);
    }

    /// Syncs what is pending and stops the thread.
    pub(crate) fn shutdown(&self) {
        {
            let mut st = self.shared.state();
            st.shutdown = true;
        }
        self.shared.wake.notify_all();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A panic in the sync thread has already failed its waiters (its exit
            // guard marks the group failed); nothing more to report here.
            let _ = handle.join();
        }
    }
}

impl Drop for GroupSync {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Marks records up to `synced` durable, or with `failure` fails every record not
/// yet covered, and returns the wakers of the writers that can go on (to be woken
/// after the lock is released).
fn release(
    shared: &SyncShared,
    st: &mut SyncState,
    synced: u64,
    failure: Option<String>,
) -> Vec<Waker> {
    if synced > st.synced {
        st.synced = synced;
        shared.synced.store(synced, Ordering::Release);
    }
    let synced = st.synced;
    if let Some(why) = failure {
        st.failed.get_or_insert(why);
    }
    let fail_all = st.failed.is_some();
    let mut woken = std::mem::take(&mut st.spare);
    woken.extend(
        st.waiters
            .extract_if(.., |(seq, _)| *seq <= synced || fail_all)
            .map(|(_, waker)| waker),
    );
    if !woken.is_empty() {
        st.expected = woken.len();
    }
    st.oldest = (!st.waiters.is_empty()).then(Instant::now);
    woken
}

/// Fails the group when its thread ends (shutdown or a panic), so that no
/// waiter whose record was not covered waits forever.
struct ThreadEnd<'a>(&'a SyncShared);

impl Drop for ThreadEnd<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        let woken = release(
            self.0,
            &mut st,
            0,
            Some("group-commit thread stopped".to_owned()),
        );
        let relay = std::mem::take(&mut st.relay);
        self.0.relay_pending.store(false, Ordering::Release);
        drop(st);
        woken.into_iter().chain(relay).for_each(Waker::wake);
    }
}

fn run_group_sync(shared: &SyncShared) {
    let _end = ThreadEnd(shared);
    let mut st = shared.state();
    loop {
        while st.waiters.is_empty() && !st.shutdown {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.waiters.is_empty() {
            return;
        }
        while !st.shutdown && st.waiters.len() < st.expected.clamp(1, shared.max_writes) {
            let quiet = (st.fsync_time / 2).clamp(MIN_QUIET, shared.max_delay.max(MIN_QUIET));
            let oldest = st.oldest.unwrap_or(st.last_arrival);
            let close_at = (st.last_arrival + quiet).min(oldest + shared.max_delay);
            let now = Instant::now();
            if now >= close_at {
                break;
            }
            st = shared
                .wake
                .wait_timeout(st, close_at - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        // Every record up to `written` was appended (a writer registers after
        // appending, and records are numbered in append order), so once the flush below has written the
        // group's collected lines in one `write`, this fsync covers them all. The
        // flush takes the store lock: this lock must not be held meanwhile.
        let target = st.written;
        let file = Arc::clone(&st.file);
        drop(st);
        let started = Instant::now();
        let outcome = (shared.flush)().and_then(|()| file.sync_data().map_err(|e| e.to_string()));
        let took = started.elapsed();
        st = shared.state();
        st.fsync_time = (st.fsync_time * 3 + took) / 4;
        st.fsyncs += 1;
        let woken = match outcome {
            Ok(()) => release(shared, &mut st, target, None),
            Err(why) => release(shared, &mut st, 0, Some(why)),
        };
        drop(st);
        wake_released(shared, woken);
        st = shared.state();
    }
}

/// Parses a journal line's JSON only (used by tests to prove lines are plain JSON).
#[cfg(test)]
fn parse_plain(line: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(line)?;
    if v.get("crc").is_none() {
        return Err(<serde_json::Error as serde::de::Error>::custom("no crc"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    fn commit(pairs: &[(&str, Option<Document>)]) -> Commit {
        Commit {
            index_ops: Vec::new(),
            cleared: false,
            writes: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        v.clone().map(|d| Arc::new(Stored::from_doc(d))),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_record_round_trips_and_is_plain_json() -> Result<(), Box<dyn std::error::Error>> {
        let c = commit(&[("a", Some(json!({"x": [1, 2.5, "é"]}))), ("b", None)]);
        let line = encode_record(7, &c)?;
        assert!(line.ends_with(b"\n"));
        let body = &line[..line.len() - 1];
        parse_plain(body)?;
        let r = decode_line(body).map_err(|e| format!("{e:?}"))?;
        assert_eq!(r.seq, 7);
        assert_eq!(r.commit.writes.len(), 2);
        assert_eq!(
            r.commit.writes["a"].as_deref().map(Stored::doc),
            Some(&json!({"x": [1, 2.5, "é"]}))
        );
        assert!(r.commit.writes["b"].is_none());
        Ok(())
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() -> Result<(), Box<dyn std::error::Error>> {
        let line = encode_record(1, &commit(&[("key", Some(json!(12345)))]))?;
        let mut body = line[..line.len() - 1].to_vec();
        let at = body.iter().position(|b| *b == b'3').ok_or("no digit")?;
        body[at] = b'4';
        let err = decode_line(&body).expect_err("must fail");
        assert!(
            matches!(&err, LineError::Torn(why) if why.contains("checksum")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn a_checksummed_record_with_a_bad_key_is_invalid_not_torn()
    -> Result<(), Box<dyn std::error::Error>> {
        let line = encode_record(1, &commit(&[("", Some(json!(1)))]))?;
        let err = decode_line(&line[..line.len() - 1]).expect_err("must fail");
        assert!(matches!(err, LineError::Invalid(_)), "{err:?}");
        // At the end of the journal it is still corruption, not a torn tail to drop.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("j");
        let mut bytes = encode_record(1, &commit(&[("a", Some(json!(1)))]))?;
        bytes.extend(encode_record(2, &commit(&[("", Some(json!(1)))]))?);
        std::fs::write(&path, &bytes)?;
        let Err(JsonError::Corrupt { position, .. }) = read_journal(&path) else {
            return Err("expected corruption".into());
        };
        assert!(position > 0);
        Ok(())
    }

    #[test]
    fn the_documented_journal_line_is_what_the_adapter_writes()
    -> Result<(), Box<dyn std::error::Error>> {
        let line = encode_record(
            3,
            &commit(&[("user:3", Some(json!({"name": "Carol", "age": 40})))]),
        )?;
        assert_eq!(
            String::from_utf8(line)?,
            "{\"seq\":3,\"ops\":[{\"op\":\"set\",\"key\":\"user:3\",\"value\":{\"age\":40,\"name\":\"Carol\"}}],\"crc\":\"869f919c\"}\n"
        );
        Ok(())
    }

    #[test]
    fn a_group_waits_for_as_many_writers_as_the_last_one_released()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = File::create(dir.path().join("j"))?;
        let group = GroupSync::start(file, 64, Duration::from_secs(30), Box::new(|| Ok(())))?;
        let set = |expected: usize, fsync_time: Duration| {
            let mut st = group.shared.state();
            st.expected = expected;
            st.fsync_time = fsync_time;
        };
        // The last fsync released eight writers, and fsyncs are slow (a long quiet
        // spell): the group waits for all eight, and one fsync covers them.
        set(8, Duration::from_secs(10));
        let waits = (1..=8).map(|seq| group.wait_for(seq));
        for outcome in futures::executor::block_on(futures::future::join_all(waits)) {
            outcome?;
        }
        assert_eq!(group.fsyncs(), 1, "eight writers, one fsync");
        // One writer comes back: its group closes after the quiet spell, and...
        set(8, Duration::from_millis(2));
        futures::executor::block_on(group.wait_for(9))?;
        assert_eq!(group.fsyncs(), 2);
        // ...from then on a lone writer's group closes at once, never waiting the
        // quiet spell (here 2 s) or `max_delay`.
        set(1, Duration::from_secs(4));
        let started = Instant::now();
        futures::executor::block_on(group.wait_for(10))?;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(group.fsyncs(), 3);
        group.shutdown();
        Ok(())
    }

    #[test]
    fn a_record_line_spells_its_number_and_checksum_as_fmt_would() {
        for seq in [0, 7, 10, 99, 12_345, u64::MAX] {
            let mut line = Vec::new();
            write_record(&mut line, seq, b"{\"op\":\"clear\"}");
            let body = format!("{{\"seq\":{seq},\"ops\":[{{\"op\":\"clear\"}}]");
            let crc = crc32fast::hash(body.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&line),
                format!("{body},\"crc\":\"{crc:08x}\"}}\n")
            );
        }
    }

    /// A group-commit thread on a scratch file whose next group waits for `expected`
    /// writers (fsyncs look slow, so no quiet spell closes it sooner).
    fn group_of(
        expected: usize,
        flush: FlushHook,
    ) -> Result<(tempfile::TempDir, GroupSync), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = File::create(dir.path().join("j"))?;
        let group = GroupSync::start(file, 64, Duration::from_secs(30), flush)?;
        {
            let mut st = group.shared.state();
            st.expected = expected;
            st.fsync_time = Duration::from_secs(10);
        }
        Ok((dir, group))
    }

    fn waiting(group: &GroupSync) -> usize {
        group.shared.state().waiters.len()
    }

    #[test]
    fn every_released_writer_resumes_on_a_multi_threaded_executor()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, group) = group_of(64, Box::new(|| Ok(())))?;
        let group = Arc::new(group);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()?;
        let outcomes = rt.block_on(async {
            let tasks: Vec<_> = (1..=64u64)
                .map(|seq| tokio::spawn(group.wait_for(seq)))
                .collect();
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await);
            }
            outcomes
        });
        for outcome in outcomes {
            outcome??;
        }
        // The sync thread woke one writer; the others were woken by it.
        assert_eq!(group.fsyncs(), 1, "64 writers, one group");
        Ok(())
    }

    #[test]
    fn a_writer_that_stops_waiting_holds_up_nobody() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, group) = group_of(8, Box::new(|| Ok(())))?;
        let group = Arc::new(group);
        // Seven writers wait on another thread...
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waits: Vec<_> = (1..=7).map(|seq| group.wait_for(seq)).collect();
        let waiter = std::thread::spawn(move || {
            let outcomes = futures::executor::block_on(futures::future::join_all(waits));
            let _ = done_tx.send(outcomes.into_iter().all(|o| o.is_ok()));
        });
        let started = Instant::now();
        while waiting(&group) < 7 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "writers never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...and the eighth registers last, completing the group, so the thread picks
        // it to relay the others' wake-ups; but nothing polls it again: its task gave
        // up (here: a no-op waker), and the wait is then dropped.
        let mut last = group.wait_for(8);
        assert!((&mut last).now_or_never().is_none());
        let started = Instant::now();
        while group.fsyncs() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the group never synced"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(last);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        waiter.join().map_err(|_| "waiter thread panicked")?;
        Ok(())
    }

    #[test]
    fn a_failed_flush_fails_every_waiter_and_every_later_one()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, group) = group_of(3, Box::new(|| Err("disk on fire".to_owned())))?;
        let waits = (1..=3).map(|seq| group.wait_for(seq));
        for outcome in futures::executor::block_on(futures::future::join_all(waits)) {
            assert_eq!(outcome, Err("disk on fire".to_owned()));
        }
        assert_eq!(
            futures::executor::block_on(group.wait_for(4)),
            Err("disk on fire".to_owned())
        );
        // What a compaction made durable is still acknowledged.
        group.mark_synced(5);
        assert_eq!(futures::executor::block_on(group.wait_for(5)), Ok(()));
        Ok(())
    }

    #[test]
    fn a_stopped_thread_fails_waiters_instead_of_leaving_them_waiting()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, group) = group_of(1, Box::new(|| Ok(())))?;
        group.shutdown();
        assert_eq!(
            futures::executor::block_on(group.wait_for(1)),
            Err("group-commit thread stopped".to_owned())
        );
        Ok(())
    }

    #[test]
    fn buffered_appends_reach_the_file_in_one_flush() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("j");
        let mut writer = JournalWriter::open(&path, 0, 0, true)?.buffered(true);
        let one = encode_record(1, &commit(&[("a", Some(serde_json::json!(1)))]))?;
        let two = encode_record(2, &commit(&[("b", None)]))?;
        writer.append(&one).map_err(|(e, _)| e)?;
        writer.append(&two).map_err(|(e, _)| e)?;
        assert_eq!(writer.records(), 2);
        assert_eq!(writer.len(), to_u64(one.len() + two.len()));
        assert_eq!(writer.flushed_len(), 0);
        // A reader of the file (replay, another process) sees none of them yet...
        assert_eq!(read_journal(&path)?.records.len(), 0);
        writer.flush()?;
        assert_eq!(writer.flushed_len(), writer.len());
        // ...and both, in order, after the flush; appends continue after them.
        let three = encode_record(3, &commit(&[("c", None)]))?;
        writer.append(&three).map_err(|(e, _)| e)?;
        writer.sync()?;
        let seqs: Vec<u64> = read_journal(&path)?.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        Ok(())
    }

    #[test]
    fn index_operations_round_trip_through_a_record() -> Result<(), Box<dyn std::error::Error>> {
        use storage_core::IndexKind;
        let definition = IndexDefinition::new("by_age", "age", IndexKind::Btree).unique();
        let c = Commit {
            index_ops: vec![
                IndexOp::Create(definition.clone()),
                IndexOp::Drop("old".to_owned()),
            ],
            ..Commit::default()
        };
        let line = encode_record(4, &c)?;
        parse_plain(&line[..line.len() - 1])?;
        let r = decode_line(&line[..line.len() - 1]).map_err(|e| format!("{e:?}"))?;
        assert_eq!(r.commit.index_ops, c.index_ops);
        let mut defs = vec![IndexDefinition::new("old", "x", IndexKind::Hash)];
        apply_index_ops(&mut defs, r.commit.index_ops);
        assert_eq!(defs, [definition]);
        Ok(())
    }

    #[test]
    fn byte_offset_follows_lines_and_columns() {
        let data = b"ab\ncdef\ng";
        assert_eq!(byte_offset(data, 1, 1), 0);
        assert_eq!(byte_offset(data, 2, 3), 5);
        assert_eq!(byte_offset(data, 3, 1), 8);
        assert_eq!(byte_offset(data, 9, 9), 9);
    }
}
