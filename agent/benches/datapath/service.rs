//! Per-packet cost through a Service: the client reaches the server at its
//! pod address (direct) or at a ClusterIP that kube-proxy's iptables rules
//! in the node namespace translate to it (Service), with nothing attached
//! and with our programs (the client's egress admits the server; the DNAT
//! hook linked). Each round measures the four configurations; each ratio is
//! to the same round's run with nothing attached and the same addressing,
//! so kube-proxy's own cost is in both terms. Wall-clock ratios on a shared
//! machine are noisy; the kernel's own account is not: our programs'
//! nanoseconds per connection (1-byte transaction on a new connection),
//! direct and through the Service (`handle_*` plus `judge_dnat`, which runs
//! for every packet entering the node's PREROUTING and judges the new
//! flows to Services), in the same round.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result, ensure};
use aya::{
    programs::links::{FdLink, PinnedLink},
    sys::{Stats, enable_stats},
};
use na_agent::datapath::{Frontend, ServiceTable};
use na_harness::{
    Probe, Proto,
    kube_proxy::{KubeProxy, ServicePort},
};

use crate::{
    Figures,
    per_packet::{
        CRR_PORT, ClientServer, RR_PORT, SINK_PORT, client_server, connections, measure, ours_program_ids,
        rules_with_others, run_stats,
    },
    stats,
    support::Env,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub fn run(full: bool) -> Result<Figures> {
    let ClientServer { mut env, client, server, sink, rounds, window } = client_server(full)?;
    let ports = [RR_PORT, SINK_PORT, CRR_PORT];
    let proxy = KubeProxy {
        services: ports
            .iter()
            .map(|&port| ServicePort {
                name: format!("x/server:{port}"),
                proto: Proto::Tcp,
                addrs: vec![VIP.into()],
                port,
                node_port: None,
                endpoints: vec![(server.into(), port)],
            })
            .collect(),
        ..KubeProxy::default()
    };
    proxy.sync(env.node.netns())?;
    let dp = env.dp.clone();
    env.node.netns().run(|| dp.install_dnat_hook())??;
    let frontends: BTreeMap<Frontend, u32> = ports
        .iter()
        .map(|&port| (Frontend { addr: VIP.into(), protocol: na_common::protocol::TCP, port }, 1))
        .collect();
    ServiceTable::open(env.dp.layout())?.sync(&frontends)?;
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let ours = ours_program_ids(&env)?;
    let hook = hook_program_id(&env)?;
    let rules = rules_with_others(client.into(), server.into(), 1);
    // config -> per-round (rr, crr, throughput) ratios to nothing attached
    let mut ratios: BTreeMap<&str, Vec<[f64; 3]>> = BTreeMap::new();
    let mut hook_ns = Vec::new();
    // per round: (direct, through the Service) ns of our programs per connection
    let mut per_connection = Vec::new();
    for round in 0..rounds {
        eprintln!("bench: service round {}/{rounds}", round + 1);
        let none_direct = measure(&env, &sink, server.into(), window, &[])?.rates;
        let none_service = measure(&env, &sink, VIP.into(), window, &[])?.rates;
        env.attach("x/server", &rules.server)?;
        env.attach("x/client", &rules.client)?;
        let enforced = !Probe::tcp(81).run(env.pod("x/client"), IpAddr::V4(server))?;
        let direct = measure(&env, &sink, server.into(), window, &ours);
        let service = measure(&env, &sink, VIP.into(), window, &[hook]);
        let all: Vec<u32> = ours.iter().copied().chain([hook]).collect();
        let cost = |to: IpAddr| -> Result<f64> {
            let before = run_stats(&all)?;
            let (done, _) = connections(&env, to, window)?;
            Ok((run_stats(&all)?.0 - before.0) as f64 / done.max(1) as f64)
        };
        let costs = cost(server.into()).and_then(|d| Ok((d, cost(VIP.into())?)));
        env.detach("x/server")?;
        env.detach("x/client")?;
        ensure!(enforced, "the programs did not enforce (TCP/81 reached the server)");
        let ratio = |m: [f64; 3], none: [f64; 3]| [m[0] / none[0], m[1] / none[1], m[2] / none[2]];
        ratios.entry("direct_ours").or_default().push(ratio(direct?.rates, none_direct));
        let service = service?;
        ratios.entry("service_ours").or_default().push(ratio(service.rates, none_service));
        ratios.entry("service_none").or_default().push(ratio(none_service, none_direct));
        hook_ns.extend(service.ns_per_packet.map(|(_, new_flows)| new_flows));
        per_connection.push(costs?);
    }
    let mut f = Figures::new();
    stats::insert_ratios(&mut f, ratios.iter().map(|(name, r)| (*name, r.as_slice())));
    let direct: Vec<f64> = per_connection.iter().map(|c| c.0).collect();
    let service: Vec<f64> = per_connection.iter().map(|c| c.1).collect();
    let ratio: Vec<f64> = per_connection.iter().map(|c| c.1 / c.0).collect();
    stats::insert_spread(&mut f, "ns_per_connection_direct", &direct, 0);
    stats::insert_spread(&mut f, "ns_per_connection_service", &service, 0);
    stats::insert_spread(&mut f, "ns_per_connection_service_ratio", &ratio, 3);
    stats::insert_spread(&mut f, "ns_per_run_dnat_hook", &hook_ns, 0);
    Ok(f)
}

/// Kernel id of `judge_dnat`, through its IPv4 link's pin.
fn hook_program_id(env: &Env) -> Result<u32> {
    let links = std::fs::read_dir(env.dp.layout().links_dir())?;
    let pin = links
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("judge_dnat_ipv4")))
        .context("no DNAT hook link pinned")?;
    Ok(FdLink::from(PinnedLink::from_pin(pin)?).info()?.program_id())
}
