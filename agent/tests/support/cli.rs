//! `na-cli` as an operator runs it on the node: in the node's network
//! namespace, where the veths (and so the ifindexes in the maps) are.
use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use na_agent::flowlog::FlowLine;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::agent::binary;

pub struct Cli<'a> {
    pub root: &'a Path,
    pub status: &'a Path,
    /// The node's network namespace.
    pub node: &'a str,
}

impl Cli<'_> {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node))
            .arg("--")
            .arg(binary("na-cli", option_env!("CARGO_BIN_EXE_na-cli")));
        c.arg("--bpffs-root").arg(self.root).arg("--status-file").arg(self.status).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running na-cli")
    }

    pub fn text(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "na-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `-o json` output, parsed into `T` and checked to serialise back to
    /// the same JSON.
    pub fn json<T: DeserializeOwned + Serialize>(&self, args: &[&str]) -> T {
        let text = self.text(&[&["-o", "json"], args].concat());
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"));
        let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), value, "{args:?} round-trips");
        typed
    }

    pub fn exit_code(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs `na-cli events -o json` with `args` while `traffic` repeats, for
    /// at most 10 s; the lines it printed and its standard error.
    pub fn events_during(&self, args: &[&str], traffic: impl FnMut()) -> (Vec<FlowLine>, String) {
        let (stdout, stderr) = self.events_text_during(&[&["-o", "json"], args].concat(), traffic);
        (stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect(), stderr)
    }

    /// Runs `na-cli events --seconds 10 <args>` while `traffic` repeats;
    /// its standard output and standard error.
    pub fn events_text_during(&self, args: &[&str], mut traffic: impl FnMut()) -> (String, String) {
        let mut child = self
            .command(&[&["events", "--seconds", "10"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(12);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            // Give it time to open the ring or file before the first packet.
            std::thread::sleep(Duration::from_millis(100));
            traffic();
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
