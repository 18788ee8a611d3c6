//! The verdict for one packet.
//!
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
    pod_state::{self, PodState},
    policy::POLICY_ID_NONE,
    protocol,
};

use aya_log_ebpf::debug;

use crate::{
    maps::{
        CONNTRACK, COUNTER_MAP, EGRESS_MAP, FRAGMENTS, INGRESS_MAP, POD_STATE, POLICY_EVENTS, TIMEOUT_OTHER_NS,
        TIMEOUT_TCP_CLOSING_NS, TIMEOUT_TCP_ESTABLISHED_NS, TIMEOUT_UDP_NS,
    },
    packet::{self, Fragment, Packet, Parsed},
};

/// Refreshing `last_seen` on every packet would bounce its cache line between
/// CPUs; this granularity is far below any idle timeout.
const LAST_SEEN_GRANULARITY_NS: u64 = 100_000_000;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

pub fn judge(ctx: &TcContext, dir: u32) -> i32 {
    let Some(state) = pod_state(dir) else {
        return TC_ACT_SHOT;
    };
    let action = match packet::parse(ctx) {
        Parsed::NotIp | Parsed::Neighbour => TC_ACT_OK,
        Parsed::Malformed if state.mode() == pod_state::DEFAULT_ALLOW => TC_ACT_OK,
        Parsed::Malformed => {
            debug!(ctx, "dir {}: malformed IP packet dropped", dir);
            // Nothing about it can be trusted, so the event carries no addresses.
            let unknown = packet::unparsed();
            emit(ctx, &unknown, dir, &Decision { allowed: false, tier: tier::MALFORMED, policy_id: POLICY_ID_NONE });
            TC_ACT_SHOT
        }
        Parsed::Ip(packet) => judge_ip(ctx, dir, &state, &packet),
    };
    count(ctx, dir, action);
    action
}

#[inline(never)]
fn judge_ip(ctx: &TcContext, dir: u32, state: &PodState, packet: &Packet) -> i32 {
    if let Fragment::Later(id) = packet.fragment
        && FRAGMENTS.get_ptr(frag_key(packet, id)).is_some()
    {
        return TC_ACT_OK;
    }
    if let Some(off) = packet.icmp_error_at
        && icmp_error_is_tracked(ctx, packet.family, off)
    {
        return TC_ACT_OK;
    }
    if !matches!(packet.fragment, Fragment::Later(_))
        && let Some(action) = conntrack_verdict(ctx, dir, packet)
    {
        return action;
    }
    evaluate(ctx, dir, state, packet)
}

/// The verdict for a packet of a tracked flow (either orientation), if any.
#[inline(never)]
fn conntrack_verdict(ctx: &TcContext, dir: u32, packet: &Packet) -> Option<i32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = flow_key(ctx, packet);
    let mut hit = tracked(&flow, now, packet.tcp_flags);
    if matches!(hit, Tracked::Miss) {
        hit = tracked(&flow.reversed(), now, packet.tcp_flags);
    }
    match hit {
        Tracked::Pass(policy_id) => {
            remember_first_fragment(packet, policy_id);
            Some(TC_ACT_OK)
        }
        Tracked::Revoked => {
            debug!(ctx, "dir {}: tracked flow from port {} no longer allowed", dir, packet.src_port);
            emit(ctx, packet, dir, &Decision { allowed: false, tier: tier::REVOKED, policy_id: POLICY_ID_NONE });
            Some(TC_ACT_SHOT)
        }
        Tracked::Miss => None,
    }
}

/// Judges an untracked packet by the pod state and rules; tracks it if allowed.
#[inline(never)]
fn evaluate(ctx: &TcContext, dir: u32, state: &PodState, packet: &Packet) -> i32 {
    let peer = if dir == direction::INGRESS { packet.src_addr } else { packet.dst_addr };
    let decision =
        decide(state, dir, &Query { family: packet.family, peer, protocol: packet.protocol, port: packet.dst_port });
    emit(ctx, packet, dir, &decision);
    if !decision.allowed {
        debug!(
            ctx,
            "dir {}: proto {} port {} denied (tier {})",
            dir,
            packet.protocol,
            packet.dst_port.unwrap_or(0),
            decision.tier
        );
        return TC_ACT_SHOT;
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
        // A full table evicts its least recently used flow; failing to insert
        // only means the next packet is judged again.
        let _ = CONNTRACK.insert(flow_key(ctx, packet), entry, 0);
        remember_first_fragment(packet, decision.policy_id);
    }
    TC_ACT_OK
}

/// Whether the packet an ICMP error at `off` is about belongs to a tracked flow.
#[inline(never)]
fn icmp_error_is_tracked(ctx: &TcContext, family: u8, off: usize) -> bool {
    let Some(inner) = packet::parse_embedded(ctx, family, off) else { return false };
    let key = flow_key(ctx, &inner);
    CONNTRACK.get_ptr(key).is_some() || CONNTRACK.get_ptr(key.reversed()).is_some()
}

/// The pod state of `dir`, read in one load so mode, set and generation
/// belong together.
fn pod_state(dir: u32) -> Option<PodState> {
    let ptr = POD_STATE.get_ptr(dir)?;
    // SAFETY: array values are 8-byte aligned and PodState is 8 plain bytes.
    Some(unsafe { core::mem::transmute::<u64, PodState>(core::ptr::read_volatile(ptr.cast::<u64>())) })
}

#[inline(never)]
fn decide(state: &PodState, dir: u32, query: &Query) -> Decision {
    let trie = if dir == direction::INGRESS { &INGRESS_MAP } else { &EGRESS_MAP };
    decision::decide(state, query, |data, prefix_len| trie.get(Key::new(prefix_len, data)))
}

enum Tracked {
    Miss,
    /// Tracked and still allowed, by this rule.
    Pass(u32),
    /// Tracked, but the current policy no longer allows it: entry removed.
    Revoked,
}

/// Looks `key` up in conntrack, expiring it when idle too long and judging it
/// again when its direction's policy changed since it was admitted.
#[inline(never)]
fn tracked(key: &FlowKey, now: u64, tcp_flags: u8) -> Tracked {
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return Tracked::Miss;
    };
    // SAFETY: the pointer is to a live map value.
    let entry = unsafe { &mut *entry };
    if now.saturating_sub(entry.last_seen_ns) > idle_timeout(key.protocol, entry.tcp_state) {
        let _ = CONNTRACK.remove(key);
        return Tracked::Miss;
    }
    let dir = u32::from(entry.direction);
    let Some(state) = pod_state(dir) else {
        return Tracked::Miss;
    };
    if state.generation != entry.generation {
        let peer = if dir == direction::INGRESS { key.src_addr } else { key.dst_addr };
        let port = protocol::has_ports(key.protocol).then_some(key.dst_port);
        let decision = decide(&state, dir, &Query { family: key.family, peer, protocol: key.protocol, port });
        if !decision.allowed {
            let _ = CONNTRACK.remove(key);
            return Tracked::Revoked;
        }
        entry.generation = state.generation;
        entry.policy_id = decision.policy_id;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        entry.tcp_state = tcp_state::CLOSING;
    }
    if now.saturating_sub(entry.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        entry.last_seen_ns = now;
    }
    Tracked::Pass(entry.policy_id)
}

fn idle_timeout(proto: u8, state: u8) -> u64 {
    match TimeoutClass::of(proto, state) {
        TimeoutClass::TcpClosing => TIMEOUT_TCP_CLOSING_NS.load(),
        TimeoutClass::TcpEstablished => TIMEOUT_TCP_ESTABLISHED_NS.load(),
        TimeoutClass::Udp => TIMEOUT_UDP_NS.load(),
        TimeoutClass::Other => TIMEOUT_OTHER_NS.load(),
    }
}

#[inline(never)]
fn remember_first_fragment(packet: &Packet, policy_id: u32) {
    if let Fragment::First(id) = packet.fragment {
        let _ = FRAGMENTS.insert(frag_key(packet, id), policy_id, 0);
    }
}

fn frag_key(packet: &Packet, id: u32) -> FragKey {
    FragKey {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        id,
        protocol: packet.protocol,
        family: packet.family,
        _pad: [0; 2],
    }
}

fn flow_key(ctx: &TcContext, packet: &Packet) -> FlowKey {
    FlowKey {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port.unwrap_or(0),
        protocol: packet.protocol,
        family: packet.family,
        _pad: [0; 2],
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
    }
}

fn count(ctx: &TcContext, dir: u32, action: i32) {
    let v = if action == TC_ACT_OK { verdict::ALLOW } else { verdict::DENY };
    if let Some(c) = COUNTER_MAP.get_ptr_mut(counter_index(dir, v)) {
        // SAFETY: per-CPU value, only this CPU writes it.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += u64::from(ctx.len());
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
