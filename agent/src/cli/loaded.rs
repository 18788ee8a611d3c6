//! `na-cli ebpf loaded-ebpfdata`: every pinned program with its pod, direction
//! and maps.
use std::fmt::Write as _;

use aya::{maps::MapInfo, programs::ProgramInfo};
use na_common::names::{PROG_EGRESS, PROG_INGRESS};
use serde::{Deserialize, Serialize};

use super::{CliError, SEPARATOR};
use crate::{
    bpffs::{PinLayout, is_bpffs},
    pod_id::PodId,
};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoadedProgram {
    pub pin_path: String,
    pub pod_id: String,
    pub direction: String,
    pub prog_id: u32,
    pub maps: Vec<MapRef>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapRef {
    pub name: String,
    pub id: u32,
}

/// Reads every program pinned under `layout`, sorted by pod and direction.
pub fn read(layout: &PinLayout) -> Result<Vec<LoadedProgram>, CliError> {
    let dir = layout.programs_dir();
    if !is_bpffs(layout.root()) {
        return Err(CliError::NoBpffs(layout.root().display().to_string()));
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CliError::Read { path: dir.display().to_string(), source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CliError::Read { path: dir.display().to_string(), source })?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((pod, prog)) = PodId::parse_pin_name(&file_name) else { continue };
        let direction = match prog {
            PROG_INGRESS => "ingress",
            PROG_EGRESS => "egress",
            _ => continue,
        };
        let info = ProgramInfo::from_pin(entry.path()).map_err(|e| CliError::Kernel(format!("{file_name}: {e}")))?;
        let map_ids = info.map_ids().map_err(|e| CliError::Kernel(e.to_string()))?.unwrap_or_default();
        let maps = map_ids
            .into_iter()
            .map(|id| MapRef {
                name: MapInfo::from_id(id).ok().and_then(|m| m.name_as_str().map(str::to_owned)).unwrap_or_default(),
                id,
            })
            .collect();
        out.push(LoadedProgram {
            pin_path: entry.path().display().to_string(),
            pod_id: pod.to_string(),
            direction: direction.to_owned(),
            prog_id: info.id(),
            maps,
        });
    }
    out.sort_by(|a, b| (&a.pod_id, &a.direction).cmp(&(&b.pod_id, &b.direction)));
    Ok(out)
}

/// The listing in the style of `aws-eks-na-cli ebpf loaded-ebpfdata`.
pub fn render(programs: &[LoadedProgram]) -> String {
    let mut s = String::new();
    for p in programs {
        let _ = writeln!(s, "PinPath:  {}", p.pin_path);
        let _ = writeln!(s, "Pod Identifier : {}  Direction : {}", p.pod_id, p.direction);
        let _ = writeln!(s, "Prog ID:  {}", p.prog_id);
        let _ = writeln!(s, "Associated Maps -> ");
        for m in &p.maps {
            let _ = writeln!(s, "Map Name:  {}", m.name);
            let _ = writeln!(s, "Map ID:  {}", m.id);
        }
        let _ = writeln!(s, "{SEPARATOR}");
    }
    if programs.is_empty() {
        s.push_str("No programs loaded\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_aws_tool() {
        let p = LoadedProgram {
            pin_path: "/sys/fs/bpf/netpol/programs/x_a_handle_ingress".into(),
            pod_id: "x_a".into(),
            direction: "ingress".into(),
            prog_id: 42,
            maps: vec![MapRef { name: "ingress_map".into(), id: 7 }],
        };
        let want = "PinPath:  /sys/fs/bpf/netpol/programs/x_a_handle_ingress\n\
                    Pod Identifier : x_a  Direction : ingress\n\
                    Prog ID:  42\n\
                    Associated Maps -> \n\
                    Map Name:  ingress_map\n\
                    Map ID:  7\n";
        assert_eq!(render(&[p]), format!("{want}{SEPARATOR}\n"));
        assert_eq!(render(&[]), "No programs loaded\n");
    }
}
