//! Tables and separators shared by the commands' text output.
use std::{fmt::Write as _, net::IpAddr};

use na_agent::{
    datapath::{PodCounters, Totals},
    inspect::read::{FlowRow, FragmentRow, PrefixRow, StateRow},
};

/// The separator line between records, as the AWS tool prints it.
pub const SEPARATOR: &str = "========================================================================================";

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn prefix_rows(rows: &[PrefixRow]) -> String {
    let mut cells = Vec::new();
    for r in rows {
        let set = format!("{}{}", r.set, if r.active { " (active)" } else { "" });
        if r.rules.is_empty() {
            cells.push(vec![
                set.clone(),
                r.prefix.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no rule (except hole)".into(),
            ]);
        }
        for rule in &r.rules {
            cells.push(vec![
                set.clone(),
                r.prefix.to_string(),
                rule.protocol.clone(),
                rule.ports.clone(),
                rule.action.clone(),
                rule.policy.clone(),
            ]);
        }
    }
    table(&["SET", "PREFIX", "PROTOCOL", "PORTS", "ACTION", "POLICY"], &cells)
}

pub fn state_rows(rows: &[StateRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mode = if r.audit { format!("{} (audit)", r.mode) } else { r.mode.clone() };
            vec![r.direction.clone(), mode, r.active_set.to_string(), r.generation.to_string()]
        })
        .collect();
    table(&["DIRECTION", "MODE", "ACTIVE SET", "GENERATION"], &cells)
}

pub fn flow_rows(rows: &[FlowRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.direction.clone(),
                r.protocol.clone(),
                socket(r.src, r.src_port),
                socket(r.dst, r.dst_port),
                r.state.clone(),
                format!("{:.1}s", r.idle_secs),
                format!("{}s", r.timeout_secs),
                r.policy.clone(),
            ]
        })
        .collect();
    table(&["DIRECTION", "PROTOCOL", "SOURCE", "DESTINATION", "STATE", "IDLE", "TIMEOUT", "POLICY"], &cells)
}

pub fn fragment_rows(rows: &[FragmentRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r.protocol.clone(), r.src.to_string(), r.dst.to_string(), r.id.to_string(), r.policy.clone()])
        .collect();
    table(&["PROTOCOL", "SOURCE", "DESTINATION", "IP ID", "POLICY"], &cells)
}

pub fn counters(c: &PodCounters) -> String {
    let row = |dir: &str, verdict: &str, t: &Totals| {
        vec![dir.into(), verdict.into(), t.packets.to_string(), t.bytes.to_string()]
    };
    table(
        &["DIRECTION", "VERDICT", "PACKETS", "BYTES"],
        &[
            row("ingress", "allowed", &c.ingress_allowed),
            row("ingress", "denied", &c.ingress_denied),
            row("egress", "allowed", &c.egress_allowed),
            row("egress", "denied", &c.egress_denied),
            row("ingress", "audited (would deny)", &c.ingress_audited),
            row("egress", "audited (would deny)", &c.egress_audited),
        ],
    )
}

/// `addr:port`, bracketed for IPv6.
pub fn socket(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["w".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nw    22\n");
    }
}
