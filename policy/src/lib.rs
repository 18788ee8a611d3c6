//! The NetworkPolicy compiler: NetworkPolicies, Pods and Namespaces in, for
//! each pod on this node the state its datapath must hold. Pure: no kernel, no
//! API server, no I/O, so every rule of the semantics can be tested directly.
//!
//! Semantics (Kubernetes `networking.k8s.io/v1`, with the choices the spec
//! leaves open written down here):
//! - A pod is isolated for a direction iff a policy in its namespace selects it
//!   with that direction in `policyTypes` (default: Ingress always, Egress iff
//!   egress rules are present). What is allowed is the union of all rules of
//!   all selecting policies.
//! - Peers are pods that are not hostNetwork, not terminal (Succeeded/Failed)
//!   and have an IP. hostNetwork traffic is judged by `ipBlock`.
//! - `except` removes addresses from its own `ipBlock` only.
//! - Named ports resolve, with the rule's protocol, against the target pod for
//!   ingress and against each destination pod for egress. An `ipBlock` peer of
//!   an egress rule has no pod to resolve against: named ports match nothing
//!   there. An egress rule without peers reaches every pod, so its named ports
//!   resolve against every pod.
//! - The node's own addresses may always reach its pods (kubelet probes)
//!   unless [`CompileOptions::allow_node`] is off.

pub mod attribution;
pub mod cluster;
pub mod cluster_policy;
pub mod compile;
pub mod lpm;
pub mod output;
pub mod parse;
pub mod reference;
pub mod selector;
pub mod services;

pub use attribution::{Attribution, Attributions, ClusterRuleRef};
pub use cluster::{ObjectRef, PodInfo, protocol_number};
pub use cluster_policy::ClusterPolicy;
pub use compile::{CompileError, CompileOptions, Compiler};
pub use output::{Direction, DirectionRules, Mode, PodRules};
pub use parse::PolicyError;
pub use services::{Frontend, ServiceError, Services};
