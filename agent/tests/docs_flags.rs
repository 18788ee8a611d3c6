//! The docs name only flags that exist: every `--flag` in README.md and
//! docs/*.md is one of `na-agent`'s, `na-cli`'s (any subcommand's) or
//! `cargo xtask`'s. A flag renamed or removed in the code, and left in the
//! docs, fails here.
use std::{collections::BTreeSet, path::Path, process::Command};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the agent crate sits in the workspace")
}

/// `--flag` tokens of `text`.
fn flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
            continue;
        }
        let name: String =
            text[i + 2..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
        if name.starts_with(|c: char| c.is_ascii_lowercase()) && name.len() > 1 && !name.ends_with('-') {
            out.insert(format!("--{name}"));
        }
    }
    out
}

/// The help of `binary` and of each of its subcommands, all levels down.
fn help(binary: &str, path: &[String]) -> String {
    let out = Command::new(binary).args(path).arg("--help").output().expect("running --help");
    assert!(out.status.success(), "{binary} {path:?} --help");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut all = text.clone();
    let commands = text.split("Commands:").nth(1).map(|rest| rest.split("\n\n").next().unwrap_or_default());
    for line in commands.unwrap_or_default().lines() {
        let Some(sub) = line.split_whitespace().next() else { continue };
        if sub != "help" {
            all.push_str(&help(binary, &[path, &[sub.to_owned()]].concat()));
        }
    }
    all
}

/// Flags `cargo xtask` declares: clap's derive makes `--some-name` of a
/// field `some_name` under `#[arg(long ...)]`.
fn xtask_flags() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(workspace().join("xtask/src")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim_start().starts_with("#[arg(long")
                && let Some(field) = lines.next()
                && let Some(name) = field.trim().trim_start_matches("pub ").split(':').next()
            {
                out.insert(format!("--{}", name.replace('_', "-")));
            }
        }
    }
    out
}

#[test]
fn every_flag_the_docs_name_exists() {
    let mut known = flags(&help(env!("CARGO_BIN_EXE_na-agent"), &[]));
    known.extend(flags(&help(env!("CARGO_BIN_EXE_na-cli"), &[])));
    known.extend(xtask_flags());
    assert!(known.contains("--manifests") && known.contains("--via"), "the helps were read: {known:?}");
    let mut docs = vec![workspace().join("README.md")];
    docs.extend(std::fs::read_dir(workspace().join("docs")).unwrap().flatten().map(|e| e.path()));
    let mut unknown = Vec::new();
    for doc in docs.iter().filter(|d| d.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(doc).unwrap();
        unknown
            .extend(flags(&text).into_iter().filter(|f| !known.contains(f)).map(|f| format!("{}: {f}", doc.display())));
    }
    assert!(unknown.is_empty(), "flags the docs name that no command has: {unknown:?}");
}

#[test]
fn flags_are_read_as_written() {
    assert_eq!(
        flags("run `na-agent --node-ip 10.0.0.1 --no-allow-node`, not a--b or ---x or -- alone"),
        BTreeSet::from(["--node-ip".to_owned(), "--no-allow-node".to_owned()])
    );
}
