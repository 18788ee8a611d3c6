//! `na-cli`: read-only views of what the agent loaded, straight from bpffs and
//! the kernel, so they work with the agent stopped. Names (pods, policies)
//! come from the agent's status file when it is there.

pub mod dump;
pub mod events;
pub mod inventory;
pub mod loaded;
pub mod pod;
pub mod read;
pub mod trace;

use std::{fmt::Write as _, path::PathBuf};

use thiserror::Error;

use crate::{bpffs::PinLayout, status::Status};

#[derive(Debug, Error)]
pub enum CliError {
    #[error("{0} is not on a bpf filesystem: is the agent installed on this node? (--bpffs-root)")]
    NoBpffs(String),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("reading the agent's status file {path} (needed to {needed}): {source} (--status-file)")]
    NoStatus { path: String, needed: &'static str, source: std::io::Error },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}: permission denied (run as root)")]
    Permission(String),
    #[error("kernel query failed: {0}")]
    Kernel(String),
}

impl From<crate::datapath::inventory::InventoryError> for CliError {
    fn from(e: crate::datapath::inventory::InventoryError) -> Self {
        use crate::datapath::inventory::InventoryError as E;
        match e {
            E::NoBpffs(root) => Self::NoBpffs(root),
            E::Read { path, source } => Self::Read { path, source },
        }
    }
}

impl CliError {
    /// A failed kernel call on `what`, told apart when it is a permission problem.
    pub fn kernel(what: impl std::fmt::Display, e: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::PermissionDenied
            {
                return Self::Permission(what.to_string());
            }
            source = err.source();
        }
        Self::Kernel(format!("{what}: {e}"))
    }

    /// The process exit code: 3 no bpffs, 4 no such object, 5 permission,
    /// 6 bad argument, 7 held by the agent, 1 anything else (clap uses 2
    /// for usage errors).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NoBpffs(_) => 3,
            Self::NotFound(_) => 4,
            Self::Permission(_) => 5,
            Self::BadArgument(_) => 6,
            Self::Busy(_) => 7,
            Self::Read { .. } | Self::NoStatus { .. } | Self::Kernel(_) => 1,
        }
    }
}

/// What every command reads from: the pins, and the status file if needed.
pub struct Sources {
    pub layout: PinLayout,
    pub status_file: PathBuf,
}

impl Sources {
    /// The status file, or why it is needed and missing.
    pub fn status(&self, needed: &'static str) -> Result<Status, CliError> {
        Status::read(&self.status_file).map_err(|source| CliError::NoStatus {
            path: self.status_file.display().to_string(),
            needed,
            source,
        })
    }

    /// The status file when it is readable: names are a nicety there.
    pub fn status_if_any(&self) -> Option<Status> {
        Status::read(&self.status_file).ok()
    }
}

/// The separator line between records, as the AWS tool prints it.
pub const SEPARATOR: &str = "========================================================================================";

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["w".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nw    22\n");
    }

    #[test]
    fn permission_errors_are_told_apart() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(CliError::kernel("map 7", &denied), CliError::Permission(_)));
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(CliError::kernel("map 7", &other), CliError::Kernel(_)));
    }
}
