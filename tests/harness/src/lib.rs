//! Pods as network namespaces, wired the way the AWS VPC CNI wires them.
//!
//! Everything lives under a private "node" namespace so a test never touches
//! the machine's own interfaces, routes or sysctls: the node namespace holds
//! the host-side veths (named by the caller, as the CNI would), a /32
//! route per pod and the node IP on its loopback. Each pod has its
//! address on `eth0` with a link-local default gateway. Dropping a [`Node`]
//! deletes every namespace it made, and with them every link and route.

mod cmd;
pub mod cni;
pub mod kube_proxy;
mod log;
mod netns;
mod node;
pub mod privileges;
mod probe;
mod server;
pub mod synthetic;

pub use log::last_lines;
pub use netns::NetNs;
pub use node::{NODE_IP, NODE_IP6, Node, Pod};
pub use probe::{
    Family, PROBE_TIMEOUT, Probe, Proto, matrix, matrix_from, matrix_to, render, render_table, verdict_cells,
};
pub use server::Servers;
