//! `na-cli pod`: one pod's report as text.
use std::fmt::Write as _;

use na_agent::inspect::pod::PodReport;

use crate::table;

pub fn render(r: &PodReport) -> String {
    let mut s = String::new();
    let unknown = || "(not in the status file)".to_owned();
    let _ = writeln!(s, "Pod            : {}", r.pod.clone().unwrap_or_else(unknown));
    let _ = writeln!(s, "Pod Identifier : {}", r.pod_id);
    let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
    let _ = writeln!(s, "Addresses      : {}", if ips.is_empty() { unknown() } else { ips.join(", ") });
    let _ = writeln!(s, "Host veth      : {}", r.veth.clone().unwrap_or_else(unknown));
    if r.assumed {
        let _ = writeln!(
            s,
            "Assumed        : started before the agent knew it; judged as a pod without labels until its object arrives"
        );
    }
    for p in &r.programs {
        let _ = writeln!(s, "Program        : {} (id {})", p.direction, p.prog_id);
    }
    for d in &r.directions {
        let _ = writeln!(s, "\n{} : {} (generation {})", d.direction.to_uppercase(), d.mode, d.generation);
        if d.mode == "default-allow" {
            let _ = writeln!(s, "  no policy isolates this direction: everything passes");
            continue;
        }
        if !d.isolated_by.is_empty() {
            let _ = writeln!(s, "  isolated by {}", d.isolated_by.join(", "));
        }
        if d.audit {
            let _ = writeln!(s, "  audited: what NetworkPolicy denies passes and is reported as AUDIT");
        }
        for p in &d.policies {
            let _ = writeln!(s, "  {}", p.policy);
            for g in &p.grants {
                let action =
                    if g.action == "allow" || g.action.is_empty() { String::new() } else { format!(" {}", g.action) };
                let _ = writeln!(s, "    {} {} {}{action}", g.prefix, g.protocol, g.ports);
            }
        }
        // Where no NetworkPolicy isolates the direction, cluster rules
        // decide what they name and the rest passes.
        let rest = if d.mode == "cluster-policies" { "passes" } else { "denied" };
        for h in &d.holes {
            let _ = writeln!(s, "  except {h}: {rest}");
        }
        let _ = writeln!(s, "  anything else: {rest}");
    }
    let _ = writeln!(s, "\nCOUNTERS");
    s.push_str(&table::counters(&r.counters));
    let _ = writeln!(s, "\nTRACKED FLOWS ({})", r.flows.len());
    s.push_str(&table::flow_rows(&r.flows));
    s
}
