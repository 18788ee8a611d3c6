//! The kernel side seen from userspace: loading a pod's program pair and maps,
//! attaching them to its veth, writing its rules, and taking it all down.

mod attach;
mod loader;
mod rules;
mod stats;
mod sweep;

pub use attach::AttachMode;
pub use loader::{Datapath, DatapathError, KernelLogLevel, Timeouts};
pub use na_policy::{DirectionRules, Mode, PodRules};
pub use rules::{PodMaps, RulesError, open_pinned};
pub use stats::{PodCounters, Totals, counters, pod_counters};
pub use sweep::ktime_now_ns;

/// The eBPF object built from the `na-ebpf` crate by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/na-ebpf"));

/// The two programs of a pod, with the direction each judges and the TC hook
/// of the host veth it sits on.
pub const PROGRAMS: [(&str, u32, aya::programs::TcAttachType); 2] = [
    (na_common::names::PROG_INGRESS, na_common::direction::INGRESS, aya::programs::TcAttachType::Egress),
    (na_common::names::PROG_EGRESS, na_common::direction::EGRESS, aya::programs::TcAttachType::Ingress),
];
