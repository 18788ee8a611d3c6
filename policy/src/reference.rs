//! The reference evaluator: NetworkPolicy semantics read straight off the
//! Kubernetes objects, one packet at a time, sharing no code with the
//! compiler. Slow and obviously right; the property tests hold the compiler's
//! output (through [`crate::lpm::judge`]) to it.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::output::Direction;

/// A rule's peers and ports as the object spells them.
type RawRule<'a> = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>);

/// Everything the verdict depends on.
pub struct World<'a> {
    pub policies: &'a [NetworkPolicy],
    pub pods: &'a [Pod],
    pub namespaces: &'a [Namespace],
    /// Addresses always allowed into pods (the node's).
    pub node_ips: &'a [IpAddr],
    /// Strict enforcing mode (the AWS agent's `NETWORK_POLICY_ENFORCING_MODE`):
    /// a direction no policy isolates is isolated anyway, by no rule, so only
    /// the node may reach the pod.
    pub strict: bool,
}

/// Whether the agent on `node` enforces `pod`'s policies: the pod runs there
/// in a network namespace of its own (a hostNetwork pod shares the node's and
/// has no veth) and has not finished (a Succeeded or Failed pod's sandbox is
/// gone and its address may already be another pod's). Its addresses need not
/// be known: its veth exists before its status shows them.
pub fn is_local(pod: &Pod, node: &str) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref()) == Some(node) && !is_host_network(pod) && !is_terminal(pod)
}

/// Whether `target` accepts (ingress) or may send (egress) a packet whose other
/// end is `peer`. `port` is the destination port; `None` for protocols
/// without ports.
pub fn allows(w: &World, target: &Pod, dir: Direction, peer: IpAddr, protocol: u8, port: Option<u16>) -> bool {
    let ns = target.metadata.namespace.as_deref().unwrap_or("default");
    let target_labels = target.metadata.labels.clone().unwrap_or_default();
    let selecting: Vec<&NetworkPolicy> = w
        .policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .filter(|p| {
            let spec = p.spec.as_ref().expect("spec");
            selector_matches(spec.pod_selector.as_ref(), &target_labels) && applies_to(p, dir)
        })
        .collect();
    if selecting.is_empty() && !w.strict {
        return true;
    }
    if dir == Direction::Ingress && w.node_ips.contains(&peer) {
        return true;
    }
    selecting.iter().any(|p| {
        let spec = p.spec.as_ref().expect("spec");
        let rules: Vec<RawRule> = match dir {
            Direction::Ingress => spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect(),
            Direction::Egress => spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect(),
        };
        rules.into_iter().any(|(peers, ports)| {
            let clauses: Vec<Option<&NetworkPolicyPeer>> = match peers {
                Some(list) if !list.is_empty() => list.iter().map(Some).collect(),
                _ => vec![None],
            };
            clauses.into_iter().any(|clause| {
                let (member, owner) = match clause {
                    None => (true, pod_with_ip(w, peer)),
                    Some(c) => match &c.ip_block {
                        Some(b) => {
                            let inside = |s: &str| s.parse::<IpNet>().is_ok_and(|n| n.contains(&peer));
                            (inside(&b.cidr) && !b.except.iter().flatten().any(|e| inside(e)), None)
                        }
                        None => {
                            let owner = pod_with_ip(w, peer).filter(|pod| {
                                let pod_ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                                let ns_ok = match &c.namespace_selector {
                                    None => pod_ns == ns,
                                    Some(sel) => selector_matches(Some(sel), &namespace_labels(w, pod_ns)),
                                };
                                ns_ok
                                    && selector_matches(
                                        c.pod_selector.as_ref(),
                                        &pod.metadata.labels.clone().unwrap_or_default(),
                                    )
                            });
                            (owner.is_some(), owner)
                        }
                    },
                };
                let ctx = match dir {
                    Direction::Ingress => Some(target),
                    Direction::Egress => owner,
                };
                member && ports_match(ports, ctx, protocol, port)
            })
        })
    })
}

fn applies_to(p: &NetworkPolicy, dir: Direction) -> bool {
    let spec = p.spec.as_ref().expect("spec");
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == dir_name(dir)),
        _ => match dir {
            Direction::Ingress => true,
            Direction::Egress => spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
        },
    }
}

fn dir_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    }
}

/// The running, non-hostNetwork pod that has `ip`.
fn pod_with_ip<'a>(w: &World<'a>, ip: IpAddr) -> Option<&'a Pod> {
    w.pods.iter().find(|p| {
        let has_ip = p.status.as_ref().is_some_and(|s| {
            s.pod_ip.as_deref().and_then(|i| i.parse().ok()) == Some(ip)
                || s.pod_ips.iter().flatten().any(|i| i.ip.parse().ok() == Some(ip))
        });
        !is_host_network(p) && !is_terminal(p) && has_ip
    })
}

fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// Succeeded or Failed.
fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn namespace_labels(w: &World, name: &str) -> BTreeMap<String, String> {
    let mut labels = w
        .namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| name.into());
    labels
}

fn selector_matches(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return true };
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn ports_match(ports: Option<&Vec<NetworkPolicyPort>>, ctx: Option<&Pod>, protocol: u8, port: Option<u16>) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else { return true };
    ports.iter().any(|spec| {
        let proto = spec.protocol.as_deref().unwrap_or("TCP");
        if proto_number(proto) != Some(protocol) {
            return false;
        }
        let Some(port) = port else { return false };
        match &spec.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = spec.end_port.unwrap_or(*n);
                i32::from(port) >= *n && i32::from(port) <= end
            }
            Some(IntOrString::String(name)) => ctx.is_some_and(|pod| {
                pod.spec
                    .iter()
                    .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                    .flat_map(|c| c.ports.iter().flatten())
                    .any(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == proto
                            && cp.container_port == i32::from(port)
                    })
            }),
        }
    })
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}
