//! The node agent's life: it watches Pods, Namespaces, NetworkPolicies and Services
//! through the API server (`--kubeconfig`, or the in-cluster / environment
//! configuration), or in local mode (`--manifests DIR`) reads them from a
//! directory of manifests and follows its changes; keeps every local pod
//! enforced; answers CNI calls; writes flow logs, metrics and its status
//! file. Exiting (SIGTERM, SIGINT, or being killed) leaves every program
//! attached and every map pinned, so pods stay enforced until the next
//! agent adopts them.
mod kernel_log;
mod manifest_watch;
mod ring;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use na_policy::{CompileOptions, Compiler, ObjectRef};
use tokio::{
    signal::unix::SignalKind,
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{
    bpffs::PinLayout,
    config::{Args, EnforcingMode},
    datapath::{Datapath, KernelLogLevel, Timeouts},
    flowlog::{self, FlowLogConfig, FlowLogger, Output},
    links::Change,
    reconcile::{Reconciler, SyncReport},
    sandbox::{AddOutcome, Request, Sandbox},
    source::{
        self, Event, Object,
        kube::Update,
        manifests::{self, Loaded},
    },
    status::{self, ClusterRule, RuleEntry, Status},
    telemetry::{self, AddResult, Telemetry},
};

/// How long a burst of finished file changes may last before the directory
/// is read (a `kubectl`-style apply of several files). Files are read only
/// once written and closed or renamed in, never half-written, so this only
/// coalesces.
const DEBOUNCE: Duration = Duration::from_millis(2);
/// How often pods whose attachment failed are tried again. Pods whose veth
/// is missing are tried when links or routes change, never on a timer.
const RETRY: Duration = Duration::from_secs(2);
/// How long the burst of link and route changes of one pod start may last.
const LINK_SETTLE: Duration = Duration::from_millis(2);
/// Watch updates waiting for the loop, at most (about two list pages).
const KUBE_BACKLOG: usize = 1024;

/// `--check-config`: prints the settings as resolved, or fails naming the bad one.
pub fn check_config(args: &Args) -> Result<()> {
    for addr in [args.metrics_addr, args.health_addr] {
        addr.resolve(&args.node_ips).map_err(anyhow::Error::msg)?;
    }
    println!("{args:#?}");
    Ok(())
}

/// `--prepare-bpffs`: mounts bpffs if missing and makes the pin directories.
pub fn prepare_bpffs(args: &Args) -> Result<()> {
    PinLayout::new(&args.bpffs_root).prepare().context("preparing bpffs")?;
    info!(root = %args.bpffs_root.display(), "bpffs ready");
    Ok(())
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<()> {
    let strict = args.enforcing_mode == EnforcingMode::Strict;
    let datapath = Datapath::new(PinLayout::new(&args.bpffs_root), args.attach_mode)
        .context("preparing bpffs")?
        .with_timeouts(Timeouts::default())
        .with_log_level(args.ebpf_log_level)
        .with_strict(strict)
        .with_flows_per_pod(args.conntrack_flows_per_pod)
        .with_spare_slots(args.spare_slots);
    let compiler = Compiler::new(CompileOptions {
        node_name: args.node_name.clone(),
        node_ips: args.node_ips.clone(),
        allow_node: !args.no_allow_node,
        strict,
        audit: args.audit,
    });
    // Before any pod: adopting the pinned programs costs nothing, verifying
    // new ones (an upgrade) is paid once here.
    let programs = datapath.programs_entry().context("loading the programs")?;
    info!(version = %programs.version, origin = %programs.origin, verify_ms = ?programs.verify_ms, "programs ready");
    // Before any pod too: a pod's flows to Service addresses are judged on
    // their endpoints only once the hook is linked.
    let dnat_hook = datapath.install_dnat_hook();
    match &dnat_hook {
        Ok(()) => info!("flows to Service addresses are judged after DNAT"),
        Err(e) => warn!("{e}; flows to Service addresses are judged on the Service address itself"),
    }
    // Subscribed before the first read of anything it reports: nothing
    // changed in between goes unseen.
    let mut links = crate::links::watch().context("subscribing to link, route and address changes")?;
    sync_node_addrs(&datapath).await;

    // Exactly one source feeds the reconciler; the other channel stays closed.
    let (tx, mut changed) = mpsc::unbounded_channel();
    let (kube_tx, mut kube_rx) = mpsc::channel(KUBE_BACKLOG);
    let mut client = None;
    let _watcher = match &args.manifests {
        Some(dir) => Some(manifest_watch::watch(dir, tx).with_context(|| format!("watching {}", dir.display()))?),
        None => {
            let config = match &args.kubeconfig {
                Some(path) => {
                    let kubeconfig = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
                }
                None => kube::Config::infer().await.context("no in-cluster or kubeconfig configuration")?,
            };
            let c = source::kube::client(config)?;
            source::kube::spawn(c.clone(), kube_tx);
            client = Some(c);
            None
        }
    };

    let telemetry = Arc::new(Mutex::new(Telemetry::new(PinLayout::new(&args.bpffs_root))));
    for addr in [args.metrics_addr, args.health_addr] {
        let addr = addr.resolve(&args.node_ips).map_err(anyhow::Error::msg)?;
        let t = telemetry.clone();
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        tokio::spawn(async move {
            if let Err(e) = telemetry::serve(listener, t).await {
                error!("serving {addr}: {e}");
            }
        });
    }

    let mut status = Status {
        node: args.node_name.clone(),
        flow_log: args
            .enable_policy_event_logs
            .then(|| args.flow_log_file.as_ref().map_or_else(|| "stdout".to_owned(), |p| p.display().to_string())),
        programs: Some(programs),
        ..Default::default()
    };
    if let Err(e) = dnat_hook {
        status.record_error(format!("the DNAT hook: {e}"));
    }
    let mut node = Daemon {
        reconciler: Reconciler::new(compiler, datapath, args.veth_prefix.clone()),
        status,
        rules_version: None,
        status_writer: status::Writer::spawn(args.status_file.clone()).context("starting the status file's writer")?,
        status_file: args.status_file.clone(),
        telemetry,
        manifests: args.manifests.clone(),
        snapshot: Loaded::default(),
        services_written: None,
    };
    if node.manifests.is_some() {
        node.reload();
    } else {
        // Nothing is judged on a partial cluster: wait for a full list of
        // every kind before the first reconcile.
        let mut synced = std::collections::BTreeSet::new();
        while synced.len() < source::kube::watched_resources().len() {
            match kube_rx.recv().await.context("watchers stopped")? {
                Update::Synced(kind) => {
                    synced.insert(kind);
                }
                Update::NotInstalled(kind) => {
                    node.apply_update(Update::NotInstalled(kind));
                    synced.insert(kind);
                }
                u => node.apply_update(u),
            }
        }
    }
    let mut first = node.reconciler.sync();
    node.reconciler.remove_orphans(&mut first);
    node.publish(&first, None);
    node.telemetry.lock().expect("telemetry lock").ready = true;
    info!(node = %args.node_name, pods = node.status.attached.len(), "first reconcile done");

    let mut flows = if args.enable_policy_event_logs {
        let out = match &args.flow_log_file {
            Some(path) => Output::file(path.clone(), args.flow_log_max_bytes, args.flow_log_keep)
                .with_context(|| format!("opening {}", path.display()))?,
            None => Output::Stdout,
        };
        let config = FlowLogConfig { accept: args.flow_log_accept, max_per_sec: args.flow_log_max_per_sec };
        Some(FlowLogger::new(config, args.node_name.clone(), out))
    } else {
        None
    };
    let events_lock = status::events_lock_path(&args.status_file);
    let mut ring = None;
    let mut kernel_log = None;
    // One attempt, once the programs are loaded (and so the node's maps,
    // the log's ring among them, pinned): a failure is reported once, not
    // on every turn of the loop.
    let mut kernel_log_wanted = args.ebpf_log_level != KernelLogLevel::Off;

    // Only now: an ADD answered before the first reconcile would be judged
    // on a partial picture. Until the socket exists, CNI plugins fail ADD
    // and the runtime retries the pod.
    let (request_tx, mut requests) = mpsc::unbounded_channel();
    let socket = crate::rpc::server::bind(&args.cni_socket)
        .with_context(|| format!("listening on {}", args.cni_socket.display()))?;
    let settle = args.cni_settle_timeout;
    let mode = if strict { "strict" } else { "standard" };
    tokio::spawn(async move {
        if let Err(e) = crate::rpc::server::serve(socket, request_tx, client, settle, mode).await {
            error!("serving CNI calls: {e}");
        }
    });

    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut retry = tokio::time::interval(RETRY);
    let mut sweep = tokio::time::interval(args.conntrack_sweep_interval);
    loop {
        // The shared ring exists once the first pod is loaded.
        if flows.is_some() && ring.is_none() {
            ring = ring::open(node.reconciler.datapath().layout(), &events_lock);
        }
        if kernel_log_wanted && node.reconciler.attached().next().is_some() {
            kernel_log_wanted = false;
            kernel_log = kernel_log::open(node.reconciler.datapath());
        }
        tokio::select! {
            Ok(()) = ring::readable(kernel_log.as_mut()) => {
                if let Some(log) = kernel_log.as_mut() {
                    log.get_mut().flush();
                }
            }
            Ok(()) = ring::readable(ring.as_mut()) => {
                if let (Some(ring), Some(flows)) = (ring.as_mut(), flows.as_mut()) {
                    let pods = node.reconciler.pods_by_ifindex();
                    let ring = &mut ring.get_mut().ring;
                    while let Some(item) = ring.next() {
                        if let Some(event) = flowlog::decode(&item) {
                            let reconciler = &node.reconciler;
                            flows.record(&event, &pods, reconciler.compiler(), reconciler.services());
                        }
                    }
                }
            }
            Some(update) = kube_rx.recv() => {
                let since = Instant::now();
                node.apply_update(update);
                while let Ok(update) = kube_rx.try_recv() {
                    node.apply_update(update);
                }
                node.sync(Some(since));
            }
            Some(()) = changed.recv() => {
                let since = Instant::now();
                tokio::time::sleep(DEBOUNCE).await;
                while changed.try_recv().is_ok() {}
                node.reload();
                node.sync(Some(since));
            }
            Some(request) = requests.recv() => {
                let mut batch = vec![request];
                while let Ok(request) = requests.try_recv() {
                    batch.push(request);
                }
                node.answer(batch);
            }
            Some(change) = links.recv() => {
                tokio::time::sleep(LINK_SETTLE).await;
                let mut changes = vec![change];
                while let Ok(change) = links.try_recv() {
                    changes.push(change);
                }
                let lost = changes.contains(&Change::Lost);
                if lost || changes.contains(&Change::Addresses) {
                    sync_node_addrs(node.reconciler.datapath()).await;
                }
                let links_changed = lost || changes.contains(&Change::Links);
                if links_changed && (node.reconciler.relink() || node.reconciler.has_pending()) {
                    node.sync(None);
                }
                if lost {
                    node.restore(None);
                } else {
                    let removed: std::collections::BTreeSet<u32> =
                        changes.iter().filter_map(|c| if let Change::Filters(i) = c { Some(*i) } else { None }).collect();
                    for ifindex in removed {
                        node.restore(Some(ifindex));
                    }
                }
            }
            _ = retry.tick(), if node.reconciler.has_failed() => node.sync(None),
            _ = sweep.tick() => {
                // Also a resync of what netlink may have failed to report
                // (its multicast drops messages under pressure).
                sync_node_addrs(node.reconciler.datapath()).await;
                if node.reconciler.relink() {
                    node.sync(None);
                }
                node.restore(None);
                for pod in node.reconciler.attached().collect::<Vec<_>>() {
                    match node.reconciler.datapath().sweep_conntrack(&pod) {
                        Ok(0) => {}
                        Ok(n) => info!(%pod, removed = n, "conntrack entries expired"),
                        Err(e) => warn!(%pod, "conntrack sweep: {e}"),
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("exiting; programs stay attached and pinned for the next agent");
    Ok(())
}

/// Gives the programs the node's IPv6 addresses, with which neighbour
/// discovery passes. On failure ND with the node's global addresses is
/// judged as the ICMPv6 it is (closed); nothing opens.
async fn sync_node_addrs(datapath: &Datapath) {
    let addrs = match crate::links::ipv6_addrs().await {
        Ok(addrs) => addrs,
        Err(e) => return warn!("reading the node's IPv6 addresses: {e}"),
    };
    match datapath.set_node_addrs(&addrs) {
        Ok(0) => {}
        Ok(changed) => info!(addresses = addrs.len(), changed, "node addresses given to the programs"),
        Err(e) => warn!("giving the programs the node's addresses: {e}"),
    }
}

/// What the loop keeps between turns.
struct Daemon {
    reconciler: Reconciler,
    status: Status,
    /// The attributions' version `status.rules` was built from.
    rules_version: Option<u64>,
    status_writer: status::Writer,
    status_file: PathBuf,
    telemetry: Arc<Mutex<Telemetry>>,
    /// Local mode's directory, and what was last read from it.
    manifests: Option<PathBuf>,
    snapshot: Loaded,
    /// The version of the Services last written beside the status file.
    services_written: Option<u64>,
}

impl Daemon {
    /// Feeds one watcher report to the reconciler.
    fn apply_update(&mut self, update: Update) {
        match update {
            Update::Event(event) => {
                if let Err(e) = self.reconciler.apply(event) {
                    error!("{e}");
                    self.status.record_error(e.to_string());
                }
            }
            Update::Synced(kind) => info!(?kind, "full list received"),
            Update::WatchError(kind, e) => {
                warn!(?kind, "watch failed, retrying with backoff: {e}");
                self.telemetry.lock().expect("telemetry lock").watch_errors += 1;
            }
            Update::NotInstalled(kind) => {
                let e = format!(
                    "{kind:?}: the CRD is not installed, or the agent may not read it (RBAC); none of its objects are enforced until it can"
                );
                warn!("{e}");
                self.status.record_error(e);
            }
        }
    }

    /// Local mode: reads the directory and feeds what changed to the
    /// reconciler; what could not be read keeps its last good version.
    fn reload(&mut self) {
        let Some(dir) = &self.manifests else { return };
        let mut loaded = manifests::keep_last_good(&self.snapshot, manifests::load_dir_after(dir, &self.snapshot));
        self.status.errors.clear();
        for e in std::mem::take(&mut loaded.errors) {
            error!("{e} (the object keeps its last good version, if it had one)");
            self.status.record_error(e.to_string());
        }
        for event in manifests::diff(&self.snapshot.objects, &mut loaded.objects) {
            self.apply_update(Update::Event(event));
        }
        self.status.revision = std::mem::take(&mut loaded.revision);
        self.snapshot = loaded;
        self.status.generation += 1;
    }

    /// Brings the pods a change touched in line and publishes it; `since`
    /// is when the change was seen.
    fn sync(&mut self, since: Option<Instant>) {
        let r = self.reconciler.sync();
        self.publish(&r, since);
    }

    /// Puts back attachments removed from under the agent (on `ifindex`
    /// alone, when a notification named it).
    fn restore(&mut self, ifindex: Option<u32>) {
        let since = Instant::now();
        let r = self.reconciler.restore(ifindex);
        if !(r.restored.is_empty() && r.errors.is_empty()) {
            self.telemetry.lock().expect("telemetry lock").attachments_restored += r.restored.len() as u64;
            self.publish(&r, Some(since));
        }
    }

    /// Answers the CNI front ends' requests, in order; consecutive ADDs
    /// (pods started together) are settled in one sync.
    fn answer(&mut self, requests: Vec<Request>) {
        let mut adds = Vec::new();
        for request in requests {
            match request {
                Request::Add { pod, sandbox, fetched, assume, received, reply } => {
                    if let Some(p) = fetched {
                        self.apply_update(Update::Event(Event::Applied(Object::Pod(p))));
                    }
                    adds.push((pod, sandbox, assume, received, reply));
                }
                Request::Check { pod, host_interface, reply } => {
                    self.add_all(std::mem::take(&mut adds));
                    let _ = reply.send(self.reconciler.check(&pod, host_interface.as_deref()));
                }
                Request::Del { pod, container_id, reply } => {
                    self.add_all(std::mem::take(&mut adds));
                    let since = Instant::now();
                    let r = self.reconciler.remove(&pod, &container_id);
                    info!(%pod, "CNI DEL");
                    let _ = reply.send(());
                    self.publish(&r, Some(since));
                }
            }
        }
        self.add_all(adds);
    }

    fn add_all(&mut self, adds: Vec<(ObjectRef, Sandbox, bool, Instant, oneshot::Sender<AddOutcome>)>) {
        if adds.is_empty() {
            return;
        }
        // A manifest may have been written a moment ago.
        if adds.iter().any(|(pod, ..)| !self.reconciler.knows(pod)) {
            self.reload();
        }
        let since = adds.iter().map(|a| a.3).min();
        let (asked, replies): (Vec<_>, Vec<_>) = adds
            .into_iter()
            .map(|(pod, sandbox, assume, received, reply)| ((pod, sandbox, assume), (received, reply)))
            .unzip();
        let pods: Vec<ObjectRef> = asked.iter().map(|(pod, ..)| pod.clone()).collect();
        let (outcomes, r) = self.reconciler.add_all(asked);
        for ((pod, outcome), (received, reply)) in pods.iter().zip(outcomes).zip(replies) {
            let took = received.elapsed();
            info!(%pod, ?outcome, ms = took.as_secs_f64() * 1e3, "CNI ADD");
            let result = match &outcome {
                AddOutcome::Enforced { assumed: false, .. } => Some(AddResult::Enforced),
                AddOutcome::Enforced { assumed: true, .. } => Some(AddResult::Assumed),
                AddOutcome::Failed(_) => Some(AddResult::Failed),
                // Asked again once fetched or assumed.
                AddOutcome::Unknown => None,
            };
            if let Some(result) = result {
                self.telemetry.lock().expect("telemetry lock").observe_cni_add(result, took);
            }
            let _ = reply.send(outcome);
        }
        self.publish(&r, since);
    }

    /// Logs what a sync did, writes the status file and updates the metrics.
    fn publish(&mut self, r: &SyncReport, since: Option<Instant>) {
        for p in &r.attached {
            info!(pod = %p, "attached");
        }
        for p in &r.updated {
            info!(pod = %p, "rules updated");
        }
        for p in &r.detached {
            info!(pod = %p, "detached");
        }
        for p in &r.restored {
            warn!(pod = %p, "the pod's attachment or its veth's record was lost; attached again");
        }
        for e in &r.errors {
            error!("{e}");
        }
        let reconciler = &self.reconciler;
        let status = &mut self.status;
        status.attached = reconciler.attached().map(|id| id.to_string()).collect();
        status.pending = r.pending.clone();
        for e in &r.errors {
            status.record_error(e.message.clone());
        }
        status.pods = reconciler.pod_entries();
        let attributions = reconciler.compiler().attributions();
        if self.rules_version != Some(attributions.version()) {
            self.rules_version = Some(attributions.version());
            status.rules = attributions
                .iter()
                .map(|(id, a)| RuleEntry {
                    id,
                    policy: a.policy.to_string(),
                    direction: a.direction.to_string(),
                    rule: a.rule,
                    cluster: a.cluster.map(|c| ClusterRule {
                        tier: c.tier.as_str().into(),
                        priority: c.priority,
                        action: c.action.as_str().into(),
                    }),
                })
                .collect();
        }
        self.status_writer.submit(status.clone());
        let services = reconciler.services().version();
        if self.services_written != Some(services) {
            let path = status::services_path(&self.status_file);
            match reconciler.service_routes().write(&path) {
                Ok(()) => self.services_written = Some(services),
                Err(e) => warn!(file = %path.display(), "writing the Service routes: {e}"),
            }
        }

        let mut t = self.telemetry.lock().expect("telemetry lock");
        t.pods = reconciler.pods_by_ifindex().into_iter().map(|(ifindex, pod)| (pod, ifindex)).collect();
        for e in &r.errors {
            t.observe_reconcile_error(e.kind);
        }
        if let Some(since) = since
            && !(r.attached.is_empty() && r.updated.is_empty() && r.detached.is_empty())
        {
            t.observe_programming(since.elapsed());
        }
    }
}
