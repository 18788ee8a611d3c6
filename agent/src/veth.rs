//! Finding a pod's host-side veth: by the VPC CNI's naming rule, and failing
//! that by the host route the CNI installs for the pod's address (one
//! rtnetlink request, answered from the kernel's FIB).
use std::net::IpAddr;

use rtnetlink::packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
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
    // No route at all comes back as an error.
    let Some(RouteNetlinkMessage::NewRoute(route)) =
        crate::rtnl::request(RouteNetlinkMessage::GetRoute(message), false).ok()?.pop()
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
/// does not know yet). One route dump per family from the kernel.
pub fn routed_through(iface: &str) -> Vec<IpAddr> {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(iface) else { return Vec::new() };
    [(AddressFamily::Inet, 32), (AddressFamily::Inet6, 128)]
        .into_iter()
        .flat_map(|(family, host_len)| host_routes(family, host_len, ifindex).unwrap_or_default())
        .filter(|ip| is_pod_address(*ip))
        .collect()
}

/// Destinations of this namespace's unicast host routes (prefix length
/// `host_len`) through `ifindex`. The node's own addresses have host routes
/// too, of type local: not these.
fn host_routes(family: AddressFamily, host_len: u8, ifindex: u32) -> Option<Vec<IpAddr>> {
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    let routes = crate::rtnl::request(RouteNetlinkMessage::GetRoute(message), true).ok()?;
    let through = |route: &RouteMessage| {
        route.header.destination_prefix_length == host_len
            && route.header.kind == RouteType::Unicast
            && route.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == ifindex))
    };
    Some(
        routes
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(route) if through(route) => {
                    route.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect(),
    )
}

/// Unicast, and not link-local: what a pod is given.
fn is_pod_address(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    !(ip.is_multicast() || ip.is_unspecified() || ip.is_loopback() || link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_vpc_cni_rule() {
        // Computed independently: python3 -c "import hashlib; print(hashlib.sha1(b'default.nginx').hexdigest()[:11])"
        assert_eq!(host_veth_name("eni", "default", "nginx"), "enic440f455693");
        assert_eq!(host_veth_name("vlan", "default", "nginx"), "vlanc440f455693");
        assert!(host_veth_name("eni", "kube-system", "coredns-5d78c9869d-x2x4k").len() <= 15, "fits IFNAMSIZ");
    }
}
