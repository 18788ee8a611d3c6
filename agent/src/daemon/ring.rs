//! The node's verdict ring as the agent reads it for flow logs.
use std::path::Path;

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::{bpffs::PinLayout, status};

/// The verdict ring with the lock that makes us its only reader.
pub struct LockedRing {
    pub ring: RingBuf<MapData>,
    _lock: std::fs::File,
}

impl std::os::fd::AsRawFd for LockedRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// The pinned verdict ring, if it exists yet and nobody else (`na-cli
/// events`) is reading it; the lock is held as long as the ring is open.
pub fn open(layout: &PinLayout, lock: &Path) -> Option<AsyncFd<LockedRing>> {
    let data = MapData::from_pin(layout.global_map(na_common::names::MAP_EVENTS)).ok()?;
    let ring = RingBuf::try_from(Map::from_map_data(data).ok()?).ok()?;
    let lock = match status::try_lock(lock) {
        Ok(Some(lock)) => lock,
        Ok(None) => return None,
        Err(e) => {
            warn!(lock = %lock.display(), "locking the event ring: {e}");
            return None;
        }
    };
    // SAFETY: the ring owns its map fd and keeps it open, unchanged, for as
    // long as the AsyncFd owns the ring.
    unsafe { AsyncFd::register_with_interest(LockedRing { ring, _lock: lock }, Interest::READABLE) }.ok()
}

/// Resolves when `fd` has something to read; never while there is no `fd`.
pub async fn readable<T: std::os::fd::AsRawFd>(fd: Option<&mut AsyncFd<T>>) -> std::io::Result<()> {
    match fd {
        Some(fd) => fd.readable_mut().await.map(|mut guard| guard.clear_ready()),
        None => std::future::pending().await,
    }
}
