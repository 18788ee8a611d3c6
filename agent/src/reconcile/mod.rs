//! Keeps every local pod's datapath equal to what its policies compile to.
mod dataplane;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use na_policy::{CompileError, Compiler, Direction, ObjectRef, PodRules, PolicyError, ServiceError, Services};
use serde::Serialize;

use crate::{
    datapath::{Datapath, PodAddrs},
    pod_id::PodId,
    sandbox::{AddOutcome, Sandbox},
    source::{Event, Kind, Object},
    status::{IsolatedBy, PodEntry},
    veth::host_veth_name,
};

pub use dataplane::{Dataplane, PodProgram};

/// How many pods are attached at once: each attachment mostly waits for
/// RCU grace periods, and concurrent waits overlap.
const PARALLEL_ATTACHES: usize = 16;
/// How long the rule ids of deleted policies keep their names: verdict
/// events already in the ring when a policy goes are read after.
const KEEP_RETIRED: Duration = Duration::from_secs(10);

/// An object the compiler could not take (left out; the rest goes on).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// A pod whose programs are attached.
struct Attached<P> {
    /// Empty while the pod is assumed (see [`Reconciler::add_all`]).
    uid: String,
    veth: String,
    ifindex: u32,
    maps: P,
    rules: PodRules,
    addrs: PodAddrs,
}

/// A pod to attach: its veth is there, its rules compiled.
struct NewPod {
    key: ObjectRef,
    uid: String,
    veth: String,
    addrs: PodAddrs,
    rules: PodRules,
}

/// What one [`Reconciler::sync`] did.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub attached: Vec<String>,
    pub updated: Vec<String>,
    pub detached: Vec<String>,
    /// Attached pods whose attachment had been removed from under the
    /// agent, attached again.
    pub restored: Vec<String>,
    /// Local pods whose veth is not there yet; retried.
    pub pending: Vec<String>,
    /// What failed, with why.
    pub errors: Vec<ReconcileError>,
}

/// One failure of a sync: its kind (for metrics) and the whole story (for
/// the log and the status file).
#[derive(Clone, Debug, Serialize)]
pub struct ReconcileError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a reconcile error was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A pod's policies did not compile (too many rules or prefixes for its
    /// maps): it is enforced closed, admitting only the node.
    Compile,
    /// A new pod's maps or programs could not be loaded or attached: it
    /// stays as it was (unenforced, or blocked in strict mode), retried.
    Attach,
    /// An attached pod's new rules could not be written: its last rules
    /// stay, retried.
    Update,
    /// A removed pod's programs or pins could not be removed.
    Detach,
    /// The node's Service frontends could not be written.
    Services,
    /// State a previous agent left (pods gone, older programs) could not be
    /// cleaned up.
    Cleanup,
}

impl ErrorKind {
    pub const ALL: [Self; 6] = [Self::Compile, Self::Attach, Self::Update, Self::Detach, Self::Services, Self::Cleanup];

    pub fn label(self) -> &'static str {
        match self {
            Self::Compile => "compile",
            Self::Attach => "attach",
            Self::Update => "update",
            Self::Detach => "detach",
            Self::Services => "services",
            Self::Cleanup => "cleanup",
        }
    }
}

impl SyncReport {
    fn error(&mut self, kind: ErrorKind, message: impl std::fmt::Display) {
        self.errors.push(ReconcileError { kind, message: message.to_string() });
    }
}

pub struct Reconciler<D: Dataplane = Datapath> {
    compiler: Compiler,
    datapath: D,
    veth_prefix: String,
    attached: BTreeMap<ObjectRef, Attached<D::Pod>>,
    /// Local pods whose veth is not there yet.
    pending: BTreeSet<ObjectRef>,
    /// Pods whose attachment or rules update failed.
    failed: BTreeSet<ObjectRef>,
    /// Sandboxes CNI ADDs reported, until their DEL.
    sandboxes: BTreeMap<ObjectRef, Sandbox>,
    /// Pods a CNI ADD asked for before the agent knew them here (or whose
    /// object the watch deleted while their sandbox lives): judged as pods
    /// without labels ([`Compiler::compile_unknown`]) until their object arrives.
    assumed: BTreeSet<ObjectRef>,
    services: Services,
    /// Services changed since the node's frontends were last written (or
    /// writing them failed).
    services_dirty: bool,
    /// Since when the compiler has had rule ids to prune, and how long they
    /// are kept ([`KEEP_RETIRED`]).
    retired_since: Option<Instant>,
    keep_retired: Duration,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(compiler: Compiler, datapath: D, veth_prefix: String) -> Self {
        Self {
            compiler,
            datapath,
            veth_prefix,
            attached: BTreeMap::new(),
            pending: BTreeSet::new(),
            failed: BTreeSet::new(),
            sandboxes: BTreeMap::new(),
            assumed: BTreeSet::new(),
            services: Services::default(),
            services_dirty: true,
            retired_since: None,
            keep_retired: KEEP_RETIRED,
        }
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    /// The cluster's Services, as far as this node needs them.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Every Service frontend of the node with its Service and endpoints.
    pub fn service_routes(&self) -> crate::status::ServiceRoutes {
        let node_ips = &self.compiler.options().node_ips;
        let frontends = self
            .services
            .routes(node_ips)
            .into_iter()
            .map(|(f, (service, endpoints))| crate::status::FrontendEntry {
                addr: f.addr,
                protocol: f.protocol,
                port: f.port,
                service: service.to_string(),
                endpoints: endpoints.iter().map(|e| std::net::SocketAddr::new(e.addr, e.port)).collect(),
            })
            .collect();
        crate::status::ServiceRoutes { frontends }
    }

    /// Pods with programs attached, as pod ids.
    pub fn attached(&self) -> impl Iterator<Item = PodId> + '_ {
        self.attached.keys().map(|k| PodId::new(&k.namespace, &k.name))
    }

    /// Attached pods by the ifindex of their host veth (events carry it).
    pub fn pods_by_ifindex(&self) -> std::collections::HashMap<u32, ObjectRef> {
        self.attached.iter().map(|(k, a)| (a.ifindex, k.clone())).collect()
    }

    /// Attached pods as the status file lists them.
    pub fn pod_entries(&self) -> Vec<PodEntry> {
        self.attached
            .iter()
            .map(|(k, a)| PodEntry {
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                pod_id: PodId::new(&k.namespace, &k.name).to_string(),
                uid: a.uid.clone(),
                ips: self.ips(k),
                veth: a.veth.clone(),
                ifindex: a.ifindex,
                assumed: self.assumed.contains(k),
                isolated_by: {
                    let names = |dir| self.compiler.isolating(k, dir).iter().map(ToString::to_string).collect();
                    IsolatedBy { ingress: names(Direction::Ingress), egress: names(Direction::Egress) }
                },
            })
            .collect()
    }

    /// Whether a local pod waits for its veth: worth a sync when links or
    /// routes change.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a pod's attachment or update failed: worth a sync on a timer.
    pub fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Feeds one change to the compiler. An invalid policy or Service is
    /// returned as an error (and left out); nothing else fails.
    pub fn apply(&mut self, event: Event) -> Result<(), ApplyError> {
        match event {
            Event::Applied(Object::Pod(p)) => {
                self.compiler.upsert_pod(&p);
                if let Some(key) = ObjectRef::of(&p.metadata) {
                    // An object that does not place the pod here (one seen
                    // before it was scheduled) leaves a sandbox the runtime
                    // made here assumed.
                    if self.compiler.is_local_pod(&key) {
                        self.assumed.remove(&key);
                    }
                    if let Some(sandbox) = self.sandboxes.get(&key) {
                        self.compiler.set_pod_ips(&key, &sandbox.ips);
                    }
                }
            }
            Event::Applied(Object::Namespace(n)) => self.compiler.upsert_namespace(&n),
            Event::Applied(Object::NetworkPolicy(p)) => return Ok(self.compiler.upsert_policy(&p)?),
            Event::Applied(Object::ClusterNetworkPolicy(p)) => return Ok(self.compiler.upsert_cluster_policy(&p)?),
            Event::Applied(Object::Service(svc)) => {
                self.services_dirty = true;
                return Ok(self.services.upsert(&svc)?);
            }
            // Endpoints explain verdicts; the datapath judges what DNAT chose.
            Event::Applied(Object::EndpointSlice(slice)) => self.services.upsert_slice(&slice),
            Event::Deleted(key) => match key.kind {
                Kind::Pod => {
                    self.compiler.remove_pod(&key.id);
                    // Watch events name pods, not incarnations: the deletion
                    // of an older pod of the same name (a StatefulSet's, the
                    // watch lagging) must not take the sandbox the runtime
                    // made for the new one. Only its CNI DEL removes it;
                    // meanwhile it is assumed.
                    if self.sandboxes.contains_key(&key.id) {
                        self.assumed.insert(key.id.clone());
                    }
                }
                Kind::Namespace => self.compiler.remove_namespace(&key.id.name),
                Kind::NetworkPolicy => self.compiler.remove_policy(&key.id),
                Kind::Service => {
                    self.services.remove(&key.id);
                    self.services_dirty = true;
                }
                Kind::EndpointSlice => self.services.remove_slice(&key.id),
                Kind::ClusterNetworkPolicy | Kind::AwsClusterNetworkPolicy => {
                    self.compiler.remove_cluster_policy(&key.id.name)
                }
            },
        }
        Ok(())
    }

    /// Brings every pod a change touched (and every pending or failed pod) in
    /// line, and the node's Service frontends.
    pub fn sync(&mut self) -> SyncReport {
        let mut report = SyncReport::default();
        if self.services_dirty {
            let frontends = self.services.frontends(&self.compiler.options().node_ips);
            match self.datapath.set_services(&frontends) {
                Ok(_) => self.services_dirty = false,
                Err(e) => report.error(ErrorKind::Services, format!("Service frontends: {e}")),
            }
        }
        let mut todo = self.compiler.take_dirty();
        todo.append(&mut self.pending);
        todo.append(&mut self.failed);
        let local: BTreeSet<ObjectRef> =
            self.compiler.local_pods().map(|p| p.key.clone()).chain(self.assumed.iter().cloned()).collect();
        let (present, gone): (Vec<ObjectRef>, Vec<ObjectRef>) = todo.into_iter().partition(|k| local.contains(k));
        for key in gone {
            self.detach(&key, &mut report);
        }
        let compiled = self.compiler.compile(&present);
        let mut new = Vec::new();
        for (key, rules) in compiled {
            match rules {
                Ok(rules) => new.extend(self.converge(key, rules, &mut report)),
                Err(CompileError::UnknownPod(_)) if self.assumed.contains(&key) => {
                    let rules = self.compiler.compile_unknown(&key).unwrap_or_else(|e| {
                        report.error(ErrorKind::Compile, e);
                        self.compiler.fail_closed(&key)
                    });
                    new.extend(self.converge(key, rules, &mut report));
                }
                // Fails closed: what its policies isolate admits the node
                // alone. The pod is compiled again whenever something it
                // depends on changes.
                Err(e) => {
                    report.error(ErrorKind::Compile, e);
                    let closed = self.compiler.fail_closed(&key);
                    new.extend(self.converge(key, closed, &mut report));
                }
            }
        }
        self.attach_all(new, &mut report);
        self.prune_attributions();
        report
    }

    /// Lets the compiler forget the rule ids that no policy has and no
    /// pod's loaded entries carry any more, so that neither the table nor
    /// the status file grows with every policy ever seen. Not while a pod's
    /// attachment is failing: its maps may carry ids no entry here shows.
    fn prune_attributions(&mut self) {
        if !self.compiler.has_retired_rules() || !self.failed.is_empty() {
            return;
        }
        let since = *self.retired_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.keep_retired {
            return;
        }
        self.retired_since = None;
        let in_use: HashSet<u32> = self
            .attached
            .values()
            .flat_map(|a| [&a.rules.ingress, &a.rules.egress])
            .flat_map(|d| d.entries.values().flatten())
            .map(|rule| rule.policy_id)
            .collect();
        self.compiler.prune_attributions(&in_use);
    }

    /// Attaches pods found ready by [`Self::converge`], several at a time.
    ///
    /// Concurrency note: each attachment also forgets the ifindexes its own
    /// maps were known by before (a recreated veth), after checking they
    /// still point at them; a pod of the same batch that takes such a freed
    /// ifindex between the check and the removal would lose its entries.
    /// That needs the kernel to reuse an ifindex within milliseconds.
    fn attach_all(&mut self, new: Vec<NewPod>, report: &mut SyncReport) {
        for batch in new.chunks(PARALLEL_ATTACHES) {
            let datapath = &self.datapath;
            let results: Vec<_> = std::thread::scope(|s| {
                let running: Vec<_> = batch
                    .iter()
                    .map(|p| {
                        let id = PodId::new(&p.key.namespace, &p.key.name);
                        s.spawn(move || datapath.attach_pod(&id, &p.veth, p.addrs, &p.rules))
                    })
                    .collect();
                running.into_iter().map(|r| r.join().expect("attach thread")).collect()
            });
            for (p, result) in batch.iter().zip(results) {
                match result {
                    Ok(maps) => {
                        report.attached.push(p.key.to_string());
                        // The ifindex the maps were registered under (the
                        // veth's at attach time), which events and counters carry.
                        let a = Attached {
                            uid: p.uid.clone(),
                            veth: p.veth.clone(),
                            ifindex: maps.ifindex(),
                            maps,
                            rules: p.rules.clone(),
                            addrs: p.addrs,
                        };
                        self.attached.insert(p.key.clone(), a);
                    }
                    Err(e) => {
                        report.error(ErrorKind::Attach, format!("pod {}: {e}", p.key));
                        self.failed.insert(p.key.clone());
                    }
                }
            }
        }
    }

    /// Brings an attached pod in line, or says what a new one needs.
    fn converge(&mut self, key: ObjectRef, rules: PodRules, report: &mut SyncReport) -> Option<NewPod> {
        let uid = self.compiler.pod(&key).map(|p| p.uid.clone()).unwrap_or_default();
        let addrs = PodAddrs::new(&self.ips(&key));
        // A sandbox a CNI ADD reported is the pod's identity: whatever object
        // (an assumed pod's, once it arrives; a recreated pod's, after the
        // watch showed its predecessor) takes it over, state and all.
        // Without one, a new uid is a new pod that starts from scratch.
        let same_sandbox = self.sandboxes.contains_key(&key);
        if let Some(a) = self.attached.get_mut(&key)
            && (a.uid == uid || a.uid.is_empty() || same_sandbox)
        {
            if !uid.is_empty() {
                a.uid = uid;
            }
            if a.rules != rules || a.addrs != addrs {
                a.maps.set_addrs(addrs);
                match a.maps.apply(&rules) {
                    Ok(()) => {
                        a.rules = rules;
                        a.addrs = addrs;
                        report.updated.push(key.to_string());
                    }
                    Err(e) => {
                        report.error(ErrorKind::Update, format!("pod {key}: {e}"));
                        self.failed.insert(key);
                    }
                }
            }
            return None;
        }
        // A pod recreated under the same name starts from scratch: nothing of
        // the old one's state (flows, rules) may carry over.
        if self.attached.contains_key(&key) {
            self.detach(&key, report);
        }
        let Some(veth) = self.find_veth(&key) else {
            report.pending.push(key.to_string());
            self.pending.insert(key);
            return None;
        };
        Some(NewPod { key, uid, veth, addrs, rules })
    }

    /// The pod's addresses: its current sandbox's as its CNI reported them
    /// (the API server shows a new sandbox's only later), else the API
    /// server's.
    fn ips(&self, key: &ObjectRef) -> Vec<IpAddr> {
        match self.sandboxes.get(key) {
            Some(s) if !s.ips.is_empty() => s.ips.clone(),
            _ => self.compiler.pod(key).map(|p| p.ips.clone()).unwrap_or_default(),
        }
    }

    /// The pod's host veth, if it exists: as its CNI ADD named it, else by
    /// the VPC CNI's name, else by the host route to one of its addresses.
    fn find_veth(&self, key: &ObjectRef) -> Option<String> {
        let reported = self.sandboxes.get(key).and_then(|s| s.host_interface.clone());
        let named = host_veth_name(&self.veth_prefix, &key.namespace, &key.name);
        let exists = |name: &String| self.datapath.link_index(name).is_some();
        reported
            .into_iter()
            .chain([named])
            .find(exists)
            .or_else(|| self.ips(key).into_iter().find_map(|ip| self.datapath.link_by_route(ip)))
    }

    /// Whether the pod is known (from the API server or the manifests) as
    /// one this node enforces.
    pub fn knows(&self, key: &ObjectRef) -> bool {
        self.compiler.is_local_pod(key)
    }

    /// CNI ADDs, all settled in one sync (pods started together attach
    /// together): each pod's policy enforced on the sandbox its ADD reports,
    /// and whether that is done, in the order asked. A pod the agent does
    /// not know is [`AddOutcome::Unknown`], unless its ADD says `assume`:
    /// then it is judged as a pod without labels until its object arrives.
    pub fn add_all(&mut self, adds: Vec<(ObjectRef, Sandbox, bool)>) -> (Vec<AddOutcome>, SyncReport) {
        let mut asked = Vec::with_capacity(adds.len());
        for (key, sandbox, assume) in adds {
            let known = self.knows(&key);
            if !known && !assume {
                asked.push((key, false));
                continue;
            }
            if !known {
                self.assumed.insert(key.clone());
            }
            // Attached elsewhere than this sandbox's interface: an older
            // sandbox's veth that is still there. Attached afresh on this one.
            if let (Some(a), Some(reported)) = (self.attached.get(&key), &sandbox.host_interface)
                && a.veth != *reported
            {
                self.attached.remove(&key);
            }
            self.sandboxes.insert(key.clone(), sandbox);
            // Without addresses its own record would take the pod's every
            // packet for a spoof; the CNI's host routes to its veth say them.
            if self.ips(&key).is_empty()
                && let Some(veth) = self.find_veth(&key)
            {
                self.sandboxes.get_mut(&key).expect("just inserted").ips = self.datapath.routed_through(&veth);
            }
            let ips = self.ips(&key);
            self.compiler.set_pod_ips(&key, &ips);
            self.pending.insert(key.clone());
            asked.push((key, true));
        }
        if asked.iter().all(|(_, settle)| !settle) {
            return (asked.iter().map(|_| AddOutcome::Unknown).collect(), SyncReport::default());
        }
        // A new sandbox of an attached pod has a new veth, which the link
        // notification may not have reported yet.
        self.relink();
        let report = self.sync();
        let outcomes = asked
            .iter()
            .map(|(key, settled)| match self.attached.get(key) {
                _ if !settled => AddOutcome::Unknown,
                // Its rules could not be written: what it has may be older.
                Some(_) if self.failed.contains(key) => AddOutcome::Failed(self.why_not_attached(key, &report)),
                Some(a) => AddOutcome::Enforced { ifindex: a.ifindex, assumed: self.assumed.contains(key) },
                None => AddOutcome::Failed(self.why_not_attached(key, &report)),
            })
            .collect();
        (outcomes, report)
    }

    fn why_not_attached(&self, key: &ObjectRef, report: &SyncReport) -> String {
        let prefix = format!("pod {key}:");
        if let Some(e) = report.errors.iter().find(|e| e.message.starts_with(&prefix)) {
            return e.message.clone();
        }
        if self.pending.contains(key) {
            return format!(
                "pod {key}: no host interface found (not as reported, not named {}, no host route to {:?})",
                host_veth_name(&self.veth_prefix, &key.namespace, &key.name),
                self.ips(key)
            );
        }
        match self.compiler.pod(key) {
            Some(p) if p.host_network => format!("pod {key} uses the host's network"),
            Some(p) if p.terminal => format!("pod {key} has finished"),
            Some(p) => {
                format!("pod {key} is scheduled on {:?}, not this node", p.node_name.as_deref().unwrap_or("no node"))
            }
            None => format!("pod {key} is not known"),
        }
    }

    /// Whether the pod is enforced (on `host_interface`, when given): its ifindex.
    pub fn check(&self, key: &ObjectRef, host_interface: Option<&str>) -> Result<u32, String> {
        match self.attached.get(key) {
            Some(a) if host_interface.is_none_or(|i| i == a.veth) => Ok(a.ifindex),
            Some(a) => Err(format!("pod {key} is enforced on {}, not {}", a.veth, host_interface.unwrap_or_default())),
            None => Err(format!("pod {key} is not enforced")),
        }
    }

    /// A CNI DEL: forgets the sandbox and removes the pod's state. A DEL of
    /// another sandbox than the last one added (an old one torn down late)
    /// changes nothing; so does a DEL of what is already gone.
    pub fn remove(&mut self, key: &ObjectRef, container_id: &str) -> SyncReport {
        let mut report = SyncReport::default();
        if let Some(s) = self.sandboxes.get(key)
            && !container_id.is_empty()
            && !s.container_id.is_empty()
            && s.container_id != container_id
        {
            return report;
        }
        self.sandboxes.remove(key);
        self.assumed.remove(key);
        self.detach(key, &mut report);
        // A pod still here waits for a veth: a DEL of an older sandbox than
        // its current one (runtimes that do not say which) must not leave
        // the current one unenforced; it is attached again at the next sync.
        if self.knows(key) {
            self.pending.insert(key.clone());
        }
        report
    }

    /// Call when links changed: an attached pod whose veth is gone or was
    /// made again (another ifindex: a new sandbox, as a CNI makes on a
    /// sandbox restart) waits for its veth like a new pod, and is then
    /// attached afresh (a new sandbox gets a fresh conntrack table). Returns
    /// whether any did.
    pub fn relink(&mut self) -> bool {
        let moved: Vec<ObjectRef> = self
            .attached
            .iter()
            .filter(|(_, a)| self.datapath.link_index(&a.veth) != Some(a.ifindex))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &moved {
            self.attached.remove(key);
            self.pending.insert(key.clone());
        }
        !moved.is_empty()
    }

    /// Attaches again every attached pod (on `ifindex` alone, when given)
    /// no longer enforced on its veth: a filter removed, a link detached, by
    /// someone else, or the veth's record lost or leading to other maps. Its
    /// maps, conntrack included, stay where the record still leads to them.
    /// A veth made again is [`Self::relink`]'s.
    pub fn restore(&mut self, ifindex: Option<u32>) -> SyncReport {
        let lost: Vec<ObjectRef> = self
            .attached
            .iter()
            .filter(|(_, a)| ifindex.is_none_or(|i| i == a.ifindex))
            // The veth it was attached to (a veth made again is `relink`'s).
            .filter(|(_, a)| self.datapath.link_index(&a.veth) == Some(a.ifindex))
            // Only what is known to be gone: a failed query says nothing.
            .filter(|(key, a)| {
                let id = PodId::new(&key.namespace, &key.name);
                matches!(self.datapath.is_enforcing(&id, a.ifindex), Ok(false))
            })
            .map(|(key, _)| key.clone())
            .collect();
        // Out of `attached` until attached again: one that fails is retried
        // as a new pod would be.
        let again = lost
            .iter()
            .filter_map(|key| {
                let a = self.attached.remove(key)?;
                Some(NewPod { key: key.clone(), uid: a.uid, veth: a.veth, addrs: a.addrs, rules: a.rules })
            })
            .collect();
        let mut report = SyncReport::default();
        self.attach_all(again, &mut report);
        report.restored = std::mem::take(&mut report.attached);
        report
    }

    fn detach(&mut self, key: &ObjectRef, report: &mut SyncReport) {
        self.pending.remove(key);
        self.failed.remove(key);
        let id = PodId::new(&key.namespace, &key.name);
        // A pod waiting for a veth it had before (see `relink`) still has
        // its pins.
        let veth = self.attached.remove(key).map(|a| a.veth);
        match self.datapath.detach_pod(&id, veth.as_deref()) {
            Ok(()) if veth.is_some() => report.detached.push(key.to_string()),
            Ok(()) => {}
            Err(e) => report.error(ErrorKind::Detach, format!("pod {key}: {e}")),
        }
    }

    /// Removes the pins of pods that a previous agent loaded and that are no
    /// longer here, and programs of other versions. Call after the first
    /// full sync: by then every pod kept runs this agent's programs.
    pub fn remove_orphans(&mut self, report: &mut SyncReport) {
        let keep: BTreeSet<PodId> = self
            .attached()
            .chain(self.pending.iter().chain(&self.failed).map(|k| PodId::new(&k.namespace, &k.name)))
            .collect();
        let pinned = match self.datapath.pinned_pods() {
            Ok(pinned) => pinned,
            Err(e) => return report.error(ErrorKind::Cleanup, format!("reading pinned pods: {e}")),
        };
        for pod in pinned.into_iter().filter(|id| !keep.contains(id)) {
            match self.datapath.detach_pod(&pod, None) {
                Ok(()) => report.detached.push(pod.to_string()),
                Err(e) => report.error(ErrorKind::Cleanup, format!("orphaned pod state {pod}: {e}")),
            }
        }
        if let Err(e) = self.datapath.remove_stale_programs() {
            report.error(ErrorKind::Cleanup, format!("removing programs of older versions: {e}"));
        }
    }
}
