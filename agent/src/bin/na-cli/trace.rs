//! `na-cli trace`: its protocol argument, and the verdict as text.
use std::fmt::Write as _;

use na_agent::{
    decode,
    inspect::{
        InspectError,
        trace::{Side, Trace},
    },
};

use crate::table;

/// Parses `tcp/80`, `udp/53`, `sctp/9000`, `icmp`, `icmpv6` or a protocol number.
pub fn parse_protocol(spec: &str) -> Result<(u8, Option<u16>), InspectError> {
    let bad = |why: String| InspectError::BadArgument(format!("{spec:?}: {why} (try tcp/80, udp/53 or icmp)"));
    let (name, port) = match spec.split_once('/') {
        Some((name, port)) => (name, Some(port)),
        None => (spec, None),
    };
    let protocol = decode::protocol_number(name).ok_or_else(|| bad(format!("unknown protocol {name:?}")))?;
    match (na_common::protocol::has_ports(protocol), port) {
        (true, Some(port)) => {
            Ok((protocol, Some(port.parse().map_err(|_| bad(format!("{port:?} is not a port number")))?)))
        }
        (true, None) => Err(bad(format!("{name} needs a destination port"))),
        (false, Some(_)) => Err(bad(format!("{name} has no ports"))),
        (false, None) => Ok((protocol, None)),
    }
}

pub fn render(t: &Trace) -> String {
    let mut s = String::new();
    let what = match t.port {
        Some(port) => format!("{}/{port}", t.protocol),
        None => t.protocol.clone(),
    };
    let _ = writeln!(s, "{} -> {} {what} (the first packet of a new flow)", t.src, t.dst);
    if let Some(service) = &t.service {
        let _ =
            writeln!(s, "  Service {service}: judged on the endpoint kube-proxy picks ({} known)", t.endpoints.len());
        for e in &t.endpoints {
            let _ = writeln!(s, "  to endpoint {}: {}", table::socket(e.dst, e.port.unwrap_or(0)), verdict(e.allowed));
            render_sides(&mut s, e, "    ");
        }
        let reached = t.endpoints.iter().filter(|e| e.allowed).count();
        let _ = writeln!(s, "Verdict: {} ({reached} of {} endpoints reached)", verdict(t.allowed), t.endpoints.len());
        return s;
    }
    render_sides(&mut s, t, "  ");
    let _ = writeln!(s, "Verdict: {}", verdict(t.allowed));
    s
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "ALLOW" } else { "DENY" }
}

fn render_sides(s: &mut String, t: &Trace, indent: &str) {
    for side in &t.sides {
        let verdict = if side.audited { "AUDIT" } else { verdict(side.allowed) };
        let _ = writeln!(s, "{indent}{:<7} of {:<24} {verdict:<5}  {}", side.direction, side.pod, explain(side));
        for f in &side.tracked {
            let _ = writeln!(
                s,
                "{indent}        tracked already: {} -> {} ({}, idle {:.1}s): passes until the policy changes",
                table::socket(f.src, f.src_port),
                table::socket(f.dst, f.dst_port),
                f.policy,
                f.idle_secs
            );
        }
    }
}

fn explain(side: &Side) -> String {
    let prefix = side.matched_prefix.map_or_else(|| "no prefix holds the peer".to_owned(), |p| format!("prefix {p}"));
    let isolated = side.isolated_by.join(", ");
    match (side.mode.as_str(), side.allowed) {
        ("default-allow", _) => "no policy isolates this direction".into(),
        _ if side.audited => {
            format!("no rule admits it ({prefix}); isolated by {isolated}, audited: passes, reported as AUDIT")
        }
        ("default-deny", false) => format!("isolated before its policies are known (strict mode); {prefix}"),
        ("cluster-policies", true) if side.policy == "-" => {
            format!("no cluster rule decides it and no NetworkPolicy isolates this direction ({prefix})")
        }
        (_, true) => format!("by {} ({prefix})", side.policy),
        (_, false) if side.policy != "-" => format!("by {} ({prefix})", side.policy),
        (_, false) if side.isolated_by.is_empty() => format!("no rule admits it ({prefix})"),
        (_, false) => format!("no rule admits it ({prefix}); isolated by {}", side.isolated_by.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use na_common::protocol;

    use super::*;

    #[test]
    fn a_trace_through_a_service_shows_each_endpoint() {
        let side = |allowed| Side {
            direction: "egress".into(),
            pod: "x/a".into(),
            mode: "policies-applied".into(),
            allowed,
            audited: false,
            tier: "rule".into(),
            policy: if allowed { "x/a-to-b egress[0]".into() } else { "-".into() },
            matched_prefix: None,
            isolated_by: vec!["x/a-to-b".into()],
            tracked: Vec::new(),
        };
        let to = |dst: &str, allowed| Trace {
            src: "198.18.0.2".parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: "TCP".into(),
            port: Some(80),
            sides: vec![side(allowed)],
            allowed,
            service: None,
            endpoints: Vec::new(),
        };
        let t = Trace {
            dst: "10.96.0.10".parse().unwrap(),
            port: Some(8080),
            sides: Vec::new(),
            service: Some("x/db".into()),
            endpoints: vec![to("198.18.0.3", true), to("198.18.0.4", false)],
            ..to("198.18.0.3", true)
        };
        let text = render(&t);
        assert!(text.contains("Service x/db: judged on the endpoint kube-proxy picks (2 known)"), "{text}");
        assert!(text.contains("  to endpoint 198.18.0.3:80: ALLOW\n    egress  of x/a"), "{text}");
        assert!(text.contains("  to endpoint 198.18.0.4:80: DENY"), "{text}");
        assert!(text.contains("no rule admits it (no prefix holds the peer); isolated by x/a-to-b"), "{text}");
        assert!(text.ends_with("Verdict: ALLOW (1 of 2 endpoints reached)\n"), "{text}");
    }

    #[test]
    fn protocol_specs() {
        assert_eq!(parse_protocol("tcp/80").unwrap(), (protocol::TCP, Some(80)));
        assert_eq!(parse_protocol("SCTP/9000").unwrap(), (protocol::SCTP, Some(9000)));
        assert_eq!(parse_protocol("icmp").unwrap(), (protocol::ICMP, None));
        assert_eq!(parse_protocol("47").unwrap(), (47, None));
        for bad in ["tcp", "tcp/http", "icmp/3", "foo/1", "tcp/70000"] {
            assert!(matches!(parse_protocol(bad), Err(InspectError::BadArgument(_))), "{bad}");
        }
    }
}
