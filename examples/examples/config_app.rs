//! An application that picks its backends from a configuration file, as seed 004
//! does: workflow definitions, execution logs and metrics each on its own backend,
//! named in one file (`examples/config/app.toml`).
//!
//! At start-up the application builds each store from its `BackendConfig`, holding it
//! as a `dyn Storage<T>`, and asks each for the tier it needs (`into_*_or_err`). A
//! configuration that names a backend lacking that tier fails right there, with an
//! error naming the tier and the backend — shown here by starting a second time with
//! `examples/config/app-high-availability.yaml`, which asks for replicated metrics on
//! SQLite. Run with `cargo run -p examples --example config_app`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use examples::{open_backend, under_data_dir};
use serde::{Deserialize, Serialize};
use storage_core::config::{BackendConfig, load_config};
use storage_core::query::field;
use storage_core::{
    ArcStorageExt, DistributedStorage, ErrorCode, IndexDefinition, IndexKind, IndexedStorage,
    Query, QueryableStorage, Result, StorageError, TransactionOptions, TransactionalExt,
    TransactionalStorage,
};

/// The application's configuration file: its own settings and one backend per concern.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    app: AppSettings,
    workflows: BackendConfig,
    logs: BackendConfig,
    metrics: BackendConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSettings {
    name: String,
    #[serde(default)]
    high_availability: bool,
}

/// A workflow definition; versions are immutable and know their parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Workflow {
    id: String,
    version: u32,
    parent: Option<u32>,
    steps: Vec<String>,
}

/// One execution's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExecutionLog {
    workflow: String,
    version: u32,
    status: String,
    started_at: i64,
    duration_ms: u64,
}

/// Aggregated metrics of one workflow version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Summary {
    runs: u64,
    failures: u64,
    total_ms: u64,
}

/// The stores, each as the tier the application needs from it.
struct Stores {
    workflows: Arc<dyn QueryableStorage<Workflow>>,
    logs: Arc<dyn IndexedStorage<ExecutionLog>>,
    metrics: Arc<dyn TransactionalStorage<Summary>>,
    /// Present when the configuration asks for high availability.
    replicated: Option<Arc<dyn DistributedStorage<Summary>>>,
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Start-up: read the file, open every store, and demand the tier each role needs.
async fn start(file: &Path, data_dir: &Path) -> Result<Stores> {
    let cfg: AppFile = load_config(file)?;
    println!(
        "[{}] {}: workflows on {}, logs on {}, metrics on {}{}",
        cfg.app.name,
        file.display(),
        cfg.workflows.backend_name(),
        cfg.logs.backend_name(),
        cfg.metrics.backend_name(),
        if cfg.app.high_availability {
            " (high availability)"
        } else {
            ""
        }
    );
    let role = |name: &'static str| move |e: StorageError| e.with_context("role", name);
    let workflows = open_backend::<Workflow>(&under_data_dir(cfg.workflows, data_dir))
        .await
        .map_err(role("workflows"))?
        .into_queryable_or_err()
        .map_err(role("workflows"))?;
    let logs = open_backend::<ExecutionLog>(&under_data_dir(cfg.logs, data_dir))
        .await
        .map_err(role("logs"))?
        .into_indexed_or_err()
        .map_err(role("logs"))?;
    let metrics = open_backend::<Summary>(&under_data_dir(cfg.metrics, data_dir))
        .await
        .map_err(role("metrics"))?;
    let replicated = if cfg.app.high_availability {
        Some(
            Arc::clone(&metrics)
                .into_distributed_or_err()
                .map_err(role("metrics"))?,
        )
    } else {
        None
    };
    let metrics = metrics
        .into_transactional_or_err()
        .map_err(role("metrics"))?;
    Ok(Stores {
        workflows,
        logs,
        metrics,
        replicated,
    })
}

/// Records one execution: its log, then the metrics, updated atomically.
async fn record_run(stores: &Stores, run: u32, log: ExecutionLog) -> Result<()> {
    let metric_key = format!("{}@v{}", log.workflow, log.version);
    let (failed, ms) = (log.status != "ok", log.duration_ms);
    stores.logs.set(&format!("run:{run:05}"), &log).await?;
    let key = metric_key.as_str();
    stores
        .metrics
        .transaction(TransactionOptions::new().retries(5), |tx| async move {
            let mut summary = tx.get(key).await?.unwrap_or_default();
            summary.runs += 1;
            summary.failures += u64::from(failed);
            summary.total_ms += ms;
            tx.set(key, &summary).await
        })
        .await
}

async fn run_application(stores: &Stores) -> Result<()> {
    for (version, steps) in [
        (1, vec!["fetch", "build"]),
        (2, vec!["fetch", "build", "test"]),
    ] {
        let wf = Workflow {
            id: "deploy".into(),
            version,
            parent: (version > 1).then(|| version - 1),
            steps: steps.into_iter().map(str::to_owned).collect(),
        };
        stores
            .workflows
            .set(&format!("deploy@v{version}"), &wf)
            .await?;
    }
    let versions = stores
        .workflows
        .find_many(&Query::filter(field("id").eq("deploy")).order_desc("version"))
        .await?;
    let latest = versions
        .first()
        .ok_or_else(|| StorageError::new(ErrorCode::KeyNotFound, "no workflow"))?;
    println!(
        "workflows: {} versions of deploy; latest v{} ({} steps, derived from {})",
        versions.len(),
        latest.value.version,
        latest.value.steps.len(),
        latest
            .value
            .parent
            .map_or_else(|| "nothing".to_owned(), |p| format!("v{p}"))
    );

    stores
        .logs
        .create_index(IndexDefinition::new(
            "by_workflow",
            "workflow",
            IndexKind::Btree,
        ))
        .await?;
    for run in 0..12u32 {
        let log = ExecutionLog {
            workflow: "deploy".into(),
            version: 1 + run % 2,
            status: if run % 5 == 4 { "failed" } else { "ok" }.into(),
            started_at: 1_700_000_000 + i64::from(run) * 60,
            duration_ms: 200 + u64::from(run) * 15,
        };
        record_run(stores, run, log).await?;
    }
    let recent_query = Query::filter(field("workflow").eq("deploy"))
        .order_desc("started_at")
        .limit(3);
    let recent = stores.logs.find_many(&recent_query).await?;
    let plan = stores.logs.explain(&recent_query).await?;
    println!(
        "logs: 12 runs recorded; 3 most recent: {:?} (index used: {:?})",
        recent.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        plan.index
    );

    for version in [1, 2] {
        let key = format!("deploy@v{version}");
        let s = stores.metrics.get(&key).await?.unwrap_or_default();
        println!(
            "metrics: {key}: {} runs, {} failures, {} ms on average",
            s.runs,
            s.failures,
            s.total_ms.checked_div(s.runs).unwrap_or(0)
        );
    }
    if let Some(replicated) = &stores.replicated {
        println!("metrics replicas: {}", replicated.get_nodes().await?.len());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let data_dir = tempfile::tempdir()?;
    let stores = start(&config_dir().join("app.toml"), data_dir.path()).await?;
    run_application(&stores).await?;
    drop(stores);

    println!();
    let wrong = config_dir().join("app-high-availability.yaml");
    let other_dir = tempfile::tempdir()?;
    match start(&wrong, other_dir.path()).await {
        Err(e) if e.code() == ErrorCode::Unsupported => {
            println!("start-up refused, as it should: {e}");
            Ok(())
        }
        Err(e) => Err(format!("start-up failed for another reason: {e}").into()),
        Ok(_) => {
            Err("a configuration without replication started in high-availability mode".into())
        }
    }
}
