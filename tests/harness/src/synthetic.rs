//! A synthetic cluster at the scale of the benchmarks (100 namespaces, 5,000
//! pods, 1,000 policies) as API objects in JSON, shared by the compiler and
//! agent benchmarks so both measure the same cluster.
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

pub const NAMESPACES: usize = 100;
pub const PODS_PER_NAMESPACE: usize = 50;
pub const POLICIES_PER_NAMESPACE: usize = 10;

/// Namespace `ns-<ns>`: a team label, and `env: prod` on every third.
pub fn namespace(ns: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": format!("ns-{ns}"),
                        "labels": {"team": format!("t{}", ns % 7), "env": if ns.is_multiple_of(3) { "prod" } else { "dev" }}}})
}

/// Where a pod runs and its addresses; remote pods run on `remote-<k>`
/// (never a node a benchmark's agent is on) and get addresses from 10/8 and
/// fd00::/64 by their number.
pub enum Placement<'a> {
    Remote,
    Local { node: &'a str, ip: Ipv4Addr, ip6: Ipv6Addr },
}

/// Pod `pod-<i>` of namespace `ns-<ns>`.
pub fn pod(ns: usize, i: usize, placement: Placement) -> Value {
    let n = ns * PODS_PER_NAMESPACE + i;
    let (node, ip, ip6) = match placement {
        Placement::Remote => (
            format!("remote-{}", n % 40),
            format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256),
            format!("fd00::{:x}", n + 1),
        ),
        Placement::Local { node, ip, ip6 } => (node.to_owned(), ip.to_string(), ip6.to_string()),
    };
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{ns}"), "uid": format!("uid-{ns}-{i}"),
                     "labels": {"app": format!("app-{}", i % 10), "tier": if i.is_multiple_of(2) { "web" } else { "db" }}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080 + (i % 3) as i32}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}, {"ip": ip6}]}})
}

/// Policy `np-<i>` of namespace `ns-<ns>`: a mix of the shapes seen in
/// clusters: same-namespace app peers, cross-namespace peers by label, CIDRs
/// with excepts, named and ranged ports.
pub fn policy(ns: usize, i: usize) -> Value {
    let spec = match i % 5 {
        0 => json!({"podSelector": {"matchLabels": {"app": format!("app-{i}")}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 8080}]}]}),
        1 => json!({"podSelector": {"matchLabels": {"tier": "db"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 7)}},
                                           "podSelector": {"matchLabels": {"app": "app-1"}}}],
                                 "ports": [{"port": "http"}]}]}),
        2 => json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}]},
                               {"ports": [{"protocol": "UDP", "port": 53}]}]}),
        3 => {
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["app-3", "app-4"]}]},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + ns % 16)}}],
                                 "ports": [{"port": 30000, "endPort": 32767}]}],
                    "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": "http"}]}]})
        }
        _ => json!({"podSelector": {"matchLabels": {"app": format!("app-{}", i % 10)}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}]}),
    };
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": format!("np-{i}"), "namespace": format!("ns-{ns}")}, "spec": spec})
}

/// Whether pod `n` (numbered across namespaces) is one of `local` pods spread
/// evenly over the cluster; `Some(k)` gives its rank among them.
pub fn local_rank(n: usize, local: usize) -> Option<usize> {
    let stride = NAMESPACES * PODS_PER_NAMESPACE / local;
    (n.is_multiple_of(stride) && n / stride < local).then_some(n / stride)
}
