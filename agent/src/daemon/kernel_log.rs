//! The programs' own log (`--ebpf-log-level`), forwarded into ours.
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::datapath::Datapath;

/// The kernel log buffer, found through the programs, so it opens once
/// they are attached.
pub fn open(datapath: &Datapath) -> Option<AsyncFd<EbpfLogger<KernelLog>>> {
    let id = datapath
        .programs()
        .map(|p| p.as_ref().expect("loaded").ingress_id())
        .map_err(|e| warn!("opening the kernel log: {e}"))
        .ok()?;
    let logger =
        EbpfLogger::init_from_id_with_logger(id, KernelLog).map_err(|e| warn!("opening the kernel log: {e}")).ok()?;
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
