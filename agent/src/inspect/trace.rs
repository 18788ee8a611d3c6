//! `na-cli trace <src> <dst> <proto>[/<port>]`: the verdict the loaded maps
//! give the first packet of a new flow, on the sending pod's egress and the
//! receiving pod's ingress, and the rule that decides each. A destination
//! that is a Service frontend is judged, as the datapath judges it, on each
//! endpoint DNAT may pick (as the Service's EndpointSlices list them).
//!
//! The decision is the programs' own ([`na_common::decision::decide`]) run on
//! the live maps, with the kernel's longest-prefix match; only the prefix
//! shown as "matched" is found here, for the explanation.
use std::net::IpAddr;

use aya::maps::{MapError, lpm_trie::Key};
use ipnet::IpNet;
use na_common::{
    decision::{Query, decide},
    direction, names,
    policy::RuleSet,
};
use serde::{Deserialize, Serialize};

use super::{
    InspectError, Sources,
    read::{self, FlowRow},
};
use crate::{
    decode,
    pod_id::PodId,
    status::{ServiceRoutes, Status, services_path},
};

/// A packet to trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Destination port; `None` for protocols without ports.
    pub port: Option<u16>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: String,
    pub port: Option<u16>,
    /// The sending pod's egress, then the receiving pod's ingress; a side
    /// whose pod is not on this node is not judged here.
    pub sides: Vec<Side>,
    /// Whether every side judged here lets the packet through; through a
    /// Service, whether some endpoint is reached.
    pub allowed: bool,
    /// `namespace/name` of the Service whose frontend `dst` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Through a Service: the trace to each of its endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Trace>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// `egress` or `ingress`.
    pub direction: String,
    /// `namespace/name`.
    pub pod: String,
    pub mode: String,
    pub allowed: bool,
    /// Allowed only because the direction is audited: NetworkPolicy would
    /// have denied it.
    #[serde(default)]
    pub audited: bool,
    /// What decided, as flow logs name it.
    pub tier: String,
    /// The rule that decided (one that allowed it, or a cluster tier's
    /// Deny), `-` when none did.
    pub policy: String,
    /// Longest prefix of the live rules holding the peer.
    pub matched_prefix: Option<IpNet>,
    /// The policies that isolate the pod in this direction (from the status
    /// file): when no rule admits the flow, they are what denies it.
    #[serde(default)]
    pub isolated_by: Vec<String>,
    /// Flows of this (source, destination, protocol, port) the pod tracks
    /// already: their packets pass without being judged again until the
    /// policy changes.
    pub tracked: Vec<FlowRow>,
}

pub fn trace(sources: &Sources, packet: Packet) -> Result<Trace, InspectError> {
    if packet.src.is_ipv4() != packet.dst.is_ipv4() {
        return Err(InspectError::BadArgument(format!("{} and {} are of different families", packet.src, packet.dst)));
    }
    // An agent that never wrote it (an older one) knows no Services; one
    // that cannot be read must not make a Service address look like a plain one.
    let path = services_path(&sources.status_file);
    let routes = match ServiceRoutes::read(&path) {
        Ok(routes) => routes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ServiceRoutes::default(),
        Err(source) => return Err(InspectError::Read { path: path.display().to_string(), source }),
    };
    let Some(frontend) = packet.port.and_then(|port| routes.find(packet.dst, packet.protocol, port)) else {
        return trace_direct(sources, packet);
    };
    let endpoints = frontend
        .endpoints
        .iter()
        .map(|e| trace_direct(sources, Packet { dst: e.ip(), port: Some(e.port()), ..packet }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Trace {
        src: packet.src,
        dst: packet.dst,
        protocol: decode::protocol_name(packet.protocol),
        port: packet.port,
        sides: Vec::new(),
        allowed: endpoints.iter().any(|t| t.allowed),
        service: Some(frontend.service.clone()),
        endpoints,
    })
}

fn trace_direct(sources: &Sources, packet: Packet) -> Result<Trace, InspectError> {
    let status = sources.status("find the pods with these addresses")?;
    let mut sides = Vec::new();
    for (dir, local, peer) in
        [(direction::EGRESS, packet.src, packet.dst), (direction::INGRESS, packet.dst, packet.src)]
    {
        if let Some(pod) = status.pod_by_ip(local) {
            let id = PodId::from_raw(pod.pod_id.clone());
            let name = format!("{}/{}", pod.namespace, pod.name);
            sides.push(judge(sources, &status, &id, name, dir, peer, &packet)?);
        }
    }
    if sides.is_empty() {
        return Err(InspectError::NotFound(format!(
            "neither {} nor {} is a pod on this node: nothing here judges that packet",
            packet.src, packet.dst
        )));
    }
    Ok(Trace {
        src: packet.src,
        dst: packet.dst,
        protocol: decode::protocol_name(packet.protocol),
        port: packet.port,
        allowed: sides.iter().all(|s| s.allowed),
        sides,
        service: None,
        endpoints: Vec::new(),
    })
}

fn judge(
    sources: &Sources,
    status: &Status,
    id: &PodId,
    pod: String,
    dir: u32,
    peer: IpAddr,
    packet: &Packet,
) -> Result<Side, InspectError> {
    let layout = &sources.layout;
    let state = read::states(layout, id)?[dir as usize];
    let trie_name = if dir == direction::INGRESS { names::MAP_INGRESS } else { names::MAP_EGRESS };
    let trie: read::Trie = read::pinned(layout, id, trie_name)?;
    let (family, peer_bytes) = decode::abi_addr(peer);
    let query = Query { family, peer: na_common::Addr(peer_bytes), protocol: packet.protocol, port: packet.port };
    let mut failure = None;
    let decision = decide(&state, &query, |data, prefix_len| -> Option<RuleSet> {
        match trie.get(&Key::new(prefix_len, data), 0) {
            Ok(rules) => Some(rules),
            Err(MapError::KeyNotFound) => None,
            Err(e) => {
                failure = Some(InspectError::kernel(trie_name, &e));
                None
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let matched_prefix = read::prefixes(&trie, Some(state.active_set()), Some(status))?
        .into_iter()
        .filter(|r| r.active && r.prefix.contains(&peer))
        .map(|r| r.prefix)
        .max_by_key(IpNet::prefix_len);
    let tracked = read::flows(&read::pinned(layout, id, names::MAP_CONNTRACK)?, Some(status))?
        .into_iter()
        .filter(|f| {
            let forward = (f.src, f.dst, f.dst_port) == (packet.src, packet.dst, packet.port.unwrap_or(0));
            f.protocol == decode::protocol_name(packet.protocol) && forward
        })
        .collect();
    Ok(Side {
        direction: decode::direction_name(dir).into(),
        pod,
        mode: decode::mode_name(state.mode()).into(),
        allowed: decision.allowed,
        audited: decision.audited,
        tier: decode::tier_name(decision.tier).into(),
        policy: decode::attribution_label(decision.policy_id, Some(status)),
        matched_prefix,
        isolated_by: status.isolated_by(id.as_str(), dir),
        tracked,
    })
}
