//! `na-agent`'s settings: every flag, with the environment variable that can
//! set it instead (the DaemonSet's ConfigMap uses those). The defaults here
//! are the documented ones.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, ValueEnum};

use crate::{
    bpffs::DEFAULT_ROOT,
    datapath::{AttachMode, KernelLogLevel},
    status::DEFAULT_STATUS_FILE,
    veth::DEFAULT_PREFIX,
};

#[derive(Parser, Debug)]
#[command(name = "na-agent", version, about = "Enforce Kubernetes NetworkPolicy on this node with eBPF")]
pub struct Args {
    /// This node's name: pods whose spec.nodeName is this are enforced.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Local mode: read Pods, Namespaces, NetworkPolicies and Services from the YAML/JSON
    /// files in this directory and follow its changes, instead of the API server.
    #[arg(long, conflicts_with = "kubeconfig", env = "NA_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig to reach the API server; default: in-cluster, then $KUBECONFIG.
    #[arg(long, env = "NA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node's own addresses, always allowed into pods (kubelet probes).
    #[arg(long = "node-ip", env = "NODE_IP", value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    /// Do not let the node's addresses past pods' ingress policies.
    #[arg(long, env = "NA_NO_ALLOW_NODE")]
    pub no_allow_node: bool,
    /// standard: directions no policy isolates are open; strict: closed.
    #[arg(long, value_enum, default_value_t = EnforcingMode::Standard, env = "NETWORK_POLICY_ENFORCING_MODE", ignore_case = true)]
    pub enforcing_mode: EnforcingMode,
    /// Audit the whole node: what only NetworkPolicy would deny passes, and
    /// is reported (flow logs, `na-cli events`, na_policy_audit_denials_total).
    /// A namespace opts in alone with the annotation `na-agent.io/audit: "true"`.
    /// ClusterNetworkPolicy denials stay enforced.
    #[arg(long, env = "NA_AUDIT")]
    pub audit: bool,
    /// Mount bpffs for --bpffs-root if it is missing, create the pin
    /// directories, and exit. The DaemonSet's privileged init container runs
    /// this, so that the long-running agent needs no CAP_SYS_ADMIN.
    #[arg(long)]
    pub prepare_bpffs: bool,
    /// Print the settings as resolved from flags, environment and defaults,
    /// and exit (exit code 2 and a message naming the setting when one is bad).
    #[arg(long)]
    pub check_config: bool,
    /// Where programs, maps and links are pinned.
    #[arg(long, default_value = DEFAULT_ROOT, env = "NA_BPFFS_ROOT")]
    pub bpffs_root: PathBuf,
    /// Prefix of pods' host-side veth names (the VPC CNI's naming rule).
    #[arg(long, default_value = DEFAULT_PREFIX, env = "NA_VETH_PREFIX")]
    pub veth_prefix: String,
    /// How programs attach: clsact filters (no grace period to wait for at a
    /// pod start), or TCX links (6.6+: first in TCX order where other
    /// software attaches TCX programs to pod veths).
    #[arg(long, value_enum, default_value_t = AttachMode::default(), env = "NA_ATTACH_MODE")]
    pub attach_mode: AttachMode,
    /// Kernel-side debug log level (aya-log); off costs nothing.
    #[arg(long, value_enum, default_value_t = KernelLogLevel::Off, env = "NA_EBPF_LOG_LEVEL")]
    pub ebpf_log_level: KernelLogLevel,
    /// How often idle conntrack entries are reclaimed. With the 10 s a
    /// finished TCP connection is kept, a pod's table holds the connections
    /// of about 20 s at this default.
    #[arg(long, value_parser = humantime_secs, default_value = "10", env = "NA_CONNTRACK_SWEEP_INTERVAL")]
    pub conntrack_sweep_interval: Duration,
    /// Flows each pod's conntrack table holds. A full table tracks no new
    /// flow (and evicts none); its memory follows what it holds, plus 16
    /// bytes per slot of hash buckets.
    #[arg(long, default_value_t = na_common::conntrack::DEFAULT_FLOWS_PER_POD, env = "NA_CONNTRACK_FLOWS_PER_POD")]
    pub conntrack_flows_per_pod: u32,
    /// Pod slots kept ready: maps made and registered in the node's arrays
    /// of maps before a pod needs them (each registration waits for an RCU
    /// grace period, 8-30 ms), so a new pod's start waits for none. Each
    /// costs what an idle pod's maps do (about 130 KiB, mostly the conntrack
    /// table's hash buckets). 0 makes each pod's slot when it starts.
    #[arg(long, default_value_t = 8, env = "NA_SPARE_SLOTS")]
    pub spare_slots: usize,
    /// Written after every reconcile: the attached pods and what each rule id
    /// in the maps stands for (`na-cli` reads it), and what is applied.
    #[arg(long, default_value = DEFAULT_STATUS_FILE, env = "NA_STATUS_FILE")]
    pub status_file: PathBuf,
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "NA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Write a flow log line for every denied flow (and allowed ones with
    /// --flow-log-accept), naming the policy that decided.
    #[arg(long, env = "ENABLE_POLICY_EVENT_LOGS")]
    pub enable_policy_event_logs: bool,
    /// Also log allowed flows.
    #[arg(long, env = "NA_FLOW_LOG_ACCEPT")]
    pub flow_log_accept: bool,
    /// Flow log file (rotated by size); stdout when not given.
    #[arg(long, env = "NA_FLOW_LOG_FILE")]
    pub flow_log_file: Option<PathBuf>,
    /// Flow log lines per second at most; the rest are counted.
    #[arg(long, default_value_t = 1000, env = "NA_FLOW_LOG_MAX_PER_SEC")]
    pub flow_log_max_per_sec: u32,
    /// Size at which the flow log file rotates.
    #[arg(long, default_value_t = 100 << 20, env = "NA_FLOW_LOG_MAX_BYTES")]
    pub flow_log_max_bytes: u64,
    /// Rotated flow log files kept.
    #[arg(long, default_value_t = 5, env = "NA_FLOW_LOG_KEEP")]
    pub flow_log_keep: usize,
    /// The unix socket CNI plugins call: the VPC CNI's network-policy backend
    /// (its default path) and `na-cni`. A pod's CNI ADD returns once its
    /// policy is enforced.
    #[arg(long, default_value = crate::rpc::DEFAULT_SOCKET, env = "NA_CNI_SOCKET")]
    pub cni_socket: PathBuf,
    /// How long a CNI ADD for a pod the agent does not know yet waits for
    /// the API server before the pod is judged as a pod without labels
    /// (policies selecting every pod of its namespace hold; otherwise strict:
    /// closed, standard: open) until its object arrives.
    #[arg(long, value_parser = humantime_secs, default_value = "2", env = "NA_CNI_SETTLE_TIMEOUT")]
    pub cni_settle_timeout: Duration,
    /// Prometheus metrics (`/metrics`): `ADDRESS:PORT`, or `node:PORT` for
    /// the first `--node-ip` (never all interfaces unless asked: on a
    /// host-network pod that is every network the node is on).
    #[arg(long, default_value = "127.0.0.1:8162", env = "NA_METRICS_ADDR", value_parser = ListenAddr::parse)]
    pub metrics_addr: ListenAddr,
    /// Health endpoints (`/healthz`, and `/readyz` once the first reconcile
    /// is done), in the same form.
    #[arg(long, default_value = "127.0.0.1:8163", env = "NA_HEALTH_ADDR", value_parser = ListenAddr::parse)]
    pub health_addr: ListenAddr,
}

/// Where an endpoint listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    At(SocketAddr),
    /// The node's first address (`--node-ip`), on this port.
    Node(u16),
}

impl ListenAddr {
    /// `192.0.2.1:8162`, `[fd00::1]:8162`, `fd00::1:8162` (as a downward-API
    /// address followed by a port comes out), or `node:8162`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse() {
            return Ok(Self::At(addr));
        }
        let bad = || format!("{s:?} is not ADDRESS:PORT or node:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        match host {
            "node" => Ok(Self::Node(port)),
            ip => ip.parse::<IpAddr>().map(|ip| Self::At(SocketAddr::new(ip, port))).map_err(|_| bad()),
        }
    }

    /// The socket address, given the node's addresses.
    pub fn resolve(&self, node_ips: &[IpAddr]) -> Result<SocketAddr, String> {
        match self {
            Self::At(addr) => Ok(*addr),
            Self::Node(port) => node_ips
                .first()
                .map(|ip| SocketAddr::new(*ip, *port))
                .ok_or_else(|| "node:PORT needs the node's address (--node-ip / NODE_IP)".into()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EnforcingMode {
    Standard,
    Strict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Seconds, possibly fractional.
fn humantime_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_every_form_a_deployment_writes() {
        let at = |s: &str| ListenAddr::At(s.parse().unwrap());
        assert_eq!(ListenAddr::parse("127.0.0.1:8163"), Ok(at("127.0.0.1:8163")));
        assert_eq!(ListenAddr::parse("[fd00::1]:8162"), Ok(at("[fd00::1]:8162")));
        assert_eq!(ListenAddr::parse("fd00::1:8162"), Ok(at("[fd00::1]:8162")), "an address, then its port");
        assert_eq!(ListenAddr::parse("node:8162"), Ok(ListenAddr::Node(8162)));
        for bad in ["node", "8162", "node:http", "example.com:80", "10.0.0.1:70000"] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
        let node: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert_eq!(ListenAddr::Node(8162).resolve(&node), Ok("10.0.0.1:8162".parse().unwrap()));
        assert!(ListenAddr::Node(8162).resolve(&[]).is_err(), "node:PORT without the node's address");
    }
}
