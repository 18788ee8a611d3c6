//! Attaching a program to a host veth so that replacing it later never leaves
//! the veth without one.
use std::{io, path::Path};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use aya_obj::generated::bpf_attach_type;
use rtnetlink::{
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle as NlTcHandle, TcMessage, TcOption},
    },
    packet_utils::nla::{Nla, NlasIterator},
};

use super::DatapathError;

/// Fixed priority and handle of our netlink filters, so a restarted agent can
/// find and replace them in place.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: u32 = 1;
/// The clsact qdisc's ingress and egress parents (`TC_H_CLSACT` with
/// `TC_H_MIN_INGRESS` / `TC_H_MIN_EGRESS`).
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// How programs are attached to the veth's TC hooks.
///
/// Filters are the default because a pod's start waits for its attachment:
/// a filter is in place in well under a millisecond, where each TCX
/// attachment waits for an RCU grace period under the RTNL lock (two per
/// pod, one after the other, 10-15 ms each here), and so does every other
/// TCX attachment or link change on the node meanwhile. What TCX gives in
/// exchange, an attachment no `tc` command removes, the agent makes up for
/// by putting back any filter of its own that goes (see `Reconciler::restore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Netlink filters on a clsact qdisc, which outlive the agent by
    /// themselves. Any kernel. (`auto`, the old default's name, is this.)
    #[default]
    #[value(alias = "auto")]
    Netlink,
    /// TCX links (kernel 6.6+), pinned so they outlive the agent.
    Tcx,
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
    match mode {
        AttachMode::Tcx => {
            let fresh = |prog: &mut SchedClassifier| {
                prog.attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))
            };
            let id = match PinnedLink::from_pin(link_pin) {
                Ok(old) if same_device => {
                    let old = FdLink::from(old);
                    // Already running this program (an agent restart): an
                    // update would only cost a grace period. A link detached
                    // from under us still names its program: asked is the
                    // device. Updating a detached link fails: a new one is made.
                    let ifindex = nix::net::if_::if_nametoindex(ifname).ok();
                    let running = |p: aya::programs::ProgramInfo| {
                        ifindex.is_some_and(|i| is_attached(i, hook, AttachMode::Tcx, p.id()).unwrap_or(false))
                    };
                    if prog.info().is_ok_and(running) {
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
            // Attached before as a filter (the mode changed): now the link
            // is in place, the filter goes.
            remove_filter(ifname, hook, prog.info()?.name_as_str().unwrap_or_default())?;
        }
        AttachMode::Netlink => {
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
            // Attached before through a TCX link (the mode changed), which
            // the kernel would run first: now the filter is in place, the
            // link goes.
            remove_link(link_pin)?;
        }
    }
    Ok(())
}

/// Whether `want` runs on device `ifindex`'s `hook` as [`attach_or_replace`]
/// attaches it in `mode`: an attachment someone removed (`tc qdisc del`,
/// `bpftool link detach`) leaves the veth open until it is made again. An
/// error says nothing either way.
pub fn is_attached(ifindex: u32, hook: TcAttachType, mode: AttachMode, want: u32) -> io::Result<bool> {
    match mode {
        AttachMode::Tcx => {
            let attach_type = match hook {
                TcAttachType::Ingress => bpf_attach_type::BPF_TCX_INGRESS,
                _ => bpf_attach_type::BPF_TCX_EGRESS,
            };
            Ok(super::sys::tcx_program_ids(ifindex, attach_type)?.contains(&want))
        }
        AttachMode::Netlink => Ok(filter_program(ifindex, hook)? == Some(want)),
    }
}

/// The program our netlink filter on device `ifindex`'s `hook` runs, if it
/// is there.
pub fn filter_program(ifindex: u32, hook: TcAttachType) -> io::Result<Option<u32>> {
    let mut message = TcMessage::default();
    message.header.index = i32::try_from(ifindex).map_err(io::Error::other)?;
    message.header.parent = NlTcHandle::from(match hook {
        TcAttachType::Ingress => CLSACT_INGRESS,
        _ => CLSACT_EGRESS,
    });
    // A device without the clsact qdisc answers with an empty dump.
    let filters = crate::rtnl::request(RouteNetlinkMessage::GetTrafficFilter(message), true)?;
    Ok(filters.iter().find_map(|f| match f {
        RouteNetlinkMessage::NewTrafficFilter(f)
            if f.header.handle == NlTcHandle::from(NL_HANDLE) && (f.header.info >> 16) as u16 == NL_PRIORITY =>
        {
            bpf_program_id(f)
        }
        _ => None,
    }))
}

/// The program a `bpf` filter runs: its `TCA_BPF_ID`, inside the options
/// the route crate leaves as one unparsed attribute for this filter kind.
fn bpf_program_id(filter: &TcMessage) -> Option<u32> {
    const TCA_BPF_ID: u16 = 11;
    let options = filter.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(options) => Some(options),
        _ => None,
    })?;
    options.iter().find_map(|o| {
        let TcOption::Other(nested) = o else { return None };
        let mut value = vec![0; nested.value_len()];
        nested.emit_value(&mut value);
        NlasIterator::new(&value[..])
            .filter_map(Result::ok)
            .find(|nla| nla.kind() == TCA_BPF_ID)
            .and_then(|nla| Some(u32::from_ne_bytes(nla.value().try_into().ok()?)))
    })
}

/// Removes what [`attach_or_replace`] attached, in either mode. A veth that
/// is already gone took its attachments with it.
pub fn detach(ifname: Option<&str>, prog_name: &str, hook: TcAttachType, link_pin: &Path) -> Result<(), DatapathError> {
    remove_link(link_pin)?;
    match ifname {
        Some(ifname) => remove_filter(ifname, hook, prog_name),
        None => Ok(()),
    }
}

/// Detaches the pinned TCX link at `link_pin`, if there is one.
fn remove_link(link_pin: &Path) -> Result<(), DatapathError> {
    if let Ok(link) = PinnedLink::from_pin(link_pin) {
        // Unpinned and dropped, the last reference goes and the link detaches.
        drop(link.unpin().map_err(|e| DatapathError::Pin(link_pin.to_owned(), e.to_string()))?);
    }
    Ok(())
}

/// Removes our filter running `prog_name` from `ifname`'s `hook`, if there is one.
fn remove_filter(ifname: &str, hook: TcAttachType, prog_name: &str) -> Result<(), DatapathError> {
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
