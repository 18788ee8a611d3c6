//! The verdict for one packet.
//!
//! The pod is the one whose host veth the packet is on (`skb->ifindex`).
//! Order: ARP passes, and other link traffic where the pod is not isolated in
//! that direction; a packet leaving the pod from an address that is not the
//! pod's is dropped; neighbour discovery between the pod and its host passes;
//! fragments after the first follow their first fragment; an ICMP error about
//! a live flow of the pod passes; tracked flows pass (judged again when the
//! pod's policy generation moved on, and cut if no longer allowed: a cut
//! TCP flow's packets either way are dropped until it idles out, so the side
//! whose rules still allow it cannot reopen it mid-stream);
//! a new flow leaving the pod for a Service address is left to the
//! netfilter program that judges it after DNAT (`after_dnat`);
//! everything else is judged by the pod state and the rules, and tracked
//! when allowed.
//!
//! What passes is handed on (`TCX_NEXT`) rather than accepted: a program
//! attached after ours still sees it, and what we drop nothing can let through.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
    helpers::bpf_ktime_get_coarse_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use na_common::{
    Addr,
    conntrack::{FlowKey, FlowState, FragKey, TimeoutClass, replied, tcp_state},
    decision::{self, Decision, Query},
    direction,
    events::{PolicyEvent, counter_index, tier, verdict},
    pod_state::{self, PodRecord, PodState, UNKNOWN_POD},
    protocol,
    service::{HANDOVER_WINDOW_NS, ServiceKey},
};

use aya_log_ebpf::debug;

use crate::{
    maps::{
        CONNTRACK_TABLES, COUNTER_MAP, Conntrack, DNAT_HOOK, DNAT_PENDING, EGRESS_TRIES, FRAGMENTS, INGRESS_TRIES,
        NODE_ADDRS, POD_TABLE, POLICY_EVENTS, SERVICE_ADDRS, TIMEOUT_OTHER_NS, TIMEOUT_REVOKED_NS,
        TIMEOUT_TCP_CLOSED_NS, TIMEOUT_TCP_CLOSING_NS, TIMEOUT_TCP_ESTABLISHED_NS, TIMEOUT_UDP_NS,
        TIMEOUT_UNREPLIED_NS, UNKNOWN_POD_DENY,
    },
    packet::{self, Fragment, Packet, Parsed},
};

const PASS: i32 = TCX_NEXT;
/// Refreshing `last_seen` on every packet would bounce its cache line between
/// CPUs; this granularity is far below any idle timeout.
const LAST_SEEN_GRANULARITY_NS: u64 = 100_000_000;

/// The pod a packet belongs to, as the programs see it.
struct Pod<'a> {
    ifindex: u32,
    record: &'a PodRecord,
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
    let Some(record) = POD_TABLE.get_ptr(ifindex) else {
        let action = if UNKNOWN_POD_DENY.load() != 0 { TC_ACT_SHOT } else { PASS };
        count(ctx, UNKNOWN_POD, dir, action);
        return action;
    };
    // SAFETY: records are replaced whole (the table is not preallocated, so
    // an update installs a new element), never written in place, and the one
    // read here lives until this run ends: its states and addresses belong
    // together.
    let record = unsafe { &*record };
    // The inner map a lookup returns stays valid for this run even if the
    // agent replaces it (inner maps are freed after an RCU grace period).
    let pod = Pod { ifindex, record, conntrack: CONNTRACK_TABLES.get(record.slot) };
    let isolated = pod.state(dir).mode() != pod_state::DEFAULT_ALLOW;
    let action = match packet::parse(ctx) {
        Parsed::Arp => PASS,
        Parsed::OtherLink if !isolated => PASS,
        Parsed::OtherLink => unjudgeable(ctx, dir, tier::NOT_IP),
        // A packet leaving the pod that cannot be parsed cannot have its
        // source checked either.
        Parsed::Malformed if !isolated && dir == direction::INGRESS => PASS,
        Parsed::Malformed => unjudgeable(ctx, dir, tier::MALFORMED),
        Parsed::Ip(packet) if dir == direction::EGRESS && !source_is_pods(record, &packet) => spoofed(ctx, &packet),
        Parsed::Ip(packet) if packet.neighbour && neighbour_exempt(dir, &packet) => PASS,
        // Checked here, not in `judge_ip`: parsing the quoted packet takes
        // a deep frame of its own.
        Parsed::Ip(packet)
            if packet.icmp_error_at.is_some_and(|off| icmp_error_admitted(ctx, &pod, dir, &packet, off)) =>
        {
            PASS
        }
        Parsed::Ip(packet) => judge_ip(ctx, dir, &pod, &packet),
    };
    count(ctx, ifindex, dir, action);
    action
}

/// Whether a packet leaving the pod comes from the pod: one of its
/// addresses, or for neighbour discovery its link-local address or none
/// (duplicate address detection).
fn source_is_pods(record: &PodRecord, packet: &Packet) -> bool {
    record.owns(packet.family, &packet.src_addr)
        || (packet.neighbour && (is_link_local(&packet.src_addr) || packet.src_addr.is_zero()))
}

/// Neighbour discovery is exempt from policy only between the pod and its
/// host, the one neighbour a veth has: leaving the pod towards link-local or
/// multicast addresses or the node's own, entering it from link-local ones
/// or the node's own. Anything else is judged as the ICMPv6 it is.
#[inline(never)]
fn neighbour_exempt(dir: u32, packet: &Packet) -> bool {
    if dir == direction::EGRESS {
        is_link_local(&packet.dst_addr) || packet.dst_addr.0[0] == 0xff || is_nodes(&packet.dst_addr)
    } else {
        is_link_local(&packet.src_addr) || is_nodes(&packet.src_addr)
    }
}

fn is_nodes(addr: &Addr) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { NODE_ADDRS.get(addr).is_some() }
}

/// fe80::/10 (only IPv6 packets are neighbour discovery).
fn is_link_local(addr: &Addr) -> bool {
    addr.0[0] == 0xfe && addr.0[1] & 0xc0 == 0x80
}

// The verifier caps the stack of the deepest call chain at 512 bytes, so
// what only some packets need lives in frames of its own.
#[inline(never)]
fn unjudgeable(ctx: &TcContext, dir: u32, why: u8) -> i32 {
    debug!(ctx, "dir {}: frame dropped unjudged (tier {})", dir, why);
    // Nothing about it can be trusted, so the event carries no addresses.
    let unknown = packet::unparsed();
    emit(ctx, &unknown, dir, &Decision::denied(why), 0);
    TC_ACT_SHOT
}

#[inline(never)]
fn spoofed(ctx: &TcContext, packet: &Packet) -> i32 {
    debug!(ctx, "egress: packet from an address not the pod's dropped");
    let decision = Decision::denied(tier::SPOOFED);
    emit(ctx, packet, direction::EGRESS, &decision, 0);
    TC_ACT_SHOT
}

#[inline(never)]
fn judge_ip(ctx: &TcContext, dir: u32, pod: &Pod, packet: &Packet) -> i32 {
    if packet.fragment == Fragment::Later && first_fragment_passed(pod.ifindex, packet) {
        return PASS;
    }
    if packet.fragment != Fragment::Later {
        match conntrack_verdict(dir, pod, packet) {
            Tracked::Pass => return PASS,
            verdict @ (Tracked::Revoked | Tracked::RevokedReply) => {
                debug!(ctx, "dir {}: tracked flow from port {} no longer allowed", dir, packet.src_port);
                let reply = u8::from(matches!(verdict, Tracked::RevokedReply));
                let decision = Decision::denied(tier::REVOKED);
                emit(ctx, packet, dir, &decision, reply);
                return TC_ACT_SHOT;
            }
            Tracked::Miss => {}
        }
    }
    if dir == direction::EGRESS && packet.fragment == Fragment::No && left_to_dnat_hook(pod, packet) {
        return PASS;
    }
    if dir == direction::EGRESS && packet.fragment != Fragment::Later && unresolved_service_denied(pod, packet) {
        emit(ctx, packet, dir, &Decision::denied(tier::SERVICE_UNRESOLVED), 0);
        return TC_ACT_SHOT;
    }
    // Events are sent from here, not from the callees: their frames and
    // `emit`'s would add up past the verifier's 512-byte stack cap.
    let decision = evaluate(dir, pod, packet);
    emit(ctx, packet, dir, &decision, 0);
    if decision.audited {
        // Would-be drops, counted besides the pass they are.
        add_to_counter(pod.ifindex, counter_index(dir, verdict::AUDIT), 1, i64::from(ctx.len()));
    }
    if decision.allowed {
        return PASS;
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
    /// Tracked, but the current policy no longer allows it: a TCP flow's
    /// entry stays, marked revoked, so its later packets either way meet the
    /// revocation too; others are forgotten.
    Revoked,
    /// [`Tracked::Revoked`], met by a packet going the other way from the
    /// flow's first one: the other direction's rules revoked it.
    RevokedReply,
}

/// The verdict for a packet of a tracked flow, if any: judged again when
/// the policy of the direction that opened it changed since it was admitted,
/// and cut if no longer allowed.
#[inline(never)]
fn conntrack_verdict(dir: u32, pod: &Pod, packet: &Packet) -> Tracked {
    let Some(table) = pod.conntrack else { return Tracked::Miss };
    let key = flow_key(dir, packet);
    let now = clock();
    let Some(entry) = tracked(table, &key, now) else { return Tracked::Miss };
    // SAFETY: the pointer is to a live map value.
    let entry = unsafe { &mut *entry };
    let flow_dir = u32::from(entry.direction);
    let state = pod.state(flow_dir);
    if state.generation != entry.generation {
        // A flow tracked on a Service address meets cluster Deny rules the
        // way a new one does: handed over to be judged on its endpoint, or
        // dropped.
        let unresolved = entry.via_service == 0
            && flow_dir == direction::EGRESS
            && state.denies_unresolved_services()
            && is_service_frontend(&key);
        let decision = if unresolved {
            Decision::denied(tier::SERVICE_UNRESOLVED)
        } else {
            decide(pod.record.slot, &state, flow_dir, &opening_query(flow_dir, &key, entry))
        };
        if !decision.allowed && key.protocol != protocol::TCP {
            // Without a handshake, the peer's next datagram may as well
            // start a flow the other direction's rules admit: forgotten,
            // the flow's next packet is judged as new.
            let _ = table.remove(key);
            if handed_over(dir, flow_dir, entry, &key) {
                return Tracked::Miss;
            }
            return if dir == flow_dir { Tracked::Revoked } else { Tracked::RevokedReply };
        }
        entry.revoked = u8::from(!decision.allowed);
        if decision.allowed {
            entry.policy_id = decision.policy_id;
        }
        entry.generation = state.generation;
    }
    if entry.revoked != 0 {
        if handed_over(dir, flow_dir, entry, &key) {
            return Tracked::Miss;
        }
        // Packets refresh the revocation: retransmissions from either end
        // keep meeting it.
        if now.saturating_sub(entry.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            entry.last_seen_ns = now;
        }
        return if dir == flow_dir { Tracked::Revoked } else { Tracked::RevokedReply };
    }
    let reply = dir != flow_dir;
    let tcp = tcp_state::after(entry.tcp_state, packet.tcp_flags, reply);
    // A new connection on the tuple of a finished one starts afresh.
    let reopened = tcp == tcp_state::OPEN && entry.tcp_state != tcp_state::OPEN;
    let replied = if reopened { replied::NONE } else { replied::after(entry.replied, reply) };
    if tcp != entry.tcp_state {
        entry.tcp_state = tcp;
    }
    if replied != entry.replied {
        entry.replied = replied;
    }
    if now.saturating_sub(entry.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        entry.last_seen_ns = now;
    }
    remember_first_fragment(pod.ifindex, packet, entry.policy_id);
    Tracked::Pass
}

/// Whether a packet leaving the pod belongs to a flow it opened to a Service
/// address that was tracked on that address (the pod was not isolated, or
/// the hook not linked, when it opened) and no longer allowed: it is handed
/// over and judged on its endpoint instead, and the entry left to what that
/// decides.
fn handed_over(dir: u32, flow_dir: u32, entry: &FlowState, key: &FlowKey) -> bool {
    entry.via_service == 0 && flow_dir == direction::EGRESS && dir == direction::EGRESS && is_service_frontend(key)
}

/// What the rules were asked about the flow's first packet, which `flow_dir`
/// carried: for a flow to a Service, about the endpoint DNAT chose.
fn opening_query(flow_dir: u32, key: &FlowKey, entry: &FlowState) -> Query {
    let (peer, port) = if entry.via_service != 0 {
        (entry.endpoint_addr, entry.endpoint_port)
    } else if flow_dir == direction::INGRESS {
        (key.peer_addr, key.pod_port)
    } else {
        (key.peer_addr, key.peer_port)
    };
    Query { family: key.family, peer, protocol: key.protocol, port: protocol::has_ports(key.protocol).then_some(port) }
}

/// Whether the peer end of a flow the pod opened is a Service frontend.
#[inline(never)]
fn is_service_frontend(key: &FlowKey) -> bool {
    SERVICE_ADDRS.get_ptr(ServiceKey::new(key.peer_addr, key.peer_port, key.protocol, key.family)).is_some()
}

/// Leaves a new flow from a pod isolated for egress to a Service frontend
/// to `judge_dnat` (see `na_common::service`), if that program is linked.
#[inline(never)]
fn left_to_dnat_hook(pod: &Pod, packet: &Packet) -> bool {
    if pod.state(direction::EGRESS).mode() == pod_state::DEFAULT_ALLOW {
        return false;
    }
    let Some(port) = packet.dst_port else { return false };
    let key = ServiceKey::new(packet.dst_addr, port, packet.protocol, packet.family);
    let Some(service) = SERVICE_ADDRS.get_ptr(key) else { return false };
    if !DNAT_HOOK.get(0).is_some_and(|hook| hook.active != 0) {
        return false;
    }
    let Some(slot) = DNAT_PENDING.get_ptr_mut(0) else { return false };
    let now = clock();
    // SAFETY: per-CPU value, only this CPU touches it.
    if unsafe { (*slot).armed != 0 && now.saturating_sub((*slot).armed_at_ns) < HANDOVER_WINDOW_NS } {
        return false;
    }
    // SAFETY: per-CPU value; the netfilter program reads it on this CPU for
    // this packet, and no other is handed over before (the check above).
    // Written field by
    // field: a whole record built first would sit on this frame too, past
    // the verifier's stack cap.
    unsafe {
        (*slot).service_addr = packet.dst_addr;
        (*slot).src_addr = packet.src_addr;
        (*slot).src_port = packet.src_port;
        (*slot).service_port = port;
        (*slot).protocol = packet.protocol;
        (*slot).family = packet.family;
        (*slot).ifindex = pod.ifindex;
        (*slot).service_id = (*service).service_id;
        (*slot).armed_at_ns = now;
        (*slot).armed = 1;
    }
    true
}

/// Whether a new flow leaving the pod goes to a Service address it could not
/// be handed over for (no hook, a fragment, a busy hand-over) while cluster
/// `Deny` rules apply to the pod's egress: judged on the Service address,
/// which they never name, it would pass them.
#[inline(never)]
fn unresolved_service_denied(pod: &Pod, packet: &Packet) -> bool {
    if !pod.state(direction::EGRESS).denies_unresolved_services() {
        return false;
    }
    let Some(port) = packet.dst_port else { return false };
    SERVICE_ADDRS.get_ptr(ServiceKey::new(packet.dst_addr, port, packet.protocol, packet.family)).is_some()
}

/// Judges an untracked packet by the pod state and rules; tracks it if allowed.
#[inline(never)]
fn evaluate(dir: u32, pod: &Pod, packet: &Packet) -> Decision {
    let state = pod.state(dir);
    let peer = if dir == direction::INGRESS { packet.src_addr } else { packet.dst_addr };
    let decision = decide(
        pod.record.slot,
        &state,
        dir,
        &Query { family: packet.family, peer, protocol: packet.protocol, port: packet.dst_port },
    );
    if !decision.allowed {
        return decision;
    }
    if packet.fragment != Fragment::Later {
        track(pod, dir, packet, decision.policy_id, state.generation);
        remember_first_fragment(pod.ifindex, packet, decision.policy_id);
    }
    decision
}

/// Tracks a flow the rules just admitted. A frame of its own: the entry
/// would otherwise sit on the deepest call chain's stack. A full table
/// tracks nothing new (and evicts nothing live): the flow's next packets are
/// judged by the rules again.
#[inline(never)]
fn track(pod: &Pod, dir: u32, packet: &Packet, policy_id: u32, generation: u32) {
    let Some(table) = pod.conntrack else { return };
    let tcp = tcp_state::after(tcp_state::OPEN, packet.tcp_flags, false);
    let entry = FlowState {
        last_seen_ns: clock(),
        policy_id,
        generation,
        direction: dir as u8,
        tcp_state: tcp,
        replied: replied::NONE,
        via_service: 0,
        endpoint_port: 0,
        revoked: 0,
        _pad: [0; 1],
        endpoint_addr: na_common::Addr::zero(),
    };
    let _ = table.insert(flow_key(dir, packet), entry, 0);
}

/// Whether an ICMP error is about a live flow of the pod, judged under the
/// current policy, and quotes a packet the error's receiver sent: arriving at
/// the pod (from any router on the path), a packet the pod sent; leaving it,
/// a packet the flow's peer sent, and the error goes to that peer.
#[inline(never)]
fn icmp_error_admitted(ctx: &TcContext, pod: &Pod, dir: u32, error: &Packet, off: usize) -> bool {
    let Some(table) = pod.conntrack else { return false };
    let Some(quote) = packet::parse_embedded(ctx, error.family, off) else { return false };
    quote_is_live(table, pod, dir, error, &quote)
}

/// See [`icmp_error_admitted`]; a frame of its own so the key is not on the
/// stack while the quote is parsed.
#[inline(never)]
fn quote_is_live(table: &Conntrack, pod: &Pod, dir: u32, error: &Packet, quote: &Packet) -> bool {
    // The quoted packet travelled the other way: its key is the one it had
    // on the other hook.
    let quoted_on = if dir == direction::INGRESS { direction::EGRESS } else { direction::INGRESS };
    let key = flow_key(quoted_on, quote);
    if dir == direction::EGRESS && error.dst_addr != key.peer_addr {
        return false;
    }
    let Some(entry) = tracked(table, &key, clock()) else { return false };
    // SAFETY: the pointer is to a live map value.
    let entry = unsafe { &*entry };
    entry.revoked == 0 && entry.generation == pod.state(u32::from(entry.direction)).generation
}

#[inline(never)]
pub fn decide(slot: u32, state: &PodState, dir: u32, query: &Query) -> Decision {
    let tries = if dir == direction::INGRESS { &INGRESS_TRIES } else { &EGRESS_TRIES };
    let trie = tries.get(slot);
    decision::decide(state, query, |data, prefix_len| trie?.get(&Key::new(prefix_len, data)))
}

/// The entry of `key`, unless it is missing or idle past its timeout at
/// `now` (then it is removed: the programs never refresh an expired flow).
#[inline(never)]
fn tracked(table: &Conntrack, key: &FlowKey, now: u64) -> Option<*mut FlowState> {
    let entry = table.get_ptr_mut(key)?;
    // SAFETY: the pointer is to a live map value.
    let flow = unsafe { &*entry };
    if now.saturating_sub(flow.last_seen_ns) > idle_timeout(key.protocol, flow) {
        let _ = table.remove(key);
        return None;
    }
    Some(entry)
}

/// The kernel's coarse monotonic clock: a tick's precision is plenty for
/// idle timeouts, and it costs a load where the precise one reads the TSC.
/// The agent's sweeper reads the same clock's precise form.
fn clock() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

fn idle_timeout(proto: u8, flow: &FlowState) -> u64 {
    match TimeoutClass::of(proto, flow) {
        TimeoutClass::TcpClosing => TIMEOUT_TCP_CLOSING_NS.load(),
        TimeoutClass::TcpClosed => TIMEOUT_TCP_CLOSED_NS.load(),
        TimeoutClass::Revoked => TIMEOUT_REVOKED_NS.load(),
        TimeoutClass::TcpEstablished => TIMEOUT_TCP_ESTABLISHED_NS.load(),
        TimeoutClass::Udp => TIMEOUT_UDP_NS.load(),
        TimeoutClass::Unreplied => TIMEOUT_UNREPLIED_NS.load(),
        TimeoutClass::Other => TIMEOUT_OTHER_NS.load(),
    }
}

/// Whether the first fragment of this later fragment's datagram passed.
#[inline(never)]
fn first_fragment_passed(ifindex: u32, packet: &Packet) -> bool {
    FRAGMENTS.get_ptr(frag_key(ifindex, packet)).is_some()
}

#[inline(never)]
fn remember_first_fragment(ifindex: u32, packet: &Packet, policy_id: u32) {
    if packet.fragment == Fragment::First {
        let _ = FRAGMENTS.insert(frag_key(ifindex, packet), policy_id, 0);
    }
}

fn frag_key(ifindex: u32, packet: &Packet) -> FragKey {
    FragKey {
        src_addr: packet.src_addr.0,
        dst_addr: packet.dst_addr.0,
        id: packet.frag_id,
        protocol: packet.protocol,
        family: packet.family,
        _pad: [0; 2],
        ifindex,
    }
}

/// The flow's key as the pod sees it: on the egress hook the pod's end is the
/// source, on the ingress hook the destination.
fn flow_key(dir: u32, packet: &Packet) -> FlowKey {
    let port = packet.dst_port.unwrap_or(0);
    let (pod_addr, peer_addr, pod_port, peer_port) = if dir == direction::EGRESS {
        (packet.src_addr, packet.dst_addr, packet.src_port, port)
    } else {
        (packet.dst_addr, packet.src_addr, port, packet.src_port)
    };
    FlowKey { pod_addr, peer_addr, pod_port, peer_port, protocol: packet.protocol, family: packet.family, _pad: [0; 2] }
}

fn count(ctx: &TcContext, ifindex: u32, dir: u32, action: i32) {
    let v = if action == TC_ACT_SHOT { verdict::DENY } else { verdict::ALLOW };
    add_to_counter(ifindex, counter_index(dir, v), 1, i64::from(ctx.len()));
}

/// Adds to one of a pod's counters (negative amounts move a packet counted
/// as passed to denied).
pub fn add_to_counter(ifindex: u32, slot: u32, packets: i64, bytes: i64) {
    if let Some(c) = COUNTER_MAP.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it.
        let slots = unsafe { &mut (*c).slots };
        if let Some(c) = slots.get_mut(slot as usize) {
            c.packets = c.packets.wrapping_add_signed(packets);
            c.bytes = c.bytes.wrapping_add_signed(bytes);
        }
    }
}

#[inline(never)]
fn emit(ctx: &TcContext, packet: &Packet, dir: u32, d: &Decision, reply: u8) {
    send(&PolicyEvent {
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port.unwrap_or(0),
        protocol: packet.protocol,
        family: packet.family,
        direction: dir as u8,
        verdict: d.verdict(),
        tier: d.tier,
        reply,
        _pad: [0; 2],
        policy_id: d.policy_id,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        packet_len: ctx.len(),
        service_id: 0,
        _pad2: [0; 4],
    });
}

pub fn send(event: &PolicyEvent) {
    // A full ring loses the event, never the packet.
    let _ = POLICY_EVENTS.output::<PolicyEvent>(event, 0);
}
