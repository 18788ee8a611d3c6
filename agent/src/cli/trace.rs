//! `na-cli trace <src> <dst> <proto>[/<port>]`: the verdict the loaded maps
//! give the first packet of a new flow, on the sending pod's egress and the
//! receiving pod's ingress, and the rule that decides each. A destination
//! that is a Service frontend is judged, as the datapath judges it, on each
//! endpoint DNAT may pick (as the Service's EndpointSlices list them).
//!
//! The decision is the programs' own ([`na_common::decision::decide`]) run on
//! the live maps, with the kernel's longest-prefix match; only the prefix
//! shown as "matched" is found here, for the explanation.
use std::{fmt::Write as _, net::IpAddr};

use aya::maps::{MapError, lpm_trie::Key};
use ipnet::IpNet;
use na_common::{
    decision::{Query, decide},
    direction, names,
    policy::RuleSet,
};
use serde::{Deserialize, Serialize};

use super::{
    CliError, Sources,
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
    /// What decided, as flow logs name it.
    pub tier: String,
    /// The rule that allowed it, `-` when none did.
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

/// Parses `tcp/80`, `udp/53`, `sctp/9000`, `icmp`, `icmpv6` or a protocol number.
pub fn parse_protocol(spec: &str) -> Result<(u8, Option<u16>), CliError> {
    let bad = |why: String| CliError::BadArgument(format!("{spec:?}: {why} (try tcp/80, udp/53 or icmp)"));
    let (name, port) = match spec.split_once('/') {
        Some((name, port)) => (name, Some(port)),
        None => (spec, None),
    };
    let protocol = decode::protocol_number(name).ok_or_else(|| bad(format!("unknown protocol {name:?}")))?;
    match (na_common::protocol::has_ports(protocol), port) {
        (true, Some(port)) => {
            Ok((protocol, Some(port.parse().map_err(|_| bad(format!("{port:?} is not a port number")))?)))
        }
        (true, None) => Err(bad(format!("{name} needs a destination port"))),
        (false, Some(_)) => Err(bad(format!("{name} has no ports"))),
        (false, None) => Ok((protocol, None)),
    }
}

pub fn trace(sources: &Sources, packet: Packet) -> Result<Trace, CliError> {
    if packet.src.is_ipv4() != packet.dst.is_ipv4() {
        return Err(CliError::BadArgument(format!("{} and {} are of different families", packet.src, packet.dst)));
    }
    // An agent that never wrote it (an older one) knows no Services; one
    // that cannot be read must not make a Service address look like a plain one.
    let path = services_path(&sources.status_file);
    let routes = match ServiceRoutes::read(&path) {
        Ok(routes) => routes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ServiceRoutes::default(),
        Err(source) => return Err(CliError::Read { path: path.display().to_string(), source }),
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

fn trace_direct(sources: &Sources, packet: Packet) -> Result<Trace, CliError> {
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
        return Err(CliError::NotFound(format!(
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
) -> Result<Side, CliError> {
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
                failure = Some(CliError::kernel(trie_name, &e));
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
        tier: decode::tier_name(decision.tier).into(),
        policy: decode::attribution_label(decision.policy_id, Some(status)),
        matched_prefix,
        isolated_by: status.isolated_by(id.as_str(), dir),
        tracked,
    })
}

pub fn render(t: &Trace) -> String {
    let mut s = String::new();
    let what = match t.port {
        Some(port) => format!("{}/{port}", t.protocol),
        None => t.protocol.clone(),
    };
    let _ = writeln!(s, "{} -> {} {what} (the first packet of a new flow)", t.src, t.dst);
    if let Some(service) = &t.service {
        let _ =
            writeln!(s, "  Service {service}: judged on the endpoint kube-proxy picks ({} known)", t.endpoints.len());
        for e in &t.endpoints {
            let _ = writeln!(s, "  to endpoint {}: {}", read::socket(e.dst, e.port.unwrap_or(0)), verdict(e.allowed));
            render_sides(&mut s, e, "    ");
        }
        let reached = t.endpoints.iter().filter(|e| e.allowed).count();
        let _ = writeln!(s, "Verdict: {} ({reached} of {} endpoints reached)", verdict(t.allowed), t.endpoints.len());
        return s;
    }
    render_sides(&mut s, t, "  ");
    let _ = writeln!(s, "Verdict: {}", verdict(t.allowed));
    s
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "ALLOW" } else { "DENY" }
}

fn render_sides(s: &mut String, t: &Trace, indent: &str) {
    for side in &t.sides {
        let verdict = verdict(side.allowed);
        let _ = writeln!(s, "{indent}{:<7} of {:<24} {verdict:<5}  {}", side.direction, side.pod, explain(side));
        for f in &side.tracked {
            let _ = writeln!(
                s,
                "{indent}        tracked already: {} -> {} ({}, idle {:.1}s): passes until the policy changes",
                read::socket(f.src, f.src_port),
                read::socket(f.dst, f.dst_port),
                f.policy,
                f.idle_secs
            );
        }
    }
}

fn explain(side: &Side) -> String {
    let prefix = side.matched_prefix.map_or_else(|| "no prefix holds the peer".to_owned(), |p| format!("prefix {p}"));
    match (side.mode.as_str(), side.allowed) {
        ("default-allow", _) => "no policy isolates this direction".into(),
        ("default-deny", false) => format!("isolated before its policies are known (strict mode); {prefix}"),
        (_, true) => format!("by {} ({prefix})", side.policy),
        (_, false) if side.isolated_by.is_empty() => format!("no rule admits it ({prefix})"),
        (_, false) => format!("no rule admits it ({prefix}); isolated by {}", side.isolated_by.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use na_common::protocol;

    use super::*;

    #[test]
    fn a_trace_through_a_service_shows_each_endpoint() {
        let side = |allowed| Side {
            direction: "egress".into(),
            pod: "x/a".into(),
            mode: "policies-applied".into(),
            allowed,
            tier: "rule".into(),
            policy: if allowed { "x/a-to-b egress[0]".into() } else { "-".into() },
            matched_prefix: None,
            isolated_by: vec!["x/a-to-b".into()],
            tracked: Vec::new(),
        };
        let to = |dst: &str, allowed| Trace {
            src: "198.18.0.2".parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: "TCP".into(),
            port: Some(80),
            sides: vec![side(allowed)],
            allowed,
            service: None,
            endpoints: Vec::new(),
        };
        let t = Trace {
            dst: "10.96.0.10".parse().unwrap(),
            port: Some(8080),
            sides: Vec::new(),
            service: Some("x/db".into()),
            endpoints: vec![to("198.18.0.3", true), to("198.18.0.4", false)],
            ..to("198.18.0.3", true)
        };
        let text = render(&t);
        assert!(text.contains("Service x/db: judged on the endpoint kube-proxy picks (2 known)"), "{text}");
        assert!(text.contains("  to endpoint 198.18.0.3:80: ALLOW\n    egress  of x/a"), "{text}");
        assert!(text.contains("  to endpoint 198.18.0.4:80: DENY"), "{text}");
        assert!(text.contains("no rule admits it (no prefix holds the peer); isolated by x/a-to-b"), "{text}");
        assert!(text.ends_with("Verdict: ALLOW (1 of 2 endpoints reached)\n"), "{text}");
    }

    #[test]
    fn protocol_specs() {
        assert_eq!(parse_protocol("tcp/80").unwrap(), (protocol::TCP, Some(80)));
        assert_eq!(parse_protocol("SCTP/9000").unwrap(), (protocol::SCTP, Some(9000)));
        assert_eq!(parse_protocol("icmp").unwrap(), (protocol::ICMP, None));
        assert_eq!(parse_protocol("47").unwrap(), (47, None));
        for bad in ["tcp", "tcp/http", "icmp/3", "foo/1", "tcp/70000"] {
            assert!(matches!(parse_protocol(bad), Err(CliError::BadArgument(_))), "{bad}");
        }
    }
}
