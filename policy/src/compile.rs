//! The compiler: holds the cluster, knows which local pods a change touches,
//! and turns a pod's selecting policies into its [`PodRules`].
use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_common::policy::{MAX_PREFIXES, MAX_RULES_PER_PREFIX, POLICY_ID_HOST, PortRule};
use thiserror::Error;

use crate::{
    attribution::{Attribution, Attributions},
    cluster::{self, ObjectRef, PodInfo},
    cluster_policy::{ClusterPolicy, Tier},
    lpm::{self, Grant},
    output::{Direction, DirectionRules, Mode, PodRules},
    parse::{Peer, Policy, PolicyError, PortSpec, PortValue, Rule},
    selector::Labels,
};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "pod {pod}: {direction} rules for {prefix} need {count} (protocol, port) entries; a prefix holds at most {MAX_RULES_PER_PREFIX}"
    )]
    TooManyRules { pod: ObjectRef, direction: Direction, prefix: IpNet, count: usize },
    #[error("pod {pod}: {direction} rules need {count} prefixes; a pod holds at most {max}")]
    TooManyPrefixes { pod: ObjectRef, direction: Direction, count: usize, max: usize },
    #[error("pod {0} is not known")]
    UnknownPod(ObjectRef),
}

#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Pods whose `spec.nodeName` is this are compiled.
    pub node_name: String,
    /// The node's addresses, allowed into every isolated pod when `allow_node`.
    pub node_ips: Vec<IpAddr>,
    pub allow_node: bool,
    /// Strict mode: a direction no policy isolates is denied (but for the
    /// node) instead of open. An egress-only policy never opens ingress.
    pub strict: bool,
    /// Audit mode for the whole node: what only NetworkPolicy (or strict
    /// mode) would deny passes and is reported (see [`AUDIT_ANNOTATION`]).
    pub audit: bool,
}

/// The namespace annotation (value `"true"`) under which the namespace's
/// NetworkPolicy denials are reported, not enforced: rolling out a
/// default-deny without an outage. Cluster policies' `Deny` stays enforced.
pub const AUDIT_ANNOTATION: &str = "na-agent.io/audit";

/// Each rule set uses half of the trie (the other half is the standby set).
const MAX_PREFIXES_PER_SET: usize = MAX_PREFIXES as usize / 2;

#[derive(Debug, Default)]
pub struct Compiler {
    options: CompileOptions,
    namespaces: HashMap<String, Labels>,
    pods: BTreeMap<ObjectRef, PodInfo>,
    /// How many known pods each namespace has (those with none are left out).
    pods_per_namespace: BTreeMap<String, usize>,
    /// How many local pods each namespace has: only policies there can
    /// select one, so only they are asked whether a change touches them.
    local_per_namespace: BTreeMap<String, usize>,
    /// Every pod's label set, once: pods with the same labels share it.
    label_sets: HashSet<Arc<Labels>>,
    policies: BTreeMap<ObjectRef, Policy>,
    invalid: BTreeMap<ObjectRef, PolicyError>,
    /// ClusterNetworkPolicies by name.
    cluster_policies: BTreeMap<String, ClusterPolicy>,
    cluster_invalid: BTreeMap<String, PolicyError>,
    /// Cluster policies enforced by a never-valid object's stand-in
    /// ([`ClusterPolicy::failing_closed`]).
    cluster_standins: BTreeSet<String>,
    /// Namespaces annotated with [`AUDIT_ANNOTATION`].
    audited_namespaces: BTreeSet<String>,
    attributions: Attributions,
    /// A policy was replaced or removed since the attributions were last
    /// pruned: some of their ids may stand for rules no policy has.
    retired_rules: bool,
    dirty: BTreeSet<ObjectRef>,
}

impl Compiler {
    pub fn new(options: CompileOptions) -> Self {
        Self { options, ..Default::default() }
    }

    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    pub fn attributions(&self) -> &Attributions {
        &self.attributions
    }

    /// Whether [`Self::prune_attributions`] may find something to forget. It
    /// stays so while the datapath holds a retired id, and each sync asks
    /// again (a walk over the loaded entries, rare: a pod whose rules could
    /// not be written).
    pub fn has_retired_rules(&self) -> bool {
        self.retired_rules
    }

    /// Forgets the attribution ids of rules no policy has any more (removed
    /// policies, rules dropped from a list), except those in `in_use`: ids the
    /// datapath still holds (a pod whose newer rules could not be written).
    /// Returns how many went.
    pub fn prune_attributions(&mut self, in_use: &HashSet<u32>) -> usize {
        let (policies, cluster_policies) = (&self.policies, &self.cluster_policies);
        let exists = |a: &Attribution| match &a.cluster {
            None => {
                policies.get(&a.policy).and_then(|p| p.rules(a.direction)).is_some_and(|rules| a.rule < rules.len())
            }
            Some(c) => cluster_policies.get(&a.policy.name).is_some_and(|p| {
                (p.tier, p.priority) == (c.tier, c.priority)
                    && p.rules(a.direction).get(a.rule).is_some_and(|r| r.action == c.action)
            }),
        };
        let mut held_for_datapath = false;
        let gone = self.attributions.retain(|id, a| {
            let retired = !exists(a);
            held_for_datapath |= retired && in_use.contains(&id);
            !retired || in_use.contains(&id)
        });
        self.retired_rules = held_for_datapath;
        gone
    }

    /// Policies left out because they are invalid (or partly failing
    /// closed: cluster policies' peers this agent does not know), with why.
    pub fn invalid_policies(&self) -> impl Iterator<Item = &PolicyError> {
        self.invalid.values().chain(self.cluster_problems())
    }

    pub fn pod(&self, key: &ObjectRef) -> Option<&PodInfo> {
        self.pods.get(key)
    }

    /// Pods this node enforces: scheduled here, not hostNetwork and not
    /// finished. A finished pod's veth is gone and its address may already be
    /// another pod's: the agent must not look for its veth by that address.
    pub fn local_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().filter(|p| self.is_local(p))
    }

    fn is_local(&self, p: &PodInfo) -> bool {
        !p.host_network && !p.terminal && p.node_name.as_deref() == Some(self.options.node_name.as_str())
    }

    /// Whether `key` is a pod this node enforces, as far as the compiler knows.
    pub fn is_local_pod(&self, key: &ObjectRef) -> bool {
        self.pods.get(key).is_some_and(|p| self.is_local(p))
    }

    /// Local pods whose rules may have changed since the last call (some may
    /// since have been deleted).
    pub fn take_dirty(&mut self) -> BTreeSet<ObjectRef> {
        std::mem::take(&mut self.dirty)
    }

    pub fn set_node_ips(&mut self, ips: Vec<IpAddr>) {
        if ips != self.options.node_ips {
            self.options.node_ips = ips;
            self.dirty.extend(self.local_pods().map(|p| p.key.clone()).collect::<Vec<_>>());
        }
    }

    pub fn upsert_namespace(&mut self, ns: &Namespace) {
        if let Some((name, labels)) = cluster::namespace_labels(ns) {
            let audited =
                ns.metadata.annotations.as_ref().and_then(|a| a.get(AUDIT_ANNOTATION)).is_some_and(|v| v == "true");
            self.set_namespace_audit(&name, audited);
            self.set_namespace_labels(name, labels);
        }
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.set_namespace_audit(name, false);
        self.set_namespace_labels(name.to_owned(), cluster::implicit_namespace_labels(name));
    }

    fn set_namespace_audit(&mut self, name: &str, audited: bool) {
        let changed = if audited {
            self.audited_namespaces.insert(name.to_owned())
        } else {
            self.audited_namespaces.remove(name)
        };
        if changed {
            self.mark_local_in(name);
        }
    }

    /// Marks every local pod of namespace `ns` dirty.
    fn mark_local_in(&mut self, ns: &str) {
        let local: Vec<ObjectRef> = self.pods_in(ns).filter(|p| self.is_local(p)).map(|p| p.key.clone()).collect();
        self.dirty.extend(local);
    }

    fn set_namespace_labels(&mut self, name: String, labels: Labels) {
        let old = self.namespace_labels(&name).into_owned();
        if old == labels {
            self.namespaces.insert(name, labels);
            return;
        }
        let touched: Vec<ObjectRef> = self
            .policies_near_local_pods()
            .filter(|p| {
                Direction::BOTH.iter().flat_map(|d| p.rules(*d).into_iter().flatten()).any(|r| {
                    r.peers.iter().flatten().any(|peer| match peer {
                        Peer::Pods { namespaces: Some(sel), .. } => sel.matches(&old) || sel.matches(&labels),
                        _ => false,
                    })
                })
            })
            .map(|p| p.key.clone())
            .collect();
        // Cluster policies select subjects by namespace labels too, and
        // name the namespace's pods as peers under either label set.
        if !self.cluster_policies.is_empty() {
            self.mark_local_in(&name);
            let pods: Vec<Arc<Labels>> =
                self.pods_in(&name).filter(|p| p.is_peer()).map(|p| p.labels.clone()).collect();
            let new = labels.clone();
            self.mark_cluster_peers(|peer| {
                pods.iter().any(|l| Self::peer_names(peer, &old, l) || Self::peer_names(peer, &new, l))
            });
        }
        self.namespaces.insert(name, labels);
        for key in touched {
            self.mark_selected_by(&key);
        }
    }

    fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(cluster::implicit_namespace_labels(name)),
        }
    }

    pub fn upsert_pod(&mut self, pod: &Pod) {
        if let Some(info) = PodInfo::from_pod(pod) {
            self.set_pod(info.key.clone(), Some(info));
        }
    }

    /// Gives a known pod without addresses the ones its CNI reported: the
    /// API server shows them only after the pod has started, and its own
    /// record (spoofing checks) and peers' rules need them from its first
    /// packet on.
    pub fn set_pod_ips(&mut self, key: &ObjectRef, ips: &[IpAddr]) {
        if let Some(p) = self.pods.get(key).filter(|p| p.ips.is_empty() && !ips.is_empty()) {
            let info = PodInfo { ips: ips.to_vec(), ..p.clone() };
            self.set_pod(key.clone(), Some(info));
        }
    }

    pub fn remove_pod(&mut self, key: &ObjectRef) {
        self.set_pod(key.clone(), None);
    }

    fn set_pod(&mut self, key: ObjectRef, new: Option<PodInfo>) {
        let new = new.map(|info| PodInfo { labels: self.intern(&info.labels), ..info });
        let old = self.pods.get(&key).cloned();
        if old == new {
            return;
        }
        for p in old.iter().chain(new.iter()) {
            if self.is_local(p) {
                self.dirty.insert(key.clone());
            }
        }
        // Policies that could name this pod as a peer, before or after
        // (those that select no local pod make nothing dirty).
        let ns_labels = self.namespace_labels(&key.namespace);
        let versions: Vec<&PodInfo> = old.iter().chain(new.iter()).filter(|p| p.is_peer()).collect();
        let touched: Vec<ObjectRef> = if versions.is_empty() {
            Vec::new()
        } else {
            self.policies_near_local_pods()
                .filter(|pol| {
                    Direction::BOTH.iter().any(|d| {
                        pol.rules(*d).into_iter().flatten().any(|r| match &r.peers {
                            None => *d == Direction::Egress && has_named_port(r),
                            Some(peers) => peers.iter().any(|peer| match peer {
                                Peer::Pods { namespaces, pods } => {
                                    let in_scope = match namespaces {
                                        None => pol.key.namespace == key.namespace,
                                        Some(sel) => sel.matches(&ns_labels),
                                    };
                                    in_scope && versions.iter().any(|v| pods.matches(&v.labels))
                                }
                                Peer::Block { .. } => false,
                            }),
                        })
                    })
                })
                .map(|p| p.key.clone())
                .collect()
        };
        // And cluster policies that could name it.
        let cluster_peer = (!versions.is_empty() && !self.cluster_policies.is_empty())
            .then(|| (ns_labels.clone().into_owned(), versions.iter().map(|v| v.labels.clone()).collect::<Vec<_>>()));
        let (was_local, is_local) =
            (old.as_ref().is_some_and(|p| self.is_local(p)), new.as_ref().is_some_and(|p| self.is_local(p)));
        if was_local != is_local {
            count(&mut self.local_per_namespace, &key.namespace, is_local);
        }
        match new {
            Some(info) => {
                if self.pods.insert(key.clone(), info).is_none() {
                    count(&mut self.pods_per_namespace, &key.namespace, true);
                }
            }
            None => {
                if self.pods.remove(&key).is_some() {
                    count(&mut self.pods_per_namespace, &key.namespace, false);
                }
            }
        }
        for p in touched {
            self.mark_selected_by(&p);
        }
        if let Some((ns, labels)) = cluster_peer {
            self.mark_cluster_peers(|peer| labels.iter().any(|l| Self::peer_names(peer, &ns, l)));
        }
        // The old label set, if no pod has it any more (here and in the
        // set: two references).
        if let Some(labels) = old.map(|o| o.labels)
            && Arc::strong_count(&labels) == 2
        {
            self.label_sets.remove(&*labels);
        }
    }

    /// The shared copy of `labels`.
    fn intern(&mut self, labels: &Arc<Labels>) -> Arc<Labels> {
        match self.label_sets.get(&**labels) {
            Some(shared) => shared.clone(),
            None => {
                self.label_sets.insert(labels.clone());
                labels.clone()
            }
        }
    }

    /// Adds or replaces a policy. An invalid one is remembered as such (and
    /// replaces a valid earlier version: the object no longer says that).
    pub fn upsert_policy(&mut self, np: &NetworkPolicy) -> Result<(), PolicyError> {
        let parsed = Policy::parse(np);
        let Some(key) = ObjectRef::of(&np.metadata) else {
            return parsed.map(drop);
        };
        self.retired_rules |= self.policies.contains_key(&key);
        self.mark_selected_by(&key);
        match parsed {
            Ok(policy) => {
                self.invalid.remove(&key);
                self.policies.insert(key.clone(), policy);
                self.mark_selected_by(&key);
                Ok(())
            }
            Err(e) => {
                // Left out, the policy would open what it was written to
                // close: what it selects stays isolated, granted nothing.
                match Policy::isolating_only(np) {
                    Some(isolating) => self.policies.insert(key.clone(), isolating),
                    None => self.policies.remove(&key),
                };
                self.mark_selected_by(&key);
                self.invalid.insert(key, e.clone());
                Err(e)
            }
        }
    }

    pub fn remove_policy(&mut self, key: &ObjectRef) {
        self.retired_rules |= self.policies.contains_key(key);
        self.mark_selected_by(key);
        self.policies.remove(key);
        self.invalid.remove(key);
    }

    /// Marks the local pods `policy` selects dirty.
    fn mark_selected_by(&mut self, policy: &ObjectRef) {
        let Some(pol) = self.policies.get(policy) else { return };
        let selected: Vec<ObjectRef> = self
            .pods_in(&policy.namespace)
            .filter(|p| self.is_local(p) && pol.pod_selector.matches(&p.labels))
            .map(|p| p.key.clone())
            .collect();
        self.dirty.extend(selected);
    }

    /// Compiles `pods`, sharing the work that does not depend on the target.
    pub fn compile<'a>(
        &mut self,
        pods: impl IntoIterator<Item = &'a ObjectRef>,
    ) -> BTreeMap<ObjectRef, Result<PodRules, CompileError>> {
        let mut memo = Memo::default();
        pods.into_iter().map(|k| (k.clone(), self.compile_one(k, &mut memo))).collect()
    }

    /// Compiles every local pod.
    pub fn compile_all(&mut self) -> BTreeMap<ObjectRef, Result<PodRules, CompileError>> {
        let keys: Vec<ObjectRef> = self.local_pods().map(|p| p.key.clone()).collect();
        self.compile(&keys)
    }

    /// Rules for a pod the compiler does not know yet (a CNI ADD ahead of
    /// the API server), judged as a pod of its namespace without labels or
    /// named ports: a policy that selects every pod there (`podSelector:
    /// {}`) already holds for it; policies that select by label wait for its
    /// object, and until then its directions no policy isolates follow the
    /// mode (strict: closed).
    pub fn compile_unknown(&mut self, key: &ObjectRef) -> Result<PodRules, CompileError> {
        let target = PodInfo {
            key: key.clone(),
            uid: String::new(),
            labels: Default::default(),
            ips: Vec::new(),
            node_name: Some(self.options.node_name.clone()),
            host_network: false,
            terminal: false,
            named_ports: Vec::new(),
        };
        self.compile_target(&target, &mut Memo::default())
    }

    fn compile_one(&mut self, key: &ObjectRef, memo: &mut Memo) -> Result<PodRules, CompileError> {
        let target = self.pods.get(key).ok_or_else(|| CompileError::UnknownPod(key.clone()))?.clone();
        self.compile_target(&target, memo)
    }

    fn compile_target(&mut self, target: &PodInfo, memo: &mut Memo) -> Result<PodRules, CompileError> {
        let key = &target.key;
        let mut out = PodRules::default();
        for dir in Direction::BOTH {
            let selecting: Vec<ObjectRef> = self.isolating_target(target, dir).cloned().collect();
            let isolated = !selecting.is_empty() || self.options.strict;
            // Every rule that applies, in order of evaluation: the admin
            // tier, NetworkPolicy, and the baseline tier where NetworkPolicy
            // leaves the direction open.
            let mut applicable: Vec<Applicable> = self.applicable_cluster_rules(target, dir, Tier::Admin);
            for policy in &selecting {
                for (index, rule) in self.policies[policy].rules(dir).unwrap_or_default().iter().enumerate() {
                    let id = self.attributions.id(Attribution::network_policy(policy.clone(), dir, index));
                    // Egress grants never depend on the target, ingress ones
                    // only through named ports.
                    let shared = dir == Direction::Egress || !has_named_port(rule);
                    applicable.push(Applicable {
                        id,
                        rank: lpm::rank::NETWORK_POLICY,
                        source: policy.clone(),
                        index,
                        shared,
                    });
                }
            }
            if !isolated {
                applicable.extend(self.applicable_cluster_rules(target, dir, Tier::Baseline));
                if applicable.is_empty() {
                    continue;
                }
            }
            // Pods selected by the same target-independent rules get the same
            // entries: build them once per batch.
            let entries_key =
                applicable.iter().all(|a| a.shared).then(|| (dir, applicable.iter().map(|a| a.id).collect::<Vec<_>>()));
            let cached = entries_key.as_ref().and_then(|k| memo.entries.get(k)).cloned();
            let entries = match cached {
                Some(entries) => entries,
                None => {
                    let mut grants = self.node_grants(dir);
                    for a in &applicable {
                        if a.shared
                            && let Some(g) = memo.grants.get(&a.id)
                        {
                            grants.extend_from_slice(g);
                            continue;
                        }
                        let g = if a.rank == lpm::rank::NETWORK_POLICY {
                            let rule = &self.policies[&a.source].rules(dir).unwrap_or_default()[a.index];
                            self.rule_grants(&a.source, dir, rule, a.id, target)
                        } else {
                            self.cluster_rule_grants(dir, a, target)
                        };
                        grants.extend_from_slice(&g);
                        if a.shared {
                            memo.grants.insert(a.id, g);
                        }
                    }
                    let entries = lpm::build(&grants);
                    if let Some(k) = entries_key {
                        memo.entries.insert(k, entries.clone());
                    }
                    entries
                }
            };
            if let Some((prefix, rules)) = entries.iter().find(|(_, r)| r.len() > MAX_RULES_PER_PREFIX) {
                return Err(CompileError::TooManyRules {
                    pod: key.clone(),
                    direction: dir,
                    prefix: *prefix,
                    count: rules.len(),
                });
            }
            if entries.len() > MAX_PREFIXES_PER_SET {
                return Err(CompileError::TooManyPrefixes {
                    pod: key.clone(),
                    direction: dir,
                    count: entries.len(),
                    max: MAX_PREFIXES_PER_SET,
                });
            }
            let mode = match (isolated, selecting.is_empty()) {
                (false, _) => Mode::ClusterPolicies,
                (true, true) => Mode::DefaultDeny,
                (true, false) => Mode::PoliciesApplied,
            };
            let audit = mode == Mode::PoliciesApplied && self.audited(&key.namespace);
            *out.direction_mut(dir) = DirectionRules { mode, entries, audit };
        }
        Ok(out)
    }

    /// What a pod gets whose rules cannot be compiled (too many for its
    /// maps) and that has no earlier rules to keep: every direction its
    /// policies isolate (every direction in strict mode) admits the node
    /// alone, as while a pod's policies are not known yet. Failing open would
    /// let through what its policies exist to stop.
    ///
    /// A pod the compiler does not know (a CNI ADD ahead of the API server)
    /// gets its mode's default: closed but for the node in strict mode, open
    /// in standard mode.
    pub fn fail_closed(&self, key: &ObjectRef) -> PodRules {
        let mut out = PodRules::default();
        let target = self.pods.get(key);
        for dir in Direction::BOTH {
            // Cluster rules that could not be written may have denied
            // something: their directions close too.
            let isolated = self.options.strict
                || target
                    .is_some_and(|t| self.isolating_target(t, dir).next().is_some() || self.has_cluster_rules(t, dir));
            if isolated {
                *out.direction_mut(dir) = DirectionRules {
                    mode: Mode::DefaultDeny,
                    entries: lpm::build(&self.node_grants(dir)),
                    audit: false,
                };
            }
        }
        out
    }

    /// The node's own addresses, admitted into every isolated pod when
    /// `allow_node` (kubelet probes).
    fn node_grants(&self, dir: Direction) -> Vec<Grant> {
        if dir != Direction::Ingress || !self.options.allow_node {
            return Vec::new();
        }
        let host = |ip: &IpAddr| Grant {
            prefix: IpNet::from(*ip),
            except: Vec::new(),
            rank: lpm::rank::NODE,
            rules: [PortRule::any(POLICY_ID_HOST)].into(),
        };
        self.options.node_ips.iter().map(host).collect()
    }

    /// The policies that isolate `key` in `dir`: those that select it and
    /// have that policy type. What none of their rules admits is denied, so
    /// they are what a denied flow's line and trace name. A pod the compiler
    /// does not know is taken as one without labels, as
    /// [`Self::compile_unknown`] compiles it.
    pub fn isolating(&self, key: &ObjectRef, dir: Direction) -> Vec<ObjectRef> {
        let unlabelled = Labels::default();
        let labels = self.pods.get(key).map_or(&unlabelled, |p| p.labels.as_ref());
        self.selecting(&key.namespace, labels, dir).cloned().collect()
    }

    fn isolating_target<'a>(&'a self, target: &'a PodInfo, dir: Direction) -> impl Iterator<Item = &'a ObjectRef> {
        self.selecting(&target.key.namespace, &target.labels, dir)
    }

    fn selecting<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a Labels,
        dir: Direction,
    ) -> impl Iterator<Item = &'a ObjectRef> + 'a {
        self.policies_in(namespace)
            .filter(move |p| p.rules(dir).is_some() && p.pod_selector.matches(labels))
            .map(|p| &p.key)
    }

    /// Policies of one namespace: keys sort by namespace first.
    /// Policies of namespaces with local pods: only they can select one.
    fn policies_near_local_pods(&self) -> impl Iterator<Item = &Policy> {
        self.local_per_namespace.keys().flat_map(|ns| self.policies_in(ns))
    }

    fn policies_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .range(ObjectRef::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| p)
    }

    fn rule_grants(&self, policy: &ObjectRef, dir: Direction, rule: &Rule, id: u32, target: &PodInfo) -> Vec<Grant> {
        // Named ports resolve against the target for ingress; for egress
        // against the destination pod, and so to nothing for address blocks.
        let fixed_ctx = (dir == Direction::Ingress).then_some(target);
        let mut grants = Vec::new();
        let host_grants = |grants: &mut Vec<Grant>, pod: &PodInfo, rules: Vec<PortRule>| {
            if !rules.is_empty() {
                let rules: std::sync::Arc<[PortRule]> = rules.into();
                grants.extend(pod.ips.iter().map(|ip| Grant::allow(IpNet::from(*ip), Vec::new(), rules.clone())));
            }
        };
        let Some(peers) = &rule.peers else {
            let rules = port_rules(rule.ports.as_deref(), fixed_ctx, id);
            if dir == Direction::Egress && has_named_port(rule) {
                for pod in self.pods.values().filter(|p| p.is_peer()) {
                    host_grants(&mut grants, pod, port_rules(rule.ports.as_deref(), Some(pod), id));
                }
            }
            if !rules.is_empty() {
                let rules: std::sync::Arc<[PortRule]> = rules.into();
                for any in ["0.0.0.0/0", "::/0"] {
                    grants.push(Grant::allow(any.parse().expect("literal"), Vec::new(), rules.clone()));
                }
            }
            return grants;
        };
        for peer in peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    for pod in self.peer_pods(&policy.namespace, namespaces.as_ref(), pods) {
                        host_grants(&mut grants, pod, port_rules(rule.ports.as_deref(), fixed_ctx.or(Some(pod)), id));
                    }
                }
                Peer::Block { cidr, except } => {
                    let rules = port_rules(rule.ports.as_deref(), fixed_ctx, id);
                    if !rules.is_empty() {
                        grants.push(Grant::allow(*cidr, except.clone(), rules.into()));
                    }
                }
            }
        }
        grants
    }

    fn peer_pods<'a>(
        &'a self,
        policy_namespace: &'a str,
        namespaces: Option<&'a crate::selector::Selector>,
        pods: &'a crate::selector::Selector,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods_per_namespace
            .keys()
            .filter(move |ns| match namespaces {
                None => ns.as_str() == policy_namespace,
                Some(sel) => sel.matches(&self.namespace_labels(ns)),
            })
            .flat_map(|ns| self.pods_in(ns))
            .filter(move |p| p.is_peer() && pods.matches(&p.labels))
    }

    /// The known pods of namespace `ns`: a range of `pods`, which orders by
    /// namespace first (a lookup per pod was most of a compile).
    fn pods_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.range(ObjectRef::new(ns, "")..).take_while(move |(k, _)| k.namespace == ns).map(|(_, p)| p)
    }
}

/// Work shared between the pods of one batch.
#[derive(Default)]
struct Memo {
    /// Grants of target-independent rules, by attribution id.
    grants: HashMap<u32, Vec<Grant>>,
    /// Entries of a direction made only of target-independent rules, by the
    /// rules' ids.
    entries: HashMap<(Direction, Vec<u32>), BTreeMap<IpNet, Vec<PortRule>>>,
}

/// Counts one more (`up`) or one fewer of `key` in `counts`, which leaves
/// out what it counts none of.
fn count(counts: &mut BTreeMap<String, usize>, key: &str, up: bool) {
    if up {
        *counts.entry(key.to_owned()).or_default() += 1;
    } else if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

fn has_named_port(rule: &Rule) -> bool {
    rule.ports.iter().flatten().any(|p| matches!(p.port, PortValue::Named(_)))
}

/// The datapath rules for `ports`, resolving named ports against `ctx`.
fn port_rules(ports: Option<&[PortSpec]>, ctx: Option<&PodInfo>, id: u32) -> Vec<PortRule> {
    let Some(ports) = ports else { return vec![PortRule::any(id)] };
    ports
        .iter()
        .filter_map(|p| match &p.port {
            PortValue::All => Some(PortRule::ports(id, p.protocol, 0, u16::MAX)),
            PortValue::Range(s, e) => Some(PortRule::ports(id, p.protocol, *s, *e)),
            PortValue::Named(name) => ctx
                .and_then(|pod| pod.resolve_port(name, p.protocol))
                .map(|port| PortRule::ports(id, p.protocol, port, port)),
        })
        .collect()
}

mod tiers;
use tiers::Applicable;

#[cfg(test)]
mod tests;
