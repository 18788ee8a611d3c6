//! The kernel ABI of the NetworkPolicy datapath.
//!
//! Everything the eBPF programs and the agent exchange through maps lives here,
//! defined once with `#[repr(C)]` and explicit padding so both sides agree on
//! every byte. Each module covers one feature of the datapath.
#![no_std]

pub mod conntrack;
pub mod decision;
pub mod events;
pub mod names;
pub mod node;
pub mod pod_state;
pub mod policy;
pub mod service;

/// Address families as stored in map keys and event records.
pub mod family {
    /// IPv4; the address occupies the first 4 bytes of a 16-byte field, the rest is zero.
    pub const IPV4: u8 = 4;
    /// IPv6; the address fills the 16-byte field.
    pub const IPV6: u8 = 6;
}

/// An address in the ABI's 16-byte form: IPv6 whole, IPv4 in the first four
/// bytes and zeros after. Aligned to 8 so the programs copy and compare it in
/// two words: a plain byte array is copied a byte at a time (32 instructions
/// per copy, a third of an established packet's time) and compared by a
/// `memcmp` call.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    #[inline(always)]
    fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes, aligned to 8.
        unsafe { *(self as *const Self).cast::<[u64; 2]>() }
    }

    /// An IPv4 address in this form, built from whole words: byte-wise,
    /// the BPF target zeroes the other 12 bytes in a call to a byte loop
    /// (some 50 instructions).
    #[inline(always)]
    pub fn from_ipv4(octets: [u8; 4]) -> Self {
        let words = [u32::from_ne_bytes(octets), 0, 0, 0];
        // SAFETY: 16 bytes either way, and any bytes are a valid `Addr`.
        unsafe { core::mem::transmute::<[u32; 4], Self>(words) }
    }

    /// `ip`'s family and its address in this form.
    pub fn of_ip(ip: core::net::IpAddr) -> (u8, Self) {
        match ip {
            core::net::IpAddr::V4(v4) => (family::IPV4, Self::from_ipv4(v4.octets())),
            core::net::IpAddr::V6(v6) => (family::IPV6, Self(v6.octets())),
        }
    }

    /// The unspecified address (zero), built from two words.
    #[inline(always)]
    pub fn zero() -> Self {
        // SAFETY: as in `from_ipv4`.
        unsafe { core::mem::transmute::<[u64; 2], Self>([0, 0]) }
    }

    #[inline(always)]
    pub fn is_zero(&self) -> bool {
        let w = self.words();
        w[0] == 0 && w[1] == 0
    }
}

impl PartialEq for Addr {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1]
    }
}

impl Eq for Addr {}

impl core::hash::Hash for Addr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Which side of the pod a program or map entry judges.
pub mod direction {
    /// Traffic into the pod (`handle_ingress`, on the host veth's egress hook).
    pub const INGRESS: u32 = 0;
    /// Traffic out of the pod (`handle_egress`, on the host veth's ingress hook).
    pub const EGRESS: u32 = 1;
    /// How many directions there are; the size of per-direction arrays.
    pub const COUNT: u32 = 2;
}

/// IP protocol numbers the datapath parses ports for.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const IPV6_NO_NEXT: u8 = 59;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;

    /// Whether packets of `protocol` carry ports the datapath reads (and
    /// policies may name).
    #[inline(always)]
    pub const fn has_ports(protocol: u8) -> bool {
        matches!(protocol, TCP | UDP | SCTP)
    }
}

/// Implements `aya::Pod` for ABI types when the `user` feature is on.
#[cfg(feature = "user")]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: every ABI type is repr(C), built only from integers and
            // integer arrays, with all padding spelled out as fields.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
#[cfg(feature = "user")]
user_pod!(
    Addr,
    policy::LpmKeyData,
    policy::PortRule,
    policy::RuleSet,
    pod_state::PodState,
    pod_state::PodRecord,
    pod_state::PodCounterSlots,
    conntrack::FlowKey,
    conntrack::FlowState,
    conntrack::FragKey,
    events::Counter,
    events::PolicyEvent,
    service::ServiceKey,
    service::ServiceEntry,
    service::DnatPending,
    service::DnatHook,
);

#[cfg(test)]
mod layout_tests;
