//! Inspect what the NetworkPolicy agent loaded on this node. Read-only: it
//! never changes eBPF state (`install` only copies this binary).
use std::{io::Write as _, net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

mod dump;
mod events;
mod inventory;
mod loaded;
mod pod;
mod table;
mod trace;

use clap::{Parser, Subcommand, ValueEnum};
use na_agent::{
    bpffs::{DEFAULT_ROOT, PinLayout},
    datapath::inventory::attachments,
    inspect::{
        self, InspectError, Sources,
        events::{Origin, Until},
    },
    status::DEFAULT_STATUS_FILE,
};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "na-cli", version, about = "Inspect the NetworkPolicy agent's eBPF programs and maps")]
struct Cli {
    /// The agent's bpffs directory.
    #[arg(long, global = true, default_value = DEFAULT_ROOT, env = "NA_BPFFS_ROOT")]
    bpffs_root: PathBuf,
    /// The agent's status file: pod names and addresses, and what each rule
    /// id stands for.
    #[arg(long, global = true, default_value = DEFAULT_STATUS_FILE, env = "NA_STATUS_FILE")]
    status_file: PathBuf,
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
    /// One pod: programs, state per direction, rules by policy, counters and
    /// tracked flows.
    Pod {
        /// `namespace/name`, or one of the pod's addresses.
        pod: String,
    },
    /// The verdict the loaded maps give a new flow's first packet on each
    /// local side, and the rule that decides it.
    Trace {
        src: IpAddr,
        dst: IpAddr,
        /// `tcp/80`, `udp/53`, `sctp/9000`, `icmp`, `icmpv6` or a protocol number.
        protocol: String,
    },
    /// Follow verdict events as they happen (from the ring, or from the
    /// agent's flow log when the agent reads the ring).
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Copy this binary, and the `na-cni` plugin beside it, into DIR on the
    /// node (the DaemonSet's init container does this, so that `sudo na-cli
    /// ...` works on the node and CNI configurations can chain `na-cni`).
    Install {
        #[arg(long, default_value = "/opt/cni/bin")]
        dir: PathBuf,
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
    /// One of a pod's maps, decoded (ids from `ebpf maps` or `loaded-ebpfdata`).
    #[command(alias = "d")]
    DumpMaps { map_id: u32 },
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
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The process exit code: 3 no bpffs, 4 no such object, 5 permission,
/// 6 bad argument, 7 held by the agent, 1 anything else (clap uses 2 for
/// usage errors).
fn exit_code(e: &InspectError) -> u8 {
    match e {
        InspectError::NoBpffs(_) => 3,
        InspectError::NotFound(_) => 4,
        InspectError::Permission(_) => 5,
        InspectError::BadArgument(_) => 6,
        InspectError::Busy(_) => 7,
        InspectError::Read { .. } | InspectError::NoStatus { .. } | InspectError::Kernel(_) => 1,
    }
}

fn run(cli: &Cli) -> Result<String, InspectError> {
    let sources = Sources { layout: PinLayout::new(&cli.bpffs_root), status_file: cli.status_file.clone() };
    let layout = &sources.layout;
    match &cli.command {
        Command::Ebpf { command: Ebpf::Progs { all } } => {
            emit(cli.output, inspect::inventory::progs(layout, *all)?.as_slice(), inventory::render_progs)
        }
        Command::Ebpf { command: Ebpf::Maps { all } } => {
            emit(cli.output, inspect::inventory::maps(layout, *all)?.as_slice(), inventory::render_maps)
        }
        Command::Ebpf { command: Ebpf::LoadedEbpfdata } => {
            emit(cli.output, attachments(layout)?.as_slice(), loaded::render)
        }
        Command::Ebpf { command: Ebpf::DumpMaps { map_id } } => {
            emit(cli.output, &inspect::dump::dump(&sources, *map_id)?, dump::render)
        }
        Command::Pod { pod } => emit(cli.output, &inspect::pod::show(&sources, pod)?, pod::render),
        Command::Trace { src, dst, protocol } => {
            let (protocol, port) = trace::parse_protocol(protocol)?;
            let packet = inspect::trace::Packet { src: *src, dst: *dst, protocol, port };
            emit(cli.output, &inspect::trace::trace(&sources, packet)?, trace::render)
        }
        Command::Events { count, seconds } => {
            let duration = seconds
                .map(|s| {
                    Duration::try_from_secs_f64(s).map_err(|e| InspectError::BadArgument(format!("--seconds: {e}")))
                })
                .transpose()?;
            let output = cli.output;
            let origin = inspect::events::follow(&sources, Until { count: *count, duration }, |line| {
                let text = match output {
                    Output::Table => events::render(line),
                    Output::Json => serde_json::to_string(line).expect("plain data serialises"),
                };
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{text}");
                let _ = stdout.flush();
            })?;
            if let Origin::FlowLog(path) = origin {
                eprintln!("na-cli: followed the agent's flow log {} (the agent reads the ring)", path.display());
            }
            Ok(String::new())
        }
        Command::Install { dir } => {
            install(dir).map_err(|source| InspectError::Read { path: dir.display().to_string(), source })
        }
    }
}

/// Copies this executable and `na-cni` (beside it) into `dir`, each
/// replacing an older one in a single rename: a runtime calling `na-cni`
/// never finds it half-written.
fn install(dir: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let this = std::env::current_exe()?;
    let mut out = String::new();
    for (source, name) in [(this.clone(), "na-cli"), (this.with_file_name("na-cni"), "na-cni")] {
        let (target, tmp) = (dir.join(name), dir.join(format!(".{name}.tmp")));
        std::fs::copy(&source, &tmp)
            .map_err(|e| std::io::Error::new(e.kind(), format!("copying {}: {e}", source.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &target)?;
        out += &format!("installed {}\n", target.display());
    }
    Ok(out)
}

/// `value` as a table or as JSON.
fn emit<T: Serialize + ?Sized>(
    output: Output,
    value: &T,
    table: impl Fn(&T) -> String,
) -> Result<String, InspectError> {
    Ok(match output {
        Output::Table => table(value),
        Output::Json => serde_json::to_string_pretty(value).expect("plain data serialises") + "\n",
    })
}
