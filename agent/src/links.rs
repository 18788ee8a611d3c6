//! Changes to this network namespace's links and routes, from the kernel's
//! own notifications (rtnetlink multicast groups): a pod's veth appears, goes
//! away, or gets the host route a CNI installs for the pod's address. The
//! agent looks for pending pods' veths when one arrives, instead of polling.
use futures::StreamExt;
use rtnetlink::{
    constants::{RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK},
    packet_core::NetlinkPayload,
    packet_route::RouteNetlinkMessage,
    sys::{AsyncSocket, SocketAddr},
};
use tokio::sync::mpsc;

/// Subscribes to link and route changes; every one sends a `()` on the
/// returned channel (coalesce them: a pod start makes several). Call from
/// within the tokio runtime, in the namespace to watch.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
    connection.socket_mut().socket_mut().bind(&SocketAddr::new(0, groups))?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(inner) = message.payload else { continue };
            let relevant = matches!(
                inner,
                RouteNetlinkMessage::NewLink(_)
                    | RouteNetlinkMessage::DelLink(_)
                    | RouteNetlinkMessage::NewRoute(_)
                    | RouteNetlinkMessage::DelRoute(_)
            );
            if relevant && tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
