//! The compiler's cluster-wide tiers: ClusterNetworkPolicy objects, which
//! local pods they apply to, which changes touch them, and their rules as
//! ranked grants (see [`crate::lpm::rank`]).
use std::sync::Arc;

use ipnet::IpNet;
use na_common::policy::PortRule;
use serde_json::Value;

use super::Compiler;
use crate::{
    attribution::{Attribution, ClusterRuleRef},
    cluster::{ObjectRef, PodInfo},
    cluster_policy::{ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Subject, Tier},
    lpm::{self, Grant},
    output::Direction,
    parse::PolicyError,
    selector::{Labels, Selector},
};

/// One rule that applies to a pod.
pub(super) struct Applicable {
    pub id: u32,
    /// Where it stands in the order of evaluation; a NetworkPolicy rule's is
    /// [`lpm::rank::NETWORK_POLICY`].
    pub rank: u64,
    /// The policy: a NetworkPolicy's `namespace/name`, a cluster policy's name.
    pub source: ObjectRef,
    /// Its index in the policy's list for the direction.
    pub index: usize,
    /// Its grants do not depend on the pod (no named port resolved against it).
    pub shared: bool,
}

impl Compiler {
    /// Adds or replaces a ClusterNetworkPolicy of either CRD. An invalid one
    /// is reported; its last valid version stays enforced, and without one
    /// its subject is denied in the directions it has rules for
    /// ([`ClusterPolicy::failing_closed`]). One enforced with peers or ports
    /// this agent does not know (failing closed) is reported too.
    pub fn upsert_cluster_policy(&mut self, obj: &Value) -> Result<(), PolicyError> {
        let parsed = ClusterPolicy::parse(obj);
        let Some(name) = ClusterPolicy::key_of(obj) else {
            return parsed.map(drop);
        };
        match parsed {
            Ok(policy) => {
                self.cluster_invalid.remove(&name);
                self.cluster_standins.remove(&name);
                // Enforced, failing closed where it names what this agent
                // does not know: reported as the first such field.
                let unsupported = policy.unsupported.first().cloned().map(|mut e| {
                    if policy.unsupported.len() > 1 {
                        e.reason = format!("{} (and {} more)", e.reason, policy.unsupported.len() - 1);
                    }
                    e
                });
                self.set_cluster_policy(&name, Some(policy));
                unsupported.map_or(Ok(()), Err)
            }
            Err(e) => {
                // A stand-in follows the latest invalid version (its subject
                // may have changed); a valid version stays.
                if !self.cluster_policies.contains_key(&name) || self.cluster_standins.contains(&name) {
                    self.cluster_standins.insert(name.clone());
                    self.set_cluster_policy(&name, ClusterPolicy::failing_closed(obj));
                }
                self.cluster_invalid.insert(name, e.clone());
                Err(e)
            }
        }
    }

    /// Removes the cluster policy [`ClusterPolicy::key_of`] names `name`.
    pub fn remove_cluster_policy(&mut self, name: &str) {
        self.cluster_invalid.remove(name);
        self.cluster_standins.remove(name);
        self.set_cluster_policy(name, None);
    }

    /// The cluster policies in force, by name.
    pub fn cluster_policies(&self) -> impl Iterator<Item = &ClusterPolicy> {
        self.cluster_policies.values()
    }

    /// Why cluster policies are left out or partly fail closed.
    pub(super) fn cluster_problems(&self) -> impl Iterator<Item = &PolicyError> {
        self.cluster_invalid.values().chain(self.cluster_policies.values().flat_map(|p| p.unsupported.iter()))
    }

    fn set_cluster_policy(&mut self, name: &str, policy: Option<ClusterPolicy>) {
        self.mark_cluster_subject(name);
        self.retired_rules |= self.cluster_policies.contains_key(name);
        match policy {
            Some(p) => self.cluster_policies.insert(name.to_owned(), p),
            None => self.cluster_policies.remove(name),
        };
        self.mark_cluster_subject(name);
    }

    /// Marks the local pods cluster policy `name` applies to dirty.
    fn mark_cluster_subject(&mut self, name: &str) {
        let Some(policy) = self.cluster_policies.get(name) else { return };
        let subject: Vec<ObjectRef> =
            self.local_pods().filter(|p| self.subject_matches(&policy.subject, p)).map(|p| p.key.clone()).collect();
        self.dirty.extend(subject);
    }

    /// Marks dirty the local pods of every cluster policy with a rule that
    /// `peer` says could name: a pod before or after a change, or a
    /// namespace's pods under its old or new labels.
    pub(super) fn mark_cluster_peers(&mut self, peer: impl Fn(&ClusterPeer) -> bool) {
        let touched: Vec<String> = self
            .cluster_policies
            .values()
            .filter(|p| Direction::BOTH.iter().flat_map(|d| p.rules(*d)).flat_map(|r| &r.peers).any(&peer))
            .map(|p| p.name.clone())
            .collect();
        for name in touched {
            self.mark_cluster_subject(&name);
        }
    }

    /// Whether a pod with `labels` in a namespace with `ns_labels` is one of
    /// the pods `peer` names (an address block names no pod).
    pub(super) fn peer_names(peer: &ClusterPeer, ns_labels: &Labels, labels: &Labels) -> bool {
        match peer {
            ClusterPeer::Namespaces(ns) => ns.matches(ns_labels),
            ClusterPeer::Pods { namespaces, pods } => namespaces.matches(ns_labels) && pods.matches(labels),
            ClusterPeer::Networks(_) | ClusterPeer::Everything => false,
        }
    }

    pub(super) fn subject_matches(&self, subject: &Subject, pod: &PodInfo) -> bool {
        let ns = self.namespace_labels(&pod.key.namespace);
        match subject {
            Subject::Namespaces(sel) => sel.matches(&ns),
            Subject::Pods { namespaces, pods } => namespaces.matches(&ns) && pods.matches(&pod.labels),
        }
    }

    /// Whether any cluster rule of `tier` applies to `target` in `dir`.
    pub(super) fn has_cluster_rules(&self, target: &PodInfo, dir: Direction) -> bool {
        self.cluster_policies.values().any(|p| !p.rules(dir).is_empty() && self.subject_matches(&p.subject, target))
    }

    /// The cluster rules of `tier` that apply to `target` in `dir`, in order
    /// of evaluation: by priority, then name, then position. Ranks follow
    /// the order of every rule of the tier, so they agree across the pods
    /// of a batch.
    pub(super) fn applicable_cluster_rules(&mut self, target: &PodInfo, dir: Direction, tier: Tier) -> Vec<Applicable> {
        let mut ordered: Vec<&ClusterPolicy> = self.cluster_policies.values().filter(|p| p.tier == tier).collect();
        ordered.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let mut out = Vec::new();
        let mut position = 0;
        let mut ids = Vec::new();
        for p in ordered {
            let rules = p.rules(dir);
            if self.subject_matches(&p.subject, target) {
                for (index, rule) in rules.iter().enumerate() {
                    let rank = match tier {
                        Tier::Admin => lpm::rank::admin(position + index),
                        Tier::Baseline => lpm::rank::baseline(position + index),
                    };
                    let at = attribution(p, dir, index, rule);
                    let shared = dir == Direction::Egress || !has_named_port(rule);
                    ids.push((at, rank, ObjectRef::cluster(&p.name), index, shared));
                }
            }
            position += rules.len();
        }
        for (at, rank, source, index, shared) in ids {
            out.push(Applicable { id: self.attributions.id(at), rank, source, index, shared });
        }
        out
    }

    /// The grants of one cluster rule for `target`.
    pub(super) fn cluster_rule_grants(&self, dir: Direction, rule: &Applicable, target: &PodInfo) -> Vec<Grant> {
        let policy = &self.cluster_policies[&rule.source.name];
        let cluster_rule = &policy.rules(dir)[rule.index];
        let action = cluster_rule.action.datapath(policy.tier);
        // Named ports resolve against the pod receiving the traffic: the
        // target for ingress, the peer pod for egress (never a network).
        let rules = |receiver: Option<&PodInfo>| -> Arc<[PortRule]> {
            match &cluster_rule.ports {
                None => [PortRule::any(rule.id).with_action(action)].into(),
                Some(ports) => ports
                    .iter()
                    .flat_map(|p| resolve(p, receiver))
                    .map(|(protocol, start, end)| PortRule::ports(rule.id, protocol, start, end).with_action(action))
                    .collect(),
            }
        };
        let grant =
            |prefix: IpNet, rules: Arc<[PortRule]>| Grant { prefix, except: Vec::new(), rank: rule.rank, rules };
        let fixed = (dir == Direction::Ingress).then_some(target);
        let mut grants = Vec::new();
        for peer in &cluster_rule.peers {
            match peer {
                ClusterPeer::Networks(nets) => {
                    let r = rules(fixed);
                    grants.extend(nets.iter().filter(|_| !r.is_empty()).map(|n| grant(*n, r.clone())));
                }
                ClusterPeer::Everything => {
                    let r = rules(fixed);
                    for any in ["0.0.0.0/0", "::/0"] {
                        grants.push(grant(any.parse().expect("literal"), r.clone()));
                    }
                }
                ClusterPeer::Namespaces(namespaces) | ClusterPeer::Pods { namespaces, .. } => {
                    let every_pod = Selector::default();
                    let pods = match peer {
                        ClusterPeer::Pods { pods, .. } => pods,
                        _ => &every_pod,
                    };
                    for pod in self.peer_pods("", Some(namespaces), pods) {
                        let r = rules(fixed.or(Some(pod)));
                        if !r.is_empty() {
                            grants.extend(pod.ips.iter().map(|ip| grant(IpNet::from(*ip), r.clone())));
                        }
                    }
                }
            }
        }
        grants
    }

    /// Whether `ns`'s NetworkPolicy denials are only reported.
    pub(super) fn audited(&self, ns: &str) -> bool {
        self.options.audit || self.audited_namespaces.contains(ns)
    }
}

/// The attribution of rule `index` of `policy`'s `dir` list.
fn attribution(policy: &ClusterPolicy, dir: Direction, index: usize, rule: &ClusterRule) -> Attribution {
    Attribution {
        policy: ObjectRef::cluster(&policy.name),
        direction: dir,
        rule: index,
        cluster: Some(ClusterRuleRef { tier: policy.tier, priority: policy.priority, action: rule.action }),
    }
}

fn has_named_port(rule: &ClusterRule) -> bool {
    rule.ports.iter().flatten().any(|p| matches!(p, ClusterPort::Named(_)))
}

/// `(protocol, start, end)` of a port, a named one resolved against
/// `receiver` (every protocol the pod gives the name).
fn resolve(port: &ClusterPort, receiver: Option<&PodInfo>) -> Vec<(u8, u16, u16)> {
    match port {
        ClusterPort::Range { protocol, start, end } => vec![(*protocol, *start, *end)],
        ClusterPort::Named(name) => receiver
            .into_iter()
            .flat_map(|pod| pod.named_ports.iter().filter(|p| &p.name == name).map(|p| (p.protocol, p.port, p.port)))
            .collect(),
    }
}
