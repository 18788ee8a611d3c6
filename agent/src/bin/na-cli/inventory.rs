//! `na-cli ebpf progs` and `ebpf maps`, in the AWS tool's layout.
use std::fmt::Write as _;

use na_agent::inspect::inventory::{MapRow, ProgRow};

use crate::table::SEPARATOR;

pub fn render_progs(rows: &[ProgRow]) -> String {
    let mut s = String::from("Programs currently loaded : \n");
    for r in rows {
        let _ = writeln!(
            s,
            "Type : {} ID : {} Name : {} Associated maps count : {}",
            r.prog_type, r.id, r.name, r.map_count
        );
        let _ = writeln!(s, "{SEPARATOR}");
    }
    s
}

pub fn render_maps(rows: &[MapRow]) -> String {
    let mut s = String::from("Maps currently loaded : \n");
    for r in rows {
        let _ = writeln!(s, "Type : {} ID : {} Name : {}", r.map_type, r.id, r.name);
        let _ = writeln!(s, "Keysize {} Valuesize {} MaxEntries {}", r.key_size, r.value_size, r.max_entries);
        let _ = writeln!(s, "{SEPARATOR}");
    }
    s
}
