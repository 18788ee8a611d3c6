//! The families made from the base policy with one thing changed (Cyclonus'
//! `targetcases.go`, `rulescases.go`, `peerscases.go`,
//! `portprotocolcases.go`, `namespacecases.go`).
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{
    Action, GenCase, Kind, direction,
    netpol::{Netpol, Rule, base, empty_selector, match_in, match_labels, port},
};
use crate::template::network;

fn create(policy: Netpol) -> Vec<Action> {
    vec![Action::CreatePolicy(policy.to_json())]
}

pub fn target() -> Vec<GenCase> {
    let mut cases: Vec<GenCase> = ["x", "y", "z"]
        .iter()
        .map(|ns| {
            GenCase::one_step(
                Kind::Target,
                &format!("set namespace to {ns}"),
                &["target-namespace"],
                create(base().set_namespace(ns)),
            )
        })
        .collect();
    for selector in [empty_selector(), match_labels("pod", "a"), match_in("pod", &["a", "b"])] {
        cases.push(GenCase::one_step(
            Kind::Target,
            &format!("set pod selector to {}", serialize_selector(&selector)),
            &["target-pod-selector"],
            create(base().set_pod_selector(selector)),
        ));
    }
    cases
}

/// Cyclonus' `kube.SerializeLabelSelector`: its match labels as sorted
/// `key: value` strings, its expressions as they are (`null` when none).
fn serialize_selector(selector: &Value) -> String {
    let labels: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    let expressions = selector.get("matchExpressions").cloned().unwrap_or(Value::Null);
    serde_json::to_string(&json!(["MatchLabels", labels, "MatchExpression", expressions])).expect("json")
}

pub fn rules() -> Vec<GenCase> {
    let mut cases = Vec::new();
    for ingress in [false, true] {
        let dir = direction(ingress);
        cases.push(GenCase::one_step(
            Kind::Rules,
            &format!("{dir}: deny all"),
            &[dir, "deny-all"],
            create(base().set_rules(ingress, Vec::new())),
        ));
        cases.push(GenCase::one_step(
            Kind::Rules,
            &format!("{dir}: allow all"),
            &[dir, "allow-all"],
            create(base().set_rules(ingress, vec![Rule::default()])),
        ));
    }
    cases
}

/// A peer of the Peers family: its name, the object, its tags.
struct Peer {
    description: &'static str,
    peer: Value,
    tags: Vec<&'static str>,
}

/// The ten peers, in Cyclonus' order (`podPeers`, `ipBlockPeers`); both
/// selectors absent is not a valid peer, so it is not one of them.
fn peer_list(zc: IpAddr) -> Vec<Peer> {
    let pod_c = || match_labels("pod", "c");
    let ns_x = || match_labels("ns", "x");
    let pods = |description, pod: Option<Value>, ns: Option<Value>| {
        let mut peer = serde_json::Map::new();
        let pod_tag = match &pod {
            Some(sel) if sel != &empty_selector() => "pods-by-label",
            _ => "all-pods",
        };
        let ns_tag = match &ns {
            None => "policy-namespace",
            Some(sel) if sel == &empty_selector() => "all-namespaces",
            Some(_) => "namespaces-by-label",
        };
        if let Some(pod) = pod {
            peer.insert("podSelector".into(), pod);
        }
        if let Some(ns) = ns {
            peer.insert("namespaceSelector".into(), ns);
        }
        Peer { description, peer: Value::Object(peer), tags: vec![ns_tag, pod_tag] }
    };
    let (all_but_8, all_but_4) = match zc {
        IpAddr::V4(_) => (24, 28),
        IpAddr::V6(_) => (120, 124),
    };
    let cidr = |bits| network(zc, bits).expect("a prefix within the family");
    vec![
        pods("empty pods + nil ns", Some(empty_selector()), None),
        pods("pods by label + nil ns", Some(pod_c()), None),
        pods("nil pods + empty ns", None, Some(empty_selector())),
        pods("empty pods + empty ns", Some(empty_selector()), Some(empty_selector())),
        pods("pods by label + empty ns", Some(pod_c()), Some(empty_selector())),
        pods("nil pods + ns by label", None, Some(ns_x())),
        pods("empty pods + ns by label", Some(empty_selector()), Some(ns_x())),
        pods("pods by label + ns by label", Some(pod_c()), Some(ns_x())),
        Peer {
            description: "simple ipblock",
            peer: json!({"ipBlock": {"cidr": cidr(all_but_8)}}),
            tags: vec!["ip-block-no-except"],
        },
        Peer {
            description: "ipblock with except",
            peer: json!({"ipBlock": {"cidr": cidr(all_but_8), "except": [cidr(all_but_4)]}}),
            tags: vec!["ip-block-with-except"],
        },
    ]
}

pub fn peers(zc: IpAddr) -> Vec<GenCase> {
    let list = peer_list(zc);
    let mut cases = Vec::new();
    for ingress in [true, false] {
        let dir = direction(ingress);
        cases.push(GenCase::one_step(
            Kind::Peers,
            &format!("{dir}: empty peers"),
            &[dir, "any-peer"],
            create(base().set_peers(ingress, Vec::new())),
        ));
    }
    for ingress in [true, false] {
        for p in &list {
            let mut tags = p.tags.clone();
            tags.push(direction(ingress));
            cases.push(GenCase::one_step(
                Kind::Peers,
                p.description,
                &tags,
                create(base().set_peers(ingress, vec![p.peer.clone()])),
            ));
        }
    }
    for ingress in [true, false] {
        let dir = direction(ingress);
        for (i, p1) in list.iter().enumerate() {
            for p2 in &list[i + 1..] {
                let mut tags = p1.tags.clone();
                tags.extend(["multi-peer", dir]);
                tags.extend(&p2.tags);
                cases.push(GenCase::one_step(
                    Kind::Peers,
                    &format!("{dir}, 2-peer: {}, {}", p1.description, p2.description),
                    &tags,
                    create(base().set_peers(ingress, vec![p1.peer.clone(), p2.peer.clone()])),
                ));
            }
        }
    }
    cases
}

/// A port's tags: Cyclonus' `describePort`, `describeProtocol`,
/// `describeEndPort`.
fn port_tags(p: &Value) -> Vec<&'static str> {
    let mut tags = vec![match &p["port"] {
        Value::Null => "any-port",
        Value::String(_) => "named-port",
        _ => "numbered-port",
    }];
    if let Some(protocol) = p["protocol"].as_str() {
        tags.push(match protocol {
            "TCP" => "tcp",
            "UDP" => "udp",
            _ => "sctp",
        });
    }
    if !p["endPort"].is_null() {
        tags.push("end-port");
    }
    tags
}

/// `networkPolicyPorts`: every protocol (or none) with every port (or none),
/// the served ports by name, and ranges from 53.
fn single_ports() -> Vec<Value> {
    let mut ports = Vec::new();
    for protocol in [None, Some("TCP"), Some("UDP"), Some("SCTP")] {
        for n in [None, Some(80), Some(81)] {
            ports.push(port(protocol, n.map(|n: u16| json!(n)), None));
        }
    }
    for protocol in ["TCP", "UDP", "SCTP"] {
        for n in [80, 81] {
            ports.push(port(Some(protocol), Some(json!(format!("serve-{n}-{}", protocol.to_lowercase()))), None));
        }
    }
    for protocol in ["TCP", "UDP", "SCTP"] {
        for end in [80, 84] {
            ports.push(port(Some(protocol), Some(json!(53)), Some(end)));
        }
    }
    ports
}

pub fn port_protocol() -> Vec<GenCase> {
    let mut cases = Vec::new();
    for ingress in [false, true] {
        let dir = direction(ingress);
        cases.push(GenCase::one_step(
            Kind::PortProtocol,
            &format!("{dir}: empty port/protocol"),
            &[dir, "any-port-protocol"],
            create(base().set_ports(ingress, Vec::new())),
        ));
    }
    for ingress in [false, true] {
        let dir = direction(ingress);
        for p in single_ports() {
            let mut tags = vec![dir];
            tags.extend(port_tags(&p));
            cases.push(GenCase::one_step(Kind::PortProtocol, "", &tags, create(base().set_ports(ingress, vec![p]))));
        }
        let pathological = [
            ("open a named port that doesn't match its protocol", json!("serve-81-udp")),
            ("open a named port that isn't served", json!("serve-7981-udp")),
            ("open a numbered port that isn't served", json!(7981)),
        ];
        for (description, n) in pathological {
            let p = port(Some("TCP"), Some(n), None);
            let mut tags = vec!["pathological", dir];
            tags.extend(port_tags(&p));
            cases.push(GenCase::one_step(
                Kind::PortProtocol,
                description,
                &tags,
                create(base().set_ports(ingress, vec![p])),
            ));
        }
    }
    let any = || port(None, None, None);
    let numbered = |protocol, n: u16| port(protocol, Some(json!(n)), None);
    let named = |protocol, name: &str| port(protocol, Some(json!(name)), None);
    let pairs = || {
        [
            [any(), numbered(None, 80)],
            [any(), named(None, "serve-80-tcp")],
            [any(), port(Some("UDP"), None, None)],
            [numbered(None, 80), numbered(None, 81)],
            [numbered(None, 80), named(None, "serve-81-tcp")],
            [numbered(None, 80), named(Some("UDP"), "serve-81-udp")],
            [numbered(Some("UDP"), 80), named(Some("UDP"), "serve-81-udp")],
        ]
    };
    for ingress in [false, true] {
        let dir = direction(ingress);
        for pair in pairs() {
            let mut tags = vec!["multi-port/protocol", dir];
            for p in &pair {
                tags.extend(port_tags(p).into_iter().filter(|t| *t != "end-port"));
            }
            cases.push(GenCase::one_step(
                Kind::PortProtocol,
                "",
                &tags,
                create(base().set_ports(ingress, pair.to_vec())),
            ));
        }
    }
    cases
}

pub fn namespace() -> Vec<GenCase> {
    let peers = || vec![json!({"namespaceSelector": match_labels("kubernetes.io/metadata.name", "z")})];
    [true, false]
        .into_iter()
        .map(|ingress| {
            let dir = direction(ingress);
            GenCase::one_step(
                Kind::Namespace,
                &format!("{dir}: select namespace by default label"),
                &["namespaces-by-default-label", dir],
                create(base().set_peers(ingress, peers())),
            )
        })
        .collect()
}
