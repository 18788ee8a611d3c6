//! `service_addrs`: the node's Service frontends, which `handle_egress`
//! leaves to the DNAT hook (see `na_common::service`).
use std::{collections::BTreeMap, net::IpAddr};

pub use na_policy::Frontend;

use aya::maps::{HashMap, MapData};
use na_common::{
    Addr, family,
    names::MAP_SERVICE_ADDRS,
    service::{MAX_SERVICE_ADDRS, ServiceEntry, ServiceKey},
};

use super::rules::{RulesError, open_pinned, sync_table};
use crate::bpffs::PinLayout;

/// `frontend` as the table's key.
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    let mut addr = Addr::default();
    let family = match frontend.addr {
        IpAddr::V4(v4) => {
            addr.0[..4].copy_from_slice(&v4.octets());
            family::IPV4
        }
        IpAddr::V6(v6) => {
            addr.0 = v6.octets();
            family::IPV6
        }
    };
    ServiceKey::new(addr, frontend.port, frontend.protocol, family)
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("{count} Service frontends; the node's table holds {MAX_SERVICE_ADDRS}")]
    TooMany { count: usize },
    #[error(transparent)]
    Map(#[from] RulesError),
}

/// The pinned table of frontends.
pub struct ServiceTable(HashMap<MapData, ServiceKey, ServiceEntry>);

impl ServiceTable {
    pub fn open(layout: &PinLayout) -> Result<Self, RulesError> {
        open_pinned(&layout.global_map(MAP_SERVICE_ADDRS)).map(Self)
    }

    /// Makes the table hold exactly `frontends`: the entries no longer
    /// wanted go first (room for new ones in a full table), then new and
    /// changed ones. Returns how many entries changed.
    pub fn sync(&mut self, frontends: &BTreeMap<Frontend, u32>) -> Result<usize, ServicesError> {
        if frontends.len() > MAX_SERVICE_ADDRS as usize {
            return Err(ServicesError::TooMany { count: frontends.len() });
        }
        let wanted = frontends.iter().map(|(f, &service_id)| (service_key(f), ServiceEntry { service_id })).collect();
        Ok(sync_table(&mut self.0, MAP_SERVICE_ADDRS, &wanted)?)
    }
}
