//! Pod starts as the container runtime's CNI reports them, and what the CNI
//! front ends (the gRPC services in [`crate::rpc`]) ask the agent's loop.
//! A CNI ADD blocks the pod's start until the loop answers, so the pod's
//! first packet already meets its policy.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use na_policy::ObjectRef;
use tokio::sync::oneshot;

/// What a CNI ADD knows of a pod's new sandbox that the API server may not
/// show yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// The runtime's sandbox id; empty when the caller does not say (the
    /// VPC CNI).
    pub container_id: String,
    /// The host side of the pod's veth, when the CNI result names it.
    pub host_interface: Option<String>,
    /// The pod's addresses, when the CNI result lists them.
    pub ips: Vec<IpAddr>,
}

/// A question for the agent's loop, answered on `reply`.
#[derive(Debug)]
pub enum Request {
    /// Enforce the pod's policy on its new sandbox.
    Add {
        pod: ObjectRef,
        sandbox: Sandbox,
        /// The pod as the API server returned it, when the loop did not know it.
        fetched: Option<Box<Pod>>,
        /// If the pod is still unknown, judge it as a pod without labels.
        assume: bool,
        /// When the call reached the agent.
        received: std::time::Instant,
        reply: oneshot::Sender<AddOutcome>,
    },
    /// Whether the pod is enforced (on this interface, when given).
    Check { pod: ObjectRef, host_interface: Option<String>, reply: oneshot::Sender<Result<u32, String>> },
    /// Forget the pod's sandbox and remove its state.
    Del { pod: ObjectRef, container_id: String, reply: oneshot::Sender<()> },
}

/// How an [`Request::Add`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Programs attached to `ifindex`, rules written; `assumed`: the pod is
    /// not known yet and is judged as a pod without labels until it is.
    Enforced { ifindex: u32, assumed: bool },
    /// The loop does not know the pod: fetch it, or ask again with `assume`.
    Unknown,
    /// Enforcement is not in place, with why.
    Failed(String),
}
