//! The thin netlink edge: a handful of rtnetlink requests, and a plain summary of
//! a link that the pure parts (planner, CHECK) work on. The plugin's own requests
//! (veth pair, pod addresses and routes) are in the plugin.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use nix::libc;

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
        let mut link = LinkSummary::from_header(&msg.header);
        for attr in &msg.attributes {
            link.absorb(attr);
        }
        link
    }

    /// The summary of a link before its attributes: index and flags.
    pub fn from_header(header: &LinkHeader) -> Self {
        LinkSummary {
            index: header.index,
            admin_up: header.flags.contains(LinkFlags::Up),
            lower_up: header.flags.contains(LinkFlags::LowerUp),
            ..Default::default()
        }
    }

    /// Takes in what `attr` says, if it is one of [`LinkSummary::ATTRIBUTES`]. A
    /// new field read here needs its type listed there too, or the daemon's dumps
    /// (which parse only those) never fill it; `daemon::dump`'s test compares them
    /// with fully parsed messages.
    pub fn absorb(&mut self, attr: &LinkAttribute) {
        match attr {
            LinkAttribute::IfName(name) => self.name = name.clone(),
            LinkAttribute::Mtu(mtu) => self.mtu = *mtu,
            LinkAttribute::Address(bytes) => self.mac = MacAddr::from_slice(bytes),
            LinkAttribute::IfAlias(alias) => self.alias = Some(alias.clone()),
            LinkAttribute::Controller(index) => self.controller = Some(*index),
            LinkAttribute::Link(index) => self.link = Some(*index),
            LinkAttribute::LinkNetNsId(id) => self.link_netns_id = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => self.kind = Some(kind_name(kind)),
                        LinkInfo::Data(InfoData::Vlan(vlan)) => {
                            self.vlan_id = vlan.iter().find_map(|v| match v {
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

    /// The netlink attribute types (IFLA_*, linux/if_link.h) that [`absorb`]
    /// takes in: a reader of raw messages parses these and skips the rest
    /// (statistics, per-family configuration), which are most of a message.
    ///
    /// [`absorb`]: LinkSummary::absorb
    pub const ATTRIBUTES: [u16; 8] = [
        1,  // IFLA_ADDRESS
        3,  // IFLA_IFNAME
        4,  // IFLA_MTU
        5,  // IFLA_LINK
        10, // IFLA_MASTER
        18, // IFLA_LINKINFO
        20, // IFLA_IFALIAS
        37, // IFLA_LINK_NETNSID
    ];

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
    matches!(errno(err), Some(libc::ENODEV) | Some(libc::ENOENT))
}

pub fn is_exists(err: &rtnetlink::Error) -> bool {
    errno(err) == Some(libc::EEXIST)
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

    pub async fn delete_link(&self, index: u32) -> Result<(), rtnetlink::Error> {
        self.handle.link().del(index).execute().await
    }

    pub async fn set_link(&self, message: LinkMessage) -> Result<(), rtnetlink::Error> {
        self.handle.link().set(message).execute().await
    }
}

/// A message that changes only what the builder sets on link `index`.
pub fn link_change(index: u32) -> LinkMessageBuilder<LinkUnspec> {
    LinkUnspec::new_with_index(index)
}
