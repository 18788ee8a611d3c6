//! Changes to this network namespace's links, routes and addresses, from the
//! kernel's own notifications (rtnetlink multicast groups): a pod's veth
//! appears, goes away, or gets the host route a CNI installs for the pod's
//! address; the node gains or loses an address; a filter or a clsact qdisc
//! is removed. The agent looks for pending pods' veths when one arrives,
//! instead of polling, and puts back an attachment that went.
use std::{collections::BTreeSet, net::IpAddr, net::Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    constants::{RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_TC},
    packet_core::NetlinkPayload,
    packet_route::{RouteNetlinkMessage, address::AddressAttribute},
    sys::{AsyncSocket, SocketAddr},
};
use tokio::sync::mpsc;

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A link or a route.
    Links,
    /// An IPv6 address of the node.
    Addresses,
    /// A filter or a qdisc of the link with this index was removed.
    Filters(u32),
    /// Notifications were lost: look at everything again.
    Lost,
}

/// Subscribes to link, route, IPv6 address and TC removals; every one sends its
/// kind on the returned channel (coalesce them: a pod start makes several).
/// Call from within the tokio runtime, in the namespace to watch.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<Change>> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_TC;
    connection.socket_mut().socket_mut().bind(&SocketAddr::new(0, groups))?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let inner = match message.payload {
                NetlinkPayload::InnerMessage(inner) => inner,
                // The socket's buffer was full and the kernel dropped
                // notifications: anything may have changed.
                NetlinkPayload::Overrun(_) => {
                    if tx.send(Change::Lost).is_err() {
                        return;
                    }
                    continue;
                }
                _ => continue,
            };
            let change = match inner {
                RouteNetlinkMessage::NewLink(_)
                | RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::NewRoute(_)
                | RouteNetlinkMessage::DelRoute(_) => Change::Links,
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => Change::Addresses,
                RouteNetlinkMessage::DelTrafficFilter(tc) | RouteNetlinkMessage::DelQueueDiscipline(tc) => {
                    let Ok(ifindex) = u32::try_from(tc.header.index) else { continue };
                    Change::Filters(ifindex)
                }
                _ => continue,
            };
            if tx.send(change).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The node's IPv6 addresses on every interface, link-local ones left out
/// (the programs know those by their prefix).
pub async fn ipv6_addrs() -> std::io::Result<BTreeSet<Ipv6Addr>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let messages: Result<Vec<_>, _> = handle.address().get().execute().try_collect().await;
    connection.abort();
    let messages = messages.map_err(std::io::Error::other)?;
    Ok(messages
        .iter()
        .flat_map(|m| &m.attributes)
        .filter_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(v6)) if !v6.is_unicast_link_local() => Some(*v6),
            _ => None,
        })
        .collect())
}
