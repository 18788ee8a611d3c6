//! `na-cli ebpf dump-maps <map-id>`: any of a pod's maps, or the node's pod
//! table, counters and fragments, decoded by its kind.
use na_common::{direction, names};
use serde::{Deserialize, Serialize};

use super::{
    InspectError, Sources,
    read::{self, FlowRow, FragmentRow, PrefixRow, StateRow},
};
use crate::{
    datapath::{NodeTables, PodCounters, counters, inventory},
    pod_id::PodId,
};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct MapDump {
    pub map_id: u32,
    pub name: String,
    /// The pod id owning the map; `node` for the shared ones.
    pub pod_id: String,
    pub contents: Contents,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Contents {
    Rules { prefixes: Vec<PrefixRow> },
    PodTable { pods: Vec<PodTableRow> },
    Conntrack { flows: Vec<FlowRow> },
    Fragments { datagrams: Vec<FragmentRow> },
    Counters { pods: Vec<PodCountersRow> },
}

/// A veth's record in the pod table.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PodTableRow {
    pub ifindex: u32,
    /// From the status file, when it lists the veth.
    pub pod_id: Option<String>,
    pub states: Vec<StateRow>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PodCountersRow {
    /// 0 counts packets on veths without a pod record.
    pub ifindex: u32,
    pub pod_id: Option<String>,
    pub counters: PodCounters,
}

/// Label for the node's shared maps.
const NODE: &str = "node";

pub fn dump(sources: &Sources, map_id: u32) -> Result<MapDump, InspectError> {
    let data = read::by_id(map_id)?;
    let info = data.info().map_err(|e| InspectError::kernel(format!("map {map_id}"), &e))?;
    let name = info.name_as_str().unwrap_or_default().to_owned();
    if names::RING_MAPS.contains(&name.as_str()) {
        return Err(InspectError::BadArgument(format!(
            "map {map_id} ({name}) is a ring buffer shared by every pod: follow it with `na-cli events`"
        )));
    }
    let attachments = inventory::attachments(&sources.layout)?;
    let owner = attachments
        .iter()
        .find(|p| {
            p.maps
                .iter()
                .take(names::POD_MAPS.len())
                .any(|m| m.id == map_id && names::POD_MAPS.contains(&m.name.as_str()))
        })
        .map(|p| p.pod_id.clone());
    let shared = attachments.iter().any(|p| p.maps.iter().any(|m| m.id == map_id));
    let owner = match owner {
        Some(owner) => owner,
        None if shared || names::GLOBAL_MAPS.contains(&name.as_str()) => NODE.to_owned(),
        None => {
            return Err(InspectError::NotFound(format!(
                "map {map_id} ({name}) is not one of the agent's maps; `na-cli ebpf maps` lists them"
            )));
        }
    };
    let status = sources.status_if_any();
    let status = status.as_ref();
    let pod_of =
        |ifindex: u32| status.and_then(|s| s.pods.iter().find(|p| p.ifindex == ifindex)).map(|p| p.pod_id.clone());
    let contents = match name.as_str() {
        names::MAP_INGRESS | names::MAP_EGRESS if owner != NODE => {
            let dir = if name == names::MAP_INGRESS { direction::INGRESS } else { direction::EGRESS };
            let pod = PodId::from_raw(owner.clone());
            let active = read::states(&sources.layout, &pod).ok().map(|s| s[dir as usize].active_set());
            Contents::Rules { prefixes: read::prefixes(&read::typed(data, &name)?, active, status)? }
        }
        names::MAP_POD_TABLE => Contents::PodTable {
            pods: read::pod_table(&read::typed(data, &name)?)?
                .into_iter()
                .map(|(ifindex, states)| PodTableRow {
                    ifindex,
                    pod_id: pod_of(ifindex),
                    states: read::state_rows(&states),
                })
                .collect(),
        },
        names::MAP_CONNTRACK if owner != NODE => {
            Contents::Conntrack { flows: read::flows(&read::typed(data, &name)?, status)? }
        }
        names::MAP_FRAGMENTS => Contents::Fragments { datagrams: read::fragments(&read::typed(data, &name)?, status)? },
        names::MAP_COUNTERS => {
            let tables = NodeTables::open(&sources.layout).map_err(|e| InspectError::kernel(&name, &e))?;
            let mut pods = Vec::new();
            for ifindex in std::iter::once(na_common::pod_state::UNKNOWN_POD).chain(tables.ifindexes()) {
                if let Ok(values) = tables.counters(ifindex) {
                    pods.push(PodCountersRow { ifindex, pod_id: pod_of(ifindex), counters: counters(&values) });
                }
            }
            Contents::Counters { pods }
        }
        // The maps of maps, and maps the object adds that we do not decode (say, `.rodata`).
        other => {
            return Err(InspectError::BadArgument(format!(
                "map {map_id} ({other}) holds no state to decode here; dump a pod's own maps (`na-cli pod` lists them)"
            )));
        }
    };
    Ok(MapDump { map_id, name, pod_id: owner, contents })
}
