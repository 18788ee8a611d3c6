//! Raw `bpf()` calls for what aya 0.14 does not offer, or offers only in a
//! way that needs more than the agent's capabilities.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd};

pub fn zeroed_attr() -> bpf_attr {
    // SAFETY: all-zero is the kernel's "unset" for every field.
    unsafe { std::mem::zeroed() }
}

/// One `bpf()` call.
pub fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a whole `bpf_attr` and lives across the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// A `bpf()` call that returns a new descriptor.
pub fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor, now ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the map stored under `key` in the map of maps `outer`, or
/// None when there is none. aya reads an inner map by opening it from its
/// id, which takes CAP_SYS_ADMIN; comparing ids needs only CAP_BPF, all
/// the DaemonSet grants.
pub fn inner_map_id(outer: BorrowedFd<'_>, key: u32) -> io::Result<Option<u32>> {
    let mut id = 0u32;
    let mut attr = zeroed_attr();
    // SAFETY: the union member of the map element commands, wholly set.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = outer.as_raw_fd() as u32;
    elem.key = &key as *const u32 as u64;
    elem.__bindgen_anon_1.value = &mut id as *mut u32 as u64;
    match sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes `key` from `map`; an absent key is fine. aya 0.14 offers no
/// delete for arrays of maps, where the kernel has one (it empties the slot).
pub fn delete_elem(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: the union member of the map element commands, wholly set.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = map.as_raw_fd() as u32;
    elem.key = &key as *const u32 as u64;
    match sys_bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Ids of the programs attached through TCX to `ifindex`'s `attach_type`
/// hook (at most 64). aya reads them by opening each program from its id,
/// which takes CAP_SYS_ADMIN; the ids alone need only CAP_NET_ADMIN.
pub fn tcx_program_ids(ifindex: u32, attach_type: aya_obj::generated::bpf_attach_type) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = zeroed_attr();
    // SAFETY: the union member of BPF_PROG_QUERY, wholly set.
    let query = unsafe { &mut attr.query };
    query.__bindgen_anon_1.target_ifindex = ifindex;
    query.attach_type = attach_type as u32;
    query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    query.prog_ids = ids.as_mut_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: as above; the kernel wrote the count back.
    ids.truncate(unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize);
    Ok(ids)
}
