//! Datapath, time-to-enforce and scale benchmarks on network-namespace pods
//! (issue 9). Prints one JSON object of figures for `cargo xtask bench`;
//! `--full` runs longer with more repetitions. Needs root.
//!
//! A section that cannot run here reports `<section>_error` with why,
//! instead of a number.
#[path = "../../tests/support/mod.rs"]
mod support;

mod big_cluster;
mod cni;
mod enforce;
mod per_packet;
mod scale;
mod service;
mod stats;

use std::collections::BTreeMap;

use serde_json::Value;

pub type Figures = BTreeMap<String, Value>;
/// A section of the benchmark: `full` profile or not, to its figures.
type Section = fn(bool) -> anyhow::Result<Figures>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    // `--only <section>` runs one section (for working on it).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1));
    let mut figures = Figures::new();
    let sections: [(&str, Section); 6] = [
        ("per_packet", per_packet::run),
        ("service", service::run),
        ("enforce", enforce::run),
        ("cni", cni::run),
        ("scale", scale::run),
        ("big_cluster", big_cluster::run),
    ];
    for (name, section) in sections {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        eprintln!("bench: {name}");
        match section(full) {
            Ok(f) => figures.extend(f),
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                figures.insert(format!("{name}_error"), Value::String(format!("{e:#}")));
            }
        }
    }
    figures.insert("datapath_profile".into(), Value::String(if full { "full" } else { "quick" }.into()));
    println!("{}", serde_json::to_string(&figures).expect("plain data"));
}
