//! Inspect what the NetworkPolicy agent loaded on this node. Read-only.
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use na_agent::{
    bpffs::{DEFAULT_ROOT, PinLayout},
    cli::{CliError, inventory, loaded},
};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "na-cli", version, about = "Inspect the NetworkPolicy agent's eBPF programs and maps")]
struct Cli {
    /// The agent's bpffs directory.
    #[arg(long, global = true, default_value = DEFAULT_ROOT, env = "NA_BPFFS_ROOT")]
    bpffs_root: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// eBPF programs and maps.
    Ebpf {
        #[command(subcommand)]
        command: Ebpf,
    },
}

#[derive(Subcommand)]
enum Ebpf {
    /// Programs in the kernel: the agent's, or all with --all.
    #[command(alias = "p")]
    Progs {
        #[arg(long)]
        all: bool,
    },
    /// Maps in the kernel: the agent's, or all with --all.
    #[command(alias = "m")]
    Maps {
        #[arg(long)]
        all: bool,
    },
    /// Every pinned program with its pod, direction and maps.
    #[command(alias = "e")]
    LoadedEbpfdata,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("na-cli: {e}");
            match e {
                CliError::NoBpffs(_) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: &Cli) -> Result<String, CliError> {
    let layout = PinLayout::new(&cli.bpffs_root);
    let Command::Ebpf { command } = &cli.command;
    match command {
        Ebpf::Progs { all } => emit(cli.output, &inventory::progs(&layout, *all)?, inventory::render_progs),
        Ebpf::Maps { all } => emit(cli.output, &inventory::maps(&layout, *all)?, inventory::render_maps),
        Ebpf::LoadedEbpfdata => emit(cli.output, &loaded::read(&layout)?, loaded::render),
    }
}

fn emit<T: Serialize>(output: Output, value: &[T], table: impl Fn(&[T]) -> String) -> Result<String, CliError> {
    Ok(match output {
        Output::Table => table(value),
        Output::Json => serde_json::to_string_pretty(value).expect("plain data serialises") + "\n",
    })
}
