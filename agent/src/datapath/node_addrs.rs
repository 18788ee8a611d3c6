//! `node_addrs`: the node's own IPv6 addresses, with which neighbour
//! discovery passes as it does with the host's link-local address (see
//! `na_common::node`).
use std::{collections::BTreeSet, net::Ipv6Addr};

use aya::maps::{HashMap, MapData};
use na_common::{Addr, names::MAP_NODE_ADDRS};

use super::rules::{RulesError, open_pinned, sync_table};
use crate::bpffs::PinLayout;

/// The pinned table of the node's addresses.
pub struct NodeAddrTable(HashMap<MapData, Addr, u8>);

impl NodeAddrTable {
    pub fn open(layout: &PinLayout) -> Result<Self, RulesError> {
        open_pinned(&layout.global_map(MAP_NODE_ADDRS)).map(Self)
    }

    /// Makes the table hold exactly `addrs`; returns how many entries changed.
    pub fn sync(&mut self, addrs: &BTreeSet<Ipv6Addr>) -> Result<usize, RulesError> {
        let wanted = addrs.iter().map(|a| (Addr(a.octets()), 1)).collect();
        sync_table(&mut self.0, MAP_NODE_ADDRS, &wanted)
    }

    /// The addresses the table holds.
    pub fn addrs(&self) -> Result<BTreeSet<Ipv6Addr>, RulesError> {
        self.0
            .keys()
            .map(|k| k.map(|a| Ipv6Addr::from(a.0)))
            .collect::<Result<_, _>>()
            .map_err(super::rules::map_err("read", MAP_NODE_ADDRS))
    }
}
