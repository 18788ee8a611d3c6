//! `na-cli events`: one verdict event per line.
use na_agent::flowlog::FlowLine;

use crate::table;

/// One event in a line of text.
pub fn render(l: &FlowLine) -> String {
    let pod = match (&l.namespace, &l.pod) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => "?".into(),
    };
    let src = table::socket(l.src_ip, l.src_port);
    let dst = table::socket(l.dst_ip, l.dst_port);
    let policy = match (&l.policy, l.rule) {
        (Some(p), Some(r)) => na_agent::decode::rule_label(p, &l.direction, r),
        (Some(p), None) => p.clone(),
        _ if !l.isolated_by.is_empty() => format!("isolated by {}", l.isolated_by.join(",")),
        _ => "-".into(),
    };
    format!("{} {pod} {} {src} -> {dst} {} {} {} {policy}", l.time, l.direction, l.protocol, l.verdict, l.tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_rule_that_allowed_or_the_policies_that_isolate() {
        let mut l: FlowLine = serde_json::from_str(
            r#"{"time":"1.000","node":"n","namespace":"x","pod":"a","direction":"ingress","src_ip":"10.0.0.2",
                "src_port":40000,"dst_ip":"10.0.0.1","dst_port":80,"protocol":"TCP","verdict":"DENY",
                "tier":"NETWORK_POLICY","policy":null,"rule":null,"isolated_by":["x/deny","x/web"]}"#,
        )
        .unwrap();
        assert_eq!(
            render(&l),
            "1.000 x/a ingress 10.0.0.2:40000 -> 10.0.0.1:80 TCP DENY NETWORK_POLICY isolated by x/deny,x/web"
        );
        (l.verdict, l.policy, l.rule, l.isolated_by) = ("ACCEPT".into(), Some("x/web".into()), Some(0), Vec::new());
        assert!(render(&l).ends_with("TCP ACCEPT NETWORK_POLICY x/web ingress[0]"), "{}", render(&l));
    }
}
