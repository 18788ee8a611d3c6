use std::{fs::File, path::Path};

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};

use crate::cmd::ip;

/// Prefix of every namespace the harness creates, followed by the creating
/// process id so leftovers of a killed run can be recognised and removed.
pub const PREFIX: &str = "nah-";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn create(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        // Links made here must be usable at once: duplicate address detection
        // would hold their link-local addresses back, and neighbour discovery
        // with them, for a second or more.
        ns.run(|| {
            for conf in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")?;
            }
            Ok::<_, std::io::Error>(())
        })?
        .context("turning off IPv6 duplicate address detection")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside this namespace: sockets, netlink and
    /// interface lookups made by `f` all see this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let file = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    /// An open handle on the namespace, for threads that live longer than a call.
    pub fn open(&self) -> Result<File> {
        let path = Path::new("/run/netns").join(&self.name);
        File::open(&path).with_context(|| format!("opening {}", path.display()))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!("{e:#}");
        }
    }
}

/// Deletes namespaces left by harness processes that no longer exist.
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
