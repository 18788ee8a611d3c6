//! Project tasks: `cargo xtask <command>`. One module per command.
mod bench;
mod cmd;
mod conformance;
mod demo;
mod image;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Set up, test and demo the NetworkPolicy agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent, fast when done).
    Setup(setup::Options),
    /// Run every test: unit, kernel/netns, lints, conformance, and the demo's own checks.
    Test(test::Options),
    /// Run the NetworkPolicy conformance cases (upstream e2e and our own).
    Conformance(conformance::Options),
    /// Pods as namespaces, programs loaded, traffic allowed and denied.
    Demo(demo::Options),
    /// Build the DaemonSet's image (deploy/Dockerfile's last stage) into an OCI archive.
    Image(image::Options),
    /// Run the benchmarks; write bench/results.json and BENCHMARKS.md.
    Bench(bench::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup(o) => setup::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Conformance(o) => conformance::run(&o),
        Command::Demo(o) => demo::run(&o),
        Command::Image(o) => image::run(&o),
        Command::Bench(o) => bench::run(&o),
    }
}
