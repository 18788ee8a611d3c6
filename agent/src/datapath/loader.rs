//! Loading, attaching, pinning and removing one pod's program pair and maps.
use std::{path::PathBuf, time::Duration};

use aya::{
    EbpfLoader,
    programs::{ProgramError, SchedClassifier},
};
use na_common::{
    conntrack::{TimeoutClass, timeout, timeout_globals},
    names::{GLOBAL_LOG_LEVEL, GLOBAL_MAPS, POD_MAPS},
};
use thiserror::Error;

use na_policy::PodRules;

use super::{
    AttachMode, OBJECT, PROGRAMS,
    attach::{self, remove_pin},
    rules::{PodMaps, RulesError},
};
use crate::{
    bpffs::{BpffsError, PinLayout},
    pod_id::PodId,
};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the eBPF object for pod {0}: {1}")]
    Load(PodId, #[source] Box<aya::EbpfError>),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("adding the clsact qdisc to {0}: {1}")]
    Clsact(String, #[source] aya::programs::TcError),
    #[error("TCX link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("detaching from {0}: {1}")]
    Detach(String, String),
    #[error("pin {0}: {1}")]
    Pin(PathBuf, String),
    #[error(transparent)]
    Rules(#[from] RulesError),
}

/// Conntrack idle timeouts, baked into each pod's programs at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(timeout::TCP_ESTABLISHED_SECS),
            tcp_closing: Duration::from_secs(timeout::TCP_CLOSING_SECS),
            udp: Duration::from_secs(timeout::UDP_SECS),
            other: Duration::from_secs(timeout::OTHER_SECS),
        }
    }
}

impl Timeouts {
    /// The idle timeout of a flow, as the programs apply it.
    pub fn idle_timeout_ns(&self, proto: u8, tcp_state: u8) -> u64 {
        let d = match TimeoutClass::of(proto, tcp_state) {
            TimeoutClass::TcpClosing => self.tcp_closing,
            TimeoutClass::TcpEstablished => self.tcp_established,
            TimeoutClass::Udp => self.udp,
            TimeoutClass::Other => self.other,
        };
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// (object global, nanoseconds) pairs.
    fn globals(&self) -> [(&'static str, u64); 4] {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        [
            (timeout_globals::TCP_ESTABLISHED, ns(self.tcp_established)),
            (timeout_globals::TCP_CLOSING, ns(self.tcp_closing)),
            (timeout_globals::UDP, ns(self.udp)),
            (timeout_globals::OTHER, ns(self.other)),
        ]
    }
}

/// The agent's handle on bpffs: loads and removes pods' datapaths.
#[derive(Clone, Debug)]
pub struct Datapath {
    layout: PinLayout,
    attach_mode: AttachMode,
    timeouts: Timeouts,
    log_level: KernelLogLevel,
}

/// How much the programs log through aya-log (the agent forwards it to its own log).
/// Off costs one load and a branch per log site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[repr(u8)]
pub enum KernelLogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Datapath {
    /// Prepares `layout` (mounting bpffs if needed).
    pub fn new(layout: PinLayout, attach_mode: AttachMode) -> Result<Self, DatapathError> {
        layout.prepare()?;
        Ok(Self { layout, attach_mode, timeouts: Timeouts::default(), log_level: KernelLogLevel::Off })
    }

    pub fn with_log_level(mut self, level: KernelLogLevel) -> Self {
        self.log_level = level;
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Loads `pod`'s programs with its pinned maps (created on first use,
    /// reused afterwards), writes `rules` and only then attaches them to
    /// `ifname`, so no packet passes before the pod's state is in place. A pod
    /// that already has programs gets the new ones swapped in atomically.
    pub fn attach_pod(&self, pod: &PodId, ifname: &str, rules: &PodRules) -> Result<PodMaps, DatapathError> {
        let maps = self.load_pod(pod, rules)?;
        for (name, _, hook) in PROGRAMS {
            let mut prog = SchedClassifier::from_pin(self.layout.program(pod, name))?;
            attach::attach_or_replace(&mut prog, ifname, hook, self.attach_mode, &self.layout.link(pod, name))?;
        }
        Ok(maps)
    }

    /// Loads and pins `pod`'s programs and maps and writes `rules`, without
    /// attaching anything.
    pub fn load_pod(&self, pod: &PodId, rules: &PodRules) -> Result<PodMaps, DatapathError> {
        let pins: Vec<(&str, PathBuf)> = POD_MAPS
            .iter()
            .map(|m| (*m, self.layout.map(pod, m)))
            .chain(GLOBAL_MAPS.iter().map(|m| (*m, self.layout.global_map(m))))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let globals = self.timeouts.globals();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        let level = self.log_level as u8;
        loader.override_global(GLOBAL_LOG_LEVEL, &level, true);
        let mut ebpf = loader.load(OBJECT).map_err(|e| DatapathError::Load(pod.clone(), Box::new(e)))?;
        let mut maps = PodMaps::open(&self.layout, pod)?;
        maps.apply(rules)?;
        for (name, _, _) in PROGRAMS {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or(DatapathError::MissingProgram(name))?.try_into()?;
            prog.load()?;
            let pin = self.layout.program(pod, name);
            remove_pin(&pin)?;
            prog.pin(&pin).map_err(|e| DatapathError::Pin(pin.clone(), e.to_string()))?;
        }
        Ok(maps)
    }

    /// Detaches `pod`'s programs from `ifname` (if it still exists) and
    /// removes every pin of the pod.
    pub fn detach_pod(&self, pod: &PodId, ifname: Option<&str>) -> Result<(), DatapathError> {
        for (name, _, hook) in PROGRAMS {
            attach::detach(ifname, name, hook, &self.layout.link(pod, name))?;
            remove_pin(&self.layout.program(pod, name))?;
        }
        for map in POD_MAPS {
            remove_pin(&self.layout.map(pod, map))?;
        }
        Ok(())
    }

    /// Removes `pod`'s conntrack entries idle past their timeout; returns how many.
    pub fn sweep_conntrack(&self, pod: &PodId) -> Result<usize, DatapathError> {
        Ok(super::sweep::sweep(&self.layout, pod, &self.timeouts)?)
    }

    /// Opens the pinned policy maps of a loaded pod.
    pub fn pod_maps(&self, pod: &PodId) -> Result<PodMaps, DatapathError> {
        Ok(PodMaps::open(&self.layout, pod)?)
    }
}
