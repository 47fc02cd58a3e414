//! The netlink requests only the plugin makes: the veth pair, and inside the pod's
//! namespace its link, addresses and routes. The shared half (link summaries,
//! lookups by name, deletes, errno helpers) is `portgroup::netlink`.

// One `unsafe`: netlink-sys takes a socket made inside the pod's namespace only as
// a raw descriptor.
#![allow(unsafe_code)]

use std::net::IpAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use portgroup::mac::MacAddr;
use portgroup::netlink::{is_not_found, link_change, LinkSummary, Netlink};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

/// One veth pair as ADD makes it.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_mac: MacAddr,
    /// The bridge's MTU: a port below it would pull the bridge down with it.
    pub host_mtu: u32,
    /// The bridge the host end joins ([`PodNetlink::attach_host_end`]).
    pub bridge_index: u32,
    pub pod_name: &'a str,
    pub pod_mac: MacAddr,
    pub pod_mtu: u32,
    pub pod_netns: &'a OwnedFd,
    /// Whether the pod end comes up (the config's `linkDown` keeps it down).
    pub pod_up: bool,
}

/// The plugin's requests on a [`Netlink`] connection. The plugin runs a
/// current-thread runtime, so the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait PodNetlink: Sized {
    /// A connection whose socket was made inside `netns` (on a short-lived thread).
    fn connect_in(netns: &OwnedFd) -> std::io::Result<Self>;

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkSummary>, rtnetlink::Error>;

    /// Creates a veth pair in one request from the node's namespace: the pod end
    /// is the request's own link, made directly inside the pod's netns with its
    /// MAC and MTU, and up (unless `pod_up` is false); the host end is its peer,
    /// in this namespace at the bridge's MTU (so the bridge's own MTU never
    /// moves), down and on no bridge until [`PodNetlink::attach_host_end`].
    /// Nothing ever exists half-made in the wrong namespace, and the pod's side
    /// needs no socket of its own. (The kernel opens the request's link after
    /// linking the pair, but refuses to open the peer then, with ENOTCONN: so
    /// the pod end is the one made up here, and the host end gets a request of
    /// its own, in this namespace.)
    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), rtnetlink::Error>;

    /// Puts the host end of a veth [`PodNetlink::create_veth`] made on its bridge,
    /// up: one request, by name.
    async fn attach_host_end(&self, name: &str, bridge_index: u32) -> Result<(), rtnetlink::Error>;

    async fn set_up(&self, index: u32) -> Result<(), rtnetlink::Error>;

    async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), rtnetlink::Error>;

    /// Addresses on one link, as (address, prefix length).
    async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error>;

    /// A route through `index`: to `dst` (default route when None) via `gateway`.
    async fn add_route(
        &self,
        index: u32,
        dst: Option<ipnetwork::IpNetwork>,
        gateway: Option<IpAddr>,
    ) -> Result<(), rtnetlink::Error>;
}

impl PodNetlink for Netlink {
    fn connect_in(netns: &OwnedFd) -> std::io::Result<Self> {
        let socket = portgroup::netns::route_socket_in(netns)?;
        socket.set_non_blocking(true)?;
        // SAFETY: the fd comes from a socket we own and hand over whole.
        let socket: netlink_sys::TokioSocket =
            unsafe { std::os::fd::FromRawFd::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkSummary>, rtnetlink::Error> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(LinkSummary::from_message)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), rtnetlink::Error> {
        let host_end = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.host_name.to_string())
            .mtu(spec.host_mtu)
            .address(spec.host_mac.0.to_vec());
        let mut pod_end = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.pod_name.to_string())
            .mtu(spec.pod_mtu)
            .address(spec.pod_mac.0.to_vec())
            .setns_by_fd(spec.pod_netns.as_raw_fd());
        if spec.pod_up {
            pod_end = pod_end.up();
        }
        let message = pod_end
            .set_info_data(InfoData::Veth(InfoVeth::Peer(host_end.build())))
            .build();
        self.handle.link().add(message).execute().await
    }

    async fn attach_host_end(&self, name: &str, bridge_index: u32) -> Result<(), rtnetlink::Error> {
        let message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(name.to_string())
            .controller(bridge_index)
            .up()
            .build();
        self.set_link(message).await
    }

    async fn set_up(&self, index: u32) -> Result<(), rtnetlink::Error> {
        self.set_link(link_change(index).up().build()).await
    }

    async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), rtnetlink::Error> {
        self.handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
    }

    async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error> {
        use netlink_packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    async fn add_route(
        &self,
        index: u32,
        dst: Option<ipnetwork::IpNetwork>,
        gateway: Option<IpAddr>,
    ) -> Result<(), rtnetlink::Error> {
        use rtnetlink::RouteMessageBuilder;
        use std::net::{Ipv4Addr, Ipv6Addr};
        let v6 = match (dst, gateway) {
            (Some(d), _) => d.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => false,
        };
        let message = if v6 {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(index);
            if let Some(ipnetwork::IpNetwork::V6(d)) = dst {
                b = b.destination_prefix(d.network(), d.prefix());
            }
            if let Some(IpAddr::V6(g)) = gateway {
                b = b.gateway(g);
            }
            b.build()
        } else {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index);
            if let Some(ipnetwork::IpNetwork::V4(d)) = dst {
                b = b.destination_prefix(d.network(), d.prefix());
            }
            if let Some(IpAddr::V4(g)) = gateway {
                b = b.gateway(g);
            }
            b.build()
        };
        self.handle.route().add(message).execute().await
    }
}
