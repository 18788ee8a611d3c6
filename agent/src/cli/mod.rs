//! `na-cli`: read-only views of what the agent loaded, straight from bpffs and
//! the kernel, so they work with the agent stopped.

pub mod inventory;
pub mod loaded;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CliError {
    #[error("{0} is not on a bpf filesystem: is the agent installed on this node? (--bpffs-root)")]
    NoBpffs(String),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("kernel query failed: {0}")]
    Kernel(String),
}

/// The separator line between records, as the AWS tool prints it.
pub const SEPARATOR: &str = "========================================================================================";
