//! The thin netlink edge: a handful of rtnetlink requests, and a plain summary of
//! a link that the pure parts (planner, CHECK) work on.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use crate::mac::MacAddr;

/// What the rest of the code needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "vlan", ... (None for a physical NIC).
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub admin_up: bool,
    pub lower_up: bool,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub alias: Option<String>,
    /// IFLA_LINK: a veth's peer index (in `link_netns_id` if set) or a VLAN's parent.
    pub link: Option<u32>,
    pub link_netns_id: Option<i32>,
    pub vlan_id: Option<u16>,
}

impl LinkSummary {
    pub fn from_message(msg: &LinkMessage) -> Self {
        let mut link = LinkSummary {
            index: msg.header.index,
            admin_up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::Link(index) => link.link = Some(*index),
                LinkAttribute::LinkNetNsId(id) => link.link_netns_id = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                            LinkInfo::Data(InfoData::Vlan(vlan)) => {
                                link.vlan_id = vlan.iter().find_map(|v| match v {
                                    InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vlan => "vlan".into(),
        other => other.to_string(),
    }
}

/// The kernel's errno inside a netlink error, when there is one.
pub fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

pub fn is_not_found(err: &rtnetlink::Error) -> bool {
    matches!(
        errno(err),
        Some(libc_errno::ENODEV) | Some(libc_errno::ENOENT)
    )
}

pub fn is_exists(err: &rtnetlink::Error) -> bool {
    errno(err) == Some(libc_errno::EEXIST)
}

pub mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ENODEV: i32 = 19;
    pub const EEXIST: i32 = 17;
}

/// One veth pair as ADD makes it.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_mac: MacAddr,
    /// The bridge's MTU: a port below it would pull the bridge down with it.
    pub host_mtu: u32,
    pub bridge_index: u32,
    pub pod_name: &'a str,
    pub pod_mac: MacAddr,
    pub pod_mtu: u32,
    pub pod_netns: &'a OwnedFd,
}

/// A route-netlink connection bound to one namespace.
#[derive(Clone)]
pub struct Netlink {
    pub handle: Handle,
}

impl Netlink {
    /// A connection in this process's namespace. Needs a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// A connection whose socket was made inside `netns` (on a short-lived thread).
    pub fn connect_in(netns: &OwnedFd) -> std::io::Result<Self> {
        let socket = crate::netns::route_socket_in(netns)?;
        socket.set_non_blocking(true)?;
        // SAFETY: the fd comes from a socket we own and hand over whole.
        let socket: netlink_sys::TokioSocket =
            unsafe { std::os::fd::FromRawFd::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkSummary>, rtnetlink::Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(LinkSummary::from_message)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkSummary>, rtnetlink::Error> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(LinkSummary::from_message)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair in one request: the host end on its bridge, up, at the
    /// bridge's MTU (so the bridge's own MTU never moves); the pod end made directly
    /// inside the pod's netns, with its MAC and MTU. Nothing ever exists half-made in
    /// the wrong namespace. The pod end stays down: the kernel refuses to open a veth
    /// end before its peer is linked (ENOTCONN), so the caller brings it up with
    /// [`Netlink::set_up`] from inside the pod netns.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), rtnetlink::Error> {
        let peer_builder = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.pod_name.to_string())
            .mtu(spec.pod_mtu)
            .address(spec.pod_mac.0.to_vec())
            .setns_by_fd(spec.pod_netns.as_raw_fd());
        let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.to_string())
            .mtu(spec.host_mtu)
            .address(spec.host_mac.0.to_vec())
            .controller(spec.bridge_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_builder.build())))
            .build();
        self.handle.link().add(message).execute().await
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), rtnetlink::Error> {
        self.handle.link().del(index).execute().await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), rtnetlink::Error> {
        self.set_link(link_change(index).up().build()).await
    }

    pub async fn set_link(&self, message: LinkMessage) -> Result<(), rtnetlink::Error> {
        self.handle.link().set(message).execute().await
    }

    pub async fn add_address(
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

    /// Addresses on one link, as (address, prefix length).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error> {
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

    /// A route through `index`: to `dst` (default route when None) via `gateway`.
    pub async fn add_route(
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

/// A message that changes only what the builder sets on link `index`.
pub fn link_change(index: u32) -> LinkMessageBuilder<LinkUnspec> {
    LinkUnspec::new_with_index(index)
}
