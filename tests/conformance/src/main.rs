//! `na-conformance`: every case in a directory, on real pods, enforced by a
//! real agent. Run through `cargo xtask conformance`, which builds both.
mod case;
mod expected;
mod generated;
mod model;
mod table;
mod template;
mod world;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use na_harness::Probe;

use crate::{
    case::{Case, Expect, ProbeSpec, Verdict},
    generated::{GenCase, Probes},
    model::{Family, ModelName, Via},
    table::{Outcome, Run, Table},
    world::World,
};

#[derive(Parser)]
#[command(about = "Run NetworkPolicy conformance cases against na-agent on network-namespace pods")]
struct Args {
    /// Directory of case files.
    #[arg(long, default_value = "tests/cases")]
    cases: PathBuf,
    /// Only this family (default: each case's own list).
    #[arg(long, value_enum)]
    family: Option<Family>,
    /// Only probes addressed this way (default: both, each case run twice).
    #[arg(long, value_enum)]
    via: Option<Via>,
    /// Only cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// Also write a Markdown table of the results here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The agent binary (default: `na-agent` next to this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Probe attempts for a cell that disagrees with its expectation.
    #[arg(long, default_value_t = 3)]
    tries: u32,
    /// Also run every case Cyclonus' generator makes.
    #[arg(long)]
    generated: bool,
}

/// What a generated step probes when it probes everything the pods serve
/// (Cyclonus also probes SCTP/80 and SCTP/81, which this kernel cannot carry).
const ALL_PROBES: [Probe; 4] = [Probe::tcp(80), Probe::tcp(81), Probe::udp(80), Probe::udp(81)];

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()?.with_file_name("na-agent"),
    };
    let wanted = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    let mut runs = Vec::new();
    let mut runnable = Vec::new();
    for case in case::load_dir(&args.cases)? {
        match case {
            Ok(c) if wanted(&c.name) => runnable.push(c),
            Ok(_) => {}
            Err(e) => {
                println!("FAIL {e}");
                runs.push(Run {
                    case: e.to_string(),
                    group: HAND_WRITTEN.into(),
                    family: "-".into(),
                    via: "-".into(),
                    outcome: Outcome::Failed(e.to_string()),
                    time: Duration::ZERO,
                });
            }
        }
    }
    let vias: Vec<Via> = args.via.map_or_else(|| vec![Via::Pod, Via::Service], |v| vec![v]);
    let families = [Family::Ipv4, Family::Ipv6].into_iter().filter(|f| args.family.is_none_or(|a| a == *f));
    // Each model's cases on a world of its own, the x/y/z model's last:
    // generated cases run on it too.
    runnable.sort_by_key(|c| std::cmp::Reverse(c.model));
    let mut world: Option<World> = None;
    for case in &runnable {
        if world.as_ref().is_none_or(|w| w.model() != case.model) {
            drop(world.take());
            world = Some(World::new(&agent, case.model).context("setting up the pods and the agent")?);
        }
        let world = world.as_mut().expect("just made");
        // Through Services only where the model has them (network-policy-api's
        // suite probes pod addresses only).
        let case_vias: Vec<Via> = vias.iter().copied().filter(|v| *v == Via::Pod || world.has_services()).collect();
        for &family in case.families.iter().filter(|f| args.family.is_none_or(|a| a == **f)) {
            for &via in &case_vias {
                let start = Instant::now();
                let outcome = match case.skip_reason() {
                    Some(why) => Outcome::Skipped(why),
                    None => outcome(run_case(world, case, family, via, args.tries)),
                };
                // Its SCTP probes are not run: the report says so.
                let name = match &outcome {
                    Outcome::Skipped(_) => case.name.clone(),
                    _ if case.probes_sctp() => format!("{} (SCTP probes skipped)", case.name),
                    _ => case.name.clone(),
                };
                runs.push(record(&name, HAND_WRITTEN, family, via, outcome, start, &case.file.display().to_string()));
            }
        }
    }
    if args.generated && world.as_ref().is_none_or(|w| w.model() != ModelName::Netpol) {
        drop(world.take());
        world = Some(World::new(&agent, ModelName::Netpol).context("setting up the pods and the agent")?);
    }
    if let (true, Some(world)) = (args.generated, world.as_mut()) {
        let keys = world.keys();
        for family in families {
            let zc = world.addresses(family)["z/c"];
            let mut cases = generated::all(zc);
            // Cyclonus' own filters are its tags: a tag matches too.
            cases.retain(|c| wanted(&c.label()) || args.filter.as_deref().is_some_and(|f| c.tags.contains(f)));
            for &via in &vias {
                world.reset()?;
                let open = Expect { default: Verdict::Allow, rules: Vec::new() };
                let open = model::expected(&keys, &open, ProbeSpec::Run(ALL_PROBES[0]), None);
                for (probe, seen) in ALL_PROBES.iter().zip(observe_all(
                    world,
                    &ALL_PROBES,
                    family,
                    via,
                    &[open.clone(), open.clone(), open.clone(), open.clone()],
                    args.tries,
                )?) {
                    let what =
                        format!("model broken: with no policy, {probe} does not connect everywhere ({family}, {via})");
                    compare(world, what, &open, &seen)?;
                }
                for case in &cases {
                    let start = Instant::now();
                    let outcome = outcome(run_generated(world, case, family, via, args.tries));
                    runs.push(record(&case.label(), &case.kind.to_string(), family, via, outcome, start, "generated"));
                }
            }
        }
    }
    if runs.is_empty() {
        bail!("no cases match");
    }
    drop(world);
    let (passed, failed, skipped) = table::summary(&runs);
    if let Some(path) = &args.report {
        std::fs::write(path, table::report(&runs)).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("conformance: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0)
}

/// The group of the case files' runs in the report.
const HAND_WRITTEN: &str = "hand-written";

fn outcome(result: Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// Prints one run's line and makes its row.
fn record(name: &str, group: &str, family: Family, via: Via, outcome: Outcome, start: Instant, from: &str) -> Run {
    let time = start.elapsed();
    let tag = format!("{family}, {via}");
    match &outcome {
        Outcome::Passed => println!("PASS {name} [{tag}] ({:.1} s)", time.as_secs_f64()),
        Outcome::Skipped(why) => println!("SKIP {name} [{tag}]: {why}"),
        Outcome::Failed(why) => println!("FAIL {name} [{tag}] ({from}):\n{why}"),
    }
    Run {
        case: name.to_owned(),
        group: group.to_owned(),
        family: family.to_string(),
        via: via.to_string(),
        outcome,
        time,
    }
}

/// A generated case from a clean slate: each step's actions applied, then
/// what it probes checked against the reference evaluator's tables for the
/// cluster as it then is.
fn run_generated(world: &mut World, case: &GenCase, family: Family, via: Via, tries: u32) -> Result<()> {
    world.reset()?;
    for (i, step) in case.steps.iter().enumerate() {
        world.apply_actions(&step.actions).with_context(|| format!("step {}", i + 1))?;
        let cluster = world.cluster()?;
        let addrs: Vec<std::net::IpAddr> = world.pods().iter().map(|p| family.harness().of(p)).collect();
        let probes: &[Probe] = match step.probes {
            Probes::All => &ALL_PROBES,
            Probes::Tcp81 => &[Probe::tcp(81)],
        };
        let expected: Vec<Table> = probes.iter().map(|&p| expected::table(&cluster, &addrs, p)).collect();
        let observed = observe_all(world, probes, family, via, &expected, tries)?;
        for ((probe, e), o) in probes.iter().zip(&expected).zip(&observed) {
            compare(world, format!("step {}, {probe}: connectivity differs", i + 1), e, o)?;
        }
    }
    Ok(())
}

/// [`observe`] for several probes at once: each waits out its own
/// timeouts, so together they take as long as one.
fn observe_all(
    world: &World,
    probes: &[Probe],
    family: Family,
    via: Via,
    expected: &[Table],
    tries: u32,
) -> Result<Vec<Table>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .zip(expected)
            .map(|(&probe, expected)| s.spawn(move || observe(world, probe, family, via, expected, tries)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread panicked")).collect()
    })
}

/// One case from a clean slate: each step applied, then every probe checked
/// against its truth table (SCTP probes skipped: not in this kernel).
fn run_case(world: &mut World, case: &Case, family: Family, via: Via, tries: u32) -> Result<()> {
    world.reset()?;
    baseline(world, case, family, via, tries)?;
    let keys = world.keys();
    for (i, step) in case.steps.iter().enumerate() {
        world.apply(step, family).with_context(|| format!("step {}", i + 1))?;
        let cluster = world.cluster()?;
        let addrs: Vec<std::net::IpAddr> = world.pods().iter().map(|p| family.harness().of(p)).collect();
        for &spec in &step.probes {
            let ProbeSpec::Run(probe) = spec else { continue };
            let reference =
                (step.expect.default == Verdict::Reference).then(|| expected::table(&cluster, &addrs, probe));
            let expected = model::expected(&keys, &step.expect, spec, reference.as_ref());
            let observed = observe(world, probe, family, via, &expected, tries)?;
            compare(world, format!("step {}, {spec}: connectivity differs", i + 1), &expected, &observed)?;
        }
    }
    Ok(())
}

/// `Ok` when `observed` is `expected`; else what a case fails with: `what`,
/// both tables, and what the agent and its maps say of the pods most
/// involved.
fn compare(world: &World, what: String, expected: &Table, observed: &Table) -> Result<()> {
    let cells = table::differences(expected, observed);
    if cells.is_empty() {
        return Ok(());
    }
    let keys = world.keys();
    let diagnosis = world.diagnose(&table::most_involved(&keys, &cells));
    bail!("{what}\n{}{diagnosis}", table::mismatch(&keys, expected, observed))
}

/// With no policy every pod reaches every other on every probe the case
/// uses: otherwise a dead server or broken routing would pass every cell the
/// case expects to be denied.
fn baseline(world: &World, case: &Case, family: Family, via: Via, tries: u32) -> Result<()> {
    let mut probes: Vec<ProbeSpec> = Vec::new();
    for &spec in case.steps.iter().flat_map(|s| &s.probes) {
        if !probes.contains(&spec) {
            probes.push(spec);
        }
    }
    let open = Expect { default: Verdict::Allow, rules: Vec::new() };
    for spec in probes {
        let ProbeSpec::Run(probe) = spec else { continue };
        let expected = model::expected(&world.keys(), &open, spec, None);
        let observed = observe(world, probe, family, via, &expected, tries)?;
        let what = format!("model broken: with no policy, {spec} does not connect everywhere");
        compare(world, what, &expected, &observed)?;
    }
    Ok(())
}

/// Probes the whole matrix at once, then probes again, up to `tries` times in
/// all, only the cells that were expected to connect and did not: a probe can
/// time out on a busy machine. A cell that connected where a denial was
/// expected is a leak and is never probed again: a leak that times out once
/// is still a leak. Cells that needed another try are reported.
fn observe(world: &World, probe: Probe, family: Family, via: Via, expected: &Table, tries: u32) -> Result<Table> {
    let targets = world.targets(family, via);
    let pods = world.pods();
    let mut observed = na_harness::matrix_from(&pods, probe, &targets)?;
    let mut retried = std::collections::BTreeSet::new();
    for _ in 1..tries {
        let cells = table::differences(expected, &observed);
        // A leak ends the probing: the case fails on what was observed.
        if cells.is_empty() || cells.iter().any(|&(i, j)| observed[i][j] == Some(true)) {
            break;
        }
        let again: Vec<Result<bool>> = std::thread::scope(|s| {
            let handles: Vec<_> = cells
                .iter()
                .map(|&(i, j)| {
                    let (from, to) = (pods[i], targets[j]);
                    s.spawn(move || probe.run(from, to))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("probe thread panicked")).collect()
        });
        for (&(i, j), seen) in cells.iter().zip(again) {
            observed[i][j] = Some(seen?);
            retried.insert((pods[i].key(), pods[j].key()));
        }
    }
    if !retried.is_empty() {
        eprintln!("conformance: {probe} {family:?} via {via}: probed again after a timeout: {retried:?}");
    }
    Ok(observed)
}
