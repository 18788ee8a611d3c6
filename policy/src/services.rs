//! Service frontends: the addresses and ports the node's kube-proxy
//! translates to endpoints. A pod's connection to one is judged by its
//! egress policy on the endpoint DNAT picks (the datapath's DNAT hook), so
//! the compiler's rules need nothing of Services: the datapath only needs to
//! know which destinations to leave to that hook.
//!
//! A frontend is each of a Service's ClusterIPs (both families), its
//! `externalIPs` and its load balancer's ingress IPs, on each Service port,
//! and the node's own addresses on each NodePort. Headless Services and
//! `ExternalName` Services have none. A Service with a field that cannot be
//! read is reported and left out: its addresses are then judged as the
//! addresses they are, which no pod selector allows (closed, not open).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;
use thiserror::Error;

use crate::cluster::{ObjectRef, protocol_number};

/// One address and port kube-proxy translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub protocol: u8,
    pub port: u16,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("Service {service}: {field}: {reason}")]
pub struct ServiceError {
    pub service: ObjectRef,
    /// The field's path, as `kubectl explain` names it.
    pub field: String,
    pub reason: String,
}

/// A Service's frontends, apart from NodePorts: those depend on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFrontends {
    /// Every address on every port.
    pub addrs: Vec<IpAddr>,
    /// (protocol, port).
    pub ports: Vec<(u8, u16)>,
    /// (protocol, node port).
    pub node_ports: Vec<(u8, u16)>,
}

impl ServiceFrontends {
    pub fn parse(svc: &Service) -> Result<(ObjectRef, Self), ServiceError> {
        let key = ObjectRef::of(&svc.metadata).ok_or_else(|| ServiceError {
            service: ObjectRef::new(svc.metadata.namespace.clone().unwrap_or_default(), ""),
            field: "metadata.name".into(),
            reason: "missing".into(),
        })?;
        let err = |field: String, reason: String| ServiceError { service: key.clone(), field, reason };
        let Some(spec) = &svc.spec else { return Ok((key, Self::default())) };
        if spec.type_.as_deref() == Some("ExternalName") {
            return Ok((key, Self::default()));
        }
        let mut addrs = Vec::new();
        let cluster_ips = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => {
                ips.iter().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)).collect()
            }
            (_, Some(ip)) => vec![("spec.clusterIP".to_owned(), ip)],
            _ => Vec::new(),
        };
        for (field, ip) in cluster_ips {
            // Headless: no virtual address at all.
            if ip == "None" || ip.is_empty() {
                continue;
            }
            addrs.push(ip.parse().map_err(|_| err(field, format!("{ip:?} is not an IP address")))?);
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            addrs.push(
                ip.parse()
                    .map_err(|_| err(format!("spec.externalIPs[{i}]"), format!("{ip:?} is not an IP address")))?,
            );
        }
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            // A hostname-only ingress is resolved outside the cluster: its
            // traffic does not come back through this node's kube-proxy.
            if let Some(ip) = &entry.ip {
                addrs.push(ip.parse().map_err(|_| {
                    err(format!("status.loadBalancer.ingress[{i}].ip"), format!("{ip:?} is not an IP address"))
                })?);
            }
        }
        let mut ports = Vec::new();
        let mut node_ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let name = p.protocol.as_deref().unwrap_or("TCP");
            let protocol = protocol_number(name)
                .ok_or_else(|| err(format!("spec.ports[{i}].protocol"), format!("unknown protocol {name:?}")))?;
            let port = u16::try_from(p.port)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| err(format!("spec.ports[{i}].port"), format!("{} is not a port", p.port)))?;
            ports.push((protocol, port));
            if let Some(node_port) = p.node_port {
                let node_port = u16::try_from(node_port)
                    .ok()
                    .filter(|&port| port != 0)
                    .ok_or_else(|| err(format!("spec.ports[{i}].nodePort"), format!("{node_port} is not a port")))?;
                node_ports.push((protocol, node_port));
            }
        }
        Ok((key, Self { addrs, ports, node_ports }))
    }
}

/// The node's view of every Service, with a stable number for each (flow
/// logs name a Service by it).
#[derive(Debug, Default)]
pub struct Services {
    services: BTreeMap<ObjectRef, (u32, ServiceFrontends)>,
    /// Each number's Service (flow logs look up every line's).
    names: BTreeMap<u32, ObjectRef>,
    next_id: u32,
    invalid: BTreeMap<ObjectRef, ServiceError>,
}

impl Services {
    /// Adds or replaces a Service. An unreadable one is left out (and
    /// reported by [`Services::invalid`]) until it is fixed.
    pub fn upsert(&mut self, svc: &Service) -> Result<(), ServiceError> {
        match ServiceFrontends::parse(svc) {
            Ok((key, frontends)) => {
                self.invalid.remove(&key);
                let id = self.services.get(&key).map(|(id, _)| *id).unwrap_or_else(|| {
                    self.next_id += 1;
                    self.next_id
                });
                self.names.insert(id, key.clone());
                self.services.insert(key, (id, frontends));
                Ok(())
            }
            Err(e) => {
                self.remove(&e.service);
                self.invalid.insert(e.service.clone(), e.clone());
                Err(e)
            }
        }
    }

    pub fn remove(&mut self, key: &ObjectRef) {
        if let Some((id, _)) = self.services.remove(key) {
            self.names.remove(&id);
        }
        self.invalid.remove(key);
    }

    pub fn invalid(&self) -> impl Iterator<Item = &ServiceError> {
        self.invalid.values()
    }

    /// The Service a number stands for.
    pub fn name_of(&self, id: u32) -> Option<&ObjectRef> {
        self.names.get(&id)
    }

    /// Every frontend, NodePorts on `node_ips`, with its Service's number.
    /// Two Services claiming one frontend (which the API server refuses for
    /// ClusterIPs) keep the first by name.
    pub fn frontends(&self, node_ips: &[IpAddr]) -> BTreeMap<Frontend, u32> {
        let mut out = BTreeMap::new();
        let node_ips: BTreeSet<&IpAddr> = node_ips.iter().collect();
        for (id, f) in self.services.values() {
            let ports =
                f.addrs.iter().flat_map(|addr| f.ports.iter().map(move |(protocol, port)| (*addr, *protocol, *port)));
            let node_ports = node_ips
                .iter()
                .flat_map(|addr| f.node_ports.iter().map(move |(protocol, port)| (**addr, *protocol, *port)));
            for (addr, protocol, port) in ports.chain(node_ports) {
                out.entry(Frontend { addr, protocol, port }).or_insert(*id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use na_common::protocol::{TCP, UDP};

    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn db() -> Service {
        service(serde_json::json!({
            "metadata": {"namespace": "x", "name": "db"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd96::10"],
                "externalIPs": ["203.0.113.7"],
                "ports": [
                    {"port": 80, "targetPort": "http", "nodePort": 30080},
                    {"port": 53, "protocol": "UDP", "targetPort": 5353}
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}, {"hostname": "lb.example"}]}}
        }))
    }

    const NODE: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1))];

    #[test]
    fn every_address_on_every_port_and_node_ports_on_the_node() {
        let mut services = Services::default();
        services.upsert(&db()).unwrap();
        let got: BTreeSet<(String, u8, u16)> =
            services.frontends(&NODE).keys().map(|f| (f.addr.to_string(), f.protocol, f.port)).collect();
        let mut want = BTreeSet::new();
        for addr in ["10.96.0.10", "fd96::10", "203.0.113.7", "198.51.100.9"] {
            want.insert((addr.to_owned(), TCP, 80));
            want.insert((addr.to_owned(), UDP, 53));
        }
        want.insert(("192.0.2.1".to_owned(), TCP, 30080));
        assert_eq!(got, want);
        assert!(services.frontends(&NODE).values().all(|&id| services.name_of(id) == Some(&ObjectRef::new("x", "db"))));
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontends() {
        let mut services = Services::default();
        let headless = serde_json::json!({"metadata": {"namespace": "x", "name": "h"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}});
        let external = serde_json::json!({"metadata": {"namespace": "x", "name": "e"},
            "spec": {"type": "ExternalName", "externalName": "db.example", "ports": [{"port": 80}]}});
        services.upsert(&service(headless)).unwrap();
        services.upsert(&service(external)).unwrap();
        assert!(services.frontends(&NODE).is_empty());
    }

    #[test]
    fn an_unreadable_service_is_named_with_its_field_and_left_out_until_fixed() {
        let mut services = Services::default();
        services.upsert(&db()).unwrap();
        let mut bad = db();
        bad.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.10".into(), "not-an-ip".into()]);
        let e = services.upsert(&bad).unwrap_err();
        assert_eq!(e.to_string(), "Service x/db: spec.clusterIPs[1]: \"not-an-ip\" is not an IP address");
        assert!(services.frontends(&NODE).is_empty());
        assert_eq!(services.invalid().count(), 1);
        let mut sctp = db();
        sctp.spec.as_mut().unwrap().ports.as_mut().unwrap()[1].protocol = Some("ICMP".into());
        assert_eq!(services.upsert(&sctp).unwrap_err().field, "spec.ports[1].protocol");
        services.upsert(&db()).unwrap();
        assert_eq!(services.invalid().count(), 0);
        assert_eq!(services.frontends(&NODE).len(), 9);
    }

    #[test]
    fn numbers_stay_with_their_service() {
        let mut services = Services::default();
        services.upsert(&db()).unwrap();
        let mut other = db();
        other.metadata.name = Some("other".into());
        other.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.11".into()]);
        other.spec.as_mut().unwrap().external_ips = None;
        other.status = None;
        services.upsert(&other).unwrap();
        let id_of = |s: &Services, name: &str| {
            s.frontends(&NODE).iter().find(|(f, _)| f.addr.to_string() == name).map(|(_, id)| *id).unwrap()
        };
        let before = id_of(&services, "10.96.0.11");
        services.upsert(&db()).unwrap();
        services.remove(&ObjectRef::new("x", "db"));
        assert_eq!(id_of(&services, "10.96.0.11"), before);
        assert_eq!(services.name_of(before), Some(&ObjectRef::new("x", "other")));
        assert!(services.frontends(&NODE).values().all(|&id| id == before), "x/db's number went with it");
        assert_eq!(services.name_of(0), None);
    }
}
