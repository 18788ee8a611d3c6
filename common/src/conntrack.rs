//! `conntrack_map`: per-pod LRU hash of flows the pod's policy admitted, so
//! replies pass and established flows skip the rule lookup.

/// Capacity of each pod's conntrack table.
pub const MAX_FLOWS: u32 = 16_384;

/// A flow in the orientation of its first packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order; 0 for protocols without ports.
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// [`crate::family`].
    pub family: u8,
    pub _pad: [u8; 2],
    /// The host veth the flow was seen on: a packet injected on another pod's
    /// interface can never match or create this pod's entries.
    pub ifindex: u32,
}

impl FlowKey {
    /// The key a reply packet of this flow carries.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..*self
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The rule that admitted the flow.
    pub policy_id: u32,
    /// [`crate::direction`] of the first packet.
    pub direction: u8,
    pub _pad: [u8; 3],
}
