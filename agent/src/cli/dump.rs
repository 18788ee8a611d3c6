//! `na-cli ebpf dump-maps <map-id>`: any of a pod's maps, decoded by its kind.
use std::fmt::Write as _;

use na_common::{direction, names};
use serde::{Deserialize, Serialize};

use super::{
    CliError, Sources, loaded,
    read::{self, FlowRow, FragmentRow, PrefixRow, StateRow},
};
use crate::{datapath::PodCounters, pod_id::PodId};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct MapDump {
    pub map_id: u32,
    pub name: String,
    /// The pod id owning the map.
    pub pod_id: String,
    pub contents: Contents,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Contents {
    Rules { prefixes: Vec<PrefixRow> },
    PodState { states: Vec<StateRow> },
    Conntrack { flows: Vec<FlowRow> },
    Fragments { datagrams: Vec<FragmentRow> },
    Counters { counters: PodCounters },
}

pub fn dump(sources: &Sources, map_id: u32) -> Result<MapDump, CliError> {
    let data = read::by_id(map_id)?;
    let info = data.info().map_err(|e| CliError::kernel(format!("map {map_id}"), &e))?;
    let name = info.name_as_str().unwrap_or_default().to_owned();
    if names::GLOBAL_MAPS.contains(&name.as_str()) {
        return Err(CliError::BadArgument(format!(
            "map {map_id} ({name}) is a ring buffer shared by every pod: follow it with `na-cli events`"
        )));
    }
    let owner = loaded::read(&sources.layout)?
        .into_iter()
        .find(|p| p.maps.iter().any(|m| m.id == map_id))
        .map(|p| p.pod_id)
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "map {map_id} ({name}) is not one of the agent's pod maps; `na-cli ebpf maps` lists them"
            ))
        })?;
    let status = sources.status_if_any();
    let status = status.as_ref();
    let contents = match name.as_str() {
        names::MAP_INGRESS | names::MAP_EGRESS => {
            let dir = if name == names::MAP_INGRESS { direction::INGRESS } else { direction::EGRESS };
            let pod = PodId::from_raw(owner.clone());
            let states = read::states(&read::pinned(&sources.layout, &pod, names::MAP_POD_STATE)?)?;
            let active = Some(states[dir as usize].active_set());
            Contents::Rules { prefixes: read::prefixes(&read::typed(data, &name)?, active, status)? }
        }
        names::MAP_POD_STATE => {
            Contents::PodState { states: read::state_rows(&read::states(&read::typed(data, &name)?)?) }
        }
        names::MAP_CONNTRACK => Contents::Conntrack { flows: read::flows(&read::typed(data, &name)?, status)? },
        names::MAP_FRAGMENTS => Contents::Fragments { datagrams: read::fragments(&read::typed(data, &name)?, status)? },
        names::MAP_COUNTERS => Contents::Counters { counters: read::pod_counters(&read::typed(data, &name)?)? },
        // Maps the object adds that we do not decode (say, `.rodata`).
        other => return Err(CliError::BadArgument(format!("map {map_id} ({other}) holds no per-pod state to decode"))),
    };
    Ok(MapDump { map_id, name, pod_id: owner, contents })
}

pub fn render(d: &MapDump) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Map ID : {}  Name : {}  Pod Identifier : {}", d.map_id, d.name, d.pod_id);
    s.push_str(&match &d.contents {
        Contents::Rules { prefixes } => read::prefix_rows_table(prefixes),
        Contents::PodState { states } => read::state_rows_table(states),
        Contents::Conntrack { flows } => read::flow_rows_table(flows),
        Contents::Fragments { datagrams } => read::fragment_rows_table(datagrams),
        Contents::Counters { counters } => read::counters_table(counters),
    });
    s
}
