//! Random clusters (NetworkPolicies and ClusterNetworkPolicies of both
//! tiers), random changes to them and random packets, in standard and
//! strict mode, with audited namespaces. Fed to the compiler and synced as the agent does, after
//! every batch of changes the pods holding compiled rules must be exactly the
//! local pods, and what their entries admit (judged the way the kernel judges
//! them) exactly what the reference evaluator derives from the objects.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_common::protocol::{ICMP, SCTP, TCP, UDP};
use na_policy::{CompileOptions, Compiler, Direction, ObjectRef, PodRules, compile::AUDIT_ANNOTATION, lpm, reference};
use proptest::{
    prelude::*,
    sample::{Index, subsequence},
    test_runner::FileFailurePersistence,
};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const NODE_IP: &str = "192.0.2.1";
const KEYS: [&str; 3] = ["app", "tier", "team"];
const VALUES: [&str; 2] = ["a", "b"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods live in slots: a slot holds one pod at a time, so no two pods share an
/// address.
const POD_SLOTS: usize = 6;
const POLICY_NAMES: usize = 5;
const CLUSTER_POLICY_NAMES: usize = 4;

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

/// A ClusterNetworkPolicy peer; now and then one this agent does not know.
fn cluster_peer(egress: bool) -> impl Strategy<Value = Value> {
    let networks = subsequence(
        vec!["10.0.0.0/24", "10.0.0.0/30", "10.0.0.2/32", "0.0.0.0/0", "::/0", "fd00::/120", "192.0.2.0/24"],
        1..3,
    )
    .prop_map(|n| json!({"networks": n}));
    let known = prop_oneof![
        3 => selector().prop_map(|s| json!({"namespaces": s})),
        3 => (prop::option::of(selector()), selector()).prop_map(|(n, p)| match n {
            Some(n) => json!({"pods": {"namespaceSelector": n, "podSelector": p}}),
            None => json!({"pods": {"podSelector": p}}),
        }),
        if egress { 3 } else { 0 } => networks,
        1 => prop::sample::select(vec![json!({"nodes": {}}), json!({"domainNames": ["a.example"]}), json!({})]),
    ];
    known
}

fn cluster_protocol() -> impl Strategy<Value = Value> {
    let proto = prop::sample::select(vec!["tcp", "udp", "sctp"]);
    prop_oneof![
        4 => (proto.clone(), prop::sample::select(vec![53, 80, 81, 8080]))
            .prop_map(|(p, n)| json!({p: {"destinationPort": {"number": n}}})),
        2 => (proto, prop::sample::select(vec![79, 80]), 1..3u16)
            .prop_map(|(p, s, w)| json!({p: {"destinationPort": {"range": {"start": s, "end": s + w}}}})),
        2 => prop::sample::select(vec!["http", "dns", "alt", "none"]).prop_map(|n| json!({"destinationNamedPort": n})),
        1 => Just(json!({"icmp": {}})),
    ]
}

fn cluster_rule(egress: bool) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Accept", "Deny", "Pass"]),
        proptest::collection::vec(cluster_peer(egress), 1..3),
        prop::option::of(proptest::collection::vec(cluster_protocol(), 1..3)),
    )
        .prop_map(move |(action, peers, protocols)| {
            let mut r = json!({"action": action});
            r[if egress { "to" } else { "from" }] = json!(peers);
            if let Some(p) = protocols {
                r["protocols"] = json!(p);
            }
            r
        })
}

fn cluster_policy(i: usize) -> impl Strategy<Value = Value> {
    let subject = prop_oneof![
        selector().prop_map(|s| json!({"namespaces": s})),
        (selector(), selector()).prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
    ];
    (
        prop::sample::select(vec!["Admin", "Baseline"]),
        // Few priorities: ties between policies are common.
        prop::sample::select(vec![1, 2, 5]),
        subject,
        proptest::collection::vec(cluster_rule(false), 0..3),
        proptest::collection::vec(cluster_rule(true), 0..3),
    )
        .prop_map(move |(tier, priority, subject, ingress, egress)| {
            json!({"apiVersion": na_policy::cluster_policy::UPSTREAM_API_VERSION, "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": format!("cnp{i}")},
                   "spec": {"tier": tier, "priority": priority, "subject": subject, "ingress": ingress, "egress": egress}})
        })
}

/// A slot's addresses: none yet, or its primary or alternate IPv4 address,
/// with its IPv6 address of the same kind or without.
fn addresses(slot: usize, variant: u8) -> Vec<String> {
    let n = slot + 1 + if variant >= 3 { 8 } else { 0 };
    match variant {
        0 => vec![],
        1 | 3 => vec![format!("10.0.0.{n}")],
        _ => vec![format!("10.0.0.{n}"), format!("fd00::{n:x}")],
    }
}

const ADDRESS_VARIANTS: u8 = 5;

fn set_addresses(status: &mut Value, ips: &[String]) {
    status["podIP"] = json!(ips.first());
    status["podIPs"] = ips.iter().map(|ip| json!({"ip": ip})).collect();
}

fn pod(slot: usize) -> impl Strategy<Value = Value> {
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
        names.iter().collect::<BTreeSet<_>>().len() == names.len()
    });
    (prop::sample::select(NAMESPACES.to_vec()), labels(), any::<bool>(), 0..ADDRESS_VARIANTS, 0..20u8, named).prop_map(
        move |(ns, labels, local, variant, special, ports)| {
            let host = special == 0;
            let done = special == 1;
            let ips = if host { vec![NODE_IP.to_owned()] } else { addresses(slot, variant) };
            let mut status = json!({"phase": if done { "Succeeded" } else { "Running" }});
            set_addresses(&mut status, &ips);
            json!({
                "metadata": {"name": format!("p{slot}"), "namespace": ns, "labels": labels},
                "spec": {"nodeName": if local { NODE } else { "node-2" }, "hostNetwork": host,
                         "containers": [{"name": "c", "ports": ports}]},
                "status": status
            })
        },
    )
}

/// One change the API server reports. Those naming an empty slot or no
/// policy change nothing.
#[derive(Clone, Debug)]
enum Change {
    /// Creates or replaces the slot's pod (deleting the old one if the new one
    /// is another object: in another namespace).
    Pod(usize, Value),
    RelabelPod(usize, Value),
    /// Sets the pod's addresses to one of [`addresses`].
    Readdress(usize, u8),
    DeletePod(usize),
    /// Creates or relabels a namespace, audited or not; `None` deletes it.
    Namespace(usize, Option<(Value, bool)>),
    /// Creates or replaces a policy.
    Policy(Value),
    DeletePolicy(Index),
    ClusterPolicy(Value),
    DeleteClusterPolicy(Index),
}

fn namespace() -> impl Strategy<Value = (Value, bool)> {
    (labels(), prop::bool::weighted(0.2))
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..POD_SLOTS).prop_flat_map(|i| pod(i).prop_map(move |p| Change::Pod(i, p))),
        (0..POD_SLOTS, labels()).prop_map(|(i, l)| Change::RelabelPod(i, l)),
        (0..POD_SLOTS, 0..ADDRESS_VARIANTS).prop_map(|(i, v)| Change::Readdress(i, v)),
        (0..POD_SLOTS).prop_map(Change::DeletePod),
        (0..NAMESPACES.len(), prop::option::of(namespace())).prop_map(|(i, l)| Change::Namespace(i, l)),
        (0..POLICY_NAMES).prop_flat_map(|i| policy(i).prop_map(Change::Policy)),
        any::<Index>().prop_map(Change::DeletePolicy),
        (0..CLUSTER_POLICY_NAMES).prop_flat_map(|i| cluster_policy(i).prop_map(Change::ClusterPolicy)),
        any::<Index>().prop_map(Change::DeleteClusterPolicy),
    ]
}

/// The initial cluster as a list of changes (policies first, so that pods and
/// namespaces arrive as updates to them), then batches of changes, each
/// followed by a sync as the agent does after reading what is queued.
fn history() -> impl Strategy<Value = (Vec<Change>, Vec<Vec<Change>>)> {
    let policies = (0..=POLICY_NAMES).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    let cluster_policies = (0..=CLUSTER_POLICY_NAMES).prop_flat_map(|n| (0..n).map(cluster_policy).collect::<Vec<_>>());
    let pods = (1..=POD_SLOTS).prop_flat_map(|n| (0..n).map(|i| pod(i).prop_map(move |p| (i, p))).collect::<Vec<_>>());
    let namespaces = proptest::collection::vec(prop::option::of(namespace()), NAMESPACES.len());
    let initial = (policies, cluster_policies, pods, namespaces).prop_map(|(policies, cluster, pods, namespaces)| {
        let policies = policies.into_iter().map(Change::Policy).chain(cluster.into_iter().map(Change::ClusterPolicy));
        let pods = pods.into_iter().map(|(i, p)| Change::Pod(i, p));
        let namespaces =
            namespaces.into_iter().enumerate().filter(|(_, l)| l.is_some()).map(|(i, l)| Change::Namespace(i, l));
        policies.chain(pods).chain(namespaces).collect()
    });
    (initial, proptest::collection::vec(proptest::collection::vec(change(), 1..4), 0..5))
}

fn from_json<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("generated objects are valid")
}

fn key_of(v: &Value) -> ObjectRef {
    ObjectRef::new(v["metadata"]["namespace"].as_str().unwrap(), v["metadata"]["name"].as_str().unwrap())
}

/// The objects as the API server holds them: what the reference judges.
#[derive(Default)]
struct Cluster {
    namespaces: BTreeMap<usize, Value>,
    pods: BTreeMap<usize, Value>,
    policies: BTreeMap<ObjectRef, Value>,
    cluster_policies: BTreeMap<String, Value>,
    /// Every address a pod has had: rules may not outlive a pod's address.
    pod_addresses: BTreeSet<IpAddr>,
}

impl Cluster {
    /// Records `change` and feeds it to the compiler as the agent's watch does.
    fn apply(&mut self, change: Change, compiler: &mut Compiler) {
        match change {
            Change::Pod(slot, pod) => self.put_pod(slot, pod, compiler),
            Change::RelabelPod(slot, labels) => {
                if let Some(mut pod) = self.pods.get(&slot).cloned() {
                    pod["metadata"]["labels"] = labels;
                    self.put_pod(slot, pod, compiler);
                }
            }
            Change::Readdress(slot, variant) => {
                if let Some(mut pod) = self.pods.get(&slot).cloned() {
                    set_addresses(&mut pod["status"], &addresses(slot, variant));
                    self.put_pod(slot, pod, compiler);
                }
            }
            Change::DeletePod(slot) => {
                if let Some(old) = self.pods.remove(&slot) {
                    compiler.remove_pod(&key_of(&old));
                }
            }
            Change::Namespace(i, Some((labels, audited))) => {
                let annotations = if audited { json!({AUDIT_ANNOTATION: "true"}) } else { json!({}) };
                let ns = json!({"metadata": {"name": NAMESPACES[i], "labels": labels, "annotations": annotations}});
                compiler.upsert_namespace(&from_json(&ns));
                self.namespaces.insert(i, ns);
            }
            Change::Namespace(i, None) => {
                if self.namespaces.remove(&i).is_some() {
                    compiler.remove_namespace(NAMESPACES[i]);
                }
            }
            Change::Policy(policy) => {
                compiler.upsert_policy(&from_json(&policy)).expect("generated policies are valid");
                self.policies.insert(key_of(&policy), policy);
            }
            Change::ClusterPolicy(policy) => {
                // Generated objects are valid; one naming a peer or port the
                // agent does not know is enforced failing closed, and says so.
                if let Err(e) = compiler.upsert_cluster_policy(&policy) {
                    assert!(e.reason.contains("fails closed"), "generated cluster policies are valid: {e}");
                }
                self.cluster_policies.insert(policy["metadata"]["name"].as_str().unwrap().to_owned(), policy);
            }
            Change::DeleteClusterPolicy(index) => {
                if !self.cluster_policies.is_empty() {
                    let name =
                        self.cluster_policies.keys().nth(index.index(self.cluster_policies.len())).unwrap().clone();
                    compiler.remove_cluster_policy(&name);
                    self.cluster_policies.remove(&name);
                }
            }
            Change::DeletePolicy(index) => {
                if !self.policies.is_empty() {
                    let key = self.policies.keys().nth(index.index(self.policies.len())).unwrap().clone();
                    compiler.remove_policy(&key);
                    self.policies.remove(&key);
                }
            }
        }
    }

    fn put_pod(&mut self, slot: usize, pod: Value, compiler: &mut Compiler) {
        if let Some(old) = self.pods.get(&slot)
            && key_of(old) != key_of(&pod)
        {
            compiler.remove_pod(&key_of(old));
        }
        let typed: Pod = from_json(&pod);
        compiler.upsert_pod(&typed);
        let ips = typed.status.and_then(|s| s.pod_ips).into_iter().flatten();
        self.pod_addresses.extend(ips.map(|ip| ip.ip.parse::<IpAddr>().unwrap()));
        self.pods.insert(slot, pod);
    }
}

/// What the agent's reconciler does after a batch of changes (`Reconciler::sync`):
/// forgets the dirty pods that are no longer local, recompiles the others.
fn sync(compiler: &mut Compiler, state: &mut BTreeMap<ObjectRef, PodRules>) {
    let local: BTreeSet<ObjectRef> = compiler.local_pods().map(|p| p.key.clone()).collect();
    let (present, gone): (Vec<ObjectRef>, Vec<ObjectRef>) =
        compiler.take_dirty().into_iter().partition(|k| local.contains(k));
    for key in gone {
        state.remove(&key);
    }
    for (key, rules) in compiler.compile(&present) {
        state.insert(key, rules.expect("small inputs fit the maps"));
    }
}

/// Peers that are no pod's own address (the node's is only hostNetwork
/// pods'), in each set of generated blocks that holds pods' addresses and
/// outside them all.
const OTHER_PEERS: [&str; 8] =
    ["10.0.0.7", "10.0.0.200", "8.8.8.8", NODE_IP, "192.0.2.77", "fd00::f0", "fd00::200", "2001:db8::1"];

const PROBES: [(u8, Option<u16>); 8] = [
    (TCP, Some(80)),
    (TCP, Some(81)),
    (TCP, Some(8080)),
    (UDP, Some(53)),
    (UDP, Some(80)),
    (SCTP, Some(81)),
    (TCP, Some(82)),
    (ICMP, None),
];

/// The agent's state after a sync against the cluster it was fed.
fn check(
    cluster: &Cluster,
    compiler: &mut Compiler,
    state: &BTreeMap<ObjectRef, PodRules>,
) -> Result<(), TestCaseError> {
    let namespaces: Vec<Namespace> = cluster.namespaces.values().map(from_json).collect();
    let pods: Vec<Pod> = cluster.pods.values().map(from_json).collect();
    let policies: Vec<NetworkPolicy> = cluster.policies.values().map(from_json).collect();
    let cluster_policies: Vec<Value> = cluster.cluster_policies.values().cloned().collect();
    let local: Vec<(ObjectRef, &Pod)> = pods
        .iter()
        .filter(|p| reference::is_local(p, NODE))
        .map(|p| (ObjectRef::of(&p.metadata).unwrap(), p))
        .collect();
    prop_assert_eq!(
        state.keys().collect::<BTreeSet<_>>(),
        local.iter().map(|(k, _)| k).collect::<BTreeSet<_>>(),
        "pods with rules vs local pods"
    );
    // What incremental syncs left must be what compiling from scratch gives,
    // also where no probe looks.
    let fresh: BTreeMap<ObjectRef, PodRules> =
        compiler.compile_all().into_iter().map(|(k, r)| (k, r.expect("small inputs fit the maps"))).collect();
    prop_assert_eq!(state, &fresh, "incremental vs from-scratch rules");
    let node_ips = &compiler.options().node_ips;
    let w = reference::World {
        policies: &policies,
        cluster_policies: &cluster_policies,
        pods: &pods,
        namespaces: &namespaces,
        node_ips,
        strict: compiler.options().strict,
        audit: compiler.options().audit,
    };
    let others: Vec<IpAddr> = OTHER_PEERS.iter().map(|ip| ip.parse().unwrap()).collect();
    for (key, target) in local {
        let rules = &state[&key];
        for dir in Direction::BOTH {
            for &peer in cluster.pod_addresses.iter().chain(&others) {
                for (proto, port) in PROBES {
                    let emulated = lpm::judge(rules.direction(dir), peer, proto, port).is_some();
                    let expected = reference::allows(&w, target, dir, peer, proto, port);
                    prop_assert_eq!(
                        emulated,
                        expected,
                        "target {} {} peer {} proto {} port {:?}\nentries: {:#?}",
                        key,
                        dir,
                        peer,
                        proto,
                        port,
                        rules.direction(dir)
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/reference_vs_compiler.txt"
        )))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn incremental_rules_agree_with_the_reference(
        strict in any::<bool>(),
        audit in prop::bool::weighted(0.1),
        (initial, batches) in history(),
    ) {
        let mut compiler = Compiler::new(CompileOptions {
            node_name: NODE.into(),
            node_ips: vec![NODE_IP.parse().unwrap()],
            allow_node: true,
            strict,
            audit,
        });
        let mut cluster = Cluster::default();
        let mut state = BTreeMap::new();
        for batch in std::iter::once(initial).chain(batches) {
            for change in batch {
                cluster.apply(change, &mut compiler);
            }
            sync(&mut compiler, &mut state);
            check(&cluster, &mut compiler, &state)?;
        }
    }
}
