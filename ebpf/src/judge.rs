//! The verdict for one packet.
//!
//! The pod is the one whose host veth the packet is on (`skb->ifindex`).
//! Order: link traffic passes; fragments after the first follow their first
//! fragment; ICMP errors about a tracked flow pass; tracked flows pass (judged
//! again when the pod's policy generation moved on, and cut if no longer
//! allowed); everything else is judged by the pod state and the rules, and
//! tracked when allowed.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use na_common::{
    conntrack::{FlowKey, FlowState, FragKey, TimeoutClass, tcp_state},
    decision::{self, Decision, Query},
    direction,
    events::{PolicyEvent, counter_index, tier, verdict},
    pod_state::{self, PodRecord, PodState, UNKNOWN_POD},
    policy::POLICY_ID_NONE,
    protocol,
};

use aya_log_ebpf::debug;

use crate::{
    maps::{
        CONNTRACK_TABLES, COUNTER_MAP, Conntrack, EGRESS_TRIES, FRAGMENTS, INGRESS_TRIES, POD_TABLE, POLICY_EVENTS,
        TIMEOUT_OTHER_NS, TIMEOUT_TCP_CLOSING_NS, TIMEOUT_TCP_ESTABLISHED_NS, TIMEOUT_UDP_NS, UNKNOWN_POD_DENY,
    },
    packet::{self, Fragment, Packet, Parsed},
};

/// Refreshing `last_seen` on every packet would bounce its cache line between
/// CPUs; this granularity is far below any idle timeout.
const LAST_SEEN_GRANULARITY_NS: u64 = 100_000_000;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// The pod a packet belongs to, as the programs see it.
struct Pod<'a> {
    ifindex: u32,
    record: PodRecord,
    /// `None` only if the agent failed to give the pod a table; nothing is
    /// tracked then, and every packet is judged by the rules.
    conntrack: Option<&'a Conntrack>,
}

impl Pod<'_> {
    fn state(&self, dir: u32) -> PodState {
        self.record.states[(dir & 1) as usize]
    }
}

pub fn judge(ctx: &TcContext, dir: u32) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(record) = pod_record(ifindex) else {
        let action = if UNKNOWN_POD_DENY.load() != 0 { TC_ACT_SHOT } else { TC_ACT_OK };
        count(ctx, UNKNOWN_POD, dir, action);
        return action;
    };
    // SAFETY: the table is not preallocated, so the inner map a lookup
    // returns stays valid for this run even if the agent replaces it.
    let pod = Pod { ifindex, record, conntrack: unsafe { CONNTRACK_TABLES.get(&ifindex) } };
    let state = pod.state(dir);
    let action = match packet::parse(ctx) {
        Parsed::NotIp | Parsed::Neighbour => TC_ACT_OK,
        Parsed::Malformed if state.mode() == pod_state::DEFAULT_ALLOW => TC_ACT_OK,
        Parsed::Malformed => malformed(ctx, dir),
        // Checked here, not in `judge_ip`: parsing the quoted packet takes
        // a deep frame of its own.
        Parsed::Ip(packet)
            if packet.icmp_error_at.is_some_and(|off| icmp_error_is_tracked(ctx, &pod, packet.family, off)) =>
        {
            TC_ACT_OK
        }
        Parsed::Ip(packet) => judge_ip(ctx, dir, &pod, &packet),
    };
    count(ctx, ifindex, dir, action);
    action
}

// The verifier caps the stack of the deepest call chain at 512 bytes, so
// what only some packets need lives in frames of its own.
#[inline(never)]
fn malformed(ctx: &TcContext, dir: u32) -> i32 {
    debug!(ctx, "dir {}: malformed IP packet dropped", dir);
    // Nothing about it can be trusted, so the event carries no addresses.
    let unknown = packet::unparsed();
    emit(ctx, &unknown, dir, &Decision { allowed: false, tier: tier::MALFORMED, policy_id: POLICY_ID_NONE });
    TC_ACT_SHOT
}

#[inline(never)]
fn judge_ip(ctx: &TcContext, dir: u32, pod: &Pod, packet: &Packet) -> i32 {
    if let Fragment::Later(id) = packet.fragment
        && first_fragment_passed(pod.ifindex, packet, id)
    {
        return TC_ACT_OK;
    }
    if !matches!(packet.fragment, Fragment::Later(_)) {
        match conntrack_verdict(pod, packet) {
            Tracked::Pass => return TC_ACT_OK,
            Tracked::Revoked => {
                debug!(ctx, "dir {}: tracked flow from port {} no longer allowed", dir, packet.src_port);
                emit(ctx, packet, dir, &Decision { allowed: false, tier: tier::REVOKED, policy_id: POLICY_ID_NONE });
                return TC_ACT_SHOT;
            }
            Tracked::Miss => {}
        }
    }
    // Events are sent from here, not from the callees: their frames and
    // `emit`'s would add up past the verifier's 512-byte stack cap.
    let decision = evaluate(dir, pod, packet);
    emit(ctx, packet, dir, &decision);
    if decision.allowed {
        return TC_ACT_OK;
    }
    debug!(
        ctx,
        "dir {}: proto {} port {} denied (tier {})",
        dir,
        packet.protocol,
        packet.dst_port.unwrap_or(0),
        decision.tier
    );
    TC_ACT_SHOT
}

enum Tracked {
    /// Not tracked (or expired).
    Miss,
    /// Tracked and still allowed.
    Pass,
    /// Tracked, but the current policy no longer allows it: entry removed.
    Revoked,
}

/// The verdict for a packet of a tracked flow (either orientation), if any:
/// judged again when its direction's policy changed since it was admitted,
/// and cut if no longer allowed.
#[inline(never)]
fn conntrack_verdict(pod: &Pod, packet: &Packet) -> Tracked {
    let Some(table) = pod.conntrack else { return Tracked::Miss };
    let mut key = flow_key(pod.ifindex, packet);
    let entry = match tracked(table, &key) {
        Some(entry) => entry,
        None => {
            key.reverse();
            match tracked(table, &key) {
                Some(entry) => entry,
                None => return Tracked::Miss,
            }
        }
    };
    // SAFETY: the pointer is to a live map value.
    let entry = unsafe { &mut *entry };
    let flow_dir = u32::from(entry.direction);
    let state = pod.state(flow_dir);
    if state.generation != entry.generation {
        let peer = if flow_dir == direction::INGRESS { key.src_addr } else { key.dst_addr };
        let port = protocol::has_ports(key.protocol).then_some(key.dst_port);
        let decision =
            decide(pod.ifindex, &state, flow_dir, &Query { family: key.family, peer, protocol: key.protocol, port });
        if !decision.allowed {
            let _ = table.remove(key);
            return Tracked::Revoked;
        }
        entry.generation = state.generation;
        entry.policy_id = decision.policy_id;
    }
    if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        entry.tcp_state = tcp_state::CLOSING;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(entry.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        entry.last_seen_ns = now;
    }
    remember_first_fragment(pod.ifindex, packet, entry.policy_id);
    Tracked::Pass
}

/// Judges an untracked packet by the pod state and rules; tracks it if allowed.
#[inline(never)]
fn evaluate(dir: u32, pod: &Pod, packet: &Packet) -> Decision {
    let state = pod.state(dir);
    let peer = if dir == direction::INGRESS { packet.src_addr } else { packet.dst_addr };
    let decision = decide(
        pod.ifindex,
        &state,
        dir,
        &Query { family: packet.family, peer, protocol: packet.protocol, port: packet.dst_port },
    );
    if !decision.allowed {
        return decision;
    }
    if !matches!(packet.fragment, Fragment::Later(_)) {
        let tcp = if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 { tcp_state::CLOSING } else { tcp_state::OPEN };
        let entry = FlowState {
            last_seen_ns: unsafe { bpf_ktime_get_ns() },
            policy_id: decision.policy_id,
            generation: state.generation,
            direction: dir as u8,
            tcp_state: tcp,
            _pad: [0; 6],
        };
        // A full table tracks nothing new (and evicts nothing live): the
        // flow's next packets are judged by the rules again.
        if let Some(table) = pod.conntrack {
            let _ = table.insert(flow_key(pod.ifindex, packet), entry, 0);
        }
        remember_first_fragment(pod.ifindex, packet, decision.policy_id);
    }
    decision
}

/// Whether the packet an ICMP error at `off` is about belongs to a tracked flow.
#[inline(never)]
fn icmp_error_is_tracked(ctx: &TcContext, pod: &Pod, family: u8, off: usize) -> bool {
    let Some(table) = pod.conntrack else { return false };
    let Some(inner) = packet::parse_embedded(ctx, family, off) else { return false };
    tracked_either_way(table, pod.ifindex, &inner)
}

/// Whether `packet`'s flow is tracked in either orientation; a frame of its
/// own so its keys are not on the stack while the quote is parsed.
#[inline(never)]
fn tracked_either_way(table: &Conntrack, ifindex: u32, packet: &Packet) -> bool {
    let key = flow_key(ifindex, packet);
    table.get_ptr(key).is_some() || table.get_ptr(key.reversed()).is_some()
}

/// The pod's record, copied once so both directions' mode, set and
/// generation belong together.
fn pod_record(ifindex: u32) -> Option<PodRecord> {
    let ptr = POD_TABLE.get_ptr(ifindex)?;
    // SAFETY: a live map value; records are replaced whole, never written in place.
    Some(unsafe { *ptr })
}

#[inline(never)]
fn decide(ifindex: u32, state: &PodState, dir: u32, query: &Query) -> Decision {
    let tries = if dir == direction::INGRESS { &INGRESS_TRIES } else { &EGRESS_TRIES };
    // SAFETY: the outer map is not preallocated (see `pod`), and trie values
    // are only read.
    decision::decide(state, query, |data, prefix_len| unsafe { tries.get_value(&ifindex, &Key::new(prefix_len, data)) })
}

/// The entry of `key`, unless it is missing or idle past its timeout (then
/// it is removed: the programs never refresh an expired flow).
#[inline(never)]
fn tracked(table: &Conntrack, key: &FlowKey) -> Option<*mut FlowState> {
    let entry = table.get_ptr_mut(key)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the pointer is to a live map value.
    let flow = unsafe { &*entry };
    if now.saturating_sub(flow.last_seen_ns) > idle_timeout(key.protocol, flow.tcp_state) {
        let _ = table.remove(key);
        return None;
    }
    Some(entry)
}

fn idle_timeout(proto: u8, state: u8) -> u64 {
    match TimeoutClass::of(proto, state) {
        TimeoutClass::TcpClosing => TIMEOUT_TCP_CLOSING_NS.load(),
        TimeoutClass::TcpEstablished => TIMEOUT_TCP_ESTABLISHED_NS.load(),
        TimeoutClass::Udp => TIMEOUT_UDP_NS.load(),
        TimeoutClass::Other => TIMEOUT_OTHER_NS.load(),
    }
}

/// Whether the first fragment of this later fragment's datagram passed.
#[inline(never)]
fn first_fragment_passed(ifindex: u32, packet: &Packet, id: u32) -> bool {
    FRAGMENTS.get_ptr(frag_key(ifindex, packet, id)).is_some()
}

#[inline(never)]
fn remember_first_fragment(ifindex: u32, packet: &Packet, policy_id: u32) {
    if let Fragment::First(id) = packet.fragment {
        let _ = FRAGMENTS.insert(frag_key(ifindex, packet, id), policy_id, 0);
    }
}

fn frag_key(ifindex: u32, packet: &Packet, id: u32) -> FragKey {
    FragKey {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        id,
        protocol: packet.protocol,
        family: packet.family,
        _pad: [0; 2],
        ifindex,
    }
}

fn flow_key(ifindex: u32, packet: &Packet) -> FlowKey {
    FlowKey {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port.unwrap_or(0),
        protocol: packet.protocol,
        family: packet.family,
        _pad: [0; 2],
        ifindex,
    }
}

fn count(ctx: &TcContext, ifindex: u32, dir: u32, action: i32) {
    let v = if action == TC_ACT_OK { verdict::ALLOW } else { verdict::DENY };
    if let Some(c) = COUNTER_MAP.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it.
        let slots = unsafe { &mut (*c).slots };
        if let Some(c) = slots.get_mut(counter_index(dir, v) as usize) {
            c.packets += 1;
            c.bytes += u64::from(ctx.len());
        }
    }
}

#[inline(never)]
fn emit(ctx: &TcContext, packet: &Packet, dir: u32, d: &Decision) {
    let event = PolicyEvent {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port.unwrap_or(0),
        protocol: packet.protocol,
        family: packet.family,
        direction: dir as u8,
        verdict: if d.allowed { verdict::ALLOW } else { verdict::DENY },
        tier: d.tier,
        _pad: [0; 3],
        policy_id: d.policy_id,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        packet_len: ctx.len(),
    };
    // A full ring loses the event, never the packet.
    let _ = POLICY_EVENTS.output::<PolicyEvent>(&event, 0);
}
