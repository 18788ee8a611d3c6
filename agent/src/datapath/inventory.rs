//! What is pinned under the agent's root, and for which pod: the reader the
//! reconciler (orphans) and `na-cli` (listings) share.
use std::{collections::BTreeSet, path::Path};

use aya::{
    maps::{MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use na_common::names::{GLOBAL_MAPS, POD_MAPS, PROG_EGRESS, PROG_INGRESS};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{AttachMode, attach};
use crate::{
    bpffs::{PinLayout, is_bpffs, pin_names},
    pod_id::PodId,
};

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("{0} is not on a bpf filesystem: is the agent installed on this node? (--bpffs-root)")]
    NoBpffs(String),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// One pod's program in one direction, as `loaded-ebpfdata` lists it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodAttachment {
    /// The pod's pinned TCX link, or (netlink filters have no pin) its trie.
    pub pin_path: String,
    pub pod_id: String,
    pub direction: String,
    /// The program attached: the link's, else our filter's on the device; 0
    /// if none (nothing is enforced there).
    pub prog_id: u32,
    /// The pod's own maps, then the node's shared ones.
    pub maps: Vec<MapRef>,
    /// The host veth the node's tables know the pod by; `None` when that
    /// device no longer exists (or the pod is in no table): nothing is
    /// enforced for the pod until its agent attaches it again.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapRef {
    pub name: String,
    pub id: u32,
}

/// Pods with anything pinned: maps or links.
pub fn pinned_pods(layout: &PinLayout) -> Result<BTreeSet<PodId>, InventoryError> {
    let mut pods = BTreeSet::new();
    for dir in [layout.maps_dir(), layout.links_dir()] {
        for name in file_names(layout, &dir)? {
            if let Some((pod, object)) = PodId::parse_pin_name(&name)
                && (POD_MAPS.contains(&object) || object == PROG_INGRESS || object == PROG_EGRESS)
            {
                pods.insert(pod);
            }
        }
    }
    Ok(pods)
}

/// Every pod attachment under `layout`, sorted by pod and direction.
pub fn attachments(layout: &PinLayout) -> Result<Vec<PodAttachment>, InventoryError> {
    let shared: Vec<MapRef> = GLOBAL_MAPS.iter().filter_map(|m| map_ref(&layout.global_map(m))).collect();
    let tables = super::NodeTables::open(layout).ok();
    let mut out = Vec::new();
    for pod in pinned_pods(layout)? {
        let own: Vec<MapRef> = POD_MAPS.iter().filter_map(|m| map_ref(&layout.map(&pod, m))).collect();
        // The first of the pod's devices that still exists, and its name.
        let device = tables.as_ref().and_then(|t| t.ifindexes_of_pod(layout, &pod).ok()).and_then(|ifindexes| {
            // nix reports a missing index as an empty name, not an error.
            let name = |i| nix::net::if_::if_indextoname(i).ok()?.into_string().ok().filter(|n| !n.is_empty());
            ifindexes.into_iter().find_map(|i| Some((i, name(i)?)))
        });
        for (prog, _, hook) in super::PROGRAMS {
            let direction = if prog == PROG_INGRESS { "ingress" } else { "egress" };
            let link_pin = layout.link(&pod, prog);
            let linked = PinnedLink::from_pin(&link_pin).ok().and_then(|l| FdLink::from(l).info().ok());
            let pin_path = if linked.is_some() || link_pin.exists() {
                link_pin
            } else {
                layout.map(&pod, na_common::names::MAP_INGRESS)
            };
            // A link detached from under us still names its program.
            let prog_id = device
                .as_ref()
                .and_then(|&(i, _)| match &linked {
                    Some(l) => matches!(attach::is_attached(i, hook, AttachMode::Tcx, l.program_id()), Ok(true))
                        .then(|| l.program_id()),
                    None => attach::filter_program(i, hook).ok().flatten(),
                })
                .unwrap_or(0);
            let maps = own.iter().chain(&shared).map(|m| MapRef { name: m.name.clone(), id: m.id }).collect();
            out.push(PodAttachment {
                pin_path: pin_path.display().to_string(),
                pod_id: pod.to_string(),
                direction: direction.to_owned(),
                prog_id,
                maps,
                device: device.as_ref().map(|(_, name)| name.clone()),
            });
        }
    }
    Ok(out)
}

fn map_ref(pin: &Path) -> Option<MapRef> {
    let info: MapInfo = MapData::from_pin(pin).ok()?.info().ok()?;
    Some(MapRef { name: info.name_as_str().unwrap_or_default().to_owned(), id: info.id() })
}

/// File names in `dir`, none when it does not exist.
fn file_names(layout: &PinLayout, dir: &Path) -> Result<Vec<String>, InventoryError> {
    if !is_bpffs(layout.root()) {
        return Err(InventoryError::NoBpffs(layout.root().display().to_string()));
    }
    pin_names(dir).map_err(|source| InventoryError::Read { path: dir.display().to_string(), source })
}
