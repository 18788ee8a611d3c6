//! `na-cli events`: verdicts as they happen, as flow log lines.
//!
//! The ring buffer has one read position: two readers would each see part of
//! the stream. Whoever reads it holds a lock beside the status file, so when
//! the agent writes flow logs this follows its flow log file instead, and
//! when it does not, this reads the ring itself (and the agent, should it
//! start meanwhile, waits for the ring until we are done).
use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Map, MapData, RingBuf};
use na_common::names::MAP_EVENTS;

use super::{InspectError, Sources};
use crate::{
    flowlog::{self, FlowLine},
    status::{self, Status},
};

/// How often a follower looks for news when nothing wakes it.
const TICK: Duration = Duration::from_millis(100);

/// When to stop following.
#[derive(Clone, Copy, Debug, Default)]
pub struct Until {
    pub count: Option<usize>,
    pub duration: Option<Duration>,
}

impl Until {
    fn done(&self, seen: usize, started: Instant) -> bool {
        self.count.is_some_and(|c| seen >= c) || self.duration.is_some_and(|d| started.elapsed() >= d)
    }
}

/// Where the events come from this time.
#[derive(Debug)]
pub enum Origin {
    /// The ring itself: nobody else reads it.
    Ring,
    /// The agent reads the ring; its flow log file carries the events.
    FlowLog(PathBuf),
}

/// Follows events until `until`, handing each line to `out`.
pub fn follow(sources: &Sources, until: Until, mut out: impl FnMut(&FlowLine)) -> Result<Origin, InspectError> {
    let lock_path = status::events_lock_path(&sources.status_file);
    let lock = status::try_lock(&lock_path)
        .map_err(|source| InspectError::Read { path: lock_path.display().to_string(), source })?;
    match lock {
        Some(_held) => {
            follow_ring(sources, until, &mut out)?;
            Ok(Origin::Ring)
        }
        None => {
            let status = sources.status("find the agent's flow log")?;
            match status.flow_log.as_deref() {
                Some(path) if path != "stdout" => {
                    follow_file(Path::new(path), until, &mut out)?;
                    Ok(Origin::FlowLog(path.into()))
                }
                _ => Err(InspectError::Busy(
                    "the agent reads the events and writes them to its standard output: read its log \
                     (kubectl logs), or set NA_FLOW_LOG_FILE"
                        .into(),
                )),
            }
        }
    }
}

fn follow_ring(sources: &Sources, until: Until, out: &mut impl FnMut(&FlowLine)) -> Result<(), InspectError> {
    let pin = sources.layout.global_map(MAP_EVENTS);
    let data = MapData::from_pin(&pin).map_err(|e| match e {
        aya::maps::MapError::SyscallError(ref s) if s.io_error.kind() == std::io::ErrorKind::NotFound => {
            InspectError::NotFound(format!("{}: no event ring yet (no pod has been loaded)", pin.display()))
        }
        e => InspectError::kernel(pin.display(), &e),
    })?;
    let mut ring = RingBuf::try_from(Map::from_map_data(data).map_err(|e| InspectError::kernel(MAP_EVENTS, &e))?)
        .map_err(|e| InspectError::kernel(MAP_EVENTS, &e))?;
    // Records left from before are skipped: the kernel stamps no time on
    // them, so they would be shown as happening now.
    while ring.next().is_some() {}
    let mut status = sources.status_if_any().unwrap_or_default();
    let mut reread = Instant::now();
    let (started, mut seen) = (Instant::now(), 0);
    while !until.done(seen, started) {
        let mut fds = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fds, 1, TICK.as_millis() as i32) };
        while let Some(item) = ring.next() {
            let Some(event) = flowlog::decode(&item) else { continue };
            // Pods come and go: look at a fresher status for one we do not know.
            if status.pod_by_ifindex(event.ifindex).is_none() && reread.elapsed() > Duration::from_secs(1) {
                status = sources.status_if_any().unwrap_or_default();
                reread = Instant::now();
            }
            out(&line(&status, &event));
            seen += 1;
            if until.done(seen, started) {
                break;
            }
        }
    }
    Ok(())
}

fn line(status: &Status, event: &na_common::events::PolicyEvent) -> FlowLine {
    let pod = status.pod_by_ifindex(event.ifindex).map(|p| na_policy::ObjectRef::new(&p.namespace, &p.name));
    flowlog::line(&status.node, event, pod.as_ref(), status, SystemTime::now())
}

/// Follows the agent's flow log from its current end, across rotations.
fn follow_file(path: &Path, until: Until, out: &mut impl FnMut(&FlowLine)) -> Result<(), InspectError> {
    let read_err = |source| InspectError::Read { path: path.display().to_string(), source };
    let open = || -> Result<(BufReader<std::fs::File>, u64), InspectError> {
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        let end = file.seek(SeekFrom::End(0)).map_err(read_err)?;
        Ok((BufReader::new(file), end))
    };
    let (mut reader, mut offset) = open()?;
    let (started, mut seen) = (Instant::now(), 0);
    let mut partial = String::new();
    while !until.done(seen, started) {
        let n = reader.read_line(&mut partial).map_err(read_err)?;
        if n == 0 {
            std::thread::sleep(TICK);
            // Rotated: the path now names a new, shorter file.
            if std::fs::metadata(path).is_ok_and(|m| m.len() < offset) {
                reader = BufReader::new(std::fs::File::open(path).map_err(read_err)?);
                offset = 0;
            }
            continue;
        }
        offset += n as u64;
        if !partial.ends_with('\n') {
            continue;
        }
        if let Ok(l) = serde_json::from_str::<FlowLine>(partial.trim_end()) {
            out(&l);
            seen += 1;
        }
        partial.clear();
    }
    Ok(())
}
