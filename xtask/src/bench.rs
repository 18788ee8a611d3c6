//! `cargo xtask bench`: runs the benchmarks and writes `bench/results.json`
//! and `BENCHMARKS.md`. Figures come only from runs on this machine; nothing
//! here is a pass/fail threshold.
use std::{collections::BTreeMap, fmt::Write as _, process::Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    cmd::{cargo, workspace_root},
    setup,
};

#[derive(clap::Args, Default)]
pub struct Options {}

/// Benchmarks and the figures they report, with how each is measured.
const COMPILER: (&str, &str) = (
    "compile",
    "Policy compiler (`policy/benches/compile.rs`): 100 namespaces, 5,000 dual-stack pods, 1,000 policies \
     (same-namespace, cross-namespace, CIDR-with-except, named and ranged ports), 110 pods on the node. \
     `compile_full_ms`: all 110 local pods from scratch; `compile_incremental_ms`: one peer pod's labels change, \
     then only the pods marked dirty are recompiled. Median of 15 runs, min and max beside it.",
);

pub fn run(_: &Options) -> Result<()> {
    setup::run_all()?;
    let path = workspace_root().join("bench/results.json");
    let mut results: BTreeMap<String, Value> =
        std::fs::read_to_string(&path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    let (bench, _) = COMPILER;
    eprintln!("xtask: running the {bench} benchmark");
    let out = cargo()
        .args(["bench", "--quiet", "--package", "na-policy", "--bench", bench])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench")?;
    anyhow::ensure!(out.status.success(), "the {bench} benchmark failed ({})", out.status);
    let line = String::from_utf8(out.stdout)?.lines().last().context("benchmark printed nothing")?.to_owned();
    let figures: BTreeMap<String, Value> = serde_json::from_str(&line).context("benchmark output is not JSON")?;
    results.extend(figures);
    results.insert("machine".into(), machine());
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(workspace_root().join("BENCHMARKS.md"), report(&results))?;
    eprintln!("xtask: wrote bench/results.json and BENCHMARKS.md");
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({"cpu": cpu, "cores": cores, "kernel": kernel})
}

fn report(results: &BTreeMap<String, Value>) -> String {
    let mut s = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` from `bench/results.json`; rerun it to refresh.\n\n",
    );
    if let Some(m) = results.get("machine") {
        let _ = writeln!(
            s,
            "Machine: {} ({} cores), kernel {}.\n",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?")
        );
    }
    s.push_str("## Policy compiler\n\n");
    let _ = writeln!(s, "{}\n", COMPILER.1);
    s.push_str("| figure | median | min | max |\n|---|---|---|---|\n");
    for key in ["compile_full", "compile_incremental"] {
        let ms =
            |k: &str| results.get(k).and_then(Value::as_f64).map_or("not measured".into(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            s,
            "| `{key}_ms` | {} | {} | {} |",
            ms(&format!("{key}_ms")),
            ms(&format!("{key}_min_ms")),
            ms(&format!("{key}_max_ms"))
        );
    }
    if let Some(n) = results.get("compile_incremental_pods") {
        let _ = writeln!(
            s,
            "\nThe relabel recompiled {n} pods; the 110 pods hold {} LPM entries in all.",
            results.get("compile_entries_total").unwrap_or(&Value::Null)
        );
    }
    s.push_str("\nDatapath, time-to-enforce and scale figures (issue 9) are not measured yet.\n");
    s
}
