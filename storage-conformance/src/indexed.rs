//! The indexed suite: index life cycle, uniqueness, identical answers with and without
//! indexes, plans and counters.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use storage_core::query::{and, field};
use storage_core::{BatchStorage, QueryableStorage};
use storage_core::{
    ErrorCode, IndexDefinition, IndexKind, IndexedStorage, Operation, Query, Storage, Tier,
};

use crate::check::{CheckResult, Context, Failure, expect_error};
use crate::harness::{Harness, IndexedHarness, open};
use crate::prop::{Regressions, run_async};
use crate::query::{differential_query, documents, load, query};
use crate::support::{capabilities_agree, snapshot};

/// The declared capabilities and the accessors agree, indexed tier included, and the store
/// names at least one index kind.
pub async fn capabilities_agree_with_tier_accessors<H: IndexedHarness>(h: &H) -> CheckResult {
    let (_, store) = open::<Value, _>(h).await?;
    ensure!(
        !store.capabilities().index_kinds.is_empty(),
        "an indexed store lists no index kind"
    );
    capabilities_agree(store, Tier::Indexed)
}

/// The path an index of `kind` is tested on, and a query it serves.
fn probe(kind: IndexKind) -> (&'static str, Query) {
    match kind {
        IndexKind::Btree => ("age", Query::filter(field("age").gte(30))),
        IndexKind::Hash => ("email", Query::filter(field("email").eq("b@x"))),
        IndexKind::Fulltext => ("bio", Query::filter(field("bio").text("rust"))),
        IndexKind::Spatial => (
            "loc",
            Query::filter(field("loc").within_box([0, 0], [5, 5])),
        ),
    }
}

fn people() -> BTreeMap<String, Value> {
    let rows = [
        (
            "p1",
            json!({"age": 31, "email": "a@x", "bio": "Rust and Go", "loc": [1, 1], "city": "Paris"}),
        ),
        (
            "p2",
            json!({"age": 27, "email": "b@x", "bio": "rust, rust everywhere", "loc": {"x": 6, "y": 1}}),
        ),
        (
            "p3",
            json!({"age": 45.5, "email": "c@x", "bio": "Haskell", "loc": [5, 5], "city": "Oslo"}),
        ),
        (
            "p4",
            json!({"age": "30", "email": null, "bio": 7, "city": "Paris"}),
        ),
        ("p5", json!({"email": "e@x", "tags": ["rust"]})),
        (
            "p6",
            json!({"age": 30, "email": "f@x", "bio": "RUST", "loc": [0, 0]}),
        ),
    ];
    rows.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn keys(results: Vec<storage_core::QueryResult<Value>>) -> Vec<String> {
    results.into_iter().map(|r| r.key).collect()
}

/// Creating an index with an identical definition again is a no-op.
pub async fn creating_an_identical_index_twice_is_a_no_op<H: IndexedHarness>(h: &H) -> CheckResult {
    let store = load(h, &people()).await?;
    for kind in store.capabilities().index_kinds {
        let (path, _) = probe(kind);
        let def = IndexDefinition::new(format!("by_{path}"), path, kind);
        store
            .create_index(def.clone())
            .await
            .ctx(format_args!("create {kind} index"))?;
        store
            .create_index(def.clone())
            .await
            .ctx(format_args!("create the same {kind} index again"))?;
        let listed: Vec<IndexDefinition> = store
            .list_indexes()
            .await
            .ctx("list")?
            .into_iter()
            .map(|i| i.definition)
            .collect();
        ensure_eq!(
            listed.iter().filter(|d| d.name == def.name).count(),
            1,
            "{kind} index listed once"
        );
        ensure!(
            listed.contains(&def),
            "the listed {kind} definition is the created one: {listed:?}"
        );
    }
    Ok(())
}

/// A different definition under an existing name is `DuplicateKey`, and the original stays.
pub async fn another_definition_under_a_taken_name_is_duplicate_key<H: IndexedHarness>(
    h: &H,
) -> CheckResult {
    let store = load(h, &people()).await?;
    let kind = store.capabilities().index_kinds[0];
    let original = IndexDefinition::new("idx", probe(kind).0, kind);
    store.create_index(original.clone()).await.ctx("create")?;
    let other = IndexDefinition::new("idx", "city", kind);
    expect_error(
        store.create_index(other).await,
        &[ErrorCode::DuplicateKey],
        "same name, other path",
    )?;
    let listed: Vec<IndexDefinition> = store
        .list_indexes()
        .await
        .ctx("list")?
        .into_iter()
        .map(|i| i.definition)
        .collect();
    ensure_eq!(
        listed,
        vec![original],
        "indexes after the refused definition"
    );
    Ok(())
}

/// `drop_index` returns whether the index existed, and a dropped index is no longer listed.
pub async fn drop_index_reports_whether_it_existed<H: IndexedHarness>(h: &H) -> CheckResult {
    let store = load(h, &people()).await?;
    ensure_eq!(
        store.drop_index("nope").await.ctx("drop")?,
        false,
        "drop of a missing index"
    );
    let kind = store.capabilities().index_kinds[0];
    store
        .create_index(IndexDefinition::new("idx", probe(kind).0, kind))
        .await
        .ctx("create")?;
    ensure_eq!(
        store.drop_index("idx").await.ctx("drop")?,
        true,
        "drop of an existing index"
    );
    ensure_eq!(
        store.drop_index("idx").await.ctx("drop again")?,
        false,
        "second drop"
    );
    ensure!(
        store.list_indexes().await.ctx("list")?.is_empty(),
        "indexes after drop"
    );
    // The name is free again, for any definition.
    store
        .create_index(IndexDefinition::new("idx", "city", kind))
        .await
        .ctx("re-create")?;
    Ok(())
}

/// An index kind the store does not declare is refused with `Unsupported` and not created.
pub async fn undeclared_index_kinds_are_unsupported<H: IndexedHarness>(h: &H) -> CheckResult {
    let store = load(h, &people()).await?;
    let declared = store.capabilities().index_kinds;
    for kind in [
        IndexKind::Btree,
        IndexKind::Hash,
        IndexKind::Fulltext,
        IndexKind::Spatial,
    ] {
        if !declared.contains(&kind) {
            let (path, _) = probe(kind);
            expect_error(
                store
                    .create_index(IndexDefinition::new("x", path, kind))
                    .await,
                &[ErrorCode::Unsupported],
                format_args!("create an undeclared {kind} index"),
            )?;
        }
    }
    ensure!(
        store.list_indexes().await.ctx("list")?.is_empty(),
        "refused indexes are not listed"
    );
    Ok(())
}

/// A bad index path is `InvalidQuery`.
pub async fn a_bad_index_path_is_invalid_query<H: IndexedHarness>(h: &H) -> CheckResult {
    let store = load(h, &people()).await?;
    let kind = store.capabilities().index_kinds[0];
    for path in ["", "a..b", ".a", "a\0b"] {
        expect_error(
            store
                .create_index(IndexDefinition::new("bad", path, kind))
                .await,
            &[ErrorCode::InvalidQuery],
            format_args!("index on path {path:?}"),
        )?;
    }
    ensure!(
        store.list_indexes().await.ctx("list")?.is_empty(),
        "refused indexes are not listed"
    );
    Ok(())
}

fn unique_kind(declared: &[IndexKind]) -> Option<IndexKind> {
    [IndexKind::Hash, IndexKind::Btree]
        .into_iter()
        .find(|k| declared.contains(k))
}

/// A unique index rejects a conflicting `set`, `set_many` or `batch` with `DuplicateKey` and
/// leaves the store unchanged; a store without unique indexes refuses to create one.
pub async fn unique_index_rejects_conflicting_writes_and_changes_nothing<H: IndexedHarness>(
    h: &H,
) -> CheckResult {
    let store = load(h, &BTreeMap::new()).await?;
    let caps = store.capabilities();
    let Some(kind) = unique_kind(&caps.index_kinds) else {
        return Ok(());
    };
    let def = IndexDefinition::new("uniq_email", "email", kind).unique();
    if !caps.unique_indexes {
        return expect_error(
            store.create_index(def).await,
            &[ErrorCode::Unsupported],
            "unique index without unique_indexes",
        );
    }
    store.create_index(def).await.ctx("create unique index")?;
    store.set("a", &json!({"email": "x"})).await.ctx("set a")?;
    store.set("b", &json!({"email": "y"})).await.ctx("set b")?;
    let before = snapshot(&store).await?;
    let dup = [ErrorCode::DuplicateKey];
    expect_error(
        store.set("c", &json!({"email": "x"})).await,
        &dup,
        "set of a new key with a taken value",
    )?;
    expect_error(
        store.set("b", &json!({"email": "x"})).await,
        &dup,
        "overwrite with a taken value",
    )?;
    expect_error(
        store
            .set_many(vec![
                ("c".into(), json!({"email": "z"})),
                ("d".into(), json!({"email": "y"})),
            ])
            .await,
        &dup,
        "set_many with one taken value",
    )?;
    expect_error(
        store
            .batch(vec![
                Operation::set("c", json!({"email": "w"})),
                Operation::set("d", json!({"email": "w"})),
            ])
            .await,
        &dup,
        "batch writing one value twice",
    )?;
    ensure_eq!(
        snapshot(&store).await?,
        before,
        "entries after refused writes"
    );
    // Rewriting a key with its own value, or freeing a value first, is fine.
    store
        .set("a", &json!({"email": "x", "v": 2}))
        .await
        .ctx("overwrite a with its own value")?;
    store.delete("a").await.ctx("delete a")?;
    store
        .set("c", &json!({"email": "x"}))
        .await
        .ctx("set c once x is free")?;
    let found = keys(
        store
            .find_many(&Query::filter(field("email").eq("x")))
            .await
            .ctx("query")?,
    );
    ensure_eq!(found, vec!["c".to_owned()], "the unique value's owner");
    Ok(())
}

/// A unique index over data that already conflicts is refused with `DuplicateKey` and not created.
pub async fn unique_index_over_conflicting_data_is_refused<H: IndexedHarness>(
    h: &H,
) -> CheckResult {
    let store = load(h, &BTreeMap::new()).await?;
    let caps = store.capabilities();
    let Some(kind) = unique_kind(&caps.index_kinds) else {
        return Ok(());
    };
    if !caps.unique_indexes {
        return Ok(());
    }
    store.set("a", &json!({"email": "x"})).await.ctx("set")?;
    store.set("b", &json!({"email": "x"})).await.ctx("set")?;
    expect_error(
        store
            .create_index(IndexDefinition::new("u", "email", kind).unique())
            .await,
        &[ErrorCode::DuplicateKey],
        "unique index over duplicates",
    )?;
    ensure!(
        store.list_indexes().await.ctx("list")?.is_empty(),
        "the refused index is not listed"
    );
    store
        .set("c", &json!({"email": "x"}))
        .await
        .ctx("a third duplicate after the refusal")?;
    Ok(())
}

/// Queries return the same entries, in the same order, with and without each declared index
/// kind, before and after further writes.
pub async fn results_are_identical_with_and_without_each_index<H: IndexedHarness>(
    h: &H,
) -> CheckResult {
    let docs = people();
    let store = load(h, &docs).await?;
    let probes: Vec<Query> = vec![
        Query::filter(field("age").gte(30)).order_desc("age"),
        Query::filter(field("age").lt(31)).limit(2).offset(1),
        Query::filter(field("age").eq(30)),
        Query::filter(field("email").eq("b@x")),
        Query::filter(field("email").is_in(["a@x", "f@x", "zz"])),
        Query::filter(field("email").eq(Value::Null)),
        Query::filter(field("email").ne("a@x")).order_asc("email"),
        Query::filter(field("bio").text("rust")),
        Query::filter(field("loc").within_box([0, 0], [5, 5])),
        Query::filter(and(vec![field("city").eq("Paris"), field("age").gt(0)])).select(["email"]),
        Query::default().order_asc("age").limit(3),
    ];
    for kind in store.capabilities().index_kinds {
        let (path, _) = probe(kind);
        let name = format!("by_{path}_{kind}");
        store
            .create_index(IndexDefinition::new(&name, path, kind))
            .await
            .ctx(format_args!("create {kind}"))?;
        let current: BTreeMap<String, Value> = snapshot(&store).await?.into_iter().collect();
        for q in &probes {
            differential_query(&store, &current, q)
                .await
                .ctx(format_args!(
                    "with a {kind} index on {path}, query {}",
                    serde_json::to_string(q).unwrap_or_default()
                ))?;
        }
        // Writes after the index exists must reach it.
        store
            .set(
                "p7",
                &json!({"age": 33, "email": "g@x", "bio": "rust", "loc": [2, 2]}),
            )
            .await
            .ctx("set")?;
        store
            .set("p2", &json!({"age": 99, "email": "b2@x", "bio": "go"}))
            .await
            .ctx("overwrite")?;
        store.delete("p3").await.ctx("delete")?;
        let current: BTreeMap<String, Value> = snapshot(&store).await?.into_iter().collect();
        for q in &probes {
            differential_query(&store, &current, q)
                .await
                .ctx(format_args!(
                    "after writes, with a {kind} index, query {}",
                    serde_json::to_string(q).unwrap_or_default()
                ))?;
        }
        store.drop_index(&name).await.ctx("drop")?;
        store.clear().await.ctx("clear")?;
        store
            .set_many(docs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .await
            .ctx("reload")?;
    }
    Ok(())
}

/// With an index of every declared kind in place, random queries on random documents still
/// return what the reference evaluator returns.
// Async like every other check, so macros and self-tests call all checks alike.
#[allow(clippy::unused_async)]
pub async fn random_queries_match_the_reference_evaluator_with_indexes<H: IndexedHarness>(
    h: &H,
    regressions: Regressions,
) -> CheckResult {
    let strategy = (documents(), prop::collection::vec(query(), 1..6));
    run_async(&strategy, regressions, |(docs, queries)| async move {
        let (_, store) = open::<Value, _>(h).await?;
        let paths = [
            (IndexKind::Btree, "n"),
            (IndexKind::Hash, "a"),
            (IndexKind::Fulltext, "s"),
            (IndexKind::Spatial, "p"),
            (IndexKind::Btree, "obj.x"),
        ];
        for (i, (kind, path)) in paths.iter().enumerate() {
            if store.capabilities().supports_index(*kind) {
                store
                    .create_index(IndexDefinition::new(format!("i{i}"), *path, *kind))
                    .await
                    .ctx("create index")?;
            }
        }
        if !docs.is_empty() {
            store
                .set_many(docs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .await
                .ctx("load")?;
        }
        for (i, q) in queries.iter().enumerate() {
            differential_query(&store, &docs, q)
                .await
                .ctx(format_args!(
                    "query {i} {}",
                    serde_json::to_string(q).unwrap_or_default()
                ))?;
        }
        Ok(())
    })
}

/// `explain` names the index a query uses (where the harness expects index use) and none for
/// a query on an unindexed field.
pub async fn explain_reports_index_use<H: IndexedHarness>(h: &H) -> CheckResult {
    let store = load(h, &people()).await?;
    let unindexed = Query::filter(field("city").eq("Paris"));
    let plan = store.explain(&unindexed).await.ctx("explain")?;
    ensure!(
        plan.index.is_none(),
        "explain names index {:?} though none exists",
        plan.index
    );
    expect_error(
        store.explain(&Query::filter(field("a..b").eq(1))).await,
        &[ErrorCode::InvalidQuery],
        "explain of an invalid query",
    )?;
    let expects = Harness::<Value>::expects_index_use(h);
    for kind in store.capabilities().index_kinds {
        let (path, q) = probe(kind);
        let name = format!("by_{path}");
        store
            .create_index(IndexDefinition::new(&name, path, kind))
            .await
            .ctx("create")?;
        let plan = store
            .explain(&q)
            .await
            .ctx(format_args!("explain with a {kind} index"))?;
        if expects {
            ensure_eq!(
                plan.index.as_deref(),
                Some(name.as_str()),
                "index named by explain for a {kind} query"
            );
            ensure!(
                !plan.full_scan,
                "a {kind} index lookup reported as a full scan"
            );
        }
        let plan = store.explain(&unindexed).await.ctx("explain")?;
        ensure!(
            plan.index.is_none(),
            "explain of a query on an unindexed field names {:?}",
            plan.index
        );
        store.drop_index(&name).await.ctx("drop")?;
    }
    Ok(())
}

/// Index counters move: entries count the indexed documents; lookups count as hits or misses.
pub async fn index_stats_move<H: IndexedHarness>(h: &H) -> CheckResult {
    let store = load(h, &people()).await?;
    let caps = store.capabilities();
    let Some(kind) = unique_kind(&caps.index_kinds) else {
        return Ok(());
    };
    store
        .create_index(IndexDefinition::new("by_email", "email", kind))
        .await
        .ctx("create")?;
    let stats = |list: Vec<storage_core::IndexInfo>| {
        list.into_iter()
            .find(|i| i.definition.name == "by_email")
            .map(|i| i.stats)
            .ok_or_else(|| Failure::new("the index is not listed"))
    };
    let s0 = stats(store.list_indexes().await.ctx("list")?)?;
    // Five of the six documents hold an email (one of them null); a non-sparse index may count all six.
    ensure!(
        (5..=6).contains(&s0.entries),
        "entries of an index over 6 documents: {}",
        s0.entries
    );
    store.set("p9", &json!({"email": "z@x"})).await.ctx("set")?;
    let s1 = stats(store.list_indexes().await.ctx("list")?)?;
    ensure_eq!(
        s1.entries,
        s0.entries + 1,
        "entries after adding a document"
    );
    if Harness::<Value>::expects_index_use(h) {
        let found = store
            .find_many(&Query::filter(field("email").eq("b@x")))
            .await
            .ctx("query")?;
        ensure_eq!(found.len(), 1, "lookup result");
        let s2 = stats(store.list_indexes().await.ctx("list")?)?;
        ensure!(
            s2.hits > s1.hits,
            "hits did not move after a lookup that found an entry: {s1:?} → {s2:?}"
        );
        store
            .find_many(&Query::filter(field("email").eq("nobody")))
            .await
            .ctx("query")?;
        let s3 = stats(store.list_indexes().await.ctx("list")?)?;
        ensure!(
            s3.misses > s2.misses,
            "misses did not move after a lookup that found nothing: {s2:?} → {s3:?}"
        );
    }
    Ok(())
}
