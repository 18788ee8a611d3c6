//! Where the agent's objects live on bpffs.
use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{mount::MsFlags, sys::statfs};
use thiserror::Error;

use na_common::names::{PROG_EGRESS, PROG_INGRESS};

use crate::pod_id::PodId;

/// Where a node usually has bpffs mounted.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";
/// The agent's directory under it.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/netpol";
/// Prefix of maps shared by all pods, in the style of the AWS agent's pins.
const GLOBAL_PREFIX: &str = "global";

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error("{path} is not on a bpf filesystem and mounting one failed: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("creating {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
}

/// The pin directories under one root:
/// `programs/<prog>_<version>`, `maps/<pod>_<map>`, `maps/global_<map>`, `links/<pod>_<prog>`,
/// `links/global_<name>`, `spares/<slot>_<map>`.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn programs_dir(&self) -> PathBuf {
        self.root.join("programs")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The node's program `prog` of one version.
    pub fn program(&self, prog: &str, version: &str) -> PathBuf {
        self.programs_dir().join(format!("{prog}_{version}"))
    }

    /// The program name and version of a pin in [`Self::programs_dir`].
    pub fn parse_program_pin(file_name: &str) -> Option<(&'static str, &str)> {
        [PROG_INGRESS, PROG_EGRESS]
            .into_iter()
            .find_map(|prog| Some((prog, file_name.strip_prefix(prog)?.strip_prefix('_')?)))
    }

    /// Maps of slots made ready ahead of the pods that take them.
    pub fn spares_dir(&self) -> PathBuf {
        self.root.join("spares")
    }

    /// Map `map` of spare slot `slot`.
    pub fn spare(&self, slot: u32, map: &str) -> PathBuf {
        self.spares_dir().join(format!("{slot}_{map}"))
    }

    /// The slot and map name of a pin in [`Self::spares_dir`].
    pub fn parse_spare_pin(file_name: &str) -> Option<(u32, &str)> {
        let (slot, map) = file_name.split_once('_')?;
        Some((slot.parse().ok()?, map))
    }

    pub fn map(&self, pod: &PodId, map: &str) -> PathBuf {
        self.maps_dir().join(pod.pin_name(map))
    }

    pub fn link(&self, pod: &PodId, prog: &str) -> PathBuf {
        self.links_dir().join(pod.pin_name(prog))
    }

    pub fn global_map(&self, map: &str) -> PathBuf {
        self.maps_dir().join(format!("{GLOBAL_PREFIX}_{map}"))
    }

    /// A link of the node's, not of one pod (the netfilter program's).
    pub fn node_link(&self, name: &str) -> PathBuf {
        self.links_dir().join(format!("{GLOBAL_PREFIX}_{name}"))
    }

    /// The name given to [`Self::node_link`] of a pin in [`Self::links_dir`].
    pub fn parse_node_link(file_name: &str) -> Option<&str> {
        file_name.strip_prefix(GLOBAL_PREFIX)?.strip_prefix('_')
    }

    /// Mounts bpffs where the root needs it if nothing is mounted there, then
    /// creates the layout's directories.
    pub fn prepare(&self) -> Result<(), BpffsError> {
        ensure_bpffs(&self.root)?;
        for dir in [self.programs_dir(), self.maps_dir(), self.links_dir(), self.spares_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| BpffsError::CreateDir { path: dir.clone(), source })?;
        }
        Ok(())
    }
}

/// Names of the pins in `dir`; none when it does not exist.
pub fn pin_names(dir: &Path) -> io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Whether `path` (or its nearest existing ancestor) is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    path.ancestors()
        .find(|p| p.exists())
        .and_then(|p| statfs::statfs(p).ok())
        .is_some_and(|s| s.filesystem_type() == statfs::BPF_FS_MAGIC)
}

/// Fresh machines often lack the mount a node has; mount it at
/// [`DEFAULT_MOUNT`] (or at `root`'s parent when it is elsewhere).
fn ensure_bpffs(root: &Path) -> Result<(), BpffsError> {
    if is_bpffs(root) {
        return Ok(());
    }
    let mount_point = if root.starts_with(DEFAULT_MOUNT) {
        PathBuf::from(DEFAULT_MOUNT)
    } else {
        root.parent().unwrap_or(root).to_path_buf()
    };
    std::fs::create_dir_all(&mount_point)
        .map_err(|source| BpffsError::CreateDir { path: mount_point.clone(), source })?;
    nix::mount::mount(Some("bpf"), &mount_point, Some("bpf"), MsFlags::empty(), None::<&str>)
        .map_err(|source| BpffsError::Mount { path: mount_point, source })
}
