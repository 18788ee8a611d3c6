//! The programs' own log (`--ebpf-log-level`), forwarded into ours.
use aya_log::EbpfLogger;
use na_common::names::MAP_LOGS;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::datapath::Datapath;

/// The kernel log buffer, the node's pinned one.
pub fn open(datapath: &Datapath) -> Option<AsyncFd<EbpfLogger<KernelLog>>> {
    // aya-log reads the ring as the object declares it; a ring of another
    // size, pinned by another version, would be misread (and aya-log panics
    // on a record it cannot parse).
    match datapath.global_map_entries(MAP_LOGS) {
        Ok((pinned, Some(declared))) if pinned == declared => {}
        Ok((pinned, declared)) => {
            warn!(
                pinned,
                ?declared,
                "the kernel log's pinned ring is not the one this agent's object declares: log off"
            );
            return None;
        }
        Err(e) => {
            warn!("opening the kernel log: {e}");
            return None;
        }
    }
    let mut object = datapath.bound_object().map_err(|e| warn!("opening the kernel log: {e}")).ok()?;
    let logger =
        EbpfLogger::init_with_logger(&mut object, KernelLog).map_err(|e| warn!("opening the kernel log: {e}")).ok()?;
    // SAFETY: the logger owns its ring's fd and keeps it open, unchanged, for
    // as long as the AsyncFd owns the logger.
    unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.ok()
}

/// Writes kernel log records as our own, at info: `--ebpf-log-level`
/// already chose what the programs say, so `RUST_LOG` must not hide it again.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        info!(target: "ebpf", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}
