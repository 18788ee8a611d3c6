//! The node's one program pair: verified once per program version, adopted
//! from its pins by every later agent.
//!
//! A version is a digest of the object and the load-time settings baked into
//! it. Its programs are pinned as `programs/<name>_<version>`; an agent that
//! finds the pins of its own version uses them without loading anything (no
//! verification at all), and one that does not (an upgrade, or new
//! settings) loads and verifies the object once. Pods move to the new
//! programs as they are attached again (an atomic link update or filter
//! replace), and [`Programs::remove_stale`] drops the old pins once none is
//! left on them.
use std::{path::PathBuf, time::Instant};

use aya::{Ebpf, EbpfLoader, maps::MapData, programs::SchedClassifier};
use na_common::{
    names::{GLOBAL_LOG_LEVEL, GLOBAL_MAPS},
    pod_state::unknown_pod,
};
use sha1::{Digest, Sha1};

use super::{DatapathError, OBJECT, PROGRAMS, RulesError, Settings, attach::remove_pin};
use crate::bpffs::PinLayout;

/// The object with its maps bound to the node's pinned ones (created and
/// pinned where missing) and no program loaded: how a global map that aya
/// hands out only through an [`Ebpf`] is opened (the kernel log's). aya-log
/// would otherwise find it through the programs' ids, which takes
/// CAP_SYS_ADMIN, more than the DaemonSet grants.
pub fn bound_object(layout: &PinLayout) -> Result<Ebpf, DatapathError> {
    let pins = global_pins(layout);
    let mut loader = EbpfLoader::new();
    bind_globals(&mut loader, &pins);
    loader.load(OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))
}

/// The entries of the node's global map `name`: as pinned (the kernel's
/// count), and as this agent's object declares them (None: it declares no
/// such map). They differ when an agent of another version pinned the map;
/// the kernel takes the pinned map either way, but aya sizes what it maps of
/// a map from the object's declaration.
pub fn global_map_entries(layout: &PinLayout, name: &str) -> Result<(u32, Option<u32>), DatapathError> {
    let path = layout.global_map(name);
    let open = |source| RulesError::Open { path: path.display().to_string(), source };
    let pinned = MapData::from_pin(&path).map_err(open)?.info().map_err(open)?.max_entries();
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| DatapathError::Object(e.to_string()))?;
    Ok((pinned, object.maps.get(name).map(aya_obj::Map::max_entries)))
}

/// The node's global maps by name, each with its pin.
fn global_pins(layout: &PinLayout) -> Vec<(&'static str, PathBuf)> {
    GLOBAL_MAPS.iter().map(|m| (*m, layout.global_map(m))).collect()
}

fn bind_globals<'a>(loader: &mut EbpfLoader<'a>, pins: &'a [(&'static str, PathBuf)]) {
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
}

/// Hex digits of the version digest kept in pin names.
const VERSION_LEN: usize = 12;

/// The loaded (or adopted) program pair; its pins keep it loaded.
#[derive(Debug)]
pub struct Programs {
    version: String,
    /// How this agent got them.
    pub origin: Origin,
    /// Their kernel ids, in [`PROGRAMS`]' order: what an attachment must
    /// run to be this version's.
    pub ids: [u32; 2],
}

/// How many times a verification interrupted by a signal is tried again.
const LOAD_TRIES: usize = 5;

/// Loads (verifies) `prog`, again when a signal interrupted the verifier:
/// it then gives up with EAGAIN, and the more instructions it explores the
/// likelier that is. libbpf retries the same way.
fn load_retrying(prog: &mut SchedClassifier) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 1;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(nix::libc::EAGAIN) && tries < LOAD_TRIES =>
            {
                tries += 1;
            }
            result => return result,
        }
    }
}

/// Whether the programs were verified by this agent or adopted from pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loaded and verified now, in this many milliseconds.
    Verified { millis: u128 },
    /// Taken from the pins of an earlier agent with the same version.
    Adopted,
}

impl Programs {
    /// Adopts the pinned programs of this object and these settings, or
    /// loads and pins them.
    pub fn load_or_adopt(layout: &PinLayout, settings: &Settings) -> Result<Self, DatapathError> {
        let version = version(settings);
        let pin = |name: &str| layout.program(name, &version);
        let pinned = PROGRAMS.map(|(name, ..)| Some(SchedClassifier::from_pin(pin(name)).ok()?.info().ok()?.id()));
        if let [Some(ingress), Some(egress)] = pinned {
            return Ok(Self { version, origin: Origin::Adopted, ids: [ingress, egress] });
        }
        let started = Instant::now();
        let pins = global_pins(layout);
        let mut loader = EbpfLoader::new();
        bind_globals(&mut loader, &pins);
        let globals = settings.timeouts.globals();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        let level = settings.log_level as u8;
        loader.override_global(GLOBAL_LOG_LEVEL, &level, true);
        let deny_unknown = u8::from(settings.strict);
        loader.override_global(unknown_pod::GLOBAL_DENY, &deny_unknown, true);
        let mut ebpf = loader.load(OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))?;
        let mut take = |name: &'static str| -> Result<u32, DatapathError> {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or(DatapathError::MissingProgram(name))?.try_into()?;
            load_retrying(prog)?;
            let path = pin(name);
            remove_pin(&path)?;
            prog.pin(&path).map_err(|e| DatapathError::Pin(path.clone(), e.to_string()))?;
            // Owned through its pin, so it outlives the object's other parts.
            Ok(SchedClassifier::from_pin(&path)?.info()?.id())
        };
        let ids = [take(PROGRAMS[0].0)?, take(PROGRAMS[1].0)?];
        Ok(Self { version, origin: Origin::Verified { millis: started.elapsed().as_millis() }, ids })
    }

    /// Where `prog_name` of this version is pinned (attachments open their
    /// own handle there, so pods can be attached concurrently).
    pub fn pin(&self, layout: &PinLayout, prog_name: &str) -> PathBuf {
        layout.program(prog_name, &self.version)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Removes the pins of other versions. Programs still attached somewhere
    /// stay loaded until their last attachment moves to this version.
    pub fn remove_stale(&self, layout: &PinLayout) -> Result<usize, DatapathError> {
        let dir = layout.programs_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if PinLayout::parse_program_pin(&name).is_some_and(|(_, version)| version != self.version) {
                remove_pin(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The version of the programs these settings give: the object and every
/// value baked into it at load time.
fn version(settings: &Settings) -> String {
    let mut h = Sha1::new();
    h.update(OBJECT);
    for (name, value) in settings.timeouts.globals() {
        h.update(name.as_bytes());
        h.update(value.to_le_bytes());
    }
    h.update([settings.log_level as u8, u8::from(settings.strict)]);
    hex::encode(h.finalize())[..VERSION_LEN].to_owned()
}
