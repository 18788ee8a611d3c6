//! Attaching a program to a host veth so that replacing it later never leaves
//! the veth without one.
use std::{io, path::Path};

use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};

use super::DatapathError;

/// Fixed priority and handle of our netlink filters, so a restarted agent can
/// find and replace them in place.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: u32 = 1;

/// How programs are attached to the veth's TC hooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links, pinned so they outlive the agent.
    Tcx,
    /// Netlink filters on a clsact qdisc, which outlive the agent by themselves.
    Netlink,
}

impl AttachMode {
    fn resolve(self) -> Self {
        match self {
            Self::Auto if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) => Self::Tcx,
            Self::Auto => Self::Netlink,
            mode => mode,
        }
    }
}

/// Attaches `prog` on `ifname`'s `hook`, atomically replacing what a previous
/// load attached there (the pinned TCX link at `link_pin`, or our netlink
/// filter), never detaching first.
///
/// `same_device`: the pinned link, if any, was made for this very device.
/// When it was not (the veth was recreated, so the link is defunct or on
/// another device), a new link is made and the old one dropped after.
pub fn attach_or_replace(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
    mode: AttachMode,
    link_pin: &Path,
    same_device: bool,
) -> Result<(), DatapathError> {
    match mode.resolve() {
        AttachMode::Tcx => {
            let fresh = |prog: &mut SchedClassifier| {
                prog.attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))
            };
            let id = match PinnedLink::from_pin(link_pin) {
                Ok(old) if same_device => {
                    let old = FdLink::from(old);
                    // Already running this program (an agent restart): an
                    // update would only cost a grace period.
                    if old.info().is_ok_and(|l| prog.info().is_ok_and(|p| p.id() == l.program_id())) {
                        return Ok(());
                    }
                    match prog.attach_to_link(old.try_into()?) {
                        Ok(id) => id,
                        // The link outlived its device after all.
                        Err(_) => fresh(prog)?,
                    }
                }
                _ => fresh(prog)?,
            };
            let link: FdLink = prog.take_link(id)?.try_into()?;
            remove_pin(link_pin)?;
            // Pinned, the link (and so the attachment) outlives this process.
            link.pin(link_pin).map_err(|e| DatapathError::Pin(link_pin.to_owned(), e.to_string()))?;
        }
        AttachMode::Netlink | AttachMode::Auto => {
            if let Err(e) = tc::qdisc_add_clsact(ifname)
                && !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
            {
                return Err(DatapathError::Clsact(ifname.to_owned(), e));
            }
            let options = NlOptions { priority: NL_PRIORITY, handle: TcHandle::from(NL_HANDLE), ..Default::default() };
            let id = match prog.attach_with_options(ifname, hook, TcAttachOptions::Netlink(options)) {
                Ok(id) => id,
                // Our filter is already there: replace its program in place.
                Err(create_err) => {
                    let existing =
                        SchedClassifierLink::attached(ifname, hook, NL_PRIORITY, TcHandle::from(NL_HANDLE), None)
                            .map_err(|_| create_err)?;
                    prog.attach_to_link(existing)?
                }
            };
            // Dropping the link would remove the filter; the filter must stay.
            std::mem::forget(prog.take_link(id)?);
        }
    }
    Ok(())
}

/// Removes what [`attach_or_replace`] attached. A veth that is already gone
/// took its attachments with it.
pub fn detach(ifname: Option<&str>, prog_name: &str, hook: TcAttachType, link_pin: &Path) -> Result<(), DatapathError> {
    if let Ok(link) = PinnedLink::from_pin(link_pin) {
        // Unpinned and dropped, the last reference goes and the link detaches.
        drop(link.unpin().map_err(|e| DatapathError::Pin(link_pin.to_owned(), e.to_string()))?);
        return Ok(());
    }
    let Some(ifname) = ifname else { return Ok(()) };
    match tc::qdisc_detach_program(ifname, hook, prog_name) {
        Ok(()) => Ok(()),
        Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::Detach(ifname.to_owned(), e.to_string())),
    }
}

pub(super) fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::Pin(path.to_owned(), e.to_string())),
    }
}
