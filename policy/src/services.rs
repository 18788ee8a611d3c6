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

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
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
    pub ports: Vec<ServicePort>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (empty for a Service's only port): its endpoints'
    /// ports carry the same name.
    pub name: String,
    pub protocol: u8,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// Where one port of a Service leads: an endpoint's address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// What one EndpointSlice says of its Service's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slice {
    service: ObjectRef,
    /// Ready endpoints' addresses (kube-proxy sends new flows to those).
    addrs: Vec<IpAddr>,
    /// (name, protocol, port).
    ports: Vec<(String, u8, u16)>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let name = p.protocol.as_deref().unwrap_or("TCP");
            let protocol = protocol_number(name)
                .ok_or_else(|| err(format!("spec.ports[{i}].protocol"), format!("unknown protocol {name:?}")))?;
            let port = u16::try_from(p.port)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| err(format!("spec.ports[{i}].port"), format!("{} is not a port", p.port)))?;
            let node_port =
                p.node_port
                    .map(|node_port| {
                        u16::try_from(node_port).ok().filter(|&port| port != 0).ok_or_else(|| {
                            err(format!("spec.ports[{i}].nodePort"), format!("{node_port} is not a port"))
                        })
                    })
                    .transpose()?;
            ports.push(ServicePort { name: p.name.clone().unwrap_or_default(), protocol, port, node_port });
        }
        Ok((key, Self { addrs, ports }))
    }
}

/// The node's view of every Service, with a stable number for each (flow
/// logs name a Service by it).
#[derive(Debug, Default)]
pub struct Services {
    services: BTreeMap<ObjectRef, (u32, ServiceFrontends)>,
    slices: BTreeMap<ObjectRef, Slice>,
    /// Bumped by every change, so a writer of what is derived from this can
    /// tell whether it is stale.
    version: u64,
    /// Each number's Service (flow logs look up every line's).
    names: BTreeMap<u32, ObjectRef>,
    next_id: u32,
    invalid: BTreeMap<ObjectRef, ServiceError>,
}

impl Services {
    /// Adds or replaces a Service. An unreadable one is left out (and
    /// reported by [`Services::invalid`]) until it is fixed.
    pub fn upsert(&mut self, svc: &Service) -> Result<(), ServiceError> {
        self.version += 1;
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
        self.version += 1;
        if let Some((id, _)) = self.services.remove(key) {
            self.names.remove(&id);
        }
        self.invalid.remove(key);
    }

    /// Adds or replaces an EndpointSlice. One naming no Service gives no
    /// endpoints, nor do addresses that cannot be read: endpoints only
    /// explain verdicts (`na-cli trace`), they never decide one.
    pub fn upsert_slice(&mut self, slice: &EndpointSlice) {
        let Some(key) = ObjectRef::of(&slice.metadata) else { return };
        self.version += 1;
        let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        let Some(service) = service else {
            self.slices.remove(&key);
            return;
        };
        let ready = |e: &&k8s_openapi::api::discovery::v1::Endpoint| {
            e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
        };
        let addrs =
            slice.endpoints.iter().filter(ready).flat_map(|e| &e.addresses).filter_map(|a| a.parse().ok()).collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = protocol_number(p.protocol.as_deref().unwrap_or("TCP"))?;
                Some((p.name.clone().unwrap_or_default(), protocol, u16::try_from(p.port?).ok()?))
            })
            .collect();
        let service = ObjectRef::new(key.namespace.clone(), service.clone());
        self.slices.insert(key, Slice { service, addrs, ports });
    }

    pub fn remove_slice(&mut self, key: &ObjectRef) {
        self.version += 1;
        self.slices.remove(key);
    }

    /// Changes so far (see the field).
    pub fn version(&self) -> u64 {
        self.version
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
        let node_ips = node_ips.iter().collect();
        let mut out = BTreeMap::new();
        for (frontend, _, id, _) in self.each_frontend(&node_ips) {
            out.entry(frontend).or_insert(id);
        }
        out
    }

    /// Every frontend (as [`Services::frontends`] has them), with its
    /// Service and where its EndpointSlices say it leads, in the frontend's
    /// family.
    pub fn routes(&self, node_ips: &[IpAddr]) -> BTreeMap<Frontend, (&ObjectRef, Vec<Endpoint>)> {
        let node_ips = node_ips.iter().collect();
        let mut slices: BTreeMap<&ObjectRef, Vec<&Slice>> = BTreeMap::new();
        for slice in self.slices.values() {
            slices.entry(&slice.service).or_default().push(slice);
        }
        let mut out = BTreeMap::new();
        for (frontend, key, _, port) in self.each_frontend(&node_ips) {
            out.entry(frontend).or_insert_with(|| {
                let of_service = slices.get(key).map(Vec::as_slice).unwrap_or_default();
                (key, endpoints(of_service, port, frontend.addr.is_ipv4()))
            });
        }
        out
    }

    /// Every Service's frontends in name order: each address on each port,
    /// and each node address on each NodePort.
    fn each_frontend<'a, 'n>(
        &'a self,
        node_ips: &'n BTreeSet<&'n IpAddr>,
    ) -> impl Iterator<Item = (Frontend, &'a ObjectRef, u32, &'a ServicePort)> + use<'a, 'n> {
        self.services.iter().flat_map(move |(key, (id, f))| {
            let on_addrs = f.addrs.iter().flat_map(move |addr| f.ports.iter().map(move |p| (*addr, p.port, p)));
            let on_node = node_ips
                .iter()
                .flat_map(move |addr| f.ports.iter().filter_map(move |p| Some((**addr, p.node_port?, p))));
            on_addrs
                .chain(on_node)
                .map(move |(addr, port, p)| (Frontend { addr, protocol: p.protocol, port }, key, *id, p))
        })
    }
}

/// Where `port` of a Service leads by its EndpointSlices `slices`: the ready
/// endpoints of one family on the slice's port of the same name.
fn endpoints(slices: &[&Slice], port: &ServicePort, ipv4: bool) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = slices
        .iter()
        .flat_map(|s| {
            let target = s.ports.iter().find(|(name, protocol, _)| *name == port.name && *protocol == port.protocol);
            target.into_iter().flat_map(|(_, _, target)| {
                s.addrs.iter().filter(|a| a.is_ipv4() == ipv4).map(|&addr| Endpoint { addr, port: *target })
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
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

#[cfg(test)]
mod endpoint_tests {
    use na_common::protocol::TCP;

    use super::*;

    #[test]
    fn a_frontend_resolves_to_its_services_ready_endpoints_on_the_named_target_port() {
        let mut services = Services::default();
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "db"},
            "spec": {"clusterIPs": ["10.96.0.10", "fd96::10"], "ports": [
                {"name": "web", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "admin", "port": 81, "targetPort": 9000}]}
        }))
        .unwrap();
        services.upsert(&svc).unwrap();
        let slice = |name: &str, addrs: &[&str], ready: bool| -> EndpointSlice {
            let endpoints: Vec<serde_json::Value> =
                addrs.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": ready}})).collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": name, "labels": {SERVICE_NAME_LABEL: "db"}},
                "addressType": if addrs[0].contains(':') { "IPv6" } else { "IPv4" },
                "endpoints": endpoints,
                "ports": [{"name": "web", "port": 8080}, {"name": "admin", "port": 9000}]
            }))
            .unwrap()
        };
        services.upsert_slice(&slice("db-a", &["198.18.0.3", "198.18.0.4"], true));
        services.upsert_slice(&slice("db-b", &["198.18.0.9"], false));
        services.upsert_slice(&slice("db-c", &["fd18::3"], true));
        let node: [IpAddr; 1] = ["192.0.2.1".parse().unwrap()];
        let at = |addr: &str, port| Frontend { addr: addr.parse().unwrap(), protocol: TCP, port };
        let ep = |addr: &str, port| Endpoint { addr: addr.parse().unwrap(), port };
        let routes = services.routes(&node);
        let (name, endpoints) = &routes[&at("10.96.0.10", 80)];
        assert_eq!(*name, &ObjectRef::new("x", "db"));
        assert_eq!(endpoints, &[ep("198.18.0.3", 8080), ep("198.18.0.4", 8080)], "ready ones, IPv4 only");
        assert_eq!(routes[&at("fd96::10", 81)].1, [ep("fd18::3", 9000)]);
        assert_eq!(routes[&at("192.0.2.1", 30080)].1.len(), 2, "the NodePort");
        assert!(!routes.contains_key(&at("10.96.0.10", 82)));
        assert_eq!(routes.keys().collect::<Vec<_>>(), services.frontends(&node).keys().collect::<Vec<_>>());
        let before = services.version();
        services.remove_slice(&ObjectRef::new("x", "db-a"));
        assert!(services.version() > before);
        assert!(services.routes(&node)[&at("10.96.0.10", 80)].1.is_empty());
    }
}
