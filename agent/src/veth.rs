//! Finding a pod's host-side veth: by the VPC CNI's naming rule, and failing
//! that by the host route the CNI installs for the pod's address.
use std::net::IpAddr;

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
    match ip {
        IpAddr::V4(_) => host_route_v4(&std::fs::read_to_string("/proc/net/route").ok()?, ip),
        IpAddr::V6(_) => host_route_v6(&std::fs::read_to_string("/proc/net/ipv6_route").ok()?, ip),
    }
}

/// `/proc/net/route`: interface, destination and mask as the kernel's
/// in-memory (network order) words printed in hex.
fn host_route_v4(table: &str, ip: IpAddr) -> Option<String> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(|w| IpAddr::from(w.to_le_bytes()));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, mask) = (f.first()?, word(f.get(1)?)?, f.get(7)?);
        (dest == ip && *mask == "FFFFFFFF").then(|| iface.to_string())
    })
}

/// `/proc/net/ipv6_route`: destination, prefix length, ..., interface last.
fn host_route_v6(table: &str, ip: IpAddr) -> Option<String> {
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let dest = u128::from_str_radix(f.first()?, 16).ok().map(|d| IpAddr::from(d.to_be_bytes()))?;
        (dest == ip && *f.get(1)? == "80").then(|| f.last().map(|i| i.to_string())).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_from_proc_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  cali7f3\t030012C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        assert_eq!(host_route_v4(v4, "198.18.0.3".parse().unwrap()).as_deref(), Some("cali7f3"));
        assert_eq!(host_route_v4(v4, "198.18.0.4".parse().unwrap()), None);
        assert_eq!(host_route_v4(v4, "0.0.0.0".parse().unwrap()), None, "only host routes");
        let v6 = "fd180000000000000000000000000003 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001  lxc9\n\
                  fd180000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001  eth0\n";
        assert_eq!(host_route_v6(v6, "fd18::3".parse().unwrap()).as_deref(), Some("lxc9"));
        assert_eq!(host_route_v6(v6, "fd18::".parse().unwrap()), None, "a /64 is not a pod route");
    }

    #[test]
    fn matches_vpc_cni_rule() {
        // Computed independently: python3 -c "import hashlib; print(hashlib.sha1(b'default.nginx').hexdigest()[:11])"
        assert_eq!(host_veth_name("eni", "default", "nginx"), "enic440f455693");
        assert_eq!(host_veth_name("vlan", "default", "nginx"), "vlanc440f455693");
        assert!(host_veth_name("eni", "kube-system", "coredns-5d78c9869d-x2x4k").len() <= 15, "fits IFNAMSIZ");
    }
}
