//! `na-cli pod <namespace>/<name> | <ip>`: everything the datapath holds for
//! one pod, its rules grouped by the policy rule that produced them.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use na_common::{direction, names};
use serde::{Deserialize, Serialize};

use super::{
    InspectError, Sources,
    read::{self, FlowRow},
};
use crate::{datapath::PodCounters, pod_id::PodId, status::Status};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PodReport {
    pub pod_id: String,
    /// From the status file; `None` when it does not list the pod.
    pub pod: Option<String>,
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
    pub veth: Option<String>,
    /// The agent did not know the pod when it started (see [`crate::status::PodEntry::assumed`]).
    #[serde(default)]
    pub assumed: bool,
    pub programs: Vec<ProgramRef>,
    pub directions: Vec<DirectionReport>,
    pub counters: PodCounters,
    pub flows: Vec<FlowRow>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRef {
    pub direction: String,
    pub prog_id: u32,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionReport {
    pub direction: String,
    pub mode: String,
    pub generation: u32,
    /// NetworkPolicy denials in this direction pass and are reported.
    #[serde(default)]
    pub audit: bool,
    /// The policies that isolate the pod in this direction (from the status
    /// file): what denies whatever the rules below do not admit.
    #[serde(default)]
    pub isolated_by: Vec<String>,
    /// What the live rule set admits, by the policy rule that admits it.
    pub policies: Vec<PolicyGrants>,
    /// Prefixes carved out by `except` that deny their addresses.
    pub holes: Vec<IpNet>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyGrants {
    /// `namespace/name direction[index]`, `node`, or `#id`.
    pub policy: String,
    pub grants: Vec<Grant>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub prefix: IpNet,
    pub protocol: String,
    pub ports: String,
    /// `allow`, or a cluster tier's action.
    #[serde(default)]
    pub action: String,
}

/// Resolves `which` (`namespace/name` or an address) to a pod id.
pub(crate) fn resolve(sources: &Sources, which: &str) -> Result<(PodId, Option<Status>), InspectError> {
    if let Ok(ip) = which.parse::<IpAddr>() {
        let status = sources.status("find the pod with an address")?;
        let id = status
            .pod_by_ip(ip)
            .map(|p| PodId::from_raw(p.pod_id.clone()))
            .ok_or_else(|| InspectError::NotFound(format!("no pod on this node has address {ip}")))?;
        return Ok((id, Some(status)));
    }
    let (namespace, name) = which
        .split_once('/')
        .ok_or_else(|| InspectError::BadArgument(format!("{which:?} is neither namespace/name nor an IP address")))?;
    Ok((PodId::new(namespace, name), sources.status_if_any()))
}

pub fn show(sources: &Sources, which: &str) -> Result<PodReport, InspectError> {
    let (id, status) = resolve(sources, which)?;
    let programs: Vec<ProgramRef> = crate::datapath::inventory::attachments(&sources.layout)?
        .into_iter()
        .filter(|p| p.pod_id == id.as_str())
        .map(|p| ProgramRef { direction: p.direction, prog_id: p.prog_id })
        .collect();
    if programs.is_empty() {
        return Err(InspectError::NotFound(format!("no programs are loaded for {which} (pod id {id}) on this node")));
    }
    let status = status.as_ref();
    let entry = status.and_then(|s| s.pod_by_id(id.as_str()));
    let layout = &sources.layout;
    let states = read::states(layout, &id)?;
    let mut directions = Vec::new();
    for (dir, map) in [(direction::INGRESS, names::MAP_INGRESS), (direction::EGRESS, names::MAP_EGRESS)] {
        let state = states[dir as usize];
        let rows = read::prefixes(&read::pinned(layout, &id, map)?, Some(state.active_set()), status)?;
        let mut policies: BTreeMap<String, Vec<Grant>> = BTreeMap::new();
        let mut holes = Vec::new();
        for row in rows.into_iter().filter(|r| r.active) {
            if row.rules.is_empty() {
                holes.push(row.prefix);
            }
            for rule in row.rules {
                policies.entry(rule.policy).or_default().push(Grant {
                    prefix: row.prefix,
                    protocol: rule.protocol,
                    ports: rule.ports,
                    action: rule.action,
                });
            }
        }
        directions.push(DirectionReport {
            direction: crate::decode::direction_name(dir).into(),
            mode: crate::decode::mode_name(state.mode()).into(),
            generation: state.generation,
            audit: state.audit(),
            // What the maps enforce decides: a direction left open (a pod
            // whose rules failed to compile in standard mode) names none.
            isolated_by: status
                .filter(|_| state.mode() != na_common::pod_state::DEFAULT_ALLOW)
                .map(|s| s.isolated_by(id.as_str(), dir))
                .unwrap_or_default(),
            policies: policies.into_iter().map(|(policy, grants)| PolicyGrants { policy, grants }).collect(),
            holes,
        });
    }
    Ok(PodReport {
        pod_id: id.to_string(),
        pod: entry.map(|p| format!("{}/{}", p.namespace, p.name)),
        uid: entry.map(|p| p.uid.clone()),
        ips: entry.map(|p| p.ips.clone()).unwrap_or_default(),
        veth: entry.map(|p| p.veth.clone()),
        assumed: entry.is_some_and(|p| p.assumed),
        programs,
        directions,
        counters: read::pod_counters(layout, &id)?,
        flows: read::flows(&read::pinned(layout, &id, names::MAP_CONNTRACK)?, status)?,
    })
}
