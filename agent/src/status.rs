//! What the agent enforces, written after every reconcile for `na-cli` and
//! tooling: which pod owns which addresses and veth, and which policy rule
//! every attribution id in the maps and events stands for. The maps alone
//! hold numbers; this file turns them back into names. It outlives the agent
//! (like the pins), so `na-cli` still explains a node whose agent is down.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Where the agent writes it and `na-cli` reads it unless told otherwise.
pub const DEFAULT_STATUS_FILE: &str = "/run/na-agent/status.json";

/// Errors the status file keeps at most.
pub const MAX_ERRORS: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node the agent runs for.
    #[serde(default)]
    pub node: String,
    /// Directory reads applied so far (local mode).
    pub generation: u64,
    /// Local mode: the manifests revision (`manifests::Loaded::revision`)
    /// that the pods' maps now enforce.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Pod ids with programs attached.
    pub attached: Vec<String>,
    /// Local pods waiting for their veth.
    pub pending: Vec<String>,
    /// What could not be applied, with why: each message once, the latest
    /// [`MAX_ERRORS`] (a long-running agent in cluster mode never clears it).
    pub errors: Vec<String>,
    /// The attached pods.
    #[serde(default)]
    pub pods: Vec<PodEntry>,
    /// What each attribution id stands for: every rule of the policies,
    /// and retired rules while a pod's maps still carry them. Sorted by id
    /// ([`Self::rule`] searches it); shared, as it changes only when
    /// policies do.
    #[serde(default)]
    pub rules: Arc<[RuleEntry]>,
    /// Where the agent writes verdict events it reads from the ring: a file,
    /// `stdout`, or nothing when flow logs are off.
    #[serde(default)]
    pub flow_log: Option<String>,
    /// The node's program pair this agent runs.
    #[serde(default)]
    pub programs: Option<ProgramsEntry>,
}

/// The node's program pair and how the agent got it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramsEntry {
    /// Digest of the object and its load-time settings (the pins' suffix).
    pub version: String,
    /// `verified` (loaded by this agent) or `adopted` (from an earlier one's pins).
    pub origin: String,
    /// Load and verification time, when verified.
    pub verify_ms: Option<u64>,
}

/// A pod whose programs are attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    /// The prefix of its pins ([`crate::pod_id::PodId`]).
    pub pod_id: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    pub veth: String,
    pub ifindex: u32,
    /// Started through CNI before the agent knew it: judged as a pod
    /// without labels until its object arrives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub assumed: bool,
    /// The policies that isolate it: what denies whatever their rules do
    /// not admit.
    #[serde(default, skip_serializing_if = "IsolatedBy::is_empty")]
    pub isolated_by: IsolatedBy,
}

/// Policies (`namespace/name`) that isolate a pod, per direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolatedBy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

impl IsolatedBy {
    /// Those of `direction` (`na_common::direction`).
    pub fn direction(&self, direction: u32) -> &[String] {
        if direction == na_common::direction::INGRESS { &self.ingress } else { &self.egress }
    }

    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty()
    }
}

/// The policy rule behind one attribution id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub id: u32,
    /// `namespace/name` of the NetworkPolicy, or the ClusterNetworkPolicy's name.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index of the rule in the policy's list for that direction.
    pub rule: usize,
    /// For a ClusterNetworkPolicy rule, its tier, priority and action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRule>,
}

/// What a ClusterNetworkPolicy rule is, beyond its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRule {
    /// `Admin` or `Baseline`.
    pub tier: String,
    pub priority: u16,
    /// `Accept`, `Deny` or `Pass`.
    pub action: String,
}

impl Status {
    pub fn read(path: &Path) -> io::Result<Self> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Adds `error` unless it is already listed, dropping the oldest beyond
    /// [`MAX_ERRORS`].
    pub fn record_error(&mut self, error: String) {
        if self.errors.contains(&error) {
            return;
        }
        if self.errors.len() >= MAX_ERRORS {
            self.errors.remove(0);
        }
        self.errors.push(error);
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_whole(path, &serde_json::to_vec(self)?)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodEntry> {
        self.pods.iter().find(|p| p.ips.contains(&ip))
    }

    pub fn pod_by_id(&self, pod_id: &str) -> Option<&PodEntry> {
        self.pods.iter().find(|p| p.pod_id == pod_id)
    }

    /// The policies isolating pod `pod_id` in `direction`
    /// (`na_common::direction`); none for a pod the file does not list.
    pub fn isolated_by(&self, pod_id: &str, direction: u32) -> Vec<String> {
        self.pod_by_id(pod_id).map(|p| p.isolated_by.direction(direction).to_vec()).unwrap_or_default()
    }

    pub fn pod_by_ifindex(&self, ifindex: u32) -> Option<&PodEntry> {
        self.pods.iter().find(|p| p.ifindex == ifindex)
    }

    pub fn rule(&self, id: u32) -> Option<&RuleEntry> {
        self.rules.binary_search_by_key(&id, |r| r.id).ok().map(|at| &self.rules[at])
    }
}

/// Writes the status file on a thread of its own, so the agent's loop never
/// waits for serialising and writing it: the loop hands over each new
/// status, and one handed over while the previous is being written replaces
/// any still waiting (only the latest matters). Dropping the writer writes
/// the last one handed over, then ends the thread.
pub(crate) struct Writer {
    shared: Arc<(Mutex<Handover>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Handover {
    next: Option<Status>,
    closed: bool,
}

impl Writer {
    pub fn spawn(path: PathBuf) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(Handover::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new().name("status-writer".into()).spawn(move || {
            let (handover, wake) = &*theirs;
            loop {
                let next = {
                    let mut h = wake
                        .wait_while(handover.lock().expect("status lock"), |h| h.next.is_none() && !h.closed)
                        .expect("status lock");
                    match h.next.take() {
                        Some(status) => status,
                        None => return,
                    }
                };
                if let Err(e) = next.write(&path) {
                    warn!(file = %path.display(), "writing the status file: {e}");
                }
            }
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Hands `status` over to be written.
    pub fn submit(&self, status: Status) {
        let (handover, wake) = &*self.shared;
        handover.lock().expect("status lock").next = Some(status);
        wake.notify_one();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (handover, wake) = &*self.shared;
        handover.lock().expect("status lock").closed = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes whole then renames, so a reader never sees half a file.
fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Beside the status file: every Service frontend of the node, its
/// Service and the endpoints its EndpointSlices list, for `na-cli trace`
/// (written when Services or EndpointSlices change, not on every reconcile).
pub fn services_path(status_file: &Path) -> PathBuf {
    status_file.with_extension("services.json")
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoutes {
    pub frontends: Vec<FrontendEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendEntry {
    pub addr: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    pub port: u16,
    /// `namespace/name`.
    pub service: String,
    pub endpoints: Vec<SocketAddr>,
}

impl ServiceRoutes {
    pub fn read(path: &Path) -> io::Result<Self> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_whole(path, &serde_json::to_vec(self)?)
    }

    pub fn find(&self, addr: IpAddr, protocol: u8, port: u16) -> Option<&FrontendEntry> {
        self.frontends.iter().find(|f| (f.addr, f.protocol, f.port) == (addr, protocol, port))
    }
}

/// Held (flock) by whoever consumes the shared verdict ring, so `na-cli
/// events` never steals records from the agent's flow log.
pub fn events_lock_path(status_file: &Path) -> PathBuf {
    status_file.with_extension("events.lock")
}

/// An exclusive, non-blocking lock on `path`; `None` when another process
/// holds it. The lock lasts as long as the returned file is open.
pub fn try_lock(path: &Path) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_kept_once_each_and_bounded() {
        let mut status = Status::default();
        for round in 0..3 {
            for i in 0..MAX_ERRORS + 20 {
                status.record_error(format!("error {i} (round {round})"));
                status.record_error(format!("error {i} (round {round})"));
            }
        }
        assert_eq!(status.errors.len(), MAX_ERRORS);
        assert_eq!(status.errors.last().unwrap(), &format!("error {} (round 2)", MAX_ERRORS + 19));
        assert_eq!(status.errors[0], "error 20 (round 2)", "the oldest go first");
    }

    #[test]
    fn round_trips_and_finds_by_address_and_id() {
        let dir = std::env::temp_dir().join(format!("na-status-{}", std::process::id()));
        let path = dir.join("sub/status.json");
        let status = Status {
            pods: vec![PodEntry {
                namespace: "x".into(),
                name: "a".into(),
                pod_id: "x_a".into(),
                uid: "u".into(),
                ips: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                veth: "eni1".into(),
                ifindex: 9,
                assumed: true,
                isolated_by: IsolatedBy { ingress: vec!["x/p".into()], egress: Vec::new() },
            }],
            rules: [1, 4]
                .map(|id| RuleEntry {
                    id,
                    policy: format!("x/p{id}"),
                    direction: "ingress".into(),
                    rule: 0,
                    cluster: None,
                })
                .into(),
            ..Default::default()
        };
        status.write(&path).unwrap();
        let back = Status::read(&path).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.pod_by_ip("fd00::2".parse().unwrap()).map(|p| p.name.as_str()), Some("a"));
        assert_eq!(back.pod_by_ifindex(9).map(|p| p.pod_id.as_str()), Some("x_a"));
        assert_eq!(back.rule(4).map(|r| r.policy.as_str()), Some("x/p4"), "ids need not be dense");
        assert_eq!(back.rule(2), None);

        let lock = events_lock_path(&path);
        let held = try_lock(&lock).unwrap();
        assert!(held.is_some());
        assert!(try_lock(&lock).unwrap().is_none(), "a second holder is refused");
        drop(held);
        assert!(try_lock(&lock).unwrap().is_some(), "free again once the holder closes it");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_writer_writes_the_latest_status_handed_over() {
        let dir = std::env::temp_dir().join(format!("na-status-writer-{}", std::process::id()));
        let path = dir.join("status.json");
        let writer = Writer::spawn(path.clone()).unwrap();
        for generation in 1..=50 {
            writer.submit(Status { generation, ..Default::default() });
        }
        drop(writer);
        assert_eq!(Status::read(&path).unwrap().generation, 50, "the last one handed over is the one on disk");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
