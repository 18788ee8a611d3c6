//! The identity of one pod's pinned state.
//!
//! Unlike the AWS agent's identifier (pod name minus its last segment, shared
//! by every replica), ours is unique per pod: namespace and full name. `_` can
//! appear in neither, so `<namespace>_<name>_<object>` pin names split back
//! unambiguously.
use std::fmt;

use sha1::{Digest, Sha1};

/// Longest identifier kept verbatim; leaves room for the longest object
/// suffix within the 255-byte limit of a bpffs file name.
const MAX_LEN: usize = 200;
/// Hex digits of the hash that replaces the tail of over-long names.
const HASH_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(String);

impl PodId {
    pub fn new(namespace: &str, name: &str) -> Self {
        let id = format!("{namespace}_{name}");
        if id.len() <= MAX_LEN {
            return Self(id);
        }
        // Names are ASCII (DNS-1123), so byte slicing stays on char boundaries.
        let digest = hex::encode(Sha1::digest(format!("{namespace}/{name}")));
        let keep = MAX_LEN - HASH_LEN - 1;
        Self(format!("{}-{}", &id[..keep], &digest[..HASH_LEN]))
    }

    /// An id read back from a pin name.
    pub fn from_raw(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pin file name of `object` (a program or map name) of this pod.
    pub fn pin_name(&self, object: &str) -> String {
        format!("{}_{object}", self.0)
    }

    /// Splits a pin file name into the pod id and the object name.
    pub fn parse_pin_name(file_name: &str) -> Option<(Self, &str)> {
        let (namespace, rest) = file_name.split_once('_')?;
        let (name, object) = rest.split_once('_')?;
        if namespace.is_empty() || name.is_empty() || object.is_empty() {
            return None;
        }
        Some((Self(format!("{namespace}_{name}")), object))
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_per_pod_not_per_workload() {
        let a = PodId::new("default", "web-7d9f8-abcde");
        let b = PodId::new("default", "web-7d9f8-fghij");
        assert_ne!(a, b);
        assert_ne!(PodId::new("a", "b-c"), PodId::new("a-b", "c"));
    }

    #[test]
    fn pin_names_round_trip() {
        let id = PodId::new("kube-system", "coredns-5d78c9869d-x2x4k.v1");
        for object in ["handle_ingress", "ingress_map", "conntrack_map"] {
            let pin = id.pin_name(object);
            assert_eq!(PodId::parse_pin_name(&pin), Some((id.clone(), object)));
        }
        assert_eq!(PodId::parse_pin_name("global_policy_events").map(|(_, o)| o), Some("events"));
        assert_eq!(PodId::parse_pin_name("nounderscore"), None);
    }

    #[test]
    fn long_names_are_hashed_and_still_distinct() {
        let long = "p".repeat(253);
        let a = PodId::new("ns", &long);
        let b = PodId::new("ns", &format!("{}q", &long[..252]));
        assert!(a.as_str().len() <= MAX_LEN);
        assert_ne!(a, b);
        assert!(a.pin_name("handle_ingress").len() <= 255);
        let pin = a.pin_name("egress_map");
        assert_eq!(PodId::parse_pin_name(&pin), Some((a.clone(), "egress_map")));
    }
}
