//! Model-based checks: random operation sequences on the store and on a `BTreeMap`,
//! compared after every step.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;
use storage_core::{
    BatchResult, BatchStorage, ErrorCode, Operation, Storage, StorageError, validate_key,
};

use crate::check::{CheckResult, Context, Failure, expect_error};
use crate::harness::{BatchHarness, StorageHarness, open};
use crate::prop::{Regressions, run_async};
use crate::support::snapshot;
use crate::values::{bad_key_strategy, key_strategy, value_strategy};

/// One step of a storage-tier sequence.
#[derive(Debug, Clone)]
pub enum StorageOp {
    /// `get`.
    Get(String),
    /// `set`.
    Set(String, Value),
    /// `delete`.
    Delete(String),
    /// `has`.
    Has(String),
    /// `clear`.
    Clear,
    /// `size`.
    Size,
    /// `keys()`.
    Keys,
}

/// One step of a batch-tier sequence.
#[derive(Debug, Clone)]
pub enum BatchOp {
    /// A storage-tier step.
    Single(StorageOp),
    /// `get_many`.
    GetMany(Vec<String>),
    /// `set_many`.
    SetMany(Vec<(String, Value)>),
    /// `delete_many`.
    DeleteMany(Vec<String>),
    /// `batch`.
    Batch(Vec<Operation<Value>>),
}

fn maybe_bad_key() -> BoxedStrategy<String> {
    prop_oneof![19 => key_strategy(), 1 => bad_key_strategy()].boxed()
}

fn storage_op() -> BoxedStrategy<StorageOp> {
    prop_oneof![
        3 => maybe_bad_key().prop_map(StorageOp::Get),
        6 => (maybe_bad_key(), value_strategy()).prop_map(|(k, v)| StorageOp::Set(k, v)),
        3 => maybe_bad_key().prop_map(StorageOp::Delete),
        2 => maybe_bad_key().prop_map(StorageOp::Has),
        1 => Just(StorageOp::Clear),
        1 => Just(StorageOp::Size),
        1 => Just(StorageOp::Keys),
    ]
    .boxed()
}

fn operation() -> BoxedStrategy<Operation<Value>> {
    prop_oneof![
        6 => (key_strategy(), value_strategy()).prop_map(|(k, v)| Operation::set(k, v)),
        3 => key_strategy().prop_map(Operation::delete),
        1 => Just(Operation::Clear),
    ]
    .boxed()
}

/// A batch that holds a bad key somewhere in the middle: it must fail as a whole.
fn poisoned_batch() -> BoxedStrategy<Vec<Operation<Value>>> {
    (
        prop::collection::vec(operation(), 1..5),
        bad_key_strategy(),
        any::<bool>(),
        prop::collection::vec(operation(), 1..5),
    )
        .prop_map(|(mut head, bad, as_set, tail)| {
            head.push(if as_set {
                Operation::set(bad, Value::Null)
            } else {
                Operation::delete(bad)
            });
            head.extend(tail);
            head
        })
        .boxed()
}

fn batch_op() -> BoxedStrategy<BatchOp> {
    prop_oneof![
        4 => storage_op().prop_map(BatchOp::Single),
        2 => prop::collection::vec(maybe_bad_key(), 0..5).prop_map(BatchOp::GetMany),
        2 => prop::collection::vec((maybe_bad_key(), value_strategy()), 0..5).prop_map(BatchOp::SetMany),
        2 => prop::collection::vec(maybe_bad_key(), 0..5).prop_map(BatchOp::DeleteMany),
        3 => prop::collection::vec(operation(), 0..8).prop_map(BatchOp::Batch),
        2 => poisoned_batch().prop_map(BatchOp::Batch),
    ]
    .boxed()
}

fn valid(key: &str) -> bool {
    validate_key(key).is_ok()
}

/// Whether a refused write is a store keeping its declared `max_value_len`: the error says so
/// and the value is big enough (its JSON text over an eighth of the limit, whatever the
/// store's format and compression) for the refusal to be plausible.
fn over_declared_limit<S: Storage<Value> + ?Sized>(
    store: &S,
    value: &Value,
    err: &StorageError,
) -> bool {
    let Some(limit) = store.capabilities().max_value_len else {
        return false;
    };
    matches!(
        err.code(),
        ErrorCode::QuotaExceeded | ErrorCode::InvalidValue
    ) && value.to_string().len() > limit / 8
}

async fn compare_with_model<S: Storage<Value> + ?Sized>(
    store: &S,
    model: &BTreeMap<String, Value>,
) -> CheckResult {
    let actual = snapshot(store).await?;
    let expected: Vec<(String, Value)> =
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if actual != expected {
        return Err(Failure::new(format!(
            "store diverged from the model: store keys {:?}, model keys {:?}",
            actual.iter().map(|(k, _)| short(k)).collect::<Vec<_>>(),
            expected.iter().map(|(k, _)| short(k)).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

fn short(key: &str) -> String {
    if key.len() > 24 {
        let mut cut = 24;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…({} bytes)", &key[..cut], key.len())
    } else {
        key.to_owned()
    }
}

async fn apply_single<S: Storage<Value> + ?Sized>(
    store: &S,
    model: &mut BTreeMap<String, Value>,
    op: &StorageOp,
) -> CheckResult {
    let invalid = [ErrorCode::InvalidKey];
    match op {
        StorageOp::Get(k) if !valid(k) => expect_error(store.get(k).await, &invalid, "get"),
        StorageOp::Set(k, v) if !valid(k) => expect_error(store.set(k, v).await, &invalid, "set"),
        StorageOp::Delete(k) if !valid(k) => {
            expect_error(store.delete(k).await, &invalid, "delete")
        }
        StorageOp::Has(k) if !valid(k) => expect_error(store.has(k).await, &invalid, "has"),
        StorageOp::Get(k) => {
            ensure_eq!(
                store.get(k).await.ctx("get")?,
                model.get(k).cloned(),
                "get {}",
                short(k)
            );
            Ok(())
        }
        StorageOp::Set(k, v) => {
            match store.set(k, v).await {
                Err(e) if over_declared_limit(store, v, &e) => {}
                other => {
                    other.ctx("set")?;
                    model.insert(k.clone(), v.clone());
                }
            }
            Ok(())
        }
        StorageOp::Delete(k) => {
            let existed = model.remove(k).is_some();
            ensure_eq!(
                store.delete(k).await.ctx("delete")?,
                existed,
                "delete {}",
                short(k)
            );
            Ok(())
        }
        StorageOp::Has(k) => {
            ensure_eq!(
                store.has(k).await.ctx("has")?,
                model.contains_key(k),
                "has {}",
                short(k)
            );
            Ok(())
        }
        StorageOp::Clear => {
            store.clear().await.ctx("clear")?;
            model.clear();
            Ok(())
        }
        StorageOp::Size => {
            let expected = u64::try_from(model.len()).unwrap_or(u64::MAX);
            ensure_eq!(store.size().await.ctx("size")?, expected, "size");
            Ok(())
        }
        StorageOp::Keys => {
            let keys = crate::support::all_keys(store).await?;
            let expected: Vec<String> = model.keys().cloned().collect();
            ensure_eq!(keys, expected, "keys()");
            Ok(())
        }
    }
}

/// What a batch does to the model; `None` when it must fail (a bad key or too many operations).
fn model_batch(
    model: &BTreeMap<String, Value>,
    ops: &[Operation<Value>],
    max_ops: Option<usize>,
) -> Option<(BTreeMap<String, Value>, BatchResult)> {
    if ops.iter().filter_map(Operation::key).any(|k| !valid(k)) {
        return None;
    }
    if max_ops.is_some_and(|m| ops.len() > m) {
        return None;
    }
    let mut next = model.clone();
    let mut result = BatchResult {
        operations: ops.len(),
        ..BatchResult::default()
    };
    for op in ops {
        match op {
            Operation::Set { key, value } => {
                next.insert(key.clone(), value.clone());
            }
            Operation::Delete { key } => {
                if next.remove(key).is_some() {
                    result.deleted += 1;
                }
            }
            Operation::Clear => {
                result.cleared += next.len();
                next.clear();
            }
        }
    }
    Some((next, result))
}

async fn apply_batch_op<S: BatchStorage<Value> + ?Sized>(
    store: &S,
    model: &mut BTreeMap<String, Value>,
    op: &BatchOp,
) -> CheckResult {
    let max_ops = store.capabilities().max_batch_operations;
    let refused = [ErrorCode::InvalidKey, ErrorCode::QuotaExceeded];
    match op {
        BatchOp::Single(op) => apply_single(store, model, op).await,
        BatchOp::GetMany(keys) => {
            if keys.iter().any(|k| !valid(k)) {
                return expect_error(
                    store.get_many(keys).await,
                    &[ErrorCode::InvalidKey],
                    "get_many",
                );
            }
            let expected: BTreeMap<String, Value> = keys
                .iter()
                .filter_map(|k| model.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            ensure_eq!(
                store.get_many(keys).await.ctx("get_many")?,
                expected,
                "get_many"
            );
            Ok(())
        }
        BatchOp::SetMany(entries) => {
            let ops: Vec<Operation<Value>> = entries
                .iter()
                .map(|(k, v)| Operation::set(k.clone(), v.clone()))
                .collect();
            match model_batch(model, &ops, max_ops) {
                None => expect_error(store.set_many(entries.clone()).await, &refused, "set_many"),
                Some((next, _)) => match store.set_many(entries.clone()).await {
                    Err(e)
                        if entries
                            .iter()
                            .any(|(_, v)| over_declared_limit(store, v, &e)) =>
                    {
                        Ok(())
                    }
                    other => {
                        other.ctx("set_many")?;
                        *model = next;
                        Ok(())
                    }
                },
            }
        }
        BatchOp::DeleteMany(keys) => {
            let ops: Vec<Operation<Value>> =
                keys.iter().map(|k| Operation::delete(k.clone())).collect();
            match model_batch(model, &ops, max_ops) {
                None => expect_error(store.delete_many(keys).await, &refused, "delete_many"),
                Some((next, result)) => {
                    let n = store.delete_many(keys).await.ctx("delete_many")?;
                    ensure_eq!(
                        n,
                        u64::try_from(result.deleted).unwrap_or(u64::MAX),
                        "delete_many count"
                    );
                    *model = next;
                    Ok(())
                }
            }
        }
        BatchOp::Batch(ops) => match model_batch(model, ops, max_ops) {
            None => expect_error(store.batch(ops.clone()).await, &refused, "batch"),
            Some((next, result)) => {
                let outcome = store.batch(ops.clone()).await;
                if let Err(e) = &outcome
                    && ops.iter().any(|op| match op {
                        Operation::Set { value, .. } => over_declared_limit(store, value, e),
                        _ => false,
                    })
                {
                    return Ok(());
                }
                ensure_eq!(outcome.ctx("batch")?, result, "batch result");
                *model = next;
                Ok(())
            }
        },
    }
}

/// Random sequences of get/set/delete/has/clear/size/keys (bad keys included) behave like a
/// `BTreeMap`, compared after every step.
// Async like every other check, so macros and self-tests call all checks alike.
#[allow(clippy::unused_async)]
pub async fn random_operation_sequences_match_a_btreemap_model<H: StorageHarness>(
    h: &H,
    regressions: Regressions,
) -> CheckResult {
    let strategy = prop::collection::vec(storage_op(), 1..30);
    run_async(&strategy, regressions, |ops| async move {
        let (_, store) = open::<Value, _>(h).await?;
        let mut model = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            apply_single(&store, &mut model, op)
                .await
                .ctx(format_args!("step {i}"))?;
            compare_with_model(&store, &model)
                .await
                .ctx(format_args!("after step {i}"))?;
        }
        Ok(())
    })
}

/// Random sequences mixing single operations, get_many, set_many, delete_many and batches
/// (some poisoned with a bad key, which must apply nothing) behave like a `BTreeMap`.
// Async like every other check, so macros and self-tests call all checks alike.
#[allow(clippy::unused_async)]
pub async fn random_batch_sequences_match_a_btreemap_model<H: BatchHarness>(
    h: &H,
    regressions: Regressions,
) -> CheckResult {
    let strategy = prop::collection::vec(batch_op(), 1..20);
    run_async(&strategy, regressions, |ops| async move {
        let (_, store) = open::<Value, _>(h).await?;
        let mut model = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            apply_batch_op(&store, &mut model, op)
                .await
                .ctx(format_args!("step {i}"))?;
            compare_with_model(&store, &model)
                .await
                .ctx(format_args!("after step {i}"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_model_refuses_bad_keys_and_counts_deletes() {
        let mut m = BTreeMap::new();
        m.insert("a".to_owned(), Value::Null);
        let ops = vec![
            Operation::delete("a"),
            Operation::delete("a"),
            Operation::set("b", Value::Null),
            Operation::Clear,
        ];
        let (next, result) = model_batch(&m, &ops, None).unwrap_or_default();
        assert!(next.is_empty());
        assert_eq!(
            result,
            BatchResult {
                operations: 4,
                deleted: 1,
                cleared: 1
            }
        );
        let poisoned = vec![Operation::set("ok", Value::Null), Operation::delete("")];
        assert!(model_batch(&m, &poisoned, None).is_none());
        assert!(model_batch(&m, &ops, Some(3)).is_none());
    }
}
