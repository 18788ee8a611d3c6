//! Finding a pod's host-side veth the way the VPC CNI names it.
use sha1::{Digest, Sha1};

/// Prefix the VPC CNI gives host-side veths of ordinary pods.
pub const DEFAULT_PREFIX: &str = "eni";

/// `<prefix>` + the first 11 hex digits of sha1("<namespace>.<pod>").
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}"));
    format!("{prefix}{}", &hex::encode(digest)[..11])
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
