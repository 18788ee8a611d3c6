//! The NetworkPolicy conformance suite: `tests/cases` and the cases
//! Cyclonus' generator makes, against the agent in local mode on
//! network-namespace pods.
use std::path::PathBuf;

use anyhow::Result;

use crate::{
    cmd::{cargo, exec, require_root, workspace_root},
    setup,
};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Directory of case files [default: the workspace's tests/cases].
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Only this family.
    #[arg(long, value_parser = ["ipv4", "ipv6"])]
    family: Option<String>,
    /// Only cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// Only probes addressed this way [default: both: pod IP and Service IP].
    #[arg(long, value_parser = ["pod", "service"])]
    via: Option<String>,
    /// Also write a Markdown table of the results here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Also run every case Cyclonus' generator makes (230, each in both
    /// families, at pod and Service addresses).
    #[arg(long)]
    generated: bool,
}

impl Options {
    /// Every case there is, hand-written and generated.
    pub fn with_generated() -> Self {
        Self { generated: true, ..Self::default() }
    }
}

/// Builds the agent and the runner, then runs the cases.
pub fn run_suite(o: &Options) -> Result<()> {
    require_root("the conformance suite")?;
    exec(
        cargo().args(["build", "--quiet", "--package", "na-agent", "--package", "na-conformance", "--bins"]),
        "building the agent and the conformance runner",
    )?;
    let root = workspace_root();
    let mut runner = std::process::Command::new(root.join("target/debug/na-conformance"));
    // Relative paths are the caller's, as they typed them.
    let here = std::env::current_dir()?;
    runner.arg("--cases").arg(o.cases.as_ref().map_or_else(|| root.join("tests/cases"), |c| here.join(c)));
    if let Some(f) = &o.family {
        runner.args(["--family", f]);
    }
    if let Some(f) = &o.filter {
        runner.args(["--filter", f]);
    }
    if let Some(v) = &o.via {
        runner.args(["--via", v]);
    }
    if let Some(r) = &o.report {
        runner.arg("--report").arg(here.join(r));
    }
    if o.generated {
        runner.arg("--generated");
    }
    exec(&mut runner, "running the conformance cases")
}

pub fn run(o: &Options) -> Result<()> {
    setup::run_all()?;
    run_suite(o)
}
