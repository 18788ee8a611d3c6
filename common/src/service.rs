//! Service addresses: a pod's connection to one is judged after the node's
//! DNAT (kube-proxy) picked the endpoint, as if the pod had connected to that
//! endpoint directly.
//!
//! The pod's packets reach `handle_egress` before DNAT, still bound for the
//! Service address. For a new flow to an address in `service_addrs` from a
//! pod isolated for egress, the program does not judge: it leaves the
//! packet's identity in this CPU's `dnat_pending` slot and passes it on. The
//! same packet then reaches the netfilter program `judge_dnat` at PREROUTING
//! right after the NAT hook, on the same CPU and in the same softirq, which
//! reads the translated destination, judges it with the pod's egress rules,
//! and tracks the flow under its original key (replies come back from the
//! Service address) with the endpoint beside it, so a policy change judges
//! it again on the endpoint. Only while `dnat_hook` says the netfilter
//! program is linked; otherwise the Service address is judged like any
//! address (fail closed).
//!
//! One packet at a time per CPU: when the host veth receives in batches (GRO
//! or XDP on it), the TC hook runs for every packet of a batch before
//! PREROUTING sees any, so a Service-bound packet that finds the slot still
//! armed (within [`HANDOVER_WINDOW_NS`]) is judged by `handle_egress` on the
//! Service address instead: closed, never unjudged.

/// How long an armed slot holds: the packet it describes reaches PREROUTING
/// within microseconds, or was dropped on its way (then the next packet at
/// PREROUTING on that CPU disarms it anyway).
pub const HANDOVER_WINDOW_NS: u64 = 10_000_000;

/// Service frontends the node's tables hold.
pub const MAX_SERVICE_ADDRS: u32 = 65_536;

/// One Service frontend: an address and port kube-proxy translates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: crate::Addr,
    /// Host byte order.
    pub port: u16,
    pub protocol: u8,
    /// [`crate::family`].
    pub family: u8,
    pub _pad: [u8; 4],
}

impl ServiceKey {
    #[inline(always)]
    pub const fn new(addr: crate::Addr, port: u16, protocol: u8, family: u8) -> Self {
        Self { addr, port, protocol, family, _pad: [0; 4] }
    }
}

/// What the agent knows of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The agent's number for the Service (flow logs name it by this).
    pub service_id: u32,
}

/// `dnat_pending`: one slot per CPU, the packet `handle_egress` left to the
/// netfilter program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnatPending {
    /// The pod's original destination (the Service frontend).
    pub service_addr: crate::Addr,
    /// The packet's source, which DNAT leaves alone: how the netfilter
    /// program knows the packet is the one left here.
    pub src_addr: crate::Addr,
    pub src_port: u16,
    pub service_port: u16,
    pub protocol: u8,
    pub family: u8,
    /// 1 while a packet is waiting; the netfilter program clears it.
    pub armed: u8,
    pub _pad: u8,
    /// The pod's host veth.
    pub ifindex: u32,
    pub service_id: u32,
    /// When the slot was armed (the programs' coarse monotonic clock).
    pub armed_at_ns: u64,
}

/// `dnat_hook`: one entry, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnatHook {
    /// 1 once the netfilter program is linked: only then does
    /// `handle_egress` leave Service-bound packets to it.
    pub active: u8,
    pub _pad: [u8; 3],
    /// Offset of `data` in the running kernel's `struct sk_buff` (from its
    /// BTF): the netfilter program reads the packet through it. At
    /// PREROUTING `data` points at the network header.
    pub skb_data_offset: u32,
    /// Offset of `len` in `struct sk_buff`.
    pub skb_len_offset: u32,
    pub _pad2: [u8; 4],
}
