//! Header parsing with `bpf_skb_load_bytes`, so non-linear skbs parse the same
//! as linear ones and every read is bounds-checked by the kernel.
use aya_ebpf::programs::TcContext;
use na_common::{family, protocol};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = 20;
/// Fragment offset bits of the IPv4 flags/offset field.
const IPV4_FRAG_OFFSET: u16 = 0x1fff;

/// What the datapath needs to know about one IP packet.
pub struct Packet {
    pub family: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub protocol: u8,
    pub src_port: u16,
    /// `None` when the packet carries no port the policy may trust: protocols
    /// without ports and non-first fragments (whose "ports" are payload).
    pub dst_port: Option<u16>,
}

pub enum Parsed {
    /// Not IP (ARP and other link traffic): never filtered.
    NotIp,
    /// An IP packet whose headers are truncated or inconsistent.
    Malformed,
    Ip(Packet),
}

pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(ethertype) = ctx.load::<u16>(12) else {
        return Parsed::NotIp;
    };
    match u16::from_be(ethertype) {
        ETH_P_IP => parse_ipv4(ctx, ETH_HLEN).unwrap_or(Parsed::Malformed),
        _ => Parsed::NotIp,
    }
}

fn parse_ipv4(ctx: &TcContext, off: usize) -> Result<Parsed, ()> {
    let version_ihl: u8 = ctx.load(off).map_err(|_| ())?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return Err(());
    }
    let frag: u16 = u16::from_be(ctx.load(off + 6).map_err(|_| ())?);
    let proto: u8 = ctx.load(off + 9).map_err(|_| ())?;
    let src: [u8; 4] = ctx.load(off + 12).map_err(|_| ())?;
    let dst: [u8; 4] = ctx.load(off + 16).map_err(|_| ())?;
    let mut packet = Packet {
        family: family::IPV4,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        protocol: proto,
        src_port: 0,
        dst_port: None,
    };
    packet.src_addr[..4].copy_from_slice(&src);
    packet.dst_addr[..4].copy_from_slice(&dst);
    let first_fragment = frag & IPV4_FRAG_OFFSET == 0;
    if first_fragment && has_ports(proto) {
        // Options are skipped by honouring the header length.
        let ports: [u16; 2] = ctx.load(off + header_len).map_err(|_| ())?;
        packet.src_port = u16::from_be(ports[0]);
        packet.dst_port = Some(u16::from_be(ports[1]));
    }
    Ok(Parsed::Ip(packet))
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, protocol::TCP | protocol::UDP | protocol::SCTP)
}
