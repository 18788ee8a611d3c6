//! Truth tables as upstream prints them (`.` allowed, `X` denied) and the
//! Markdown report.
use std::{fmt::Write, time::Duration};

use na_harness::{render_table, verdict_cells};

/// `[from][to]`; `None` where nothing is judged.
pub type Table = Vec<Vec<Option<bool>>>;

/// Expected, observed, and their comparison (`.` same, `X` different), rows
/// are sources and columns destinations.
pub fn mismatch(names: &[String], expected: &Table, observed: &Table) -> String {
    let comparison: Vec<Vec<char>> = expected
        .iter()
        .zip(observed)
        .map(|(e, o)| e.iter().zip(o).map(|(e, o)| if e == o { '.' } else { 'X' }).collect())
        .collect();
    format!(
        "expected (rows: from, columns: to):\n{}observed:\n{}comparison (X where they differ):\n{}",
        render_table(names, &verdict_cells(expected)),
        render_table(names, &verdict_cells(observed)),
        render_table(names, &comparison)
    )
}

/// Cells whose observation differs from the expectation, as (from, to).
pub fn differences(expected: &Table, observed: &Table) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, (e, o)) in expected.iter().zip(observed).enumerate() {
        for (j, (e, o)) in e.iter().zip(o).enumerate() {
            if e != o {
                out.push((i, j));
            }
        }
    }
    out
}

/// The pods (at most two) in the most differing cells, as source or
/// destination: a pod whose whole row or column differs is one the datapath
/// got wrong, rather than one rule.
pub fn most_involved(names: &[String], cells: &[(usize, usize)]) -> Vec<String> {
    let mut counts = vec![0usize; names.len()];
    for &(i, j) in cells {
        counts[i] += 1;
        counts[j] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(0);
    names.iter().zip(&counts).filter(|(_, c)| most > 0 && **c == most).map(|(n, _)| n.clone()).take(2).collect()
}

/// What happened to one case in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

pub struct Run {
    pub case: String,
    /// `hand-written` for the case files; the family (in Cyclonus' sense) of
    /// a generated case.
    pub group: String,
    pub family: String,
    /// How probes addressed their destination ([`crate::model::Via`]).
    pub via: String,
    pub outcome: Outcome,
    pub time: Duration,
}

/// What a pass means, for readers of the report.
const HOW_JUDGED: &str = "Each case of the x/y/z model runs in each family twice: probing each destination pod at its own \
address, and at the address of its ClusterIP Service, translated by kube-proxy's iptables rules in the node namespace (as \
upstream's e2e suite probes). The network-policy-api suite's cases (`npa-*`) run on that suite's own model (four houses' \
namespaces with two pods each) at pod addresses, as that suite probes; the cells it does not assert are checked against \
`na-policy`'s reference evaluator. Each run starts with every pod reaching every other on each probe the case uses, with no \
policy (else it fails as a broken model). A probe is denied only when it times out; a refused or unreachable probe \
fails the case. A connection where a denial is expected fails at once; only timeouts where a connection is expected \
are probed again (up to three tries).";

/// How the generated cases are made and judged.
const HOW_GENERATED: &str = "Generated cases are Cyclonus' (mattfenwick/cyclonus, `pkg/generator`), every family on: \
the same policies, steps and names on the same x/y/z × a/b/c model, numbered in Cyclonus' order (names repeat there). \
Their expected tables come from `na-policy`'s reference evaluator at every step, not from the agent. A step probes \
TCP and UDP on 80 and 81; Cyclonus also probes SCTP, which this kernel cannot carry.";

/// The Markdown report: counts per group, then one row per case, family and
/// way of probing.
pub fn report(runs: &[Run]) -> String {
    let (passed, failed, skipped) = summary(runs);
    let mut out = format!(
        "# NetworkPolicy and ClusterNetworkPolicy conformance\n\nWritten by `cargo xtask conformance --report`: {passed} passed, {failed} failed, {skipped} skipped.\n\n{HOW_JUDGED}\n\n{HOW_GENERATED}\n\n| group | passed | failed | skipped |\n|---|---|---|---|\n"
    );
    let mut groups: Vec<&str> = Vec::new();
    for r in runs {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    for group in groups {
        let of_group: Vec<&Run> = runs.iter().filter(|r| r.group == group).collect();
        let count = |f: fn(&Outcome) -> bool| of_group.iter().filter(|r| f(&r.outcome)).count();
        let _ = writeln!(
            out,
            "| {group} | {} | {} | {} |",
            count(|o| *o == Outcome::Passed),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Skipped(_)))
        );
    }
    out.push_str("\n| case | family | probed at | result | time |\n|---|---|---|---|---|\n");
    for r in runs {
        let result = match &r.outcome {
            Outcome::Passed => "passed".to_owned(),
            Outcome::Failed(why) => format!("**failed**: {}", first_line(why)),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} s |",
            r.case.replace('|', "\\|"),
            r.family,
            r.via,
            result,
            r.time.as_secs_f64()
        );
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// (passed, failed, skipped).
pub fn summary(runs: &[Run]) -> (usize, usize, usize) {
    let count = |f: fn(&Outcome) -> bool| runs.iter().filter(|r| f(&r.outcome)).count();
    (
        count(|o| *o == Outcome::Passed),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| matches!(o, Outcome::Skipped(_))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pod_keys;

    #[test]
    fn comparison_marks_the_differing_cells() {
        let n = pod_keys().len();
        let expected: Table = (0..n).map(|i| (0..n).map(|j| (i != j).then_some(true)).collect()).collect();
        let mut observed = expected.clone();
        observed[1][0] = Some(false);
        assert_eq!(differences(&expected, &observed), [(1, 0)]);
        let text = mismatch(&pod_keys(), &expected, &observed);
        let comparison = text.split("comparison").nth(1).unwrap();
        let row = comparison.lines().find(|l| l.starts_with("x/b")).unwrap();
        assert_eq!(row.split_whitespace().nth(1), Some("X"), "{text}");
        assert_eq!(comparison.matches('X').count(), 2, "the header's X and the one cell: {text}");
    }

    #[test]
    fn report_rows_and_totals() {
        let run = |outcome| Run {
            case: "a | b".into(),
            group: "hand-written".into(),
            family: "ipv4".into(),
            via: "Service IP".into(),
            outcome,
            time: Duration::from_millis(1500),
        };
        let text = report(&[
            run(Outcome::Passed),
            run(Outcome::Failed("boom\nmore".into())),
            run(Outcome::Skipped("no SCTP".into())),
        ]);
        assert!(text.contains("1 passed, 1 failed, 1 skipped"), "{text}");
        assert!(text.contains("| a \\| b | ipv4 | Service IP | **failed**: boom | 1.5 s |"), "{text}");
        assert!(text.contains("skipped: no SCTP"), "{text}");
        assert!(text.contains("| hand-written | 1 | 1 | 1 |"), "{text}");
    }
}
