//! `na-cli ebpf dump-maps`: one map's entries as text.
use std::fmt::Write as _;

use na_agent::inspect::dump::{Contents, MapDump};

use crate::table;

pub fn render(d: &MapDump) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Map ID : {}  Name : {}  Pod Identifier : {}", d.map_id, d.name, d.pod_id);
    s.push_str(&match &d.contents {
        Contents::Rules { prefixes } => table::prefix_rows(prefixes),
        Contents::PodTable { pods } => pods
            .iter()
            .map(|p| {
                format!(
                    "ifindex {} ({})\n{}",
                    p.ifindex,
                    p.pod_id.as_deref().unwrap_or("?"),
                    table::state_rows(&p.states)
                )
            })
            .collect(),
        Contents::Conntrack { flows } => table::flow_rows(flows),
        Contents::Fragments { datagrams } => table::fragment_rows(datagrams),
        Contents::Counters { pods } => pods
            .iter()
            .map(|p| {
                let who = if p.ifindex == 0 {
                    "veths without a pod record".to_owned()
                } else {
                    p.pod_id.clone().unwrap_or_else(|| "?".into())
                };
                format!("ifindex {} ({who})\n{}", p.ifindex, table::counters(&p.counters))
            })
            .collect(),
    });
    s
}
