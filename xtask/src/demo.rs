//! The main job, for a newcomer: see README.md.
use anyhow::Result;

use crate::{
    cmd::{cargo, exec, require_root, workspace_root},
    setup,
};

#[derive(clap::Args, Default)]
pub struct Options {}

pub fn run_demo() -> Result<()> {
    require_root("the demo")?;
    exec(cargo().args(["build", "--quiet", "--package", "na-agent", "--bins", "--examples"]), "building the agent")?;
    let target = workspace_root().join("target/debug");
    exec(
        std::process::Command::new(target.join("examples/demo")).env("NA_CLI", target.join("na-cli")),
        "running the demo",
    )
}

pub fn run(_: &Options) -> Result<()> {
    setup::run_all()?;
    run_demo()
}
