//! Translation to Cypher: parameters, quoted names, the node properties promoted
//! from a document for pushdown, and where clauses as Cypher pre-filters.
//!
//! Every key and value reaches FalkorDB as a parameter in the `CYPHER name=value`
//! header, encoded by the `falkordb` crate's server-verified literal encoder; the
//! query body only ever holds fixed text, `$p0`-style placeholders, and names quoted
//! by [`quote_name`].
//!
//! # Pushdown by pre-filter
//! A where clause runs in Cypher as a *pre-filter*: a condition that keeps every node
//! the reference evaluator would keep (and usually few others). The evaluator then
//! re-checks the surviving entries, orders, pages and projects them. This makes the
//! answer the evaluator's by construction, whatever Cypher's three-valued logic or
//! type rules would say, while the graph still does the bulk of the filtering.
//!
//! The pre-filter is exact on *promoted* properties: scalars FalkorDB represents
//! faithfully (strings without NUL of at most [`MAX_PROMOTED_STRING`] bytes, integers
//! within ±2^53 so that comparisons with floats stay exact, finite floats, booleans),
//! stored as `` n.`.path` ``. Every other present value (arrays, nulls, larger
//! integers, strings with NUL, longer strings) is listed by path in the node's `_o1`,
//! `_o2` and `_o` ("opaque") properties, and a node with an opaque value on a clause's
//! path always passes that clause's pre-filter. Under `not` the polarity
//! flips: the inner clause must then keep *only* matching nodes, so opaque nodes are
//! excluded instead.

use std::fmt::Write as _;

use falkordb::{FalkorValue, IntoFalkorParam, to_cypher_param};
use serde_json::Value;
use storage_core::query::FieldPath;
use storage_core::{Document, ErrorCode, Filter, Operator, Result, StorageError};

use crate::error::BACKEND;

/// Node property holding the entry's key in lowercase hex: the key index covers it,
/// and reads decode it (lowercase hex orders as the key's bytes do, so `ORDER BY` on
/// it is key order).
///
/// FalkorDB's range index does not match strings exactly: it trims leading and
/// trailing whitespace (a lookup of `"a"` also returns `" a"`, one of `" a"` returns
/// nothing, and `"   "` cannot be found at all). Hex digits have nothing to trim.
/// Nodes of earlier builds also hold the key itself in `key`, which nothing reads.
pub(crate) const KEY_INDEX_PROP: &str = "kh";
/// Node property holding the encoded value.
pub(crate) const VALUE_PROP: &str = "v";
/// Node property listing the paths of values that are present but not promoted, each
/// as a [`path_tag`], beyond the first ones (which go in [`OPAQUE_SLOTS`]).
pub(crate) const OPAQUE_PROP: &str = "_o";
/// Node properties holding the paths of the first values that are present but not
/// promoted, one each, as a [`path_id`] (nodes of earlier builds: a [`path_tag`]
/// string, which queries still match). Most documents with such values have one or
/// two (an array field, a long text), and FalkorDB creates and indexes a scalar
/// several times faster than a list, and a number faster than a string. Each is
/// indexed, like `_o`.
pub(crate) const OPAQUE_SLOTS: [&str; 2] = ["_o1", "_o2"];

/// The number a slot (see [`OPAQUE_SLOTS`]) holds for a path: its 64-bit FNV-1a hash
/// folded to 52 bits (exact as a float too, which FalkorDB's index may compare
/// through). Two paths may share one; a node then looks opaque on a path where it is
/// not, which only widens a pre-filter (opaque nodes are kept for the evaluator to
/// decide on, and excluded under `not` from the inner clause, whose negation keeps
/// them): it never loses an entry.
pub(crate) fn path_id(path: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (hash ^ (hash >> 52)) & ((1 << 52) - 1);
    // Below 2^52: always fits.
    i64::try_from(folded).unwrap_or_default()
}

/// What a slot or `_o` may hold for any of `paths`, as one list for `IN`: each path's
/// [`path_tag`] (in `_o`, and in the slots of earlier builds' nodes) and [`path_id`].
pub(crate) fn opaque_markers<S: AsRef<str>>(paths: &[S]) -> FalkorValue {
    let mut out = Vec::with_capacity(paths.len() * 2);
    for path in paths {
        out.push(FalkorValue::String(path_tag(path.as_ref())));
        out.push(FalkorValue::I64(path_id(path.as_ref())));
    }
    FalkorValue::Array(out)
}

/// Splits a node's opaque path tags into the [`OPAQUE_SLOTS`] and the rest, for `_o`.
pub(crate) fn split_opaque<S: AsRef<str>>(tags: &[S]) -> ([Option<&str>; 2], &[S]) {
    let slots = [
        tags.first().map(AsRef::as_ref),
        tags.get(1).map(AsRef::as_ref),
    ];
    (slots, tags.get(OPAQUE_SLOTS.len()..).unwrap_or_default())
}

/// A Cypher test that node `n` lists one of the tags of list `tags` (a placeholder) as
/// opaque, for a filter (never an error, whatever the node holds).
pub(crate) fn opaque_test(tags: &str) -> String {
    let mut out = String::from("(");
    for slot in OPAQUE_SLOTS {
        let _ = write!(out, "coalesce(n.{slot} IN {tags}, false) OR ");
    }
    let _ = write!(
        out,
        "any(x IN coalesce(n.{OPAQUE_PROP}, []) WHERE x IN {tags}))"
    );
    out
}

/// Node property listing the paths (below the root) that hold an object. Filters see an
/// object like a missing value, but `order_by` does not (objects sort after strings),
/// so an ordered query treats a node with an object on an order path in process. Each
/// path is a [`path_tag`].
pub(crate) const OBJECT_PROP: &str = "_x";

/// A path as listed in `_o1`, `_o2`, `_o` and `_x`: `h` and the path's bytes in hex.
/// Those properties are indexed, and FalkorDB's index does not match strings exactly (it trims whitespace,
/// and cannot find `""`, the root's path); hex digits after a letter it matches as
/// they are.
pub(crate) fn path_tag(path: &str) -> String {
    let mut out = String::with_capacity(1 + path.len() * 2);
    out.push('h');
    push_key_hex(&mut out, path);
    out
}
/// Strings longer than this (in bytes) are not promoted. A long string is a text, found
/// by its words (which the evaluator does in process) far more often than compared
/// whole, and a copy in a property doubles what every write of it costs: FalkorDB
/// parses it twice (the value and the property) and stores it twice. Queries that
/// compare such a string whole still return the right entries: its node lists the path
/// as opaque, so the evaluator decides for it.
pub(crate) const MAX_PROMOTED_STRING: usize = 128;
/// Integers beyond this magnitude are not promoted: FalkorDB compares them with
/// floats through a double, which would be inexact.
const EXACT_INT: i64 = 1 << 53;

/// A Cypher query: parameters and a body that holds no data.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cypher {
    header: String,
    body: String,
    next: usize,
}

impl Cypher {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter and returns its placeholder (`$p3`).
    pub(crate) fn param<V: IntoFalkorParam + ?Sized>(&mut self, value: &V) -> Result<String> {
        let literal = to_cypher_param(value).map_err(|e| {
            StorageError::new(
                ErrorCode::InvalidValue,
                format!("value cannot be sent to falkordb: {e}"),
            )
            .with_backend(BACKEND)
        })?;
        let name = format!("p{}", self.next);
        self.next += 1;
        if self.header.is_empty() {
            self.header.push_str("CYPHER ");
        }
        let _ = write!(self.header, "{name}={literal} ");
        Ok(format!("${name}"))
    }

    /// Adds a parameter given as a Cypher literal and returns its placeholder.
    ///
    /// Only for literals assembled from [`write_literal`] pieces and names that passed
    /// [`quote_name`]'s rules (the row maps of a write, built without the
    /// intermediate maps `param` would need).
    pub(crate) fn param_literal(&mut self, literal: &str) -> String {
        let name = format!("p{}", self.next);
        self.next += 1;
        if self.header.is_empty() {
            self.header.push_str("CYPHER ");
        }
        let _ = write!(self.header, "{name}={literal} ");
        format!("${name}")
    }

    /// Adds a parameter whose Cypher literal `write` appends to the header in place,
    /// and returns its placeholder. `reserve` is the literal's expected size: a batch's
    /// rows are megabytes, written once where they are sent from instead of being built
    /// apart and copied in.
    ///
    /// `write` must append only a literal built from [`write_literal`] and
    /// [`write_str_literal`] pieces and names that passed [`quote_name`]'s rules; on an
    /// error the header is left as it was.
    pub(crate) fn param_with(
        &mut self,
        reserve: usize,
        write: impl FnOnce(&mut String) -> Result<()>,
    ) -> Result<String> {
        let start = self.header.len();
        let name = format!("p{}", self.next);
        self.header.reserve(reserve + name.len() + 16);
        if self.header.is_empty() {
            self.header.push_str("CYPHER ");
        }
        let _ = write!(self.header, "{name}=");
        if let Err(e) = write(&mut self.header) {
            self.header.truncate(start);
            return Err(e);
        }
        self.header.push(' ');
        self.next += 1;
        Ok(format!("${name}"))
    }

    /// Reserves room for `additional` more bytes of parameters.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.header.reserve(additional);
    }

    /// Appends fixed text to the body.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.body.push_str(text);
        self
    }

    /// The full query text, without copying the header (which holds the data).
    pub(crate) fn into_text(mut self) -> String {
        self.header.push_str(&self.body);
        self.header
    }

    /// The full query text: header then body.
    pub(crate) fn text(&self) -> String {
        let mut out = String::with_capacity(self.header.len() + self.body.len());
        out.push_str(&self.header);
        out.push_str(&self.body);
        out
    }

    /// The body alone (for explain output: the data stays out of plans and logs).
    pub(crate) fn body(&self) -> &str {
        &self.body
    }
}

/// The key as lowercase hex of its UTF-8 bytes (see [`KEY_INDEX_PROP`]).
pub(crate) fn key_hex(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    push_key_hex(&mut out, key);
    out
}

/// The key whose [`key_hex`] is `hex`; `None` for anything else.
pub(crate) fn key_from_hex(hex: &str) -> Option<String> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let raw = bytes
        .chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(raw).ok()
}

/// Appends [`key_hex`] of `key` to `out`.
pub(crate) fn push_key_hex(out: &mut String, key: &str) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(key.len() * 2);
    for b in key.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// Appends one value as a Cypher literal to `out`, by the `falkordb` crate's encoder
/// (without a string per value: a batch writes tens of thousands of them).
pub(crate) fn write_literal<V: IntoFalkorParam + ?Sized>(
    out: &mut String,
    value: &V,
) -> Result<()> {
    let start = out.len();
    value.encode_param(out).map_err(|e| {
        out.truncate(start);
        StorageError::new(
            ErrorCode::InvalidValue,
            format!("value cannot be sent to falkordb: {e}"),
        )
        .with_backend(BACKEND)
    })
}

/// Appends strings as a list literal, or `null` when there are none: `CREATE` skips a
/// `null` property and `SET n = {…}` or `SET n.p = null` removes it (path tags, unique
/// index terms).
pub(crate) fn write_str_list(out: &mut String, items: &[String]) -> Result<()> {
    if items.is_empty() {
        out.push_str("null");
        return Ok(());
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str_literal(out, item)?;
    }
    out.push(']');
    Ok(())
}

/// Appends a string as a Cypher literal to `out`: the same text as the `falkordb`
/// crate's encoder (a test compares them on arbitrary strings), written a run of
/// plain bytes at a time instead of a char at a time, which matters for the encoded
/// values of a large batch (megabytes of text).
pub(crate) fn write_str_literal(out: &mut String, s: &str) -> Result<()> {
    /// The bytes the encoder escapes (or rejects, NUL), looked up instead of matched:
    /// the scan over a batch's values is the hottest loop of a write.
    const SPECIAL: [bool; 256] = {
        let mut table = [false; 256];
        let mut i = 0;
        while i < 256 {
            // Backslash, quote, \n, \r, \t, \b, \f and NUL.
            table[i] = matches!(i, 0x5C | 0x27 | 0x0A | 0x0D | 0x09 | 0x08 | 0x0C | 0);
            i += 1;
        }
        table
    };
    let start = out.len();
    out.reserve(s.len() + 2);
    out.push('\'');
    let bytes = s.as_bytes();
    let mut plain = 0;
    while let Some(offset) = bytes[plain..].iter().position(|&b| SPECIAL[usize::from(b)]) {
        let i = plain + offset;
        // All of these are ASCII, so `i` is always on a char boundary.
        let escape = match bytes[i] {
            b'\\' => "\\\\",
            b'\'' => "\\'",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0C => "\\f",
            _ => {
                out.truncate(start);
                return Err(StorageError::new(
                    ErrorCode::InvalidValue,
                    "value cannot be sent to falkordb: string contains a NUL byte",
                )
                .with_backend(BACKEND));
            }
        };
        out.push_str(&s[plain..i]);
        out.push_str(escape);
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('\'');
    Ok(())
}

/// Quotes a label, relationship type or property name in backticks.
///
/// FalkorDB reads everything inside backticks literally but rejects the doubled-backtick
/// escape, so a name containing a backtick (or NUL, or nothing) cannot be written and
/// yields `None`: the clause that needed it is evaluated in process instead.
pub(crate) fn quote_name(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('`') || name.contains('\0') {
        return None;
    }
    Some(format!("`{name}`"))
}

/// The property a field path is promoted to.
pub(crate) fn promoted_name(path: &str) -> String {
    format!(".{path}")
}

/// A leaf of a document as the graph stores it for pushdown: a scalar FalkorDB
/// represents faithfully, promoted to a property, or an opaque value listed by path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Leaf<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Present but not promoted (arrays, nulls, larger integers, strings with NUL).
    Opaque,
    /// An object (below the root), visited before its fields: listed in `_x`.
    Object,
}

impl Leaf<'_> {
    /// Appends the promoted value as a Cypher literal (`Opaque` has none).
    pub(crate) fn write(self, out: &mut String) -> Result<()> {
        match self {
            Leaf::Str(s) => write_str_literal(out, s),
            Leaf::Bool(b) => write_literal(out, &b),
            Leaf::Int(i) => write_literal(out, &i),
            Leaf::Float(f) => write_literal(out, &f),
            Leaf::Opaque | Leaf::Object => Err(StorageError::new(
                ErrorCode::InvalidValue,
                "an opaque value or object has no promoted literal",
            )
            .with_backend(BACKEND)),
        }
    }
}

/// Calls `f(name, leaf)` for every leaf of a document (see the module docs), where
/// `name` is the promoted property name `.path` (the path is `&name[1..]`), in the
/// order of the document's fields. Each name comes once: object keys are unique, and
/// a path through a key that holds a dot is never visited.
///
/// One path buffer serves the whole walk, so a document costs no allocation here (a
/// batch walks tens of thousands of them).
pub(crate) fn visit_leaves<'d>(doc: &'d Document, f: &mut impl FnMut(&str, Leaf<'d>)) {
    let mut name = String::from(".");
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                if nameable(k) {
                    name.push_str(k);
                    walk(&mut name, v, f);
                    name.truncate(1);
                }
            }
        }
        // Paths address the fields of objects; an array at the root is indexed by
        // numeric segments the pre-filter does not model, so it is opaque as a whole.
        Value::Array(_) => f(".", Leaf::Opaque),
        _ => {}
    }
}

/// Whether an object key can be part of a promoted property name. A key with a dot or
/// NUL, or an empty key, can never be named by a field path (paths split on dots and
/// reject NUL and empty segments); a backtick cannot appear in a FalkorDB name at all,
/// so a path through it is evaluated in process and its value needs no property.
pub(crate) fn nameable(k: &str) -> bool {
    !(k.is_empty() || k.contains(['.', '\0', '`']))
}

/// The leaf of an integer (`None`: beyond `i64`): promoted within ±2^53, opaque beyond.
pub(crate) fn leaf_of_int(i: Option<i64>) -> Leaf<'static> {
    match i {
        Some(i) if (-EXACT_INT..=EXACT_INT).contains(&i) => Leaf::Int(i),
        _ => Leaf::Opaque,
    }
}

/// The leaf of a float: promoted when finite.
pub(crate) fn leaf_of_float(x: f64) -> Leaf<'static> {
    if x.is_finite() {
        Leaf::Float(x)
    } else {
        Leaf::Opaque
    }
}

fn walk<'d>(name: &mut String, value: &'d Value, f: &mut impl FnMut(&str, Leaf<'d>)) {
    match value {
        Value::Object(map) => {
            f(name, Leaf::Object);
            let len = name.len();
            for (k, v) in map {
                if nameable(k) {
                    name.push('.');
                    name.push_str(k);
                    walk(name, v, f);
                    name.truncate(len);
                }
            }
        }
        Value::String(s) if s.len() <= MAX_PROMOTED_STRING && !s.contains('\0') => {
            f(name, Leaf::Str(s));
        }
        Value::Bool(b) => f(name, Leaf::Bool(*b)),
        Value::Number(n) => {
            let leaf = if n.is_i64() || n.is_u64() {
                leaf_of_int(n.as_i64())
            } else {
                n.as_f64().map_or(Leaf::Opaque, leaf_of_float)
            };
            f(name, leaf);
        }
        _ => f(name, Leaf::Opaque),
    }
}

/// A scalar operand FalkorDB compares exactly like the evaluator: a string without
/// NUL, an integer within ±2^53, a finite float, a boolean.
fn exact_scalar(value: &Value) -> Option<FalkorValue> {
    match value {
        Value::String(s) if !s.contains('\0') => Some(FalkorValue::String(s.clone())),
        Value::Bool(b) => Some(FalkorValue::Bool(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                (-EXACT_INT..=EXACT_INT)
                    .contains(&i)
                    .then_some(FalkorValue::I64(i))
            } else if n.is_u64() {
                None
            } else {
                n.as_f64().filter(|f| f.is_finite()).map(FalkorValue::F64)
            }
        }
        _ => None,
    }
}

/// A where clause translated to a Cypher pre-filter over node `n`.
#[derive(Debug)]
pub(crate) struct PreFilter {
    /// The boolean expression (`true` when nothing could be pushed).
    pub(crate) expr: String,
    /// The same without the opaque-value checks: exact, when `complete`, on nodes
    /// without opaque values on the filter's paths (and cheaper to evaluate).
    pub(crate) exact: String,
    /// Descriptions of the clauses that run in Cypher.
    pub(crate) pushed: Vec<String>,
    /// Descriptions of the clauses that only run in process.
    pub(crate) in_process: Vec<String>,
    /// Whether every clause was pushed.
    pub(crate) complete: bool,
}

/// Translates a filter into a pre-filter over `n`, adding parameters to `q`.
pub(crate) fn pre_filter(filter: &Filter, q: &mut Cypher) -> Result<PreFilter> {
    let mut out = PreFilter {
        expr: String::new(),
        exact: String::new(),
        pushed: Vec::new(),
        in_process: Vec::new(),
        complete: true,
    };
    (out.expr, out.exact) = translate(filter, true, q, &mut out)?;
    Ok(out)
}

/// `positive`: the result must keep every match (a superset); otherwise it must keep
/// only matches (a subset), which is what an enclosing `not` needs. Returns the
/// pre-filter and its exact form (see [`PreFilter::exact`]).
fn translate(
    filter: &Filter,
    positive: bool,
    q: &mut Cypher,
    out: &mut PreFilter,
) -> Result<(String, String)> {
    let fallback = if positive { "true" } else { "false" };
    match filter {
        Filter::And(parts) | Filter::Or(parts) => {
            let is_and = matches!(filter, Filter::And(_));
            if parts.is_empty() {
                let empty = if is_and { "true" } else { "false" };
                return Ok((empty.to_owned(), empty.to_owned()));
            }
            let (mut exprs, mut exacts) = (Vec::new(), Vec::new());
            for part in parts {
                let (expr, exact) = translate(part, positive, q, out)?;
                exprs.push(expr);
                exacts.push(exact);
            }
            let joiner = if is_and { " AND " } else { " OR " };
            Ok((
                format!("({})", exprs.join(joiner)),
                format!("({})", exacts.join(joiner)),
            ))
        }
        Filter::Not(inner) => {
            let (expr, exact) = translate(inner, !positive, q, out)?;
            Ok((format!("(NOT {expr})"), format!("(NOT {exact})")))
        }
        Filter::Nested { field, .. } => {
            out.complete = false;
            out.in_process.push(format!("nested condition on {field}"));
            Ok((fallback.to_owned(), fallback.to_owned()))
        }
        Filter::Condition { field, op, value } => {
            if let Some(pair) = condition(field, *op, value, positive, q)? {
                out.pushed.push(format!("{field} {op:?}"));
                Ok(pair)
            } else {
                out.complete = false;
                out.in_process.push(format!("{field} {op:?}"));
                Ok((fallback.to_owned(), fallback.to_owned()))
            }
        }
    }
}

fn condition(
    field: &str,
    op: Operator,
    value: &Value,
    positive: bool,
    q: &mut Cypher,
) -> Result<Option<(String, String)>> {
    // An invalid path is the evaluator's to reject (InvalidQuery), not ours to guess.
    let Ok(path) = FieldPath::parse(field) else {
        return Ok(None);
    };
    let Some(prop) = quote_name(&promoted_name(path.as_str())) else {
        return Ok(None);
    };
    let n = format!("n.{prop}");
    let exact = match op {
        Operator::Eq | Operator::Ne => {
            let Some(v) = exact_scalar(value) else {
                return Ok(None);
            };
            let p = q.param(&v)?;
            let eq = format!("coalesce({n} = {p}, false)");
            if op == Operator::Eq {
                eq
            } else {
                format!("(NOT {eq})")
            }
        }
        Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
            let Some(v) = exact_scalar(value) else {
                return Ok(None);
            };
            let sym = match op {
                Operator::Gt => ">",
                Operator::Gte => ">=",
                Operator::Lt => "<",
                _ => "<=",
            };
            // FalkorDB answers null across types, as the evaluator's brackets want;
            // booleans are compared among themselves by both.
            let p = q.param(&v)?;
            format!("coalesce({n} {sym} {p}, false)")
        }
        Operator::In | Operator::Nin => {
            let Value::Array(items) = value else {
                return Ok(None);
            };
            let Some(list) = items.iter().map(exact_scalar).collect::<Option<Vec<_>>>() else {
                return Ok(None);
            };
            let p = q.param(&FalkorValue::Array(list))?;
            let within = format!("coalesce({n} IN {p}, false)");
            if op == Operator::In {
                within
            } else {
                format!("(NOT {within})")
            }
        }
        Operator::Exists | Operator::Regex | Operator::Text | Operator::WithinBox => {
            return Ok(None);
        }
    };
    // Every prefix of the path (the root included): an opaque value at any of them
    // may hold what the clause looks for, in a shape the properties do not show.
    let segments = path.segments();
    let mut prefixes = vec![String::new()];
    for i in 1..=segments.len() {
        prefixes.push(segments[..i].join("."));
    }
    let pfx = q.param(&opaque_markers(&prefixes))?;
    let opaque = opaque_test(&pfx);
    let expr = if positive {
        format!("({exact} OR {opaque})")
    } else {
        format!("({exact} AND NOT {opaque})")
    };
    Ok(Some((expr, exact)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_parameters_never_body_text() -> Result<()> {
        let mut q = Cypher::new();
        let evil = "'}) MATCH (n) DETACH DELETE n //";
        let p = q.param(evil)?;
        q.push("MATCH (n {key: ").push(&p).push("}) RETURN n");
        assert!(!q.body().contains("DETACH"));
        assert!(q.text().starts_with("CYPHER p0='\\'}) MATCH"));
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn fast_string_literals_equal_the_falkordb_encoder(s in "(?s).{0,40}|[\\\\'\"\n\r\t\u{8}\u{c}a-z\u{e9}\u{1F600}]{0,40}") {
            let mut fast = String::new();
            let ours = write_str_literal(&mut fast, &s).map(|()| fast);
            match to_cypher_param(s.as_str()) {
                Ok(theirs) => proptest::prop_assert_eq!(ours.ok(), Some(theirs)),
                Err(_) => proptest::prop_assert!(ours.is_err()),
            }
        }
    }

    #[test]
    fn fast_string_literals_reject_nul() {
        let mut out = String::from("x");
        assert!(write_str_literal(&mut out, "a\0b").is_err());
        assert!(write_str_literal(&mut out, "it's \\ \u{8}").is_ok());
        assert_eq!(
            out,
            format!("x{}", to_cypher_param("it's \\ \u{8}").unwrap_or_default())
        );
    }

    #[test]
    fn opaque_paths_fill_the_slots_then_the_list() {
        let tags = ["h61", "h62", "h63", "h64"];
        assert_eq!(split_opaque(&tags[..0]), ([None, None], &tags[..0]));
        assert_eq!(split_opaque(&tags[..1]), ([Some("h61"), None], &tags[..0]));
        assert_eq!(
            split_opaque(&tags[..2]),
            ([Some("h61"), Some("h62")], &tags[..0])
        );
        assert_eq!(
            split_opaque(&tags),
            ([Some("h61"), Some("h62")], &tags[2..])
        );
        let test = opaque_test("$p");
        for prop in OPAQUE_SLOTS.iter().chain([&OPAQUE_PROP]) {
            assert!(test.contains(&format!("n.{prop}")), "{test}");
        }
    }

    #[test]
    fn path_ids_are_stable_52_bit_numbers() {
        // Stored in nodes: the function must never change.
        assert_eq!(path_id(""), 0x0002_9ce4_8422_2f9a);
        assert_eq!(path_id("tags"), 0x000c_3bef_076f_8811);
        for path in ["", "a", "tags", "body", "a.b.c", "\u{e9}"] {
            let id = path_id(path);
            assert!((0..1 << 52).contains(&id), "{path}");
            assert_eq!(id, path_id(path));
        }
        assert_ne!(path_id("tags"), path_id("body"));
        let FalkorValue::Array(markers) = opaque_markers(&["tags"]) else {
            panic!("not a list");
        };
        assert_eq!(
            markers,
            [
                FalkorValue::String(path_tag("tags")),
                FalkorValue::I64(path_id("tags"))
            ]
        );
    }

    #[test]
    fn hex_keys_decode_and_keep_byte_order() {
        let keys = ["", "a", " a ", "\u{e9}t\u{e9}", "\u{1F600}", "Z", "a\u{7f}"];
        for key in keys {
            assert_eq!(key_from_hex(&key_hex(key)).as_deref(), Some(key));
        }
        for a in keys {
            for b in keys {
                assert_eq!(a.as_bytes().cmp(b.as_bytes()), key_hex(a).cmp(&key_hex(b)));
            }
        }
        for bad in ["6", "6G", "C3", "ff", "6 "] {
            assert_eq!(key_from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_with_backticks_cannot_be_quoted() {
        assert_eq!(quote_name("a b").as_deref(), Some("`a b`"));
        assert_eq!(quote_name("a`b"), None);
        assert_eq!(quote_name(""), None);
    }

    #[test]
    fn only_faithful_scalars_are_promoted() {
        let doc = json!({
            "s": "x", "n": 5, "f": 1.5, "b": true, "nul": "a\u{0}b",
            "big": u64::MAX, "min": i64::MIN, "arr": [1], "null": null,
            "long": "x".repeat(MAX_PROMOTED_STRING + 1), "edge": "y".repeat(MAX_PROMOTED_STRING),
            "o": {"c": "d"}, "dot.ted": 1
        });
        let (mut props, mut opaque) = (Vec::new(), Vec::new());
        let mut objects = Vec::new();
        visit_leaves(&doc, &mut |name, leaf| match leaf {
            Leaf::Opaque => opaque.push(name[1..].to_owned()),
            Leaf::Object => objects.push(name[1..].to_owned()),
            _ => props.push((name.to_owned(), leaf)),
        });
        assert_eq!(objects, ["o"]);
        let names: Vec<&str> = props.iter().map(|(n, _)| n.as_str()).collect();
        for name in [".s", ".n", ".f", ".b", ".o.c", ".edge"] {
            assert!(names.contains(&name), "{name}");
        }
        assert!(props.contains(&(".o.c".to_owned(), Leaf::Str("d"))));
        assert!(props.contains(&(".f".to_owned(), Leaf::Float(1.5))));
        opaque.sort();
        assert_eq!(opaque, ["arr", "big", "long", "min", "nul", "null"]);
        assert!(!names.iter().any(|k| k.contains("dot")));
        let mut root = Vec::new();
        let array = json!([1, 2]);
        visit_leaves(&array, &mut |name, leaf| {
            root.push((name[1..].to_owned(), leaf));
        });
        assert_eq!(root, [(String::new(), Leaf::Opaque)]);
    }
}
