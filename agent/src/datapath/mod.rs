//! The kernel side seen from userspace: the node's program pair, each pod's
//! maps and attachments, writing rules, reading what is pinned.

mod attach;
pub mod dnat_hook;
pub mod inventory;
mod kernel_btf;
mod loader;
mod node_addrs;
mod programs;
mod rules;
mod services;
mod slots;
mod stats;
mod sweep;
mod sys;
mod tables;

pub use attach::AttachMode;
pub use loader::{Datapath, DatapathError, KernelLogLevel, Settings, Timeouts};
pub use na_policy::{DirectionRules, Mode, PodRules};
pub use node_addrs::NodeAddrTable;
pub use programs::{Origin, Programs};
pub use rules::{PodAddrs, PodMaps, PodTable, RulesError, Trie, open_pinned};
pub use services::{Frontend, ServiceTable, ServicesError};
pub use slots::PinnedMaps;
pub use stats::{PodCounters, Totals, counters, pod_counters};
pub use sweep::{Expired, ktime_now_ns};
pub use tables::{InnerMaps, NodeTables};

/// The eBPF object built from the `na-ebpf` crate by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/na-ebpf"));

/// The two programs, with the direction each judges and the TC hook of the
/// host veth it sits on.
pub const PROGRAMS: [(&str, u32, aya::programs::TcAttachType); 2] = [
    (na_common::names::PROG_INGRESS, na_common::direction::INGRESS, aya::programs::TcAttachType::Egress),
    (na_common::names::PROG_EGRESS, na_common::direction::EGRESS, aya::programs::TcAttachType::Ingress),
];
