//! `conntrack_map`: per-pod hash of flows the pod's policy admitted, so
//! replies pass and established flows skip the rule lookup.
//!
//! Each pod's table is an inner map of the node-wide `conntrack_maps`, keyed
//! by the pod's host veth ifindex, so one pod's flood of flows can only fill
//! its own table. Tables are not preallocated: an idle pod costs its hash
//! buckets, a busy one what it tracks. A full table admits no new flow to
//! tracking (the packet is still judged by the rules, and so are its
//! replies); it never evicts a live flow.

/// Flows a pod's table holds unless the agent is told otherwise.
pub const DEFAULT_FLOWS_PER_POD: u32 = 8_192;

/// A flow as seen from the pod: its own end and the peer's. A packet on the
/// egress hook has the pod's end as its source, one on the ingress hook as its
/// destination, so a flow's packets and their replies share one key (one
/// lookup), and a key made from packets on one hook never matches packets of
/// the same orientation on the other: a packet the pod forges "from" a peer
/// cannot open a flow for that peer's real packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub pod_addr: crate::Addr,
    pub peer_addr: crate::Addr,
    /// Host byte order; 0 for protocols without ports.
    pub pod_port: u16,
    pub peer_port: u16,
    pub protocol: u8,
    /// [`crate::family`].
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Whether a flow is open or winding down; decides its idle timeout.
pub mod tcp_state {
    /// Any flow that is not a TCP flow past FIN or RST.
    pub const OPEN: u8 = 0;
    /// A TCP flow whose opener has sent FIN (and older programs' value for
    /// FIN or RST from either end).
    pub const CLOSING: u8 = 1;
    /// A TCP flow that has seen RST: over, as Linux's CLOSE state. A peer
    /// spraying segments the pod answers with RST holds each entry only
    /// briefly.
    pub const RESET: u8 = 2;
    /// A TCP flow both ends have sent FIN in: over but for the last ACK
    /// and retransmitted FINs. A pod serving many short connections holds
    /// each one's entry only briefly, not for FIN's long wait.
    pub const CLOSED: u8 = 3;
    /// A TCP flow whose other end (not its opener) has sent FIN.
    pub const CLOSING_REPLY: u8 = 4;

    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;

    /// The state after a segment with `flags`, sent by the flow's opener or
    /// (`reply`) its other end: FIN winds the flow down, FIN from both ends
    /// or RST from either ends it, and only a new connection's SYN from the
    /// opener (a port reused) opens an ended one again.
    #[inline(always)]
    pub fn after(state: u8, flags: u8, reply: bool) -> u8 {
        if flags & RST != 0 {
            return RESET;
        }
        if flags & (SYN | ACK) == SYN && !reply && matches!(state, RESET | CLOSED) {
            return OPEN;
        }
        if flags & FIN == 0 {
            return state;
        }
        match (state, reply) {
            (OPEN, false) => CLOSING,
            (OPEN, true) => CLOSING_REPLY,
            (CLOSING, true) | (CLOSING_REPLY, false) => CLOSED,
            _ => state,
        }
    }
}

/// Idle timeouts by default, in seconds (the agent may set others at load
/// time through the object's `TIMEOUT_*` globals).
pub mod timeout {
    /// An established TCP flow: as long as Linux keeps one (5 days), so idle
    /// long-lived connections are never cut by us first.
    pub const TCP_ESTABLISHED_SECS: u64 = 432_000;
    /// A TCP flow after FIN from one end.
    pub const TCP_CLOSING_SECS: u64 = 120;
    /// A TCP flow that is over: RST, or FIN from both ends (Linux
    /// conntrack's CLOSE; Cilium keeps closed connections 10 s too).
    pub const TCP_CLOSED_SECS: u64 = 10;
    /// A UDP or SCTP flow that went on after its first answer (a stream).
    pub const UDP_SECS: u64 = 180;
    /// A TCP, UDP or SCTP flow that has not seen a reply yet, or a UDP or
    /// SCTP flow of one request and its answer (as Linux conntrack's UDP
    /// timeout for what is not a stream): an allowed peer spraying packets
    /// that open nothing cannot fill the table for long, and neither can a
    /// pod's DNS lookups, each a flow of its own.
    pub const UNREPLIED_SECS: u64 = 30;
    /// Anything else (ICMP echo, other protocols).
    pub const OTHER_SECS: u64 = 30;
    /// A TCP flow the policy revoked, after its last packet: TCP's longest
    /// retransmission interval (`TCP_RTO_MAX`), so the ends' retransmissions
    /// keep meeting the revocation instead of opening the flow anew from
    /// the other side.
    pub const REVOKED_SECS: u64 = 120;
}

/// How far a flow has gone both ways.
pub mod replied {
    /// Only the opener's packets so far.
    pub const NONE: u8 = 0;
    /// A reply passed.
    pub const ONCE: u8 = 1;
    /// A packet passed after the first reply: a conversation, not one
    /// request and its answer.
    pub const STREAM: u8 = 2;

    /// The value after a packet, `reply` when it went the other way from
    /// the flow's first.
    #[inline(always)]
    pub fn after(replied: u8, reply: bool) -> u8 {
        match replied {
            NONE if reply => ONCE,
            ONCE => STREAM,
            other => other,
        }
    }
}

/// Which idle timeout a flow gets; the programs and the agent's sweeper
/// must agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutClass {
    TcpEstablished,
    TcpClosing,
    TcpClosed,
    Udp,
    Unreplied,
    Revoked,
    Other,
}

impl TimeoutClass {
    #[inline(always)]
    pub fn of(protocol: u8, flow: &FlowState) -> Self {
        match protocol {
            _ if flow.revoked != 0 => Self::Revoked,
            crate::protocol::TCP if matches!(flow.tcp_state, tcp_state::RESET | tcp_state::CLOSED) => Self::TcpClosed,
            _ if flow.replied == replied::NONE && crate::protocol::has_ports(protocol) => Self::Unreplied,
            crate::protocol::UDP | crate::protocol::SCTP if flow.replied == replied::ONCE => Self::Unreplied,
            crate::protocol::TCP if flow.tcp_state != tcp_state::OPEN => Self::TcpClosing,
            crate::protocol::TCP => Self::TcpEstablished,
            crate::protocol::UDP | crate::protocol::SCTP => Self::Udp,
            _ => Self::Other,
        }
    }
}

/// Names of the object's globals holding the timeouts in nanoseconds.
pub mod timeout_globals {
    pub const TCP_ESTABLISHED: &str = "TIMEOUT_TCP_ESTABLISHED_NS";
    pub const TCP_CLOSING: &str = "TIMEOUT_TCP_CLOSING_NS";
    pub const TCP_CLOSED: &str = "TIMEOUT_TCP_CLOSED_NS";
    pub const UDP: &str = "TIMEOUT_UDP_NS";
    pub const UNREPLIED: &str = "TIMEOUT_UNREPLIED_NS";
    pub const OTHER: &str = "TIMEOUT_OTHER_NS";
    pub const REVOKED: &str = "TIMEOUT_REVOKED_NS";
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The rule that admitted the flow.
    pub policy_id: u32,
    /// Generation of the pod state (of `direction`) the flow was last judged
    /// under; a different current generation means judge it again.
    pub generation: u32,
    /// [`crate::direction`] of the first packet: the hook whose packets
    /// continue the flow; packets on the other hook are its replies.
    pub direction: u8,
    /// [`tcp_state`].
    pub tcp_state: u8,
    /// [`replied`].
    pub replied: u8,
    /// 1 when the pod opened the flow to a Service address (the key's
    /// peer): the rules judged the endpoint DNAT chose, held below.
    pub via_service: u8,
    /// The endpoint's port, host byte order (flows via a Service only).
    pub endpoint_port: u16,
    /// 1 once the policy revoked the flow (TCP only): its packets either way
    /// are dropped (not judged as new flows, which would let the peer's side
    /// reopen mid-stream what the pod's rules closed) until the entry idles
    /// out or a policy change allows the flow again. Other protocols have
    /// no handshake to tell a flow's continuation from a new one: their
    /// revoked entries are removed.
    pub revoked: u8,
    pub _pad: [u8; 1],
    /// The endpoint's address (flows via a Service only).
    pub endpoint_addr: crate::Addr,
}

/// `frag_map`: fragments after the first carry no ports, so the first
/// fragment's verdict is remembered for the rest of its datagram.
pub mod fragments {
    /// Capacity of the node's fragment table (LRU, shared by every pod: a
    /// datagram whose entry is evicted loses its later fragments, never a
    /// verdict it did not earn).
    pub const MAX_DATAGRAMS: u32 = 8192;
}

/// A fragmented datagram on one pod's veth: addresses, protocol and IP
/// identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// IPv4's 16-bit or IPv6's 32-bit identification.
    pub id: u32,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    /// The pod's host veth: the table is shared by every pod.
    pub ifindex: u32,
}
