//! The cluster as the compiler sees it: just the fields policy needs.
use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use na_common::protocol;

use crate::selector::Labels;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The reference of a cluster-scoped object (a ClusterNetworkPolicy):
    /// no namespace.
    pub fn cluster(name: &str) -> Self {
        Self::new("", name)
    }

    /// The reference of a namespaced object's metadata; `None` without a name.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Self> {
        Some(Self::new(meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone()?))
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            return f.write_str(&self.name);
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container port that a named port can resolve to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: u8,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: ObjectRef,
    pub uid: String,
    /// Shared by every pod with the same labels (see `Compiler`): replicas
    /// of one workload have the same, and a label set's map is ~500 bytes.
    pub labels: Arc<Labels>,
    pub ips: Vec<IpAddr>,
    pub node_name: Option<String>,
    pub host_network: bool,
    /// Succeeded or Failed: no longer a peer even if it still has an IP.
    pub terminal: bool,
    pub named_ports: Vec<NamedPort>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let key = ObjectRef::of(&pod.metadata)?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> =
            status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok())
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        let named_ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: protocol_number(p.protocol.as_deref().unwrap_or("TCP"))?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some(Self {
            key,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            labels: Arc::new(pod.metadata.labels.clone().unwrap_or_default()),
            ips,
            node_name: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminal: matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")),
            named_ports,
        })
    }

    /// Whether policies can select this pod as a peer.
    pub fn is_peer(&self) -> bool {
        !self.host_network && !self.terminal && !self.ips.is_empty()
    }

    /// The container port named `name` for `protocol`.
    pub fn resolve_port(&self, name: &str, protocol: u8) -> Option<u16> {
        self.named_ports.iter().find(|p| p.name == name && p.protocol == protocol).map(|p| p.port)
    }
}

/// A namespace's labels, with the name label the API server always sets.
pub fn namespace_labels(ns: &Namespace) -> Option<(String, Labels)> {
    let name = ns.metadata.name.clone()?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.entry(NAMESPACE_NAME_LABEL.into()).or_insert_with(|| name.clone());
    Some((name, labels))
}

/// Labels of a namespace the cluster has not shown us (yet).
pub fn implicit_namespace_labels(name: &str) -> Labels {
    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())])
}

/// IP protocol number of a Kubernetes protocol name.
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(protocol::TCP),
        "UDP" => Some(protocol::UDP),
        "SCTP" => Some(protocol::SCTP),
        _ => None,
    }
}
