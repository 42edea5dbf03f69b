//! The reference evaluator.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::query::{Filter, Query};
use crate::types::Document;

/// A filter with its paths parsed and regular expressions compiled.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    _private: (),
}

impl CompiledFilter {
    /// Compiles a filter.
    ///
    /// # Errors
    /// `InvalidQuery` for a bad path, a bad or oversized regex, or an operand of the wrong type.
    pub fn compile(filter: &Filter) -> Result<Self> {
        let _ = filter;
        todo!("query helper")
    }

    /// Whether the document matches.
    pub fn matches(&self, doc: &Document) -> bool {
        let _ = doc;
        todo!("query helper")
    }

    /// The relevance score of the document's full-text clauses, if the filter has any.
    pub fn score(&self, doc: &Document) -> Option<f64> {
        let _ = doc;
        todo!("query helper")
    }
}

/// A query compiled for repeated evaluation.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    _private: (),
}

impl CompiledQuery {
    /// Compiles a query.
    ///
    /// # Errors
    /// `InvalidQuery`.
    pub fn compile(query: &Query) -> Result<Self> {
        let _ = query;
        todo!("query helper")
    }

    /// Whether the document passes the filter.
    pub fn matches(&self, doc: &Document) -> bool {
        let _ = doc;
        todo!("query helper")
    }

    /// Filters, orders, pages and projects `entries`.
    pub fn run<'a, I>(&self, entries: I) -> Vec<Match>
    where
        I: IntoIterator<Item = (&'a str, &'a Document)>,
    {
        let _ = entries.into_iter();
        todo!("query helper")
    }

    /// Counts the entries passing the filter (no paging).
    pub fn count<'a, I>(&self, entries: I) -> u64
    where
        I: IntoIterator<Item = (&'a str, &'a Document)>,
    {
        let _ = entries.into_iter();
        todo!("query helper")
    }
}

/// One result of the evaluator.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The key.
    pub key: String,
    /// Relevance score (full-text queries).
    pub score: Option<f64>,
    /// With `select`: the selected paths present in the document.
    pub projection: Option<BTreeMap<String, Document>>,
}

/// Runs `query` over `entries` (in any order): the specification of every adapter's answer.
///
/// # Errors
/// `InvalidQuery`.
pub fn evaluate<'a, I>(query: &Query, entries: I) -> Result<Vec<Match>>
where
    I: IntoIterator<Item = (&'a str, &'a Document)>,
{
    Ok(CompiledQuery::compile(query)?.run(entries))
}

/// Counts the entries matching `query`'s filter.
///
/// # Errors
/// `InvalidQuery`.
pub fn count<'a, I>(query: &Query, entries: I) -> Result<u64>
where
    I: IntoIterator<Item = (&'a str, &'a Document)>,
{
    Ok(CompiledQuery::compile(query)?.count(entries))
}
