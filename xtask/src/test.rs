//! Every test the project has, in one command.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{cargo, cargo_nightly, exec, require_root},
    conformance, demo, image, setup,
};

#[derive(clap::Args, Default)]
pub struct Options {}

pub fn run(_: &Options) -> Result<()> {
    setup::run_all()?;
    require_root("the kernel and network-namespace tests")?;
    exec(cargo().args(["fmt", "--all", "--check"]), "checking formatting")?;
    // Without --workspace: the default members, i.e. everything but the kernel
    // crate, which only builds for the BPF target and is linted on its own.
    exec(cargo().args(["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"]), "clippy")?;
    exec(
        cargo_nightly().args([
            "clippy",
            "--quiet",
            "--package",
            "na-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy (kernel crate)",
    )?;
    // The image test runs what this builds.
    image::build()?;
    let totals = cargo_test()?;
    // Run even when unit tests failed: its table says more about what broke.
    // All of it: the generated cases take about 9 of the 15 minutes the
    // suite may take here.
    let suite = conformance::run_suite(&conformance::Options::with_generated());
    demo::run_demo()?;
    println!("xtask test: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    if totals.failed > 0 {
        bail!("{} tests failed", totals.failed);
    }
    suite
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs the workspace's tests, echoing their output and adding up every
/// target's `test result:` line.
fn cargo_test() -> Result<Totals> {
    eprintln!("xtask: cargo test");
    let mut child =
        cargo().args(["test", "--no-fail-fast"]).stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count(rest, "passed");
            totals.failed += count(rest, "failed");
            totals.ignored += count(rest, "ignored");
        }
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        bail!("cargo test failed ({status}) before reporting a failed test");
    }
    Ok(totals)
}

/// The number before `word` in "ok. 5 passed; 0 failed; 1 ignored; ...".
fn count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").split_once(' '))
        .find(|(_, w)| *w == word)
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_test_summaries() {
        let line = "FAILED. 5 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 6.12s";
        assert_eq!((count(line, "passed"), count(line, "failed"), count(line, "ignored")), (5, 2, 1));
        assert_eq!(count("ok. 7 passed; 0 failed; 0 ignored", "passed"), 7);
    }
}
