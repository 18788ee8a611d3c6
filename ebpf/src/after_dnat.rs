//! The verdict on a pod's new flow to a Service address, after DNAT chose
//! the endpoint (see `na_common::service`).
//!
//! Runs for every packet at PREROUTING, so anything `handle_egress` did not
//! leave to it is accepted at once. aya knows no netfilter programs: the
//! object carries this one in a classifier section and the agent loads it
//! itself with the program type the kernel needs. Netfilter programs have no
//! packet helpers, and the kfuncs that read packets are beyond aya, so the
//! packet is read with `bpf_probe_read_kernel` at `skb->data`, found at the
//! offset the agent took from the running kernel's BTF. Whatever cannot be
//! read is dropped: the packet was left here to be judged.
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel};
use na_common::{
    Addr,
    conntrack::{FlowKey, FlowState, replied, tcp_state},
    decision::{Decision, Query},
    direction,
    events::{PolicyEvent, counter_index, verdict},
    family,
    service::DnatPending,
};

use crate::{
    judge::{self, add_to_counter},
    maps::{CONNTRACK_TABLES, DNAT_HOOK, DNAT_PENDING, POD_TABLE},
};

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const IPV6_HLEN: u64 = 40;

pub fn judge(ctx: *mut c_void) -> i32 {
    let Some(slot) = DNAT_PENDING.get_ptr_mut(0) else { return NF_ACCEPT };
    // SAFETY: per-CPU value; `handle_egress` wrote it on this CPU for the
    // packet now here, or for one that never got here.
    let slot = unsafe { &mut *slot };
    if slot.armed == 0 {
        return NF_ACCEPT;
    }
    slot.armed = 0;
    let mut target = Target { endpoint: Addr::zero(), port: 0, len: 0 };
    match destination(ctx, slot, &mut target) {
        Read::Left => judge_endpoint(slot, &target),
        Read::Other => NF_ACCEPT,
        Read::Failed => NF_DROP,
    }
}

/// Where DNAT sent the packet. Filled in place rather than carried in an
/// enum: a variant without it would leave the fields undefined, which the
/// compiler may fill with any register, and the verifier refuses.
struct Target {
    endpoint: Addr,
    port: u16,
    len: u32,
}

enum Read {
    /// The packet left here: [`Target`] holds its destination after DNAT.
    Left,
    /// Some other packet: the one left here was dropped on its way.
    Other,
    Failed,
}

/// Whether the packet at `ctx` is the one `slot` describes, and where it goes.
#[inline(never)]
fn destination(ctx: *mut c_void, slot: &DnatPending, target: &mut Target) -> Read {
    try_destination(ctx, slot, target).unwrap_or(Read::Failed)
}

#[inline(always)]
fn try_destination(ctx: *mut c_void, slot: &DnatPending, target: &mut Target) -> Result<Read, i32> {
    let Some(hook) = DNAT_HOOK.get(0) else { return Err(0) };
    // `struct bpf_nf_ctx { state, skb }`. Read as memory, the skb pointer is
    // a plain number the offsets can be added to.
    let skb: u64 = unsafe { bpf_probe_read_kernel((ctx as *const u64).wrapping_add(1))? };
    let data: u64 = unsafe { bpf_probe_read_kernel((skb + u64::from(hook.skb_data_offset)) as *const u64)? };
    target.len = unsafe { bpf_probe_read_kernel((skb + u64::from(hook.skb_len_offset)) as *const u32)? };
    let (src, dst);
    let l4: u64 = if slot.family == family::IPV4 {
        let h: [u8; 20] = unsafe { bpf_probe_read_kernel(data as *const [u8; 20])? };
        if h[0] >> 4 != 4 || h[9] != slot.protocol {
            return Ok(Read::Other);
        }
        src = Addr::from_ipv4([h[12], h[13], h[14], h[15]]);
        dst = Addr::from_ipv4([h[16], h[17], h[18], h[19]]);
        u64::from(h[0] & 0x0f) * 4
    } else {
        let h: [u8; 8] = unsafe { bpf_probe_read_kernel(data as *const [u8; 8])? };
        if h[0] >> 4 != 6 {
            return Ok(Read::Other);
        }
        let addrs: [Addr; 2] = unsafe { bpf_probe_read_kernel((data + 8) as *const [Addr; 2])? };
        src = addrs[0];
        dst = addrs[1];
        // Extension headers before the transport header are not walked:
        // the pod's packet with them cannot be judged here, and is dropped.
        if h[6] != slot.protocol {
            return if src == slot.src_addr { Err(0) } else { Ok(Read::Other) };
        }
        IPV6_HLEN
    };
    let ports: [u16; 2] = unsafe { bpf_probe_read_kernel((data + l4) as *const [u16; 2])? };
    if src != slot.src_addr || u16::from_be(ports[0]) != slot.src_port {
        return Ok(Read::Other);
    }
    target.endpoint = dst;
    target.port = u16::from_be(ports[1]);
    Ok(Read::Left)
}

/// Judges the pod's flow on the endpoint and, if allowed, tracks it under
/// its key before DNAT, which its replies carry once translated back.
#[inline(never)]
fn judge_endpoint(slot: &DnatPending, target: &Target) -> i32 {
    let (endpoint, port, len) = (&target.endpoint, target.port, target.len);
    let dir = direction::EGRESS;
    // `handle_egress` found the pod; one removed since fails closed.
    let Some(record) = POD_TABLE.get_ptr(slot.ifindex) else { return NF_DROP };
    // SAFETY: records are replaced whole, never written in place.
    let (state, pod_slot) = unsafe { ((*record).states[dir as usize], (*record).slot) };
    let query = Query { family: slot.family, peer: *endpoint, protocol: slot.protocol, port: Some(port) };
    let decision = judge::decide(pod_slot, &state, dir, &query);
    report(slot, endpoint, port, len, &decision);
    if !decision.allowed {
        // `handle_egress` counted it as passed, on this CPU.
        add_to_counter(slot.ifindex, counter_index(dir, verdict::ALLOW), -1, -i64::from(len));
        add_to_counter(slot.ifindex, counter_index(dir, verdict::DENY), 1, i64::from(len));
        return NF_DROP;
    }
    if decision.audited {
        add_to_counter(slot.ifindex, counter_index(dir, verdict::AUDIT), 1, i64::from(len));
    }
    if let Some(table) = CONNTRACK_TABLES.get(pod_slot) {
        let key = FlowKey {
            pod_addr: slot.src_addr,
            peer_addr: slot.service_addr,
            pod_port: slot.src_port,
            peer_port: slot.service_port,
            protocol: slot.protocol,
            family: slot.family,
            _pad: [0; 2],
        };
        let entry = FlowState {
            // The coarse clock's helper is not offered to netfilter
            // programs; this is the same monotonic clock, read precisely.
            last_seen_ns: unsafe { bpf_ktime_get_ns() },
            policy_id: decision.policy_id,
            generation: state.generation,
            direction: dir as u8,
            tcp_state: tcp_state::OPEN,
            replied: replied::NONE,
            via_service: 1,
            endpoint_port: port,
            revoked: 0,
            _pad: [0; 1],
            endpoint_addr: *endpoint,
        };
        let _ = table.insert(key, entry, 0);
    }
    NF_ACCEPT
}

#[inline(never)]
fn report(slot: &DnatPending, endpoint: &Addr, port: u16, len: u32, d: &Decision) {
    judge::send(&PolicyEvent {
        src_addr: slot.src_addr,
        dst_addr: *endpoint,
        src_port: slot.src_port,
        dst_port: port,
        protocol: slot.protocol,
        family: slot.family,
        direction: direction::EGRESS as u8,
        verdict: d.verdict(),
        tier: d.tier,
        reply: 0,
        _pad: [0; 2],
        policy_id: d.policy_id,
        ifindex: slot.ifindex,
        packet_len: len,
        service_id: slot.service_id,
        _pad2: [0; 4],
    });
}
