//! Random clusters and packets: what the compiled entries admit (judged the
//! way the kernel judges them) must be exactly what the reference evaluator
//! derives from the objects.
use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_common::protocol::{ICMP, SCTP, TCP, UDP};
use na_policy::{CompileOptions, Compiler, Direction, lpm, reference};
use proptest::{prelude::*, sample::subsequence};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const NODE_IP: &str = "192.0.2.1";
const KEYS: [&str; 3] = ["app", "tier", "team"];
const VALUES: [&str; 2] = ["a", "b"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];

fn labels() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(prop::sample::select(KEYS.to_vec()), prop::sample::select(VALUES.to_vec()), 0..3)
        .prop_map(|m| json!(m))
}

fn selector() -> impl Strategy<Value = Value> {
    let expr = (prop::sample::select(KEYS.to_vec()), 0..4usize, subsequence(VALUES.to_vec(), 1..=2)).prop_map(
        |(key, op, values)| match op {
            0 => json!({"key": key, "operator": "In", "values": values}),
            1 => json!({"key": key, "operator": "NotIn", "values": values}),
            2 => json!({"key": key, "operator": "Exists"}),
            _ => json!({"key": key, "operator": "DoesNotExist"}),
        },
    );
    (labels(), proptest::collection::vec(expr, 0..2))
        .prop_map(|(l, e)| json!({"matchLabels": l, "matchExpressions": e}))
}

/// Blocks with their possible excepts (strictly inside, same family).
const BLOCKS: [(&str, &[&str]); 6] = [
    ("0.0.0.0/0", &["10.0.0.0/24", "10.0.0.0/30", "192.0.2.0/24"]),
    ("10.0.0.0/24", &["10.0.0.0/30", "10.0.0.4/31", "10.0.0.2/32"]),
    ("10.0.0.0/29", &["10.0.0.4/30"]),
    ("::/0", &["fd00::/120", "fd00::/126"]),
    ("fd00::/120", &["fd00::/126", "fd00::3/128"]),
    ("192.0.2.0/24", &[]),
];

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        selector().prop_map(|s| json!({"namespaceSelector": s})),
        (selector(), selector()).prop_map(|(n, p)| json!({"namespaceSelector": n, "podSelector": p})),
        (0..BLOCKS.len(), any::<u8>()).prop_map(|(i, mask)| {
            let (cidr, excepts) = BLOCKS[i];
            let except: Vec<&str> =
                excepts.iter().enumerate().filter(|(j, _)| mask & (1 << j) != 0).map(|(_, e)| *e).collect();
            json!({"ipBlock": {"cidr": cidr, "except": except}})
        }),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    let proto = prop::sample::select(vec!["TCP", "UDP", "SCTP"]);
    prop_oneof![
        proto.clone().prop_map(|p| json!({"protocol": p})),
        (proto.clone(), prop::sample::select(vec![53, 80, 81, 8080]))
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
        (proto.clone(), prop::sample::select(vec![79, 80, 81]), 0..3i32)
            .prop_map(|(p, n, w)| json!({"protocol": p, "port": n, "endPort": n + w})),
        (proto, prop::sample::select(vec!["http", "dns", "alt", "none"]))
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
    ]
}

fn rule(peers_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(proptest::collection::vec(peer(), 1..3)),
        prop::option::of(proptest::collection::vec(port(), 1..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = serde_json::Map::new();
            if let Some(p) = peers {
                r.insert(peers_key.into(), json!(p));
            }
            if let Some(p) = ports {
                r.insert("ports".into(), json!(p));
            }
            Value::Object(r)
        })
}

fn policy(i: usize) -> impl Strategy<Value = Value> {
    let types =
        prop::sample::select(vec![json!(null), json!(["Ingress"]), json!(["Egress"]), json!(["Ingress", "Egress"])]);
    (
        prop::sample::select(NAMESPACES.to_vec()),
        selector(),
        types,
        prop::option::of(proptest::collection::vec(rule("from"), 0..3)),
        prop::option::of(proptest::collection::vec(rule("to"), 0..3)),
    )
        .prop_map(move |(ns, sel, types, ingress, egress)| {
            json!({"metadata": {"name": format!("np{i}"), "namespace": ns},
                   "spec": {"podSelector": sel, "policyTypes": types, "ingress": ingress, "egress": egress}})
        })
}

fn pod(i: usize) -> impl Strategy<Value = Value> {
    let named = subsequence(
        vec![
            json!({"name": "http", "containerPort": 80}),
            json!({"name": "http", "containerPort": 8080}),
            json!({"name": "dns", "containerPort": 53, "protocol": "UDP"}),
            json!({"name": "alt", "containerPort": 81, "protocol": "SCTP"}),
        ],
        0..3,
    )
    .prop_filter("one port per name", |ports| {
        let names: Vec<&str> = ports.iter().map(|p| p["name"].as_str().unwrap()).collect();
        names.iter().collect::<std::collections::BTreeSet<_>>().len() == names.len()
    });
    (prop::sample::select(NAMESPACES.to_vec()), labels(), any::<bool>(), any::<bool>(), 0..20u8, named).prop_map(
        move |(ns, labels, local, dual, special, ports)| {
            let host = special == 0;
            let done = special == 1;
            let v4 = if host { NODE_IP.to_owned() } else { format!("10.0.0.{}", i + 1) };
            let mut ips = vec![json!({"ip": v4})];
            if dual && !host {
                ips.push(json!({"ip": format!("fd00::{}", i + 1)}));
            }
            json!({
                "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": labels},
                "spec": {"nodeName": if local { NODE } else { "node-2" }, "hostNetwork": host,
                         "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": if done { "Succeeded" } else { "Running" }, "podIP": v4, "podIPs": ips}
            })
        },
    )
}

fn world() -> impl Strategy<Value = (Vec<Value>, Vec<Value>, Vec<Value>)> {
    let namespaces = proptest::collection::vec(labels(), 3).prop_map(|ls| {
        NAMESPACES.iter().zip(ls).map(|(n, l)| json!({"metadata": {"name": n, "labels": l}})).collect::<Vec<_>>()
    });
    let pods = (1..6usize).prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>());
    let policies = (0..5usize).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    (namespaces, pods, policies)
}

fn from_json<T: serde::de::DeserializeOwned>(v: Vec<Value>) -> Vec<T> {
    v.into_iter().map(|v| serde_json::from_value(v).expect("generated objects are valid")).collect()
}

const PEERS: [&str; 16] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "10.0.0.4",
    "10.0.0.5",
    "10.0.0.6",
    "10.0.0.200",
    "8.8.8.8",
    NODE_IP,
    "192.0.2.77",
    "fd00::1",
    "fd00::2",
    "fd00::3",
    "fd00::5",
    "fd00::200",
    "2001:db8::1",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_entries_agree_with_the_reference((namespaces, pods, policies) in world()) {
        let namespaces: Vec<Namespace> = from_json(namespaces);
        let pods: Vec<Pod> = from_json(pods);
        let policies: Vec<NetworkPolicy> = from_json(policies);
        let node_ips: Vec<IpAddr> = vec![NODE_IP.parse().unwrap()];
        let mut compiler = Compiler::new(CompileOptions { node_name: NODE.into(), node_ips: node_ips.clone(), allow_node: true, strict: false });
        // Objects arrive in any order; apply policies first to exercise updates.
        for p in &policies { compiler.upsert_policy(p).expect("generated policies are valid"); }
        for p in &pods { compiler.upsert_pod(p); }
        for n in &namespaces { compiler.upsert_namespace(n); }
        let compiled = compiler.compile_all();
        let w = reference::World { policies: &policies, pods: &pods, namespaces: &namespaces, node_ips: &node_ips };
        for target in &pods {
            let key = na_policy::ObjectRef::of(&target.metadata).unwrap();
            let Some(rules) = compiled.get(&key) else { continue };
            let rules = rules.as_ref().expect("small inputs fit the maps");
            for dir in Direction::BOTH {
                for peer in PEERS {
                    let peer: IpAddr = peer.parse().unwrap();
                    for (proto, port) in [(TCP, Some(80)), (TCP, Some(81)), (TCP, Some(8080)), (UDP, Some(53)),
                                          (UDP, Some(80)), (SCTP, Some(81)), (TCP, Some(82)), (ICMP, None)] {
                        let emulated = lpm::judge(rules.direction(dir), peer, proto, port).is_some();
                        let expected = reference::allows(&w, target, dir, peer, proto, port);
                        prop_assert_eq!(emulated, expected,
                            "target {} {} peer {} proto {} port {:?}\nentries: {:#?}", key, dir, peer, proto, port, rules.direction(dir));
                    }
                }
            }
        }
    }
}
