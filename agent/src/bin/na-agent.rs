//! The node agent: enforces NetworkPolicy for the pods on this node.
//!
//! It watches Pods, Namespaces and NetworkPolicies through the API server
//! (`--kubeconfig`, or the in-cluster / environment configuration), or in
//! local mode (`--manifests DIR`) reads them from a directory of manifests and
//! follows its changes. Exiting (SIGTERM, SIGINT, or being
//! killed) leaves every program attached and every map pinned, so pods stay
//! enforced until the next agent adopts them.
use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
    time::Instant,
};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, RingBuf};
use aya_log::EbpfLogger;
use clap::Parser;
use na_agent::{
    bpffs::PinLayout,
    config::{Args, EnforcingMode, LogFormat},
    datapath::{Datapath, KernelLogLevel, Timeouts},
    flowlog::{self, FlowLogConfig, FlowLogger, Output},
    reconcile::{Reconciler, SyncReport},
    sandbox::Request,
    source::{
        self,
        kube::Update,
        manifests::{self, Loaded},
    },
    status::{self, RuleEntry, Status},
    telemetry::{self, Telemetry},
};
use na_policy::{CompileOptions, Compiler};
use notify::Watcher;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
    sync::mpsc,
};
use tracing::{error, info, warn};

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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    if args.check_config {
        for addr in [args.metrics_addr, args.health_addr] {
            addr.resolve(&args.node_ips).map_err(anyhow::Error::msg)?;
        }
        println!("{args:#?}");
        return Ok(());
    }
    if args.prepare_bpffs {
        PinLayout::new(&args.bpffs_root).prepare().context("preparing bpffs")?;
        info!(root = %args.bpffs_root.display(), "bpffs ready");
        return Ok(());
    }
    let datapath = Datapath::new(PinLayout::new(&args.bpffs_root), args.attach_mode)
        .context("preparing bpffs")?
        .with_timeouts(Timeouts::default())
        .with_log_level(args.ebpf_log_level)
        .with_strict(args.enforcing_mode == EnforcingMode::Strict)
        .with_flows_per_pod(args.conntrack_flows_per_pod);
    let compiler = Compiler::new(CompileOptions {
        node_name: args.node_name.clone(),
        node_ips: args.node_ips.clone(),
        allow_node: !args.no_allow_node,
        strict: args.enforcing_mode == EnforcingMode::Strict,
    });
    // Before any pod: adopting the pinned programs costs nothing, verifying
    // new ones (an upgrade) is paid once here.
    let programs = datapath.programs_entry().context("loading the programs")?;
    info!(version = %programs.version, origin = %programs.origin, verify_ms = ?programs.verify_ms, "programs ready");
    let mut reconciler = Reconciler::new(compiler, datapath, args.veth_prefix.clone());

    // Exactly one source feeds the reconciler; the other channel stays closed.
    let (tx, mut changed) = mpsc::unbounded_channel();
    let (kube_tx, mut kube_rx) = mpsc::unbounded_channel();
    let mut client = None;
    let _watcher = match &args.manifests {
        Some(dir) => Some(watch_dir(dir, tx)?),
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
    let events_lock = status::events_lock_path(&args.status_file);
    let mut snapshot = Loaded::default();
    match &args.manifests {
        Some(dir) => reload(dir, &mut snapshot, &mut reconciler, &mut status),
        // Nothing is judged on a partial cluster: wait for a full list of
        // every kind before the first reconcile.
        None => {
            let mut synced = std::collections::BTreeSet::new();
            while synced.len() < 3 {
                match kube_rx.recv().await.context("watchers stopped")? {
                    Update::Synced(kind) => {
                        synced.insert(kind);
                    }
                    u => apply_update(u, &mut reconciler, &mut status, &telemetry),
                }
            }
        }
    }
    let mut first = reconciler.sync();
    reconciler.remove_orphans(&mut first);
    report(&first, &reconciler, &mut status, &args.status_file);
    update_telemetry(&telemetry, &reconciler, &first, None);
    telemetry.lock().expect("telemetry lock").ready = true;
    info!(node = %args.node_name, pods = status.attached.len(), "first reconcile done");

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
    let mut ring = None;
    let mut kernel_log = None;
    // One attempt, once a program exists to find the log through: a failure
    // (say, no CAP_SYS_ADMIN to look programs up) is reported once, not on
    // every turn of the loop.
    let mut kernel_log_wanted = args.ebpf_log_level != KernelLogLevel::Off;

    // Only now: an ADD answered before the first reconcile would be judged
    // on a partial picture. Until the socket exists, CNI plugins fail ADD
    // and the runtime retries the pod.
    let (request_tx, mut requests) = mpsc::unbounded_channel();
    let socket = na_agent::rpc::server::bind(&args.cni_socket)
        .with_context(|| format!("listening on {}", args.cni_socket.display()))?;
    let settle = args.cni_settle_timeout;
    tokio::spawn(async move {
        if let Err(e) = na_agent::rpc::server::serve(socket, request_tx, client, settle).await {
            error!("serving CNI calls: {e}");
        }
    });

    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut links = na_agent::links::watch().context("subscribing to link and route changes")?;
    let mut retry = tokio::time::interval(RETRY);
    let mut sweep = tokio::time::interval(args.conntrack_sweep_interval);
    loop {
        // The shared ring exists once the first pod is loaded.
        if flows.is_some() && ring.is_none() {
            ring = open_ring(reconciler.datapath().layout(), &events_lock);
        }
        if kernel_log_wanted && reconciler.attached().next().is_some() {
            kernel_log_wanted = false;
            kernel_log = open_kernel_log(reconciler.datapath());
        }
        tokio::select! {
            Ok(()) = readable(kernel_log.as_mut()) => {
                if let Some(log) = kernel_log.as_mut() {
                    log.get_mut().flush();
                }
            }
            Ok(()) = readable(ring.as_mut()) => {
                if let (Some(ring), Some(flows)) = (ring.as_mut(), flows.as_mut()) {
                    let pods = reconciler.pods_by_ifindex();
                    let ring = &mut ring.get_mut().ring;
                    while let Some(item) = ring.next() {
                        if let Some(event) = flowlog::decode(&item) {
                            flows.record(&event, &pods, reconciler.compiler().attributions());
                        }
                    }
                }
            }
            Some(update) = kube_rx.recv() => {
                let since = Instant::now();
                apply_update(update, &mut reconciler, &mut status, &telemetry);
                while let Ok(update) = kube_rx.try_recv() {
                    apply_update(update, &mut reconciler, &mut status, &telemetry);
                }
                let r = reconciler.sync();
                report(&r, &reconciler, &mut status, &args.status_file);
                update_telemetry(&telemetry, &reconciler, &r, Some(since));
            }
            Some(()) = changed.recv() => {
                let since = Instant::now();
                tokio::time::sleep(DEBOUNCE).await;
                while changed.try_recv().is_ok() {}
                let Some(dir) = &args.manifests else { continue };
                reload(dir, &mut snapshot, &mut reconciler, &mut status);
                let r = reconciler.sync();
                report(&r, &reconciler, &mut status, &args.status_file);
                update_telemetry(&telemetry, &reconciler, &r, Some(since));
            }
            Some(request) = requests.recv() => {
                let since = Instant::now();
                let r = match request {
                    Request::Add { pod, sandbox, fetched, assume, reply } => {
                        if let Some(p) = fetched {
                            apply_update(Update::Event(source::Event::Applied(source::Object::Pod(p))), &mut reconciler, &mut status, &telemetry);
                        }
                        // The manifest may have been written a moment ago.
                        if !reconciler.knows(&pod) && let Some(dir) = &args.manifests {
                            reload(dir, &mut snapshot, &mut reconciler, &mut status);
                        }
                        let (outcome, r) = reconciler.add(&pod, sandbox, assume);
                        info!(%pod, ?outcome, ms = since.elapsed().as_secs_f64() * 1e3, "CNI ADD");
                        let _ = reply.send(outcome);
                        r
                    }
                    Request::Check { pod, host_interface, reply } => {
                        let _ = reply.send(reconciler.check(&pod, host_interface.as_deref()));
                        continue;
                    }
                    Request::Del { pod, container_id, reply } => {
                        let r = reconciler.remove(&pod, &container_id);
                        info!(%pod, "CNI DEL");
                        let _ = reply.send(());
                        r
                    }
                };
                report(&r, &reconciler, &mut status, &args.status_file);
                update_telemetry(&telemetry, &reconciler, &r, Some(since));
            }
            Some(()) = links.recv() => {
                tokio::time::sleep(LINK_SETTLE).await;
                while links.try_recv().is_ok() {}
                if reconciler.relink() || reconciler.has_pending() {
                    let r = reconciler.sync();
                    report(&r, &reconciler, &mut status, &args.status_file);
                    update_telemetry(&telemetry, &reconciler, &r, None);
                }
            }
            _ = retry.tick(), if reconciler.has_failed() => {
                let r = reconciler.sync();
                report(&r, &reconciler, &mut status, &args.status_file);
                update_telemetry(&telemetry, &reconciler, &r, None);
            }
            _ = sweep.tick() => {
                for pod in reconciler.attached().collect::<Vec<_>>() {
                    match reconciler.datapath().sweep_conntrack(&pod) {
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

/// Publishes what a sync did; `since` is when the change it applied was seen.
fn update_telemetry(telemetry: &Mutex<Telemetry>, reconciler: &Reconciler, r: &SyncReport, since: Option<Instant>) {
    let mut t = telemetry.lock().expect("telemetry lock");
    t.pods = reconciler.pods_by_ifindex().into_iter().map(|(ifindex, pod)| (pod, ifindex)).collect();
    t.reconcile_errors += r.errors.len() as u64;
    if let Some(since) = since
        && !(r.attached.is_empty() && r.updated.is_empty() && r.detached.is_empty())
    {
        t.observe_programming(since.elapsed());
    }
}

/// The pinned verdict ring, if it exists yet and nobody else (`na-cli
/// events`) is reading it; the lock is held as long as the ring is open.
fn open_ring(layout: &PinLayout, lock: &Path) -> Option<AsyncFd<LockedRing>> {
    let data = MapData::from_pin(layout.global_map(na_common::names::MAP_EVENTS)).ok()?;
    let ring = RingBuf::try_from(Map::from_map_data(data).ok()?).ok()?;
    let lock = match status::try_lock(lock) {
        Ok(Some(lock)) => lock,
        Ok(None) => return None,
        Err(e) => {
            warn!(lock = %lock.display(), "locking the event ring: {e}");
            return None;
        }
    };
    // SAFETY: the ring owns its map fd and keeps it open, unchanged, for as
    // long as the AsyncFd owns the ring.
    unsafe { AsyncFd::register_with_interest(LockedRing { ring, _lock: lock }, Interest::READABLE) }.ok()
}

/// The verdict ring with the lock that makes us its only reader.
struct LockedRing {
    ring: RingBuf<MapData>,
    _lock: std::fs::File,
}

impl std::os::fd::AsRawFd for LockedRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// Resolves when `fd` has something to read; never while there is no `fd`.
async fn readable<T: std::os::fd::AsRawFd>(fd: Option<&mut AsyncFd<T>>) -> std::io::Result<()> {
    match fd {
        Some(fd) => fd.readable_mut().await.map(|mut guard| guard.clear_ready()),
        None => std::future::pending().await,
    }
}

/// The kernel log buffer (`--ebpf-log-level`), forwarded into our own logs.
/// It is found through the programs, so it opens once they are attached.
fn open_kernel_log(datapath: &Datapath) -> Option<AsyncFd<EbpfLogger<KernelLog>>> {
    let id = datapath
        .programs()
        .map(|p| p.as_ref().expect("loaded").ingress_id())
        .map_err(|e| warn!("opening the kernel log: {e}"))
        .ok()?;
    let logger =
        EbpfLogger::init_from_id_with_logger(id, KernelLog).map_err(|e| warn!("opening the kernel log: {e}")).ok()?;
    // SAFETY: the logger owns its ring's fd and keeps it open, unchanged, for
    // as long as the AsyncFd owns the logger.
    unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.ok()
}

/// Writes kernel log records as our own, at info: `--ebpf-log-level`
/// already chose what the programs say, so `RUST_LOG` must not hide it again.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        info!(target: "ebpf", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// Sends a message on `tx` whenever a manifest in the directory changes.
fn watch_dir(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only finished changes: a file closed after writing, renamed in or
        // out, removed. Reading a file half-written would see a truncated
        // document set, and reading the files raises access events of its
        // own. Other files (a log written into the directory) do not count.
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let relevant = |e: &notify::Event| {
            matches!(
                e.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(_))
                    | EventKind::Remove(_)
            ) && e.paths.iter().any(|p| manifests::is_manifest_name(p))
        };
        if event.is_ok_and(|e| relevant(&e)) {
            let _ = tx.send(());
        }
    })
    .context("watching the manifests directory")?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive).with_context(|| format!("watching {}", dir.display()))?;
    Ok(watcher)
}

/// Feeds one watcher report to the reconciler.
fn apply_update(update: Update, reconciler: &mut Reconciler, status: &mut Status, telemetry: &Mutex<Telemetry>) {
    match update {
        Update::Event(event) => {
            if let Err(e) = reconciler.apply(event) {
                error!("{e}");
                status.record_error(e.to_string());
            }
        }
        Update::Synced(kind) => info!(?kind, "full list received"),
        Update::WatchError(kind, e) => {
            warn!(?kind, "watch failed, retrying with backoff: {e}");
            telemetry.lock().expect("telemetry lock").watch_errors += 1;
        }
    }
}

/// Reads the directory and feeds what changed to the reconciler.
/// Reads the directory and feeds what changed to the reconciler; what could
/// not be read keeps its last good version.
fn reload(dir: &Path, snapshot: &mut Loaded, reconciler: &mut Reconciler, status: &mut Status) {
    let mut loaded = manifests::keep_last_good(snapshot, manifests::load_dir(dir));
    status.errors.clear();
    for e in std::mem::take(&mut loaded.errors) {
        error!("{e} (the object keeps its last good version, if it had one)");
        status.record_error(e.to_string());
    }
    for event in manifests::diff(&snapshot.objects, &loaded.objects) {
        if let Err(e) = reconciler.apply(event) {
            error!("{e}");
            status.record_error(e.to_string());
        }
    }
    status.revision = std::mem::take(&mut loaded.revision);
    *snapshot = loaded;
    status.generation += 1;
}

fn report(r: &SyncReport, reconciler: &Reconciler, status: &mut Status, file: &Path) {
    for p in &r.attached {
        info!(pod = %p, "attached");
    }
    for p in &r.updated {
        info!(pod = %p, "rules updated");
    }
    for p in &r.detached {
        info!(pod = %p, "detached");
    }
    for e in &r.errors {
        error!("{e}");
    }
    status.attached = reconciler.attached().map(|id| id.to_string()).collect();
    status.pending = r.pending.clone();
    for e in &r.errors {
        status.record_error(e.clone());
    }
    status.pods = reconciler.pod_entries();
    let attributions = reconciler.compiler().attributions();
    // Ids only grow, so only the new ones need converting.
    status.rules.extend(attributions.iter().skip(status.rules.len()).map(|(id, a)| RuleEntry {
        id,
        policy: a.policy.to_string(),
        direction: a.direction.to_string(),
        rule: a.rule,
    }));
    if let Err(e) = status.write(file) {
        warn!(file = %file.display(), "writing the status file: {e}");
    }
}
