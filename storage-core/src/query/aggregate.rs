//! The aggregate pipeline.

use crate::error::Result;
use crate::query::{Filter, OrderBy};
use crate::types::Document;

/// An accumulator of a group stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Accumulator {
    /// Number of documents in the group.
    Count,
    /// Sum of the numeric values at the path.
    Sum(String),
    /// Mean of the numeric values at the path (`null` when there are none).
    Avg(String),
    /// Smallest present, non-null value at the path in the total order.
    Min(String),
    /// Largest present, non-null value at the path in the total order.
    Max(String),
}

/// One stage of an aggregate pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateStage {
    /// Keep documents matching the filter.
    Match(Filter),
    /// Group by the value at a path (all documents in one group with `None`), output
    /// `{"_id": key, name: accumulated, …}` ordered by `_id`.
    Group {
        /// Grouping path.
        by: Option<String>,
        /// Output fields.
        accumulators: Vec<(String, Accumulator)>,
    },
    /// Sort (ties keep their previous order).
    Sort(Vec<OrderBy>),
    /// Skip documents.
    Skip(u64),
    /// Keep at most this many documents.
    Limit(u64),
    /// Keep only these paths.
    Project(Vec<String>),
}

/// Runs a pipeline over documents given in key order.
///
/// # Errors
/// `InvalidQuery`.
pub fn aggregate<'a, I>(pipeline: &[AggregateStage], docs: I) -> Result<Vec<Document>>
where
    I: IntoIterator<Item = &'a Document>,
{
    let _ = (pipeline, docs.into_iter());
    todo!("query helper")
}
