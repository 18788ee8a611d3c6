//! One rtnetlink request from a blocking caller, its replies read to the end
//! (the datapath's attach threads and the reconciler's lookups have no
//! runtime to hand).
use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// Sends `message` and returns what the kernel answers: every message of
/// the dump when `dump`, else the one reply. `None` when the kernel answers
/// with an error (no such route, no such device) or the socket fails.
pub fn request(message: RouteNetlinkMessage, dump: bool) -> Option<Vec<RouteNetlinkMessage>> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = if dump { NLM_F_REQUEST | NLM_F_DUMP } else { NLM_F_REQUEST };
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    let mut socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&SocketAddr::new(0, 0)).ok()?;
    socket.send(&bytes, 0).ok()?;
    let mut out = Vec::new();
    loop {
        let (reply, _) = socket.recv_from_full().ok()?;
        let mut at = 0;
        // A datagram holds several messages; a dump ends with a Done.
        while at < reply.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..]).ok()?;
            at += (message.header.length as usize).max(1).next_multiple_of(4);
            match message.payload {
                NetlinkPayload::Done(_) => return Some(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return None,
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !dump {
                        return Some(out);
                    }
                }
                _ => {}
            }
        }
    }
}
