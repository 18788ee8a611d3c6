//! The node agent: enforces NetworkPolicy for the pods on this node. See
//! `na_agent::daemon`.
use anyhow::Result;
use clap::Parser;
use na_agent::{
    config::{Args, LogFormat},
    daemon,
};

fn main() -> Result<()> {
    let args = Args::parse();
    // Colours only for a terminal: a container's log, a file or the journal
    // would keep the escape codes.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    if args.check_config {
        return daemon::check_config(&args);
    }
    if args.prepare_bpffs {
        return daemon::prepare_bpffs(&args);
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(daemon::run(args))
}
