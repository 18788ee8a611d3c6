//! docs/operations.md describes, in its tables, every metric the agent exposes and every
//! field of a flow-log line: one added in the code and not in the docs
//! fails here.
use std::{collections::BTreeSet, path::Path};

use na_agent::{bpffs::PinLayout, flowlog::FlowLine, telemetry::Telemetry};

fn operations_md() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md")).unwrap()
}

/// The names in backticks in the first column of the table under the
/// heading starting with `heading`.
fn table_names(heading: &str) -> BTreeSet<String> {
    let doc = operations_md();
    let section = doc.split("\n## ").find(|s| s.starts_with(heading)).unwrap_or_else(|| panic!("no section {heading}"));
    let first_cells = section.lines().filter_map(|l| l.strip_prefix("| ")?.split(" |").next());
    first_cells.flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>()).collect()
}

fn missing<'a>(described: &BTreeSet<String>, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    names.into_iter().filter(|n| !described.contains(*n)).collect()
}

#[test]
fn every_metric_is_described() {
    let text = Telemetry::new(PinLayout::new("/nonexistent")).render();
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    assert!(names.len() >= 8, "the metrics' TYPE lines: {text}");
    assert_eq!(
        missing(&table_names("Metrics"), names),
        Vec::<&str>::new(),
        "metrics docs/operations.md does not describe"
    );
}

#[test]
fn every_flow_log_field_is_described() {
    // Every field set, so that none is skipped when serialised.
    let line = FlowLine {
        time: "0.000".into(),
        node: "n".into(),
        namespace: Some("x".into()),
        pod: Some("a".into()),
        direction: "ingress".into(),
        src_ip: [192, 0, 2, 1].into(),
        src_port: 1,
        dst_ip: [192, 0, 2, 2].into(),
        dst_port: 2,
        protocol: "TCP".into(),
        verdict: "ACCEPT".into(),
        tier: "NETWORK_POLICY".into(),
        policy: Some("x/p".into()),
        rule: Some(0),
        isolated_by: vec!["x/p".into()],
        service: Some("x/s".into()),
    };
    let value = serde_json::to_value(&line).unwrap();
    let fields: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        missing(&table_names("Flow logs"), fields),
        Vec::<&str>::new(),
        "flow-log fields docs/operations.md does not describe"
    );
}
