//! The verdict for one packet: conntrack first, then pod state and rules.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use na_common::{
    conntrack::{FlowKey, FlowState},
    direction,
    events::{PolicyEvent, tier, verdict},
    pod_state::{self, PodState},
    policy::{LpmKeyData, POLICY_ID_NONE},
};

use crate::{
    maps::{CONNTRACK, EGRESS_MAP, INGRESS_MAP, POD_STATE, POLICY_EVENTS},
    packet::{self, Packet, Parsed},
};

/// Refreshing `last_seen` on every packet would bounce its cache line between
/// CPUs; this granularity is far below any idle timeout.
const LAST_SEEN_GRANULARITY_NS: u64 = 100_000_000;

pub fn judge(ctx: &TcContext, dir: u32) -> i32 {
    let Some(state) = POD_STATE.get(dir) else {
        return TC_ACT_SHOT;
    };
    let packet = match packet::parse(ctx) {
        Parsed::NotIp => return TC_ACT_OK,
        Parsed::Malformed => return malformed(state),
        Parsed::Ip(packet) => packet,
    };
    let flow = flow_key(ctx, &packet);
    let now = unsafe { bpf_ktime_get_ns() };
    if refresh(&flow, now) || refresh(&flow.reversed(), now) {
        return TC_ACT_OK;
    }
    let (allowed, tier, policy_id) = decide(state, dir, &packet);
    emit(ctx, &packet, dir, allowed, tier, policy_id);
    if !allowed {
        return TC_ACT_SHOT;
    }
    let entry = FlowState { last_seen_ns: now, policy_id, direction: dir as u8, _pad: [0; 3] };
    // A full table evicts its least recently used flow; failing to insert only
    // means the next packet is judged again.
    let _ = CONNTRACK.insert(flow, entry, 0);
    TC_ACT_OK
}

fn decide(state: &PodState, dir: u32, packet: &Packet) -> (bool, u8, u32) {
    if state.mode == pod_state::DEFAULT_ALLOW {
        return (true, tier::DEFAULT_ALLOW, POLICY_ID_NONE);
    }
    let tier = if state.mode == pod_state::POLICIES_APPLIED { tier::NETWORK_POLICY } else { tier::DEFAULT_DENY };
    let (trie, peer) =
        if dir == direction::INGRESS { (&INGRESS_MAP, packet.src_addr) } else { (&EGRESS_MAP, packet.dst_addr) };
    let (data, prefix_len) = LpmKeyData::new(state.active_set, packet.family, peer, 128);
    let rule = trie.get(Key::new(prefix_len, data)).and_then(|rules| rules.find(packet.protocol, packet.dst_port));
    match rule {
        Some(rule) => (true, tier, rule.policy_id),
        None => (false, tier, POLICY_ID_NONE),
    }
}

fn malformed(state: &PodState) -> i32 {
    if state.mode == pod_state::DEFAULT_ALLOW { TC_ACT_OK } else { TC_ACT_SHOT }
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

/// Marks a tracked flow as alive; false when it is not tracked.
fn refresh(key: &FlowKey, now: u64) -> bool {
    match CONNTRACK.get_ptr_mut(key) {
        Some(entry) => {
            let entry = unsafe { &mut *entry };
            if now.wrapping_sub(entry.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
                entry.last_seen_ns = now;
            }
            true
        }
        None => false,
    }
}

fn emit(ctx: &TcContext, packet: &Packet, dir: u32, allowed: bool, tier: u8, policy_id: u32) {
    let event = PolicyEvent {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port.unwrap_or(0),
        protocol: packet.protocol,
        family: packet.family,
        direction: dir as u8,
        verdict: if allowed { verdict::ALLOW } else { verdict::DENY },
        tier,
        _pad: [0; 3],
        policy_id,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        packet_len: ctx.len(),
    };
    // A full ring loses the event, never the packet.
    let _ = POLICY_EVENTS.output::<PolicyEvent>(&event, 0);
}
