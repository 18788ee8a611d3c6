//! The node agent: loads each local pod's programs and maps, keeps them in
//! sync with the policy, and explains what is loaded (`na-cli`).

pub mod bpffs;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod decode;
pub mod flowlog;
pub mod inspect;
pub mod links;
pub mod pod_id;
pub mod reconcile;
pub mod rpc;
pub mod rtnl;
pub mod sandbox;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod veth;
