//! Read-only views of what the agent loaded, straight from bpffs and the
//! kernel, so they work with the agent stopped: the data behind `na-cli`,
//! which renders it. Names (pods, policies) come from the agent's status
//! file when it is there.

pub mod dump;
pub mod events;
pub mod inventory;
pub mod pod;
pub mod read;
pub mod trace;

use std::path::PathBuf;

use thiserror::Error;

use crate::{bpffs::PinLayout, status::Status};

#[derive(Debug, Error)]
pub enum InspectError {
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

impl From<crate::datapath::inventory::InventoryError> for InspectError {
    fn from(e: crate::datapath::inventory::InventoryError) -> Self {
        use crate::datapath::inventory::InventoryError as E;
        match e {
            E::NoBpffs(root) => Self::NoBpffs(root),
            E::Read { path, source } => Self::Read { path, source },
        }
    }
}

impl InspectError {
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
}

/// What every command reads from: the pins, and the status file if needed.
pub struct Sources {
    pub layout: PinLayout,
    pub status_file: PathBuf,
}

impl Sources {
    /// The status file, or why it is needed and missing.
    pub fn status(&self, needed: &'static str) -> Result<Status, InspectError> {
        Status::read(&self.status_file).map_err(|source| InspectError::NoStatus {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_are_told_apart() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(InspectError::kernel("map 7", &denied), InspectError::Permission(_)));
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(InspectError::kernel("map 7", &other), InspectError::Kernel(_)));
    }
}
