//! Inspect what the NetworkPolicy agent loaded on this node. Read-only: it
//! never changes eBPF state (`install` only copies this binary).
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
    /// Copy this binary into DIR on the node (the DaemonSet's init container
    /// does this, so that `sudo na-cli ...` works on the node).
    Install {
        #[arg(long, default_value = "/opt/cni/bin")]
        dir: std::path::PathBuf,
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
    let command = match &cli.command {
        Command::Ebpf { command } => command,
        Command::Install { dir } => {
            return install(dir).map_err(|source| CliError::Read { path: dir.display().to_string(), source });
        }
    };
    match command {
        Ebpf::Progs { all } => emit(cli.output, &inventory::progs(&layout, *all)?, inventory::render_progs),
        Ebpf::Maps { all } => emit(cli.output, &inventory::maps(&layout, *all)?, inventory::render_maps),
        Ebpf::LoadedEbpfdata => emit(cli.output, &loaded::read(&layout)?, loaded::render),
    }
}

/// Copies this executable to `dir/na-cli`, replacing an older one in a
/// single rename so a running `na-cli` is never half-written.
fn install(dir: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.join("na-cli");
    let tmp = dir.join(".na-cli.tmp");
    std::fs::copy(std::env::current_exe()?, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &target)?;
    Ok(format!("installed {}\n", target.display()))
}

fn emit<T: Serialize>(output: Output, value: &[T], table: impl Fn(&[T]) -> String) -> Result<String, CliError> {
    Ok(match output {
        Output::Table => table(value),
        Output::Json => serde_json::to_string_pretty(value).expect("plain data serialises") + "\n",
    })
}
