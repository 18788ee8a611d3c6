//! Header parsing with `bpf_skb_load_bytes`, so non-linear skbs parse the same
//! as linear ones and every read is bounds-checked by the kernel. Each fixed
//! header is read in one call: a call per field cost more than a third of an
//! established packet's time. (Reading the linear head directly where it
//! holds the header saved another ~15% but, branching at every read, made
//! the verifier follow ten times the paths.)
//!
//! What is never trusted: an IPv4 header length below 20 or a version that
//! does not match the EtherType, more IPv6 extension headers than we walk,
//! ports of a fragment after the first (they are payload), any header cut
//! short. Such packets are [`Parsed::Malformed`] or carry no port.
use aya_ebpf::programs::TcContext;
use na_common::{Addr, family, protocol};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_FRAG_OFFSET: u16 = 0x1fff;
/// Extension headers walked before giving up on a packet.
const MAX_EXT_HEADERS: usize = 8;
/// Neighbour discovery: router solicitation .. redirect.
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;
/// ND messages are only valid with this hop limit (RFC 4861), so they cannot
/// have been routed from elsewhere.
const ND_HOP_LIMIT: u8 = 255;
/// Multicast listener discovery: query, report, done, and MLDv2 report. Sent
/// with hop limit 1 (RFC 2710, 3810), so never routed either; every IPv6
/// interface sends reports for its solicited-node groups.
const MLD_TYPES: [u8; 4] = [130, 131, 132, 143];
const MLD_HOP_LIMIT: u8 = 1;

/// Whether a packet is a fragment, and which. The datagram's identification
/// is kept beside it ([`Packet::frag_id`]), not in it: an enum whose `No`
/// leaves the id undefined lets the compiler store any register there, a
/// pointer included, which the verifier refuses.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fragment {
    /// A whole datagram.
    No,
    /// The first fragment of a datagram: ports present.
    First,
    /// A later fragment: no ports.
    Later,
}

/// What the datapath needs to know about one IP packet.
pub struct Packet {
    /// An ICMPv6 neighbour discovery message with hop limit 255, or a
    /// multicast listener discovery one with hop limit 1 (so not
    /// routed): exempt from policy between the pod and its host only.
    pub neighbour: bool,
    pub family: u8,
    pub src_addr: Addr,
    pub dst_addr: Addr,
    pub protocol: u8,
    pub src_port: u16,
    /// `None` when the packet carries no port the policy may trust: protocols
    /// without ports and fragments after the first.
    pub dst_port: Option<u16>,
    pub fragment: Fragment,
    /// IPv4's 16-bit or IPv6's 32-bit identification of a fragment's datagram.
    pub frag_id: u32,
    /// TCP flags byte, 0 for other protocols.
    pub tcp_flags: u8,
    /// For ICMP errors: the offending packet's header, which belongs to a flow.
    pub icmp_error_at: Option<usize>,
}

pub enum Parsed {
    /// ARP: never filtered.
    Arp,
    /// Neither IP nor ARP: VLAN-tagged, PPPoE, MPLS, anything unknown.
    OtherLink,
    /// An IP packet whose headers are truncated or inconsistent.
    Malformed,
    Ip(Packet),
}

pub fn parse(ctx: &TcContext) -> Parsed {
    // The kernel strips an 802.1Q/802.1ad tag into the skb before TC sees the
    // frame: the tag shows there, not in the bytes, which hold the inner packet.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Parsed::OtherLink;
    }
    let Ok(ethertype) = load::<u16>(ctx, 12) else {
        return Parsed::OtherLink;
    };
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_ipv4(ctx, ETH_HLEN, Depth::Whole),
        ETH_P_IPV6 => parse_ipv6(ctx, ETH_HLEN, Depth::Whole),
        ETH_P_ARP => Parsed::Arp,
        _ => Parsed::OtherLink,
    }
}

/// Parses the IP header quoted in an ICMP error at `off` (the packet the
/// error is about), with its ports.
pub fn parse_embedded(ctx: &TcContext, family: u8, off: usize) -> Option<Packet> {
    let parsed =
        if family == family::IPV4 { parse_ipv4(ctx, off, Depth::Quote) } else { parse_ipv6(ctx, off, Depth::Quote) };
    match parsed {
        Parsed::Ip(p) => Some(p),
        _ => None,
    }
}

/// How much of the transport header there is to read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// A packet on the wire: its whole transport header.
    Whole,
    /// A packet quoted in an ICMP error: RFC 792 promises only the first 8
    /// bytes after the IP header, so only the ports are read.
    Quote,
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    ctx.load(off).map_err(drop)
}

// The two parsers return the result whole, errors included, so that the
// caller's frame (the deepest call chain's first) holds one packet, not a
// `Result` and a copy.
#[inline(never)]
fn parse_ipv4(ctx: &TcContext, off: usize, depth: Depth) -> Parsed {
    try_ipv4(ctx, off, depth).unwrap_or(Parsed::Malformed)
}

#[inline(never)]
fn parse_ipv6(ctx: &TcContext, off: usize, depth: Depth) -> Parsed {
    try_ipv6(ctx, off, depth).unwrap_or(Parsed::Malformed)
}

#[inline(always)]
fn try_ipv4(ctx: &TcContext, off: usize, depth: Depth) -> Result<Parsed, ()> {
    // The fixed header in one read: every read is a call.
    let h: [u8; IPV4_MIN_HLEN] = load(ctx, off)?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return Err(());
    }
    let id = u16::from_be_bytes([h[4], h[5]]);
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let mut packet = new_packet(family::IPV4, h[9]);
    packet.src_addr = Addr::from_ipv4([h[12], h[13], h[14], h[15]]);
    packet.dst_addr = Addr::from_ipv4([h[16], h[17], h[18], h[19]]);
    packet.frag_id = u32::from(id);
    packet.fragment = if frag & IPV4_FRAG_OFFSET != 0 {
        Fragment::Later
    } else if frag & IPV4_MORE_FRAGMENTS != 0 {
        Fragment::First
    } else {
        Fragment::No
    };
    // Options are skipped by honouring the header length.
    transport(ctx, &mut packet, off + header_len, depth)?;
    Ok(Parsed::Ip(packet))
}

#[inline(always)]
fn try_ipv6(ctx: &TcContext, off: usize, depth: Depth) -> Result<Parsed, ()> {
    let h: Ipv6Header = load(ctx, off)?;
    if h.first[0] >> 4 != 6 {
        return Err(());
    }
    let mut next = h.first[6];
    let hop_limit = h.first[7];
    let mut packet = new_packet(family::IPV6, 0);
    packet.src_addr = h.src;
    packet.dst_addr = h.dst;
    let mut l4 = off + IPV6_HLEN;
    let mut walked = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6:
            // length in 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let hdr: [u8; 2] = load(ctx, l4)?;
                next = hdr[0];
                l4 += (usize::from(hdr[1]) + 1) * 8;
            }
            // Fragment header: offset in the top 13 bits, M flag in the last.
            44 => {
                let hdr: [u8; 8] = load(ctx, l4)?;
                next = hdr[0];
                let offset_flags = u16::from_be_bytes([hdr[2], hdr[3]]);
                packet.frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                packet.fragment = if offset_flags >> 3 != 0 {
                    Fragment::Later
                } else if offset_flags & 1 != 0 {
                    Fragment::First
                } else {
                    Fragment::No
                };
                l4 += 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let hdr: [u8; 2] = load(ctx, l4)?;
                next = hdr[0];
                l4 += (usize::from(hdr[1]) + 2) * 4;
            }
            _ => {
                walked = true;
                break;
            }
        }
    }
    if !walked {
        return Err(());
    }
    packet.protocol = next;
    if next == protocol::ICMPV6 && packet.fragment == Fragment::No && depth == Depth::Whole {
        let icmp_type: u8 = load(ctx, l4)?;
        packet.neighbour = ((ND_FIRST..=ND_LAST).contains(&icmp_type) && hop_limit == ND_HOP_LIMIT)
            || (MLD_TYPES.contains(&icmp_type) && hop_limit == MLD_HOP_LIMIT);
    }
    transport(ctx, &mut packet, l4, depth)?;
    Ok(Parsed::Ip(packet))
}

/// A packet nothing is known of (family 0, no addresses), for events about
/// packets that could not be parsed.
pub fn unparsed() -> Packet {
    new_packet(0, 0)
}

fn new_packet(family: u8, protocol: u8) -> Packet {
    Packet {
        neighbour: false,
        family,
        src_addr: Addr::zero(),
        dst_addr: Addr::zero(),
        protocol,
        src_port: 0,
        dst_port: None,
        fragment: Fragment::No,
        frag_id: 0,
        tcp_flags: 0,
        icmp_error_at: None,
    }
}

/// The fixed IPv6 header, laid out so its addresses are word-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Ipv6Header {
    /// Version to hop limit.
    first: [u8; 8],
    src: Addr,
    dst: Addr,
}

/// Reads ports (or ICMP error framing) at `l4` unless this is a later fragment.
fn transport(ctx: &TcContext, packet: &mut Packet, l4: usize, depth: Depth) -> Result<(), ()> {
    if packet.fragment == Fragment::Later {
        return Ok(());
    }
    match packet.protocol {
        protocol::TCP if depth == Depth::Whole => {
            // Ports to flags in one read.
            let t: [u8; 14] = load(ctx, l4)?;
            packet.src_port = u16::from_be_bytes([t[0], t[1]]);
            packet.dst_port = Some(u16::from_be_bytes([t[2], t[3]]));
            packet.tcp_flags = t[13];
        }
        protocol::TCP | protocol::UDP | protocol::SCTP => {
            let ports: [u16; 2] = load(ctx, l4)?;
            packet.src_port = u16::from_be(ports[0]);
            packet.dst_port = Some(u16::from_be(ports[1]));
        }
        protocol::ICMP | protocol::ICMPV6 if depth == Depth::Whole => {
            let icmp_type: u8 = load(ctx, l4)?;
            let is_error = if packet.protocol == protocol::ICMP {
                // Destination unreachable, source quench, time exceeded, parameter problem.
                matches!(icmp_type, 3 | 4 | 11 | 12)
            } else {
                // Destination unreachable, packet too big, time exceeded, parameter problem.
                (1..=4).contains(&icmp_type)
            };
            if is_error {
                packet.icmp_error_at = Some(l4 + 8);
            }
        }
        _ => {}
    }
    Ok(())
}
