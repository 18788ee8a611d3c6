//! `na-conformance`: every case in a directory, on real pods, enforced by a
//! real agent. Run through `cargo xtask conformance`, which builds both.
mod case;
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
    model::{Family, Via},
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
}

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
    let cases = case::load_dir(&args.cases)?;
    let wanted = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    let mut runs = Vec::new();
    let mut runnable = Vec::new();
    for case in cases {
        match case {
            Ok(c) if wanted(&c.name) => runnable.push(c),
            Ok(_) => {}
            Err(e) => {
                println!("FAIL {e}");
                runs.push(Run {
                    case: e.to_string(),
                    family: "-".into(),
                    via: "-".into(),
                    outcome: Outcome::Failed(e.to_string()),
                    time: Duration::ZERO,
                });
            }
        }
    }
    if runnable.is_empty() && runs.is_empty() {
        bail!("no cases in {} match", args.cases.display());
    }
    let mut world = World::new(&agent).context("setting up the pods and the agent")?;
    let vias: Vec<Via> = args.via.map_or_else(|| vec![Via::Pod, Via::Service], |v| vec![v]);
    for case in &runnable {
        for &family in &case.families {
            if args.family.is_some_and(|f| f != family) {
                continue;
            }
            for &via in &vias {
                let start = Instant::now();
                let outcome = match case.skip_reason() {
                    Some(why) => Outcome::Skipped(why),
                    None => match run_case(&mut world, case, family, via, args.tries) {
                        Ok(()) => Outcome::Passed,
                        Err(e) => Outcome::Failed(format!("{e:#}")),
                    },
                };
                let time = start.elapsed();
                let tag = format!("{family}, {via}");
                match &outcome {
                    Outcome::Passed => println!("PASS {} [{tag}] ({:.1} s)", case.name, time.as_secs_f64()),
                    Outcome::Skipped(why) => println!("SKIP {} [{tag}]: {why}", case.name),
                    Outcome::Failed(why) => println!("FAIL {} [{tag}] ({}):\n{why}", case.name, case.file.display()),
                }
                runs.push(Run {
                    case: case.name.clone(),
                    family: family.to_string(),
                    via: via.to_string(),
                    outcome,
                    time,
                });
            }
        }
    }
    drop(world);
    let (passed, failed, skipped) = table::summary(&runs);
    if let Some(path) = &args.report {
        std::fs::write(path, table::report(&runs)).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("conformance: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0)
}

/// One case from a clean slate: each step applied, then every probe checked
/// against its truth table.
fn run_case(world: &mut World, case: &Case, family: Family, via: Via, tries: u32) -> Result<()> {
    world.reset()?;
    baseline(world, case, family, via, tries)?;
    for (i, step) in case.steps.iter().enumerate() {
        world.apply(step, family).with_context(|| format!("step {}", i + 1))?;
        for &spec in &step.probes {
            let ProbeSpec::Run(probe) = spec else { bail!("step {}: {spec} cannot be probed here", i + 1) };
            let expected = model::expected(&step.expect, spec);
            let observed = observe(world, probe, family, via, &expected, tries)?;
            if !table::differences(&expected, &observed).is_empty() {
                bail!("step {}, {spec}: connectivity differs\n{}", i + 1, table::mismatch(&expected, &observed));
            }
        }
    }
    Ok(())
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
        let ProbeSpec::Run(probe) = spec else { bail!("{spec} cannot be probed here") };
        let expected = model::expected(&open, spec);
        let observed = observe(world, probe, family, via, &expected, tries)?;
        if !table::differences(&expected, &observed).is_empty() {
            bail!(
                "model broken: with no policy, {spec} does not connect everywhere\n{}",
                table::mismatch(&expected, &observed)
            );
        }
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
    let mut observed = na_harness::matrix_to(&world.node, probe, &targets)?;
    let mut retried = std::collections::BTreeSet::new();
    for _ in 1..tries {
        let cells = table::differences(expected, &observed);
        // A leak ends the probing: the case fails on what was observed.
        if cells.is_empty() || cells.iter().any(|&(i, j)| observed[i][j] == Some(true)) {
            break;
        }
        let pods = world.node.pods();
        let again: Vec<Result<bool>> = std::thread::scope(|s| {
            let handles: Vec<_> = cells
                .iter()
                .map(|&(i, j)| {
                    let to = targets[j];
                    s.spawn(move || probe.run(&pods[i], to))
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
