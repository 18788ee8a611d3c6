//! A pod's maps as rows: opened by pin (the pod's) or by kernel id (any of
//! ours), decoded with the ABI types the programs use.
use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData};
use ipnet::IpNet;
use na_common::{
    conntrack::{FlowKey, FlowState, FragKey, replied, tcp_state},
    direction,
    pod_state::{PodRecord, PodState},
};
use serde::{Deserialize, Serialize};

use super::InspectError;
use crate::{
    bpffs::PinLayout,
    datapath::{NodeTables, PodCounters, Timeouts, ktime_now_ns},
    decode,
    pod_id::PodId,
    status::Status,
};

pub(crate) use crate::datapath::Trie;
pub(crate) type Conntrack = HashMap<MapData, FlowKey, FlowState>;
pub(crate) type Fragments = HashMap<MapData, FragKey, u32>;

/// One prefix of a policy trie with the rules it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRow {
    /// Rule set (0 or 1) the entry belongs to.
    pub set: u8,
    /// Whether that set is the one the programs look up now.
    pub active: bool,
    pub prefix: IpNet,
    /// Empty: the prefix is a hole (an `except`) that denies its addresses.
    pub rules: Vec<RuleRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    pub protocol: String,
    pub ports: String,
    /// `allow` (NetworkPolicy) or a cluster tier's action: a prefix's rules
    /// apply in order, the first that matches deciding.
    #[serde(default)]
    pub action: String,
    pub policy_id: u32,
    /// `namespace/name direction[index]`, `node`, or `#id` when unknown.
    pub policy: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRow {
    pub direction: String,
    pub mode: String,
    pub active_set: u8,
    /// Bumped on every policy write.
    pub generation: u32,
    /// NetworkPolicy denials are reported, not enforced.
    #[serde(default)]
    pub audit: bool,
}

/// A tracked flow, in the orientation of its first packet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    /// Direction of the first packet, as seen by the pod.
    pub direction: String,
    pub protocol: String,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// `revoked` (cut by a policy change; its packets are dropped either
    /// way until it idles out), `reset` (TCP after RST), `closed` (TCP after
    /// FIN from both ends), `closing` (TCP after FIN from one), `unreplied`
    /// (no reply seen yet), `answered` (UDP or SCTP: one request and its
    /// answer so far, kept as briefly as an unreplied flow), or `open`.
    pub state: String,
    pub policy: String,
    /// Seconds since its last packet (refreshed at most every 100 ms).
    pub idle_secs: f64,
    /// Idle seconds after which it is forgotten.
    pub timeout_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentRow {
    pub protocol: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub policy: String,
}

/// Opens map `id` from the kernel.
pub(crate) fn by_id(id: u32) -> Result<MapData, InspectError> {
    MapData::from_id(id).map_err(|e| match e {
        aya::maps::MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            InspectError::NotFound(format!("no map with id {id}"))
        }
        e => InspectError::kernel(format!("map {id}"), &e),
    })
}

/// An opened map as a `T`; `what` names it in errors.
pub(crate) fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    data: MapData,
    what: &str,
) -> Result<T, InspectError> {
    let map = Map::from_map_data(data).map_err(|e| InspectError::kernel(what, &e))?;
    T::try_from(map).map_err(|e| InspectError::kernel(what, &e))
}

/// Opens `pod`'s pinned map `name` as a `T`.
pub(crate) fn pinned<T: TryFrom<Map, Error = aya::maps::MapError>>(
    layout: &PinLayout,
    pod: &PodId,
    name: &str,
) -> Result<T, InspectError> {
    let path = layout.map(pod, name);
    crate::datapath::open_pinned(&path).map_err(|e| InspectError::kernel(path.display(), &e))
}

/// Both directions' states of `pod`, indexed by [`direction`].
pub(crate) fn states(layout: &PinLayout, pod: &PodId) -> Result<[PodState; 2], InspectError> {
    let tables = NodeTables::open(layout).map_err(|e| InspectError::kernel("pod_table", &e))?;
    let found = tables.ifindexes_of_pod(layout, pod).map_err(|e| InspectError::kernel(format!("pod {pod}"), &e))?;
    let ifindex = *found
        .first()
        .ok_or_else(|| InspectError::NotFound(format!("pod {pod} has maps but no entry in the pod table")))?;
    let record: PodRecord = tables.pods.get(&ifindex, 0).map_err(|e| InspectError::kernel("pod_table", &e))?;
    Ok(record.states)
}

/// The pod table: every veth's record, by ifindex.
pub(crate) fn pod_table(map: &crate::datapath::PodTable) -> Result<Vec<(u32, [PodState; 2])>, InspectError> {
    let mut rows: Vec<(u32, [PodState; 2])> = Vec::new();
    for entry in map.iter() {
        let (ifindex, record) = entry.map_err(|e| InspectError::kernel("pod_table", &e))?;
        rows.push((ifindex, record.states));
    }
    rows.sort_by_key(|r| r.0);
    Ok(rows)
}

pub(crate) fn state_rows(states: &[PodState; 2]) -> Vec<StateRow> {
    [direction::INGRESS, direction::EGRESS]
        .into_iter()
        .map(|dir| {
            let s = states[dir as usize];
            StateRow {
                direction: decode::direction_name(dir).into(),
                mode: decode::mode_name(s.mode()).into(),
                active_set: s.active_set(),
                generation: s.generation,
                audit: s.audit(),
            }
        })
        .collect()
}

/// Every prefix of a trie, sorted by set then address; `active_set` marks
/// the live one when known.
pub(crate) fn prefixes(
    trie: &Trie,
    active_set: Option<u8>,
    status: Option<&Status>,
) -> Result<Vec<PrefixRow>, InspectError> {
    let mut rows = Vec::new();
    for entry in trie.iter() {
        let (key, value) = entry.map_err(|e| InspectError::kernel("policy trie", &e))?;
        let data = key.data();
        let Some(prefix) = decode::prefix(&data, key.prefix_len()) else { continue };
        let live = usize::try_from(value.count).unwrap_or(usize::MAX).min(value.rules.len());
        let rules = value.rules[..live]
            .iter()
            .map(|r| RuleRow {
                protocol: decode::protocol_name(r.protocol),
                ports: decode::ports(r),
                action: decode::action_name(r.action).into(),
                policy_id: r.policy_id,
                policy: decode::attribution_label(r.policy_id, status),
            })
            .collect();
        rows.push(PrefixRow { set: data.set, active: active_set == Some(data.set), prefix, rules });
    }
    rows.sort_by_key(|r| (r.set, r.prefix));
    Ok(rows)
}

pub(crate) fn flows(map: &Conntrack, status: Option<&Status>) -> Result<Vec<FlowRow>, InspectError> {
    let now = ktime_now_ns();
    let timeouts = Timeouts::default();
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (k, v) = entry.map_err(|e| InspectError::kernel("conntrack_map", &e))?;
        let pod = (decode::addr(k.family, k.pod_addr.0), k.pod_port);
        let peer = (decode::addr(k.family, k.peer_addr.0), k.peer_port);
        let ((src, src_port), (dst, dst_port)) =
            if u32::from(v.direction) == direction::EGRESS { (pod, peer) } else { (peer, pod) };
        let state = match (v.revoked, v.tcp_state, v.replied) {
            (1.., _, _) => "revoked",
            (_, tcp_state::RESET, _) => "reset",
            (_, tcp_state::CLOSED, _) => "closed",
            (_, tcp_state::CLOSING | tcp_state::CLOSING_REPLY, _) => "closing",
            (_, _, replied::NONE) => "unreplied",
            (_, _, replied::ONCE) if matches!(k.protocol, na_common::protocol::UDP | na_common::protocol::SCTP) => {
                "answered"
            }
            _ => "open",
        };
        rows.push(FlowRow {
            direction: decode::direction_name(u32::from(v.direction)).into(),
            protocol: decode::protocol_name(k.protocol),
            src,
            src_port,
            dst,
            dst_port,
            state: state.into(),
            policy: decode::attribution_label(v.policy_id, status),
            idle_secs: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            timeout_secs: timeouts.idle_timeout_ns(k.protocol, &v) / 1_000_000_000,
        });
    }
    rows.sort_by_key(|r| (r.src, r.src_port, r.dst, r.dst_port));
    Ok(rows)
}

pub(crate) fn fragments(map: &Fragments, status: Option<&Status>) -> Result<Vec<FragmentRow>, InspectError> {
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (k, policy_id) = entry.map_err(|e| InspectError::kernel("frag_map", &e))?;
        rows.push(FragmentRow {
            protocol: decode::protocol_name(k.protocol),
            src: decode::addr(k.family, k.src_addr),
            dst: decode::addr(k.family, k.dst_addr),
            id: k.id,
            policy: decode::attribution_label(policy_id, status),
        });
    }
    Ok(rows)
}

pub(crate) fn pod_counters(layout: &PinLayout, pod: &PodId) -> Result<PodCounters, InspectError> {
    crate::datapath::pod_counters(layout, pod).map_err(|e| InspectError::kernel("counters", &e))
}
