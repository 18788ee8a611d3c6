//! `na-cli ebpf progs` / `maps`: the programs and maps in the kernel, ours by
//! default (those pinned under the agent's root), every one with `--all`.
use std::collections::BTreeSet;

use aya::{
    maps::{MapInfo, loaded_maps},
    programs::loaded_programs,
};
use serde::Serialize;

use super::InspectError;
use crate::bpffs::PinLayout;

#[derive(Debug, Serialize)]
pub struct ProgRow {
    pub id: u32,
    pub name: String,
    /// Kernel program type number (3 = sched_cls).
    pub prog_type: u32,
    pub map_count: usize,
}

#[derive(Debug, Serialize)]
pub struct MapRow {
    pub id: u32,
    pub name: String,
    /// Kernel map type number (11 = LPM trie, 9 = LRU hash, 27 = ring buffer).
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Program and map ids reachable from the programs pinned under `layout`.
fn ours(layout: &PinLayout) -> Result<(BTreeSet<u32>, BTreeSet<u32>), InspectError> {
    let progs = crate::datapath::inventory::attachments(layout)?;
    let maps = progs.iter().flat_map(|p| p.maps.iter().map(|m| m.id)).collect();
    Ok((progs.iter().map(|p| p.prog_id).collect(), maps))
}

pub fn progs(layout: &PinLayout, all: bool) -> Result<Vec<ProgRow>, InspectError> {
    let keep = if all { None } else { Some(ours(layout)?.0) };
    rows(
        loaded_programs(),
        keep,
        |i| i.id(),
        |info| ProgRow {
            id: info.id(),
            name: info.name_as_str().unwrap_or_default().to_owned(),
            prog_type: info.program_type() as u32,
            map_count: info.map_ids().ok().flatten().map_or(0, |m| m.len()),
        },
    )
}

pub fn maps(layout: &PinLayout, all: bool) -> Result<Vec<MapRow>, InspectError> {
    let keep = if all { None } else { Some(ours(layout)?.1) };
    rows(loaded_maps(), keep, |i| i.id(), map_row)
}

/// One row per kernel object, keeping only the ids in `keep` when given.
fn rows<I, E: std::fmt::Display, R>(
    infos: impl Iterator<Item = Result<I, E>>,
    keep: Option<BTreeSet<u32>>,
    id: impl Fn(&I) -> u32,
    row: impl Fn(&I) -> R,
) -> Result<Vec<R>, InspectError> {
    let mut out = Vec::new();
    for info in infos {
        let info = info.map_err(|e| InspectError::Kernel(e.to_string()))?;
        if keep.as_ref().is_none_or(|k| k.contains(&id(&info))) {
            out.push(row(&info));
        }
    }
    Ok(out)
}

fn map_row(info: &MapInfo) -> MapRow {
    MapRow {
        id: info.id(),
        name: info.name_as_str().unwrap_or_default().to_owned(),
        map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }
}
