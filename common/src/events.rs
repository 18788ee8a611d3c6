//! Records written to the shared `policy_events` ring buffer.

/// Size of the shared ring buffer in bytes (a power of two, page aligned).
pub const RING_BYTES: u32 = 256 * 1024;

/// What the datapath decided.
pub mod verdict {
    pub const DENY: u8 = 0;
    pub const ALLOW: u8 = 1;
    /// Passed, but only because its direction is audited: the NetworkPolicy
    /// tier would have denied it.
    pub const AUDIT: u8 = 2;
}

/// What decided it.
pub mod tier {
    /// The pod was not isolated in that direction.
    pub const DEFAULT_ALLOW: u8 = 0;
    /// The pod was isolated before its policies were known.
    pub const DEFAULT_DENY: u8 = 1;
    /// A NetworkPolicy rule (allow) or the absence of one (deny).
    pub const NETWORK_POLICY: u8 = 2;
    /// The packet could not be parsed safely.
    pub const MALFORMED: u8 = 3;
    /// A tracked flow judged again after a policy change, and now denied.
    pub const REVOKED: u8 = 4;
    /// A packet leaving the pod from an address that is not the pod's.
    pub const SPOOFED: u8 = 5;
    /// A frame neither IP nor ARP (VLAN-tagged, PPPoE, MPLS, unknown) from or
    /// to a pod isolated in that direction.
    pub const NOT_IP: u8 = 6;
    /// A ClusterNetworkPolicy rule of the admin tier (`Accept` or `Deny`).
    pub const ADMIN: u8 = 7;
    /// A ClusterNetworkPolicy rule of the baseline tier (`Accept` or `Deny`).
    pub const BASELINE: u8 = 8;
    /// A new flow to a Service address that could not be judged on the
    /// endpoint DNAT picks, from a pod ClusterNetworkPolicy `Deny` rules
    /// apply to: dropped, since on the Service address no `Deny` matches.
    pub const SERVICE_UNRESOLVED: u8 = 9;
}

/// `counters`: per-CPU packet and byte counts of a pod, indexed by
/// [`counter_index`]; kept whether or not events are consumed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Number of counter slots: direction x verdict.
pub const COUNTERS: u32 = 6;

/// Slot of `direction` ([`crate::direction`]) and `verdict` ([`verdict`]).
#[inline(always)]
pub const fn counter_index(direction: u32, verdict: u8) -> u32 {
    direction * 3 + verdict as u32
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEvent {
    pub src_addr: crate::Addr,
    pub dst_addr: crate::Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    /// [`crate::direction`] as a byte.
    pub direction: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// [`tier`].
    pub tier: u8,
    /// 1 when a [`tier::REVOKED`] packet went the other way from the one
    /// that opened its flow (a reply): the rules that revoked the flow are
    /// those of the other direction. 0 otherwise.
    pub reply: u8,
    pub _pad: [u8; 2],
    /// Rule that allowed the packet, [`crate::policy::POLICY_ID_NONE`] otherwise.
    pub policy_id: u32,
    /// Host veth of the pod.
    pub ifindex: u32,
    /// Packet length (`skb->len`).
    pub packet_len: u32,
    /// For a flow the pod opened to a Service address, the agent's number
    /// for the Service (`dst_*` is then the endpoint DNAT chose); 0 otherwise.
    pub service_id: u32,
    pub _pad2: [u8; 4],
}
