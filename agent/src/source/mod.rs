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
use na_policy::ObjectRef;

/// An object the agent cares about.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Pod(Box<Pod>),
    Namespace(Box<Namespace>),
    NetworkPolicy(Box<NetworkPolicy>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
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
}

impl Object {
    pub fn key(&self) -> Option<ObjectKey> {
        let (kind, meta) = match self {
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

/// A change to the cluster as a source saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Applied(Object),
    Deleted(ObjectKey),
}
