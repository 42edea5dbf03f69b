//! What only a graph can hold: typed relationships between entries.
//!
//! [`GraphExt`] links two entries of one store (one label) with a relationship of a
//! type (an identifier such as `FOLLOWS`) carrying a JSON object of properties, reads
//! neighbours by type and direction, and walks bounded traversals. Relationships go
//! with their entries: deleting or clearing an entry removes its relationships
//! (`DETACH DELETE`). Properties are stored as JSON text on the relationship, so they
//! round-trip exactly (large integers and NUL bytes included).
//!
//! Relationship writes bump the graph's write version, so open transactions that read
//! the graph see them as conflicting writes; they are not entry changes and do not go
//! into the change stream.

use async_trait::async_trait;
use redis::Value;
use serde_json::Value as Json;
use storage_core::{Document, ErrorCode, Result, StorageError, StorageValue, validate_key};

use crate::backend::{GraphStorage, cell_int, cell_key, cell_str, rows_of};
use crate::config::is_identifier;
use crate::cypher::{Cypher, KEY_INDEX_PROP, key_hex};
use crate::error::{BACKEND, corrupt, redis_err, reply_err};

/// The deepest traversal [`GraphExt::traverse`] accepts.
pub const MAX_TRAVERSAL_DEPTH: u32 = 16;

/// Which way relationships are followed from an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EdgeDirection {
    /// From the entry to others (`(a)-[r]->(b)`).
    #[default]
    Outgoing,
    /// From others to the entry (`(a)<-[r]-(b)`).
    Incoming,
    /// Either way.
    Both,
}

impl EdgeDirection {
    fn arrows(self) -> (&'static str, &'static str) {
        match self {
            Self::Outgoing => ("-", "->"),
            Self::Incoming => ("<-", "-"),
            Self::Both => ("-", "-"),
        }
    }
}

/// One neighbour of an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    /// The neighbour's key.
    pub key: String,
    /// The relationship's type.
    pub relation: String,
    /// Whether the relationship points from the entry to the neighbour.
    pub outgoing: bool,
    /// The relationship's properties (an object, empty when none were given).
    pub properties: Document,
}

/// Relationships between the entries of a [`GraphStorage`].
///
/// # Example
/// ```
/// use serde_json::json;
/// use storage_core::Storage;
/// use storage_graph::{EdgeDirection, GraphConfig, GraphExt, GraphStorage};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // No url: the adapter starts (and later stops) its own FalkorDB server.
/// let people = GraphStorage::<String>::open(GraphConfig::default()).await?;
/// for name in ["ada", "bob", "cy"] {
///     people.set(name, &name.to_uppercase()).await?;
/// }
/// people.link("ada", "FOLLOWS", "bob", json!({"since": 2021})).await?;
/// people.link("bob", "FOLLOWS", "cy", json!({})).await?;
///
/// let followed = people.neighbours("ada", Some("FOLLOWS"), EdgeDirection::Outgoing).await?;
/// assert_eq!(followed[0].key, "bob");
/// assert_eq!(followed[0].properties, json!({"since": 2021}));
///
/// // Everyone ada reaches in at most two hops, with the hop count.
/// let reach = people.traverse("ada", Some("FOLLOWS"), EdgeDirection::Outgoing, 2).await?;
/// assert_eq!(reach, vec![("bob".to_owned(), 1), ("cy".to_owned(), 2)]);
///
/// // Relationships go with their entries.
/// people.delete("bob").await?;
/// assert!(people.neighbours("ada", None, EdgeDirection::Both).await?.is_empty());
/// # Ok::<(), storage_core::StorageError>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait GraphExt {
    /// Links `from` to `to` with a relationship of type `relation` carrying
    /// `properties` (a JSON object); linking again replaces the properties.
    ///
    /// # Errors
    /// `InvalidKey`; `InvalidQuery` for a type that is not an identifier;
    /// `InvalidValue` when `properties` is not an object; `KeyNotFound` when either
    /// entry is missing; backend errors.
    async fn link(&self, from: &str, relation: &str, to: &str, properties: Document) -> Result<()>;

    /// Removes the relationship of type `relation` from `from` to `to`; `Ok(false)` when
    /// there was none.
    ///
    /// # Errors
    /// `InvalidKey`, `InvalidQuery`; backend errors.
    async fn unlink(&self, from: &str, relation: &str, to: &str) -> Result<bool>;

    /// The entries related to `key` by relationships of type `relation` (any type when
    /// `None`) in `direction`, ordered by key bytes, then type.
    ///
    /// # Errors
    /// `InvalidKey`, `InvalidQuery`; `Corrupted` for unreadable properties; backend errors.
    async fn neighbours(
        &self,
        key: &str,
        relation: Option<&str>,
        direction: EdgeDirection,
    ) -> Result<Vec<Neighbour>>;

    /// Every entry reachable from `start` in 1 to `max_depth` hops over relationships of
    /// type `relation` (any when `None`) in `direction`, with its smallest hop count,
    /// ordered by hops then key bytes; `start` itself is left out.
    ///
    /// # Errors
    /// `InvalidKey`, `InvalidQuery` (bad type, `max_depth` above
    /// [`MAX_TRAVERSAL_DEPTH`]); backend errors.
    async fn traverse(
        &self,
        start: &str,
        relation: Option<&str>,
        direction: EdgeDirection,
        max_depth: u32,
    ) -> Result<Vec<(String, u32)>>;
}

fn relation_pattern(relation: Option<&str>) -> Result<String> {
    match relation {
        None => Ok(String::new()),
        Some(r) if is_identifier(r) && r.len() <= 128 => Ok(format!(":`{r}`")),
        Some(r) => Err(StorageError::new(
            ErrorCode::InvalidQuery,
            "a relationship type is an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 128 bytes)",
        )
        .with_backend(BACKEND)
        .with_context("relation", r.escape_debug())),
    }
}

fn checked_key(key: &str, operation: &'static str) -> Result<()> {
    validate_key(key).map_err(|e| e.with_operation(operation).with_backend(BACKEND))
}

impl<T: StorageValue> GraphStorage<T> {
    /// Runs a relationship write with a bump of the write version, in one `MULTI`/`EXEC`.
    async fn relationship_write(
        &self,
        q: &Cypher,
        operation: &'static str,
    ) -> Result<Vec<Vec<Value>>> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GRAPH.QUERY")
            .arg(&self.inner.graph)
            .arg(q.text())
            .cmd("INCR")
            .arg(&self.inner.version_key)
            .ignore();
        let (reply,): (Value,) = pipe
            .query_async(&mut self.inner.shared())
            .await
            .map_err(redis_err(operation))?;
        rows_of(reply, operation)
    }
}

#[async_trait]
impl<T: StorageValue> GraphExt for GraphStorage<T> {
    async fn link(&self, from: &str, relation: &str, to: &str, properties: Document) -> Result<()> {
        checked_key(from, "link")?;
        checked_key(to, "link")?;
        let rel = relation_pattern(Some(relation))?;
        if !properties.is_object() {
            return Err(StorageError::new(
                ErrorCode::InvalidValue,
                "relationship properties are a json object",
            )
            .with_backend(BACKEND));
        }
        let text = serde_json::to_string(&properties).map_err(|e| {
            StorageError::new(ErrorCode::InvalidValue, e.to_string()).with_backend(BACKEND)
        })?;
        let label = &self.inner.label;
        let mut q = Cypher::new();
        let a = q.param(&key_hex(from))?;
        let b = q.param(&key_hex(to))?;
        let p = q.param(&text)?;
        q.push(&format!(
            "MATCH (a:{label} {{{KEY_INDEX_PROP}: {a}}}), (b:{label} {{{KEY_INDEX_PROP}: {b}}}) \
             MERGE (a)-[r{rel}]->(b) SET r.p = {p} RETURN count(r)"
        ));
        let rows = self.relationship_write(&q, "link").await?;
        let linked = rows
            .first()
            .and_then(|r| r.first())
            .and_then(cell_int)
            .unwrap_or(0);
        if linked == 0 {
            return Err(StorageError::new(
                ErrorCode::KeyNotFound,
                "both entries must exist to be linked",
            )
            .with_operation("link")
            .with_backend(BACKEND)
            .with_context("from", from.escape_debug())
            .with_context("to", to.escape_debug()));
        }
        Ok(())
    }

    async fn unlink(&self, from: &str, relation: &str, to: &str) -> Result<bool> {
        checked_key(from, "unlink")?;
        checked_key(to, "unlink")?;
        let rel = relation_pattern(Some(relation))?;
        let label = &self.inner.label;
        let mut q = Cypher::new();
        let a = q.param(&key_hex(from))?;
        let b = q.param(&key_hex(to))?;
        q.push(&format!(
            "MATCH (:{label} {{{KEY_INDEX_PROP}: {a}}})-[r{rel}]->(:{label} {{{KEY_INDEX_PROP}: {b}}}) \
             DELETE r RETURN count(r)"
        ));
        let rows = self.relationship_write(&q, "unlink").await?;
        let removed = rows
            .first()
            .and_then(|r| r.first())
            .and_then(cell_int)
            .unwrap_or(0);
        Ok(removed > 0)
    }

    async fn neighbours(
        &self,
        key: &str,
        relation: Option<&str>,
        direction: EdgeDirection,
    ) -> Result<Vec<Neighbour>> {
        checked_key(key, "neighbours")?;
        let rel = relation_pattern(relation)?;
        let (left, right) = direction.arrows();
        let label = &self.inner.label;
        let mut q = Cypher::new();
        let a = q.param(&key_hex(key))?;
        q.push(&format!(
            "MATCH (a:{label} {{{KEY_INDEX_PROP}: {a}}}){left}[r{rel}]{right}(b:{label}) \
             RETURN b.{KEY_INDEX_PROP}, type(r), r.p, startNode(r) = a"
        ));
        let rows = self
            .inner
            .read(&mut self.inner.shared(), &q, "neighbours")
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (Some(key), Some(relation)) = (
                row.first().and_then(cell_key),
                row.get(1).and_then(cell_str),
            ) else {
                return Err(reply_err(
                    "neighbours",
                    "relationship row without key or type",
                ));
            };
            let properties = match row.get(2).and_then(cell_str) {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| corrupt("neighbours", format!("relationship properties: {e}")))?,
                None => Json::Object(serde_json::Map::new()),
            };
            let outgoing = row.get(3).and_then(cell_str).as_deref() == Some("true");
            out.push(Neighbour {
                key,
                relation,
                outgoing,
                properties,
            });
        }
        out.sort_by(|x, y| {
            x.key
                .as_bytes()
                .cmp(y.key.as_bytes())
                .then_with(|| x.relation.cmp(&y.relation))
                .then_with(|| y.outgoing.cmp(&x.outgoing))
        });
        Ok(out)
    }

    async fn traverse(
        &self,
        start: &str,
        relation: Option<&str>,
        direction: EdgeDirection,
        max_depth: u32,
    ) -> Result<Vec<(String, u32)>> {
        checked_key(start, "traverse")?;
        let rel = relation_pattern(relation)?;
        if max_depth > MAX_TRAVERSAL_DEPTH {
            return Err(StorageError::new(
                ErrorCode::InvalidQuery,
                format!("max_depth is at most {MAX_TRAVERSAL_DEPTH}"),
            )
            .with_backend(BACKEND));
        }
        if max_depth == 0 {
            return Ok(Vec::new());
        }
        let (left, right) = direction.arrows();
        let label = &self.inner.label;
        let mut q = Cypher::new();
        let a = q.param(&key_hex(start))?;
        // The depth is a validated small integer, so it may sit in the body.
        q.push(&format!(
            "MATCH p = (a:{label} {{{KEY_INDEX_PROP}: {a}}}){left}[{rel}*1..{max_depth}]{right}(b:{label}) \
             WHERE b <> a RETURN b.{KEY_INDEX_PROP}, min(length(p))"
        ));
        let rows = self
            .inner
            .read(&mut self.inner.shared(), &q, "traverse")
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let key = row
                .first()
                .and_then(cell_key)
                .ok_or_else(|| reply_err("traverse", "row without key"))?;
            let hops = row
                .get(1)
                .and_then(cell_int)
                .and_then(|h| u32::try_from(h).ok())
                .ok_or_else(|| reply_err("traverse", "row without hop count"))?;
            out.push((key, hops));
        }
        out.sort_by(|x, y| {
            x.1.cmp(&y.1)
                .then_with(|| x.0.as_bytes().cmp(y.0.as_bytes()))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relationship_types_must_be_identifiers() {
        assert_eq!(
            relation_pattern(Some("FOLLOWS")).ok().as_deref(),
            Some(":`FOLLOWS`")
        );
        assert_eq!(relation_pattern(None).ok().as_deref(), Some(""));
        for bad in ["", "a b", "X`]->() DETACH DELETE n //", "1x"] {
            assert_eq!(
                relation_pattern(Some(bad)).map_err(|e| e.code()),
                Err(ErrorCode::InvalidQuery),
                "{bad}"
            );
        }
    }
}
