//! Finding a pod's host-side veth: by the VPC CNI's naming rule, and failing
//! that by the host route the CNI installs for the pod's address (one
//! rtnetlink request, answered from the kernel's FIB).
use std::net::IpAddr;

use rtnetlink::{
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};
use sha1::{Digest, Sha1};

/// Prefix the VPC CNI gives host-side veths of ordinary pods.
pub const DEFAULT_PREFIX: &str = "eni";

/// `<prefix>` + the first 11 hex digits of sha1("<namespace>.<pod>").
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}"));
    format!("{prefix}{}", &hex::encode(digest)[..11])
}

/// The interface of the host route (/32 or /128) to `ip` in this network
/// namespace, as CNIs install one per pod.
pub fn by_route(ip: IpAddr) -> Option<String> {
    let name = nix::net::if_::if_indextoname(host_route_ifindex(ip)?).ok()?.into_string().ok()?;
    // A missing index comes back as an empty name.
    Some(name).filter(|n| !n.is_empty())
}

/// The ifindex of the host route to `ip` in this network namespace, if the
/// route the kernel matches for it is one. One request, answered from the
/// FIB: `RTM_F_FIB_MATCH` returns the matching entry itself, whose prefix
/// length tells a pod's host route from the subnet or default route that
/// would carry the address otherwise.
pub fn host_route_ifindex(ip: IpAddr) -> Option<u32> {
    let (family, host_len) = match ip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    message.header.destination_prefix_length = host_len;
    message.header.flags = RouteFlags::FibMatch;
    message.attributes.push(RouteAttribute::Destination(RouteAddress::from(ip)));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
    request.header.flags = NLM_F_REQUEST;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&SocketAddr::new(0, 0)).ok()?;
    socket.send(&bytes, 0).ok()?;
    let (reply, _) = socket.recv_from_full().ok()?;
    // No route at all comes back as an error message.
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).ok()?.payload
    else {
        return None;
    };
    if route.header.destination_prefix_length != host_len || route.header.kind != RouteType::Unicast {
        return None;
    }
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// The addresses host routes lead to through `iface`: a pod's, found from
/// its veth when nothing else says them (a VPC CNI call for a pod the agent
/// does not know yet).
pub fn routed_through(iface: &str) -> Vec<IpAddr> {
    // The kernel's own host routes (the local table's, shown in the IPv6
    // table) lead to this node's addresses, never to a pod's.
    let own = own_addresses();
    [false, true]
        .into_iter()
        .flat_map(host_routes)
        .filter(|(i, ip)| i == iface && is_pod_address(*ip) && !own.contains(ip))
        .map(|(_, ip)| ip)
        .collect()
}

fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| {
            let a = a.address?;
            a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// Unicast, and not link-local: what a pod is given.
fn is_pod_address(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    !(ip.is_multicast() || ip.is_unspecified() || ip.is_loopback() || link_local)
}

/// This namespace's host routes of one family: (interface, destination).
fn host_routes(v6: bool) -> Vec<(String, IpAddr)> {
    let file = if v6 { "/proc/net/ipv6_route" } else { "/proc/net/route" };
    let table = std::fs::read_to_string(file).unwrap_or_default();
    if v6 { host_routes_v6(&table) } else { host_routes_v4(&table) }
}

/// `/proc/net/route`: interface, destination and mask as the kernel's
/// in-memory (network order) words printed in hex.
fn host_routes_v4(table: &str) -> Vec<(String, IpAddr)> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(|w| IpAddr::from(w.to_le_bytes()));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask) = (f.first()?, word(f.get(1)?)?, f.get(7)?);
            (*mask == "FFFFFFFF").then(|| (iface.to_string(), dest))
        })
        .collect()
}

/// `/proc/net/ipv6_route`: destination, prefix length, ..., interface last.
fn host_routes_v6(table: &str) -> Vec<(String, IpAddr)> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u128::from_str_radix(f.first()?, 16).ok().map(|d| IpAddr::from(d.to_be_bytes()))?;
            (*f.get(1)? == "80").then(|| Some((f.last()?.to_string(), dest))).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_from_proc_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  cali7f3\t030012C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(host_routes_v4(v4), [("cali7f3".to_string(), ip("198.18.0.3"))], "only host routes");
        let v6 = "fd180000000000000000000000000003 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001  lxc9\n\
                  fd180000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001  eth0\n";
        assert_eq!(host_routes_v6(v6), [("lxc9".to_string(), ip("fd18::3"))], "a /64 is not a pod route");
    }

    #[test]
    fn matches_vpc_cni_rule() {
        // Computed independently: python3 -c "import hashlib; print(hashlib.sha1(b'default.nginx').hexdigest()[:11])"
        assert_eq!(host_veth_name("eni", "default", "nginx"), "enic440f455693");
        assert_eq!(host_veth_name("vlan", "default", "nginx"), "vlanc440f455693");
        assert!(host_veth_name("eni", "kube-system", "coredns-5d78c9869d-x2x4k").len() <= 15, "fits IFNAMSIZ");
    }
}
