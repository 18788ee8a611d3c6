//! `pod_table`: the node's pods, keyed by the ifindex of their host veth.
//!
//! The programs are loaded once per node and attached to every pod's veth;
//! each packet finds its pod here by `skb->ifindex`. A record says, per
//! direction, how the pod is isolated and which rule set of its tries is
//! live. The table is not preallocated, so an update installs a new element
//! instead of writing over the one a program may be reading; the programs
//! copy the record at once, and each direction's state is one 8-byte word.

/// The pod is isolated but its policies are not known yet (strict mode):
/// only the trie's host entries admit traffic. Zero, so a zeroed state fails
/// closed.
pub const DEFAULT_DENY: u8 = 0;
/// No policy isolates the pod in this direction: everything passes.
pub const DEFAULT_ALLOW: u8 = 1;
/// Policies isolate the pod: the trie decides, a miss is denied.
pub const POLICIES_APPLIED: u8 = 2;
/// No NetworkPolicy isolates the pod in this direction but cluster policies
/// apply to it: the trie's rules decide, and what none of them decides
/// passes.
pub const CLUSTER_POLICIES: u8 = 3;

/// How many pods one node's tables hold, spare slots included (a veth beyond
/// it cannot be enforced and the agent reports it).
pub const MAX_PODS: u32 = 4096;

/// Bits of [`PodState::state`] holding the mode.
const MODE_BITS: u8 = 0x0f;
/// Bit of [`PodState::state`] holding the active rule set.
const SET_BIT: u8 = 0x10;
/// Bit of [`PodState::state`] set when the direction is audited: what only
/// the NetworkPolicy tier would deny passes, reported as
/// [`crate::events::verdict::AUDIT`].
const AUDIT_BIT: u8 = 0x20;
/// Bit of [`PodState::state`] set when ClusterNetworkPolicy `Deny` rules
/// apply to the direction: a new flow to a Service address that cannot be
/// judged on the endpoint DNAT picks is dropped, not judged on the Service
/// address (which no `Deny` names: it would pass).
const SERVICE_DENY_BIT: u8 = 0x40;

/// One direction of a pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    /// Mode and active rule set in one byte.
    pub state: u8,
    pub _pad: [u8; 3],
    /// Bumped by the agent on every write; conntrack entries admitted under an
    /// older generation are judged again.
    pub generation: u32,
}

impl PodState {
    pub const fn new(mode: u8, active_set: u8, generation: u32) -> Self {
        Self { state: mode | if active_set != 0 { SET_BIT } else { 0 }, _pad: [0; 3], generation }
    }

    /// One of [`DEFAULT_DENY`], [`DEFAULT_ALLOW`], [`POLICIES_APPLIED`],
    /// [`CLUSTER_POLICIES`].
    #[inline(always)]
    pub const fn mode(&self) -> u8 {
        self.state & MODE_BITS
    }

    /// The same state, audited or not.
    pub const fn with_audit(self, audit: bool) -> Self {
        let state = if audit { self.state | AUDIT_BIT } else { self.state & !AUDIT_BIT };
        Self { state, ..self }
    }

    /// The same state, with Service addresses that cannot be judged on
    /// their endpoint denied or not.
    pub const fn with_unresolved_services_denied(self, deny: bool) -> Self {
        let state = if deny { self.state | SERVICE_DENY_BIT } else { self.state & !SERVICE_DENY_BIT };
        Self { state, ..self }
    }

    /// Whether a new flow to a Service address that cannot be judged on its
    /// endpoint is dropped.
    #[inline(always)]
    pub const fn denies_unresolved_services(&self) -> bool {
        self.state & SERVICE_DENY_BIT != 0
    }

    /// Whether NetworkPolicy denials in this direction are only reported.
    #[inline(always)]
    pub const fn audit(&self) -> bool {
        self.state & AUDIT_BIT != 0
    }

    /// Which rule set of the trie (0 or 1) the program looks up.
    #[inline(always)]
    pub const fn active_set(&self) -> u8 {
        (self.state & SET_BIT != 0) as u8
    }
}

/// Value of `pod_table`: both directions, indexed by [`crate::direction`],
/// and the pod's addresses: a packet leaving the pod from any other source
/// (IPv6 link-local only for neighbour discovery) is dropped as spoofed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodRecord {
    pub states: [PodState; 2],
    pub ipv4: [u8; 4],
    /// 1 when `ipv4` holds the pod's IPv4 address; a pod without one sends none.
    pub has_ipv4: u8,
    pub has_ipv6: u8,
    pub _pad: [u8; 2],
    pub ipv6: crate::Addr,
    /// Index of the pod's own maps (its tries, its conntrack table) in the
    /// node's arrays of maps. The agent registers a slot's maps ahead of the
    /// pod (a spare slot), so starting a pod writes only this record and its
    /// rules: an update of a map of maps waits for an RCU grace period.
    pub slot: u32,
    pub _pad2: [u8; 4],
}

impl PodRecord {
    /// Whether `addr` (in the ABI's 16-byte form) is the pod's own address of `family`.
    #[inline(always)]
    pub fn owns(&self, family: u8, addr: &crate::Addr) -> bool {
        if family == crate::family::IPV4 {
            // A word compare: byte-array equality becomes a memcmp call in BPF.
            let a = &addr.0;
            self.has_ipv4 != 0 && u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) == u32::from_ne_bytes(self.ipv4)
        } else {
            self.has_ipv6 != 0 && *addr == self.ipv6
        }
    }
}

/// What the programs do on a veth that carries them but has no pod record
/// (a pod being removed, or a table the agent could not write): pass in
/// standard mode, drop in strict mode. Counted under [`UNKNOWN_POD`].
pub mod unknown_pod {
    /// Name of the load-time global: 0 passes, 1 drops.
    pub const GLOBAL_DENY: &str = "UNKNOWN_POD_DENY";
}

/// Key of `counters` under which packets of veths without a pod record are
/// counted (no interface has ifindex 0).
pub const UNKNOWN_POD: u32 = 0;

/// Value of `counters`: a pod's per-CPU packet and byte counts, indexed by
/// [`crate::events::counter_index`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounterSlots {
    pub slots: [crate::events::Counter; crate::events::COUNTERS as usize],
}
