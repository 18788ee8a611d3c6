//! Header parsing with `bpf_skb_load_bytes`, so non-linear skbs parse the same
//! as linear ones and every read is bounds-checked by the kernel.
//!
//! What is never trusted: an IPv4 header length below 20 or a version that
//! does not match the EtherType, more IPv6 extension headers than we walk,
//! ports of a fragment after the first (they are payload), any header cut
//! short. Such packets are [`Parsed::Malformed`] or carry no port.
use aya_ebpf::programs::TcContext;
use na_common::{family, protocol};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
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

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    No,
    /// The first fragment of a datagram: ports present.
    First(u32),
    /// A later fragment: no ports.
    Later(u32),
}

/// What the datapath needs to know about one IP packet.
pub struct Packet {
    pub family: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub protocol: u8,
    pub src_port: u16,
    /// `None` when the packet carries no port the policy may trust: protocols
    /// without ports and fragments after the first.
    pub dst_port: Option<u16>,
    pub fragment: Fragment,
    /// TCP flags byte, 0 for other protocols.
    pub tcp_flags: u8,
    /// For ICMP errors: the offending packet's header, which belongs to a flow.
    pub icmp_error_at: Option<usize>,
}

pub enum Parsed {
    /// Not IP (ARP and other link traffic): never filtered.
    NotIp,
    /// Link-local IPv6 neighbour discovery: never filtered.
    Neighbour,
    /// An IP packet whose headers are truncated or inconsistent.
    Malformed,
    Ip(Packet),
}

pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(ethertype) = ctx.load::<u16>(12) else {
        return Parsed::NotIp;
    };
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_ipv4(ctx, ETH_HLEN),
        ETH_P_IPV6 => parse_ipv6(ctx, ETH_HLEN),
        _ => Parsed::NotIp,
    }
}

/// Parses the IP header embedded in an ICMP error at `off` (the packet the
/// error is about), with its ports.
pub fn parse_embedded(ctx: &TcContext, family: u8, off: usize) -> Option<Packet> {
    let parsed = if family == family::IPV4 { parse_ipv4(ctx, off) } else { parse_ipv6(ctx, off) };
    match parsed {
        Parsed::Ip(p) => Some(p),
        _ => None,
    }
}

// The two parsers return the result whole, errors included, so that the
// caller's frame (the deepest call chain's first) holds one packet, not a
// `Result` and a copy.
#[inline(never)]
fn parse_ipv4(ctx: &TcContext, off: usize) -> Parsed {
    try_ipv4(ctx, off).unwrap_or(Parsed::Malformed)
}

#[inline(never)]
fn parse_ipv6(ctx: &TcContext, off: usize) -> Parsed {
    try_ipv6(ctx, off).unwrap_or(Parsed::Malformed)
}

#[inline(always)]
fn try_ipv4(ctx: &TcContext, off: usize) -> Result<Parsed, ()> {
    let version_ihl: u8 = ctx.load(off).map_err(drop)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return Err(());
    }
    let id: u16 = u16::from_be(ctx.load(off + 4).map_err(drop)?);
    let frag: u16 = u16::from_be(ctx.load(off + 6).map_err(drop)?);
    let proto: u8 = ctx.load(off + 9).map_err(drop)?;
    let src: [u8; 4] = ctx.load(off + 12).map_err(drop)?;
    let dst: [u8; 4] = ctx.load(off + 16).map_err(drop)?;
    let mut packet = new_packet(family::IPV4, proto);
    packet.src_addr[..4].copy_from_slice(&src);
    packet.dst_addr[..4].copy_from_slice(&dst);
    packet.fragment = if frag & IPV4_FRAG_OFFSET != 0 {
        Fragment::Later(u32::from(id))
    } else if frag & IPV4_MORE_FRAGMENTS != 0 {
        Fragment::First(u32::from(id))
    } else {
        Fragment::No
    };
    // Options are skipped by honouring the header length.
    transport(ctx, &mut packet, off + header_len)?;
    Ok(Parsed::Ip(packet))
}

#[inline(always)]
fn try_ipv6(ctx: &TcContext, off: usize) -> Result<Parsed, ()> {
    let version: u8 = ctx.load(off).map_err(drop)?;
    if version >> 4 != 6 {
        return Err(());
    }
    let mut next: u8 = ctx.load(off + 6).map_err(drop)?;
    let hop_limit: u8 = ctx.load(off + 7).map_err(drop)?;
    let mut packet = new_packet(family::IPV6, 0);
    packet.src_addr = ctx.load(off + 8).map_err(drop)?;
    packet.dst_addr = ctx.load(off + 24).map_err(drop)?;
    let mut l4 = off + IPV6_HLEN;
    let mut walked = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6:
            // length in 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let hdr: [u8; 2] = ctx.load(l4).map_err(drop)?;
                next = hdr[0];
                l4 += (usize::from(hdr[1]) + 1) * 8;
            }
            // Fragment header: offset in the top 13 bits, M flag in the last.
            44 => {
                let hdr: [u8; 8] = ctx.load(l4).map_err(drop)?;
                next = hdr[0];
                let offset_flags = u16::from_be_bytes([hdr[2], hdr[3]]);
                let id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                packet.fragment = if offset_flags >> 3 != 0 {
                    Fragment::Later(id)
                } else if offset_flags & 1 != 0 {
                    Fragment::First(id)
                } else {
                    Fragment::No
                };
                l4 += 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let hdr: [u8; 2] = ctx.load(l4).map_err(drop)?;
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
    if next == protocol::ICMPV6 && packet.fragment == Fragment::No {
        let icmp_type: u8 = ctx.load(l4).map_err(drop)?;
        if (ND_FIRST..=ND_LAST).contains(&icmp_type) && hop_limit == ND_HOP_LIMIT {
            return Ok(Parsed::Neighbour);
        }
    }
    transport(ctx, &mut packet, l4)?;
    Ok(Parsed::Ip(packet))
}

/// A packet nothing is known of (family 0, no addresses), for events about
/// packets that could not be parsed.
pub fn unparsed() -> Packet {
    new_packet(0, 0)
}

fn new_packet(family: u8, protocol: u8) -> Packet {
    Packet {
        family,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        protocol,
        src_port: 0,
        dst_port: None,
        fragment: Fragment::No,
        tcp_flags: 0,
        icmp_error_at: None,
    }
}

/// Reads ports (or ICMP error framing) at `l4` unless this is a later fragment.
fn transport(ctx: &TcContext, packet: &mut Packet, l4: usize) -> Result<(), ()> {
    if matches!(packet.fragment, Fragment::Later(_)) {
        return Ok(());
    }
    match packet.protocol {
        protocol::TCP | protocol::UDP | protocol::SCTP => {
            let ports: [u16; 2] = ctx.load(l4).map_err(drop)?;
            packet.src_port = u16::from_be(ports[0]);
            packet.dst_port = Some(u16::from_be(ports[1]));
            if packet.protocol == protocol::TCP {
                packet.tcp_flags = ctx.load(l4 + 13).map_err(drop)?;
            }
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let icmp_type: u8 = ctx.load(l4).map_err(drop)?;
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
