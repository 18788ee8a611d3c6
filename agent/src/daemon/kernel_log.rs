//! The programs' own log (`--ebpf-log-level`), forwarded into ours.
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::datapath::Datapath;

/// The kernel log buffer, the node's pinned one.
pub fn open(datapath: &Datapath) -> Option<AsyncFd<EbpfLogger<KernelLog>>> {
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
