//! `judge_dnat` on the node's PREROUTING hooks, right after DNAT (see
//! `na_common::service`).
//!
//! aya 0.14 has no netfilter program type, so this module does with raw
//! `bpf()` calls what aya would: it takes the program's instructions from
//! the object, relocated by aya-obj against the node's pinned maps, loads
//! them as `BPF_PROG_TYPE_NETFILTER`, and links them at PREROUTING for IPv4
//! and IPv6. The links are pinned under the programs' version: a restarted
//! agent finds them in place (no gap), an upgraded one links its own before
//! removing the old ones (for a moment both run; the first to see a packet
//! takes it).
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_prog_type};
use na_common::{
    names::{GLOBAL_MAPS, MAP_DNAT_HOOK, PROG_AFTER_DNAT},
    service::DnatHook,
};
use thiserror::Error;

use super::{
    OBJECT,
    attach::remove_pin,
    kernel_btf::{self, Btf},
    sys::{sys_bpf, sys_bpf_fd, zeroed_attr},
};
use crate::bpffs::PinLayout;

/// Just after DNAT (`NF_IP_PRI_NAT_DST` is -100), before anything that
/// filters or routes on the translated destination.
const PRIORITY: i32 = -99;
const NF_INET_PRE_ROUTING: u32 = 0;
const FAMILIES: [(&str, u32); 2] = [("ipv4", libc::NFPROTO_IPV4 as u32), ("ipv6", libc::NFPROTO_IPV6 as u32)];
const VERIFIER_LOG_BYTES: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum DnatHookError {
    #[error("the kernel's BTF ({path}): {source}")]
    KernelBtf { path: &'static str, source: io::Error },
    #[error("the kernel's BTF: {0}")]
    Offsets(#[from] kernel_btf::BtfError),
    #[error("the eBPF object: {0}")]
    Object(String),
    #[error("node map {0}: {1}")]
    Map(&'static str, String),
    #[error("loading {PROG_AFTER_DNAT}: {source}\n{log}")]
    Load { source: io::Error, log: String },
    #[error("linking {PROG_AFTER_DNAT} at {family} PREROUTING: {source}")]
    Link { family: &'static str, source: io::Error },
    #[error("pin {0}: {1}")]
    Pin(PathBuf, String),
}

/// Links `judge_dnat` of `version` at PREROUTING (or keeps the links an
/// earlier agent pinned), removes other versions' links, and turns the hand
/// over on in `handle_egress`.
pub fn install(layout: &PinLayout, version: &str) -> Result<(), DnatHookError> {
    let pins = FAMILIES.map(|(family, _)| layout.node_link(&link_name(family, version)));
    let adopted = pins.iter().all(|pin| pin.exists());
    if !adopted {
        let prog = load(layout)?;
        for ((family, pf), pin) in FAMILIES.iter().zip(&pins) {
            let link = link(&prog, *pf).map_err(|source| DnatHookError::Link { family, source })?;
            remove_pin(pin).map_err(|e| DnatHookError::Pin(pin.clone(), e.to_string()))?;
            pin_fd(&link, pin).map_err(|e| DnatHookError::Pin(pin.clone(), e.to_string()))?;
        }
    }
    let ours = FAMILIES.map(|(family, _)| link_name(family, version));
    remove_links(layout, |name| name.starts_with(PROG_AFTER_DNAT) && !ours.iter().any(|own| own == name))?;
    // Links of this version already on and the hand-over with them (an
    // agent restart): the kernel, and so its offsets, are the same.
    if adopted && hook_map(layout)?.get(&0, 0).is_ok_and(|hook| hook.active != 0) {
        return Ok(());
    }
    let vmlinux = std::fs::read(kernel_btf::VMLINUX)
        .map_err(|source| DnatHookError::KernelBtf { path: kernel_btf::VMLINUX, source })?;
    let btf = Btf::parse(&vmlinux)?;
    let hook = DnatHook {
        active: 1,
        skb_data_offset: btf.member_offset("sk_buff", "data")?,
        skb_len_offset: btf.member_offset("sk_buff", "len")?,
        ..DnatHook::default()
    };
    write_hook(layout, hook)
}

/// Unlinks `judge_dnat` and turns the hand over off: Service addresses are
/// judged as the addresses they are (what a kernel without the hook gets).
pub fn uninstall(layout: &PinLayout) -> Result<(), DnatHookError> {
    write_hook(layout, DnatHook::default())?;
    remove_links(layout, |name| name.starts_with(PROG_AFTER_DNAT))
}

fn link_name(family: &str, version: &str) -> String {
    format!("{PROG_AFTER_DNAT}_{family}_{version}")
}

fn hook_map(layout: &PinLayout) -> Result<Array<MapData, DnatHook>, DnatHookError> {
    let err = |e: String| DnatHookError::Map(MAP_DNAT_HOOK, e);
    let data = MapData::from_pin(layout.global_map(MAP_DNAT_HOOK)).map_err(|e| err(e.to_string()))?;
    Array::try_from(Map::Array(data)).map_err(|e| err(e.to_string()))
}

fn write_hook(layout: &PinLayout, hook: DnatHook) -> Result<(), DnatHookError> {
    hook_map(layout)?.set(0, hook, 0).map_err(|e| DnatHookError::Map(MAP_DNAT_HOOK, e.to_string()))
}

fn remove_links(layout: &PinLayout, doomed: impl Fn(&str) -> bool) -> Result<(), DnatHookError> {
    let Ok(entries) = std::fs::read_dir(layout.links_dir()) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if PinLayout::parse_node_link(&name).is_some_and(&doomed) {
            remove_pin(&entry.path()).map_err(|e| DnatHookError::Pin(entry.path(), e.to_string()))?;
        }
    }
    Ok(())
}

/// The node's pinned maps, open.
fn pinned_maps(layout: &PinLayout) -> Result<Vec<(&'static str, MapData)>, DnatHookError> {
    GLOBAL_MAPS
        .iter()
        .map(|name| {
            MapData::from_pin(layout.global_map(name))
                .map(|data| (*name, data))
                .map_err(|e| DnatHookError::Map(name, e.to_string()))
        })
        .collect()
}

/// The program's instructions, relocated against `pinned` (which must stay
/// open until they are loaded).
fn instructions(pinned: &[(&str, MapData)]) -> Result<Vec<bpf_insn>, DnatHookError> {
    let mut obj = aya_obj::Object::parse(OBJECT).map_err(|e| DnatHookError::Object(e.to_string()))?;
    let fd_of = |name: &str| pinned.iter().find(|(n, _)| *n == name).map(|(_, data)| data.fd().as_fd().as_raw_fd());
    // Every function is relocated, the other programs' too; a map this one
    // does not use and that is not pinned (the other programs' globals)
    // gets no descriptor, which the kernel would refuse were it used.
    let maps: Vec<(String, i32, aya_obj::Map)> =
        obj.maps.iter().map(|(name, map)| (name.clone(), fd_of(name).unwrap_or(-1), map.clone())).collect();
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(maps.iter().map(|(name, fd, map)| (name.as_str(), *fd, map)), &text_sections)
        .map_err(|e| DnatHookError::Object(e.to_string()))?;
    obj.relocate_calls(&text_sections).map_err(|e| DnatHookError::Object(e.to_string()))?;
    let program = obj
        .programs
        .get(PROG_AFTER_DNAT)
        .ok_or_else(|| DnatHookError::Object(format!("no program {PROG_AFTER_DNAT}")))?;
    Ok(obj.functions[&program.function_key()].instructions.clone())
}

fn load(layout: &PinLayout) -> Result<OwnedFd, DnatHookError> {
    let pinned = pinned_maps(layout)?;
    let insns = instructions(&pinned)?;
    let license = CString::from(c"GPL");
    let mut log = vec![0u8; VERIFIER_LOG_BYTES];
    let mut attr = zeroed_attr();
    // SAFETY: the union's PROG_LOAD member, zeroed and filled.
    unsafe {
        let a = &mut attr.__bindgen_anon_3;
        a.prog_type = bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32;
        a.expected_attach_type = bpf_attach_type::BPF_NETFILTER as u32;
        a.insns = insns.as_ptr() as u64;
        a.insn_cnt = insns.len() as u32;
        a.license = license.as_ptr() as u64;
        for (dst, src) in a.prog_name.iter_mut().zip(PROG_AFTER_DNAT.bytes()) {
            *dst = src as libc::c_char;
        }
    }
    match sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            // Again with the verifier's log, which only a failure needs.
            // SAFETY: as above.
            unsafe {
                let a = &mut attr.__bindgen_anon_3;
                a.log_level = 1;
                a.log_buf = log.as_mut_ptr() as u64;
                a.log_size = log.len() as u32;
            }
            let _ = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            Err(DnatHookError::Load { source, log: tail.into_iter().rev().collect::<Vec<_>>().join("\n") })
        }
    }
}

fn link(prog: &OwnedFd, pf: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: the union's LINK_CREATE member, zeroed and filled.
    unsafe {
        let l = &mut attr.link_create;
        l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
        l.attach_type = bpf_attach_type::BPF_NETFILTER as u32;
        l.__bindgen_anon_3.netfilter.pf = pf;
        l.__bindgen_anon_3.netfilter.hooknum = NF_INET_PRE_ROUTING;
        l.__bindgen_anon_3.netfilter.priority = PRIORITY;
    }
    sys_bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

fn pin_fd(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}
