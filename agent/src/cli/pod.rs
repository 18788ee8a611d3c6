//! `na-cli pod <namespace>/<name> | <ip>`: everything the datapath holds for
//! one pod, its rules grouped by the policy rule that produced them.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use ipnet::IpNet;
use na_common::{direction, names};
use serde::{Deserialize, Serialize};

use super::{
    CliError, Sources,
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
}

/// Resolves `which` (`namespace/name` or an address) to a pod id.
pub fn resolve(sources: &Sources, which: &str) -> Result<(PodId, Option<Status>), CliError> {
    if let Ok(ip) = which.parse::<IpAddr>() {
        let status = sources.status("find the pod with an address")?;
        let id = status
            .pod_by_ip(ip)
            .map(|p| PodId::from_raw(p.pod_id.clone()))
            .ok_or_else(|| CliError::NotFound(format!("no pod on this node has address {ip}")))?;
        return Ok((id, Some(status)));
    }
    let (namespace, name) = which
        .split_once('/')
        .ok_or_else(|| CliError::BadArgument(format!("{which:?} is neither namespace/name nor an IP address")))?;
    Ok((PodId::new(namespace, name), sources.status_if_any()))
}

pub fn show(sources: &Sources, which: &str) -> Result<PodReport, CliError> {
    let (id, status) = resolve(sources, which)?;
    let programs: Vec<ProgramRef> = crate::datapath::inventory::attachments(&sources.layout)?
        .into_iter()
        .filter(|p| p.pod_id == id.as_str())
        .map(|p| ProgramRef { direction: p.direction, prog_id: p.prog_id })
        .collect();
    if programs.is_empty() {
        return Err(CliError::NotFound(format!("no programs are loaded for {which} (pod id {id}) on this node")));
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
                });
            }
        }
        directions.push(DirectionReport {
            direction: crate::decode::direction_name(dir).into(),
            mode: crate::decode::mode_name(state.mode()).into(),
            generation: state.generation,
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

pub fn render(r: &PodReport) -> String {
    let mut s = String::new();
    let unknown = || "(not in the status file)".to_owned();
    let _ = writeln!(s, "Pod            : {}", r.pod.clone().unwrap_or_else(unknown));
    let _ = writeln!(s, "Pod Identifier : {}", r.pod_id);
    let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
    let _ = writeln!(s, "Addresses      : {}", if ips.is_empty() { unknown() } else { ips.join(", ") });
    let _ = writeln!(s, "Host veth      : {}", r.veth.clone().unwrap_or_else(unknown));
    if r.assumed {
        let _ = writeln!(
            s,
            "Assumed        : started before the agent knew it; judged as a pod without labels until its object arrives"
        );
    }
    for p in &r.programs {
        let _ = writeln!(s, "Program        : {} (id {})", p.direction, p.prog_id);
    }
    for d in &r.directions {
        let _ = writeln!(s, "\n{} : {} (generation {})", d.direction.to_uppercase(), d.mode, d.generation);
        if d.mode == "default-allow" {
            let _ = writeln!(s, "  no policy isolates this direction: everything passes");
            continue;
        }
        if !d.isolated_by.is_empty() {
            let _ = writeln!(s, "  isolated by {}", d.isolated_by.join(", "));
        }
        for p in &d.policies {
            let _ = writeln!(s, "  {}", p.policy);
            for g in &p.grants {
                let _ = writeln!(s, "    {} {} {}", g.prefix, g.protocol, g.ports);
            }
        }
        for h in &d.holes {
            let _ = writeln!(s, "  except {h}: denied");
        }
        let _ = writeln!(s, "  anything else: denied");
    }
    let _ = writeln!(s, "\nCOUNTERS");
    s.push_str(&read::counters_table(&r.counters));
    let _ = writeln!(s, "\nTRACKED FLOWS ({})", r.flows.len());
    s.push_str(&read::flow_rows_table(&r.flows));
    s
}
