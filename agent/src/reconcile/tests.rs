//! The reconciler against a recording fake of the node: what it writes, and
//! when, without a kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use na_policy::{CompileOptions, Compiler, PodRules};
use serde_json::json;

use super::*;
use crate::{
    datapath::{DatapathError, Frontend, RulesError, inventory::InventoryError},
    source::ObjectKey,
};

const NODE: &str = "node-a";
const PREFIX: &str = "eni";

/// One thing the reconciler asked of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Attach(String),
    Apply(String),
    Detach(String),
}

/// A node whose links and pinned state the test sets, recording the calls.
#[derive(Default)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    links: Mutex<BTreeMap<String, u32>>,
    /// Pods whose attach, or whose rule writes, fail.
    failing: Arc<Mutex<BTreeSet<String>>>,
    pinned: Mutex<BTreeSet<PodId>>,
    /// Pods whose attachment someone removed.
    unattached: Mutex<BTreeSet<PodId>>,
}

struct FakePod {
    pod: String,
    ifindex: u32,
    calls: Arc<Mutex<Vec<Call>>>,
    failing: Arc<Mutex<BTreeSet<String>>>,
}

impl Fake {
    fn remove_attachment(&self, pod: &str) {
        let (ns, name) = pod.split_once('/').unwrap();
        self.unattached.lock().unwrap().insert(PodId::new(ns, name));
    }

    fn add_link(&self, pod: &str, ifindex: u32) {
        let (ns, name) = pod.split_once('/').unwrap();
        self.links.lock().unwrap().insert(host_veth_name(PREFIX, ns, name), ifindex);
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Dataplane for Fake {
    type Pod = FakePod;

    fn attach_pod(&self, pod: &PodId, ifname: &str, _: PodAddrs, _: &PodRules) -> Result<FakePod, DatapathError> {
        let name = pod.to_string().replace('_', "/");
        if self.failing.lock().unwrap().contains(&name) {
            return Err(DatapathError::NoInterface(ifname.to_owned()));
        }
        self.calls.lock().unwrap().push(Call::Attach(name.clone()));
        let ifindex = self.link_index(ifname).expect("attached to a link that exists");
        self.unattached.lock().unwrap().remove(pod);
        Ok(FakePod { pod: name, ifindex, calls: self.calls.clone(), failing: self.failing.clone() })
    }

    fn is_enforcing(&self, pod: &PodId, _: u32) -> Result<bool, DatapathError> {
        Ok(!self.unattached.lock().unwrap().contains(pod))
    }

    fn detach_pod(&self, pod: &PodId, _: Option<&str>) -> Result<(), DatapathError> {
        self.calls.lock().unwrap().push(Call::Detach(pod.to_string().replace('_', "/")));
        Ok(())
    }

    fn set_services(&self, _: &BTreeMap<Frontend, u32>) -> Result<usize, DatapathError> {
        Ok(0)
    }

    fn pinned_pods(&self) -> Result<BTreeSet<PodId>, InventoryError> {
        Ok(self.pinned.lock().unwrap().clone())
    }

    fn remove_stale_programs(&self) -> Result<usize, DatapathError> {
        Ok(0)
    }

    fn link_index(&self, name: &str) -> Option<u32> {
        self.links.lock().unwrap().get(name).copied()
    }

    fn link_by_route(&self, _: IpAddr) -> Option<String> {
        None
    }

    fn routed_through(&self, _: &str) -> Vec<IpAddr> {
        Vec::new()
    }
}

impl PodProgram for FakePod {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn set_addrs(&mut self, _: PodAddrs) {}

    fn apply(&mut self, _: &PodRules) -> Result<(), RulesError> {
        if self.failing.lock().unwrap().contains(&self.pod) {
            let source = aya::maps::MapError::KeyNotFound;
            return Err(RulesError::Map { op: "updating", map: "a trie", source });
        }
        self.calls.lock().unwrap().push(Call::Apply(self.pod.clone()));
        Ok(())
    }
}

fn reconciler() -> Reconciler<Fake> {
    let compiler = Compiler::new(CompileOptions { node_name: NODE.into(), ..Default::default() });
    let mut r = Reconciler::new(compiler, Fake::default(), PREFIX.into());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    r.apply(Event::Applied(Object::Namespace(Box::new(serde_json::from_value(ns).unwrap())))).unwrap();
    r
}

fn pod(name: &str, uid: &str, ip: &str, app: &str) -> Event {
    pod_labelled(name, uid, ip, json!({"app": app}))
}

fn pod_labelled(name: &str, uid: &str, ip: &str, labels: serde_json::Value) -> Event {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "x", "uid": uid, "labels": labels},
        "spec": {"nodeName": NODE, "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    Event::Applied(Object::Pod(Box::new(serde_json::from_value(pod).unwrap())))
}

fn policy(name: &str, app: &str) -> Event {
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"]}});
    Event::Applied(Object::NetworkPolicy(Box::new(serde_json::from_value(policy).unwrap())))
}

fn attach(name: &str) -> Call {
    Call::Attach(format!("x/{name}"))
}

#[test]
fn unchanged_rules_write_nothing() {
    let mut r = reconciler();
    r.datapath().add_link("x/a", 10);
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    r.sync();
    assert_eq!(r.datapath().take_calls(), [attach("a")]);
    // The same object again, and a policy selecting another pod.
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    r.apply(policy("other", "b")).unwrap();
    r.sync();
    assert_eq!(r.datapath().take_calls(), [], "nothing of a's changed");
    // A label no policy looks at: a is compiled again, to the same rules.
    r.apply(pod_labelled("a", "u1", "10.0.0.1", json!({"app": "a", "tier": "web"}))).unwrap();
    r.sync();
    assert_eq!(r.datapath().take_calls(), [], "a's rules are what they were");
    r.apply(policy("mine", "a")).unwrap();
    r.sync();
    assert_eq!(r.datapath().take_calls(), [Call::Apply("x/a".into())]);
}

#[test]
fn an_attachment_removed_from_under_the_agent_is_restored() {
    let mut r = reconciler();
    for (name, ifindex) in [("a", 10), ("b", 11)] {
        r.datapath().add_link(&format!("x/{name}"), ifindex);
        r.apply(pod(name, name, &format!("10.0.0.{ifindex}"), name)).unwrap();
    }
    r.apply(policy("mine", "a")).unwrap();
    r.sync();
    r.datapath().take_calls();
    assert!(r.restore(None).restored.is_empty() && r.datapath().take_calls().is_empty(), "nothing is missing");
    r.datapath().remove_attachment("x/a");
    r.datapath().remove_attachment("x/b");
    // A notification names one veth: that one alone is looked at.
    assert_eq!(r.restore(Some(10)).restored, ["x/a"]);
    assert_eq!(r.datapath().take_calls(), [attach("a")], "attached again, as it was (its rules kept)");
    assert_eq!(r.restore(None).restored, ["x/b"]);
    assert_eq!(r.datapath().take_calls(), [attach("b")]);
    assert!(r.restore(None).restored.is_empty());
    // Still attached (and updated) as before.
    r.apply(policy("theirs", "b")).unwrap();
    r.sync();
    assert_eq!(r.datapath().take_calls(), [Call::Apply("x/b".into())]);
}

#[test]
fn a_new_uid_is_a_new_pod_detached_then_attached() {
    let mut r = reconciler();
    r.datapath().add_link("x/a", 10);
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    r.sync();
    r.datapath().take_calls();
    r.apply(pod("a", "u2", "10.0.0.1", "a")).unwrap();
    r.sync();
    assert_eq!(r.datapath().take_calls(), [Call::Detach("x/a".into()), attach("a")]);
}

#[test]
fn a_pod_without_its_veth_is_pending_until_the_veth_appears() {
    let mut r = reconciler();
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    let report = r.sync();
    assert_eq!(report.pending, ["x/a"]);
    assert!(r.has_pending());
    assert_eq!(r.datapath().take_calls(), []);
    // Links changed, but not a's.
    assert!(r.sync().pending == ["x/a"] && r.datapath().take_calls().is_empty());
    r.datapath().add_link("x/a", 10);
    let report = r.sync();
    assert!(report.pending.is_empty() && !r.has_pending());
    assert_eq!(r.datapath().take_calls(), [attach("a")]);
}

#[test]
fn a_failed_attach_is_reported_and_retried() {
    let mut r = reconciler();
    r.datapath().add_link("x/a", 10);
    r.datapath().failing.lock().unwrap().insert("x/a".into());
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    let report = r.sync();
    assert!(matches!(report.errors.as_slice(), [ReconcileError { kind: ErrorKind::Attach, .. }]), "{report:?}");
    assert!(r.has_failed());
    assert_eq!(r.attached().count(), 0);
    r.datapath().failing.lock().unwrap().clear();
    let report = r.sync();
    assert!(report.errors.is_empty() && !r.has_failed());
    assert_eq!(r.datapath().take_calls(), [attach("a")]);
}

#[test]
fn rule_ids_go_with_their_policy_once_no_loaded_entry_carries_them() {
    let mut r = reconciler();
    r.datapath().add_link("x/a", 10);
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    let open = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "open", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{}]}});
    r.apply(Event::Applied(Object::NetworkPolicy(Box::new(serde_json::from_value(open).unwrap())))).unwrap();
    r.sync();
    let ids = |r: &Reconciler<Fake>| r.compiler().attributions().iter().map(|(id, _)| id).collect::<Vec<_>>();
    let held = ids(&r);
    assert_eq!(held.len(), 1);

    // The policy goes, but a's maps cannot be rewritten: they still carry
    // its id, which must still name the rule.
    r.datapath().failing.lock().unwrap().insert("x/a".into());
    r.apply(Event::Deleted(ObjectKey { kind: Kind::NetworkPolicy, id: ObjectRef::new("x", "open") })).unwrap();
    let report = r.sync();
    assert!(matches!(report.errors.as_slice(), [ReconcileError { kind: ErrorKind::Update, .. }]), "{report:?}");
    r.keep_retired = Duration::ZERO;
    r.sync();
    assert_eq!(ids(&r), held);
    r.datapath().failing.lock().unwrap().clear();
    // Written now, but its name is kept a while for events read late.
    r.keep_retired = Duration::from_secs(3600);
    r.sync();
    assert_eq!(ids(&r), held);
    r.keep_retired = Duration::ZERO;
    r.sync();
    assert!(ids(&r).is_empty(), "a's maps let go of it");
}

#[test]
fn orphans_go_only_once_asked_after_the_first_full_sync() {
    let mut r = reconciler();
    r.datapath().add_link("x/a", 10);
    let pinned = [PodId::new("x", "a"), PodId::new("x", "b"), PodId::new("x", "gone")];
    r.datapath().pinned.lock().unwrap().extend(pinned);
    r.apply(pod("a", "u1", "10.0.0.1", "a")).unwrap();
    r.apply(pod("b", "u2", "10.0.0.2", "b")).unwrap();
    let mut report = r.sync();
    assert_eq!(r.datapath().take_calls(), [attach("a")], "a sync leaves what it does not know alone");
    r.remove_orphans(&mut report);
    // b is pending (no veth yet): its state stays for it.
    assert_eq!(r.datapath().take_calls(), [Call::Detach("x/gone".into())]);
}
