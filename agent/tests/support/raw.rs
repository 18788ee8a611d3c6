//! Crafted packets sent from inside a pod, as any container with NET_RAW
//! can: raw IP sockets with a header of the sender's choosing, and packet
//! sockets for whole frames.
use std::net::Ipv4Addr;

use na_harness::Pod;

/// Sends one UDP datagram from inside `from` with a source address of the
/// sender's choosing.
pub fn send_udp_from(from: &Pod, src: Ipv4Addr, dst: Ipv4Addr, port: u16) {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&13u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no UDP checksum (allowed in IPv4)
    udp.extend_from_slice(b"hello");
    send_ipv4_from(from, &ipv4(src, dst, libc::IPPROTO_UDP as u8, &udp));
}

/// Sends one TCP segment with `flags` and sequence number `seq` (and no
/// payload) from inside `from`, outside any socket of its kernel.
pub fn send_tcp_from(from: &Pod, (src, sport): (Ipv4Addr, u16), (dst, dport): (Ipv4Addr, u16), flags: u8, seq: u32) {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes()); // acknowledgment number
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    // The pseudo-header, then the segment (RFC 793 3.1).
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let sum = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    send_ipv4_from(from, &ipv4(src, dst, libc::IPPROTO_TCP as u8, &tcp));
}

/// Sends one raw Ethernet frame of `ethertype` out of `from`'s eth0, to the
/// broadcast address.
pub fn send_frame_from(from: &Pod, ethertype: u16, payload: &[u8]) {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    send_raw(from, libc::AF_PACKET, 0, &frame, || {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = nix::net::if_::if_nametoindex("eth0").unwrap() as i32;
        addr.sll_halen = 6;
        addr
    });
}

/// An IPv4 packet around `payload`, with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let len = (packet.len() + payload.len()) as u16;
    packet[2..4].copy_from_slice(&len.to_be_bytes());
    let sum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// RFC 1071's checksum of `bytes`.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends a whole IPv4 packet (header included) from inside `from`.
fn send_ipv4_from(from: &Pod, packet: &[u8]) {
    let dst = [packet[16], packet[17], packet[18], packet[19]];
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst) },
        sin_zero: [0; 8],
    };
    send_raw(from, libc::AF_INET, libc::IPPROTO_RAW, packet, || to);
}

/// Sends `bytes` from inside `from` on a raw socket of `domain` and
/// `protocol`, to the address `to` makes (inside the pod's namespace).
fn send_raw<A>(from: &Pod, domain: i32, protocol: i32, bytes: &[u8], to: impl FnOnce() -> A + Send) {
    from.netns()
        .run(|| {
            let addr = to();
            // SAFETY: plain socket calls on a buffer and address that outlive them.
            unsafe {
                let fd = libc::socket(domain, libc::SOCK_RAW, protocol);
                assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                let sent = libc::sendto(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<A>() as u32,
                );
                libc::close(fd);
                assert_eq!(sent, bytes.len() as isize, "sendto: {}", std::io::Error::last_os_error());
            }
        })
        .unwrap();
}
