//! The reference evaluator: NetworkPolicy and ClusterNetworkPolicy
//! semantics read straight off the Kubernetes objects, one packet at a
//! time, sharing no code with the compiler. Slow and obviously right; the
//! property tests hold the compiler's output (through [`crate::lpm::judge`])
//! to it.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use serde_json::Value;

use crate::output::Direction;

/// A rule's peers and ports as the object spells them.
type RawRule<'a> = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>);

/// Everything the verdict depends on.
pub struct World<'a> {
    pub policies: &'a [NetworkPolicy],
    /// ClusterNetworkPolicy objects as JSON, upstream's CRD.
    pub cluster_policies: &'a [Value],
    pub pods: &'a [Pod],
    pub namespaces: &'a [Namespace],
    /// Addresses always allowed into pods (the node's).
    pub node_ips: &'a [IpAddr],
    /// Strict enforcing mode (the AWS agent's `NETWORK_POLICY_ENFORCING_MODE`):
    /// a direction no policy isolates is isolated anyway, by no rule, so only
    /// the node may reach the pod.
    pub strict: bool,
    /// Every namespace is audited (as if annotated).
    pub audit: bool,
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
///
/// The node may always reach its pods. Then the admin tier's rules in order
/// (policies by priority, then name; rules as listed) until one matches:
/// Accept and Deny decide, Pass goes on to NetworkPolicy. NetworkPolicy
/// decides where a policy selects the pod (or strict mode isolates it): an
/// audited namespace's denials pass. Otherwise the baseline tier's rules
/// the same way (Pass: open), and then the direction is open.
pub fn allows(w: &World, target: &Pod, dir: Direction, peer: IpAddr, protocol: u8, port: Option<u16>) -> bool {
    if dir == Direction::Ingress && w.node_ips.contains(&peer) {
        return true;
    }
    let packet = Packet { target, dir, peer, protocol, port };
    match first_cluster_match(w, "Admin", &packet) {
        Some("Accept") => return true,
        Some("Deny") => return false,
        _ => {}
    }
    if let Some(allowed) = network_policy_allows(w, &packet) {
        return allowed;
    }
    first_cluster_match(w, "Baseline", &packet) != Some("Deny")
}

/// A packet as the reference sees it.
struct Packet<'a> {
    target: &'a Pod,
    dir: Direction,
    peer: IpAddr,
    protocol: u8,
    port: Option<u16>,
}

/// The action of the first rule of `tier` that applies to the packet.
fn first_cluster_match<'w>(w: &'w World, tier: &str, p: &Packet) -> Option<&'w str> {
    let ns = p.target.metadata.namespace.as_deref().unwrap_or("default");
    let target_labels = p.target.metadata.labels.clone().unwrap_or_default();
    let mut policies: Vec<&Value> = w
        .cluster_policies
        .iter()
        .filter(|c| c["spec"]["tier"] == tier)
        .filter(|c| {
            let subject = &c["spec"]["subject"];
            match (subject.get("namespaces"), subject.get("pods")) {
                (Some(sel), _) => json_selects(sel, &namespace_labels(w, ns)),
                (_, Some(pods)) => {
                    pods.get("namespaceSelector").is_none_or(|s| json_selects(s, &namespace_labels(w, ns)))
                        && json_selects(&pods["podSelector"], &target_labels)
                }
                _ => false,
            }
        })
        .collect();
    policies.sort_by_key(|c| (c["spec"]["priority"].as_u64(), c["metadata"]["name"].as_str()));
    let (list, peers_key) = match p.dir {
        Direction::Ingress => ("ingress", "from"),
        Direction::Egress => ("egress", "to"),
    };
    for c in policies {
        for rule in c["spec"][list].as_array().into_iter().flatten() {
            let action = rule["action"].as_str().expect("generated rules have an action");
            let peers: Vec<&Value> = rule[peers_key].as_array().into_iter().flatten().collect();
            let protocols = rule.get("protocols").and_then(Value::as_array);
            // What this agent cannot read fails closed: an Accept matches
            // nothing, a Deny or Pass denies everything.
            let unknown_peer = peers.iter().any(|peer| cluster_peer_kind(peer, p.dir).is_none());
            let unknown_protocol = protocols.into_iter().flatten().any(|item| {
                let o = item.as_object().expect("protocol items are objects");
                o.len() != 1
                    || !["tcp", "udp", "sctp", "destinationNamedPort"].contains(&o.keys().next().unwrap().as_str())
            });
            if unknown_peer || unknown_protocol {
                if action == "Accept" {
                    continue;
                }
                return Some("Deny");
            }
            let matched = peers.iter().any(|peer| {
                let Some(kind) = cluster_peer_kind(peer, p.dir) else { return false };
                let (member, receiver) = match kind {
                    "networks" => {
                        let inside = peer["networks"].as_array().into_iter().flatten().any(|n| {
                            n.as_str().and_then(|n| n.parse::<IpNet>().ok()).is_some_and(|n| n.contains(&p.peer))
                        });
                        (inside, None)
                    }
                    _ => {
                        let owner = pod_with_ip(w, p.peer).filter(|pod| {
                            let pod_ns = namespace_labels(w, pod.metadata.namespace.as_deref().unwrap_or("default"));
                            let labels = pod.metadata.labels.clone().unwrap_or_default();
                            match kind {
                                "namespaces" => json_selects(&peer["namespaces"], &pod_ns),
                                _ => {
                                    let pods = &peer["pods"];
                                    pods.get("namespaceSelector").is_none_or(|s| json_selects(s, &pod_ns))
                                        && json_selects(&pods["podSelector"], &labels)
                                }
                            }
                        });
                        (owner.is_some(), owner)
                    }
                };
                // Named ports: the receiving pod's, and only pods receive.
                let receiver = match p.dir {
                    Direction::Ingress => Some(p.target),
                    Direction::Egress => receiver,
                };
                member && cluster_ports_match(protocols, receiver, p.protocol, p.port)
            });
            if matched {
                return Some(action);
            }
        }
    }
    None
}

/// The kind of a peer this agent knows in `dir`, `None` for one it does not.
fn cluster_peer_kind(peer: &Value, dir: Direction) -> Option<&'static str> {
    let o = peer.as_object()?;
    if o.len() != 1 {
        return None;
    }
    match (o.keys().next()?.as_str(), dir) {
        ("namespaces", _) => Some("namespaces"),
        ("pods", _) => Some("pods"),
        ("networks", Direction::Egress) => Some("networks"),
        _ => None,
    }
}

fn cluster_ports_match(
    protocols: Option<&Vec<Value>>,
    receiver: Option<&Pod>,
    protocol: u8,
    port: Option<u16>,
) -> bool {
    let Some(items) = protocols else { return true };
    let Some(port) = port else { return false };
    items.iter().any(|item| {
        if let Some(name) = item.get("destinationNamedPort").and_then(Value::as_str) {
            return receiver.is_some_and(|pod| declares_port(pod, name, protocol, port));
        }
        ["tcp", "udp", "sctp"].iter().any(|name| {
            let Some(spec) = item.get(*name) else { return false };
            if proto_number(&name.to_uppercase()) != Some(protocol) {
                return false;
            }
            let dest = &spec["destinationPort"];
            let port = u64::from(port);
            match (dest.get("number").and_then(Value::as_u64), dest.get("range")) {
                (Some(n), _) => n == port,
                (None, Some(r)) => {
                    r["start"].as_u64().is_some_and(|s| s <= port) && r["end"].as_u64().is_some_and(|e| port <= e)
                }
                _ => false,
            }
        })
    })
}

/// A label selector as JSON.
fn json_selects(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    let sel: LabelSelector = serde_json::from_value(sel.clone()).expect("generated selectors are valid");
    selector_matches(Some(&sel), labels)
}

/// NetworkPolicy's verdict: `None` where no policy selects the pod in
/// `dir` (and strict mode does not isolate it).
fn network_policy_allows(w: &World, p: &Packet) -> Option<bool> {
    let ns = p.target.metadata.namespace.as_deref().unwrap_or("default");
    let target_labels = p.target.metadata.labels.clone().unwrap_or_default();
    let selecting: Vec<&NetworkPolicy> = w
        .policies
        .iter()
        .filter(|np| np.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .filter(|np| {
            let spec = np.spec.as_ref().expect("spec");
            selector_matches(spec.pod_selector.as_ref(), &target_labels) && applies_to(np, p.dir)
        })
        .collect();
    if selecting.is_empty() && !w.strict {
        return None;
    }
    let audited = !selecting.is_empty() && (w.audit || namespace_audited(w, ns));
    Some(audited || rules_allow(w, &selecting, p))
}

fn namespace_audited(w: &World, name: &str) -> bool {
    w.namespaces.iter().any(|n| {
        n.metadata.name.as_deref() == Some(name)
            && n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::compile::AUDIT_ANNOTATION))
                .is_some_and(|v| v == "true")
    })
}

/// Whether a rule of the selecting policies admits the packet.
fn rules_allow(w: &World, selecting: &[&NetworkPolicy], p: &Packet) -> bool {
    let (target, dir, peer, protocol, port) = (p.target, p.dir, p.peer, p.protocol, p.port);
    let ns = target.metadata.namespace.as_deref().unwrap_or("default");
    selecting.iter().any(|np| {
        let spec = np.spec.as_ref().expect("spec");
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
            Some(IntOrString::String(name)) => ctx.is_some_and(|pod| declares_port(pod, name, protocol, port)),
        }
    })
}

/// Whether a container of `pod` declares port `name` as `port` of `protocol`.
fn declares_port(pod: &Pod, name: &str, protocol: u8, port: u16) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .flat_map(|c| c.ports.iter().flatten())
        .any(|cp| {
            cp.name.as_deref() == Some(name)
                && proto_number(cp.protocol.as_deref().unwrap_or("TCP")) == Some(protocol)
                && cp.container_port == i32::from(port)
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
