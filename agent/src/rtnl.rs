//! One rtnetlink request from a blocking caller, its replies read to the end
//! (the datapath's attach threads and the reconciler's lookups have no
//! runtime to hand).
use std::io;

use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// Sends `message` and returns what the kernel answers: every message of
/// the dump when `dump`, else the one reply. The kernel's refusal (no such
/// route, no such device) is the error it gives; a dump the kernel
/// reports inconsistent (changed while it ran) is `Interrupted`. Messages
/// this crate cannot parse (another party's filter options, say) are
/// skipped, not taken for the end.
pub fn request(message: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = if dump { NLM_F_REQUEST | NLM_F_DUMP } else { NLM_F_REQUEST };
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let refused = |code: i32| io::Error::from_raw_os_error(code.saturating_neg());
    let mut out = Vec::new();
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut at = 0;
        // A datagram holds several messages; a dump ends with a Done.
        while at < reply.len() {
            let length = NetlinkBuffer::new_checked(&reply[at..]).map_err(io::Error::other)?.length() as usize;
            let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..]);
            at += length.max(1).next_multiple_of(4);
            let Ok(message) = parsed else { continue };
            if message.header.flags & NLM_F_DUMP_INTR != 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            match message.payload {
                NetlinkPayload::Done(done) if done.code != 0 => return Err(refused(done.code)),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(refused(code.get()));
                    }
                }
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
        }
    }
}
