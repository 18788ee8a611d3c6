//! Where cluster objects come from. Every source produces the same events, so
//! the reconciler never knows whether it is fed by an API server or a
//! directory of manifests.
pub mod kube;
pub mod manifests;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use na_policy::{ClusterPolicy, ObjectRef};

/// An object the agent cares about.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Pod(Box<Pod>),
    Namespace(Box<Namespace>),
    NetworkPolicy(Box<NetworkPolicy>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// Of either CRD (upstream's or AWS's), as JSON: no Rust type has them.
    ClusterNetworkPolicy(Box<serde_json::Value>),
}

/// Kind and identity of an object (namespaces have an empty namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub id: ObjectRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    /// `policy.networking.k8s.io` ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// `networking.k8s.aws` ClusterNetworkPolicy.
    AwsClusterNetworkPolicy,
}

impl Object {
    pub fn key(&self) -> Option<ObjectKey> {
        let (kind, meta) = match self {
            Self::ClusterNetworkPolicy(obj) => return cluster_policy_key(obj),
            Self::Pod(p) => (Kind::Pod, &p.metadata),
            Self::Namespace(n) => (Kind::Namespace, &n.metadata),
            Self::NetworkPolicy(n) => (Kind::NetworkPolicy, &n.metadata),
            Self::Service(s) => (Kind::Service, &s.metadata),
            Self::EndpointSlice(s) => (Kind::EndpointSlice, &s.metadata),
        };
        let name = meta.name.clone()?;
        let namespace = match kind {
            Kind::Namespace => String::new(),
            _ => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        };
        Some(ObjectKey { kind, id: ObjectRef::new(namespace, name) })
    }
}

/// The key of a ClusterNetworkPolicy of either CRD, valid or not.
pub fn cluster_policy_key(obj: &serde_json::Value) -> Option<ObjectKey> {
    let kind = match obj.get("apiVersion").and_then(|v| v.as_str()) {
        Some(na_policy::cluster_policy::AWS_API_VERSION) => Kind::AwsClusterNetworkPolicy,
        _ => Kind::ClusterNetworkPolicy,
    };
    Some(ObjectKey { kind, id: ObjectRef::cluster(&ClusterPolicy::key_of(obj)?) })
}

/// A change to the cluster as a source saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Applied(Object),
    Deleted(ObjectKey),
}
