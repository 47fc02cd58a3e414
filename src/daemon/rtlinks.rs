//! [`Links`] over rtnetlink, in the daemon's own network namespace.

use crate::mac::MacAddr;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVlan};

use super::applier::{LinkError, Links, Placement};
use super::planner::{Observed, LINK_GROUP};
use crate::netlink::{errno, link_change, LinkSummary, Netlink};

pub struct RtLinks {
    pub netlink: Netlink,
}

impl RtLinks {
    /// Creates a link: NLM_F_CREATE | NLM_F_EXCL, so a name taken meanwhile fails.
    async fn add(&self, message: netlink_packet_route::link::LinkMessage) -> Result<(), LinkError> {
        self.netlink
            .handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(link_error)
    }
}

/// The kernel's words for an errno ("Operation not supported") rather than
/// rtnetlink's wrapping of the whole reply.
pub fn link_error(err: rtnetlink::Error) -> LinkError {
    let code = errno(&err);
    let message = match code {
        Some(c) => std::io::Error::from_raw_os_error(c).to_string(),
        None => err.to_string(),
    };
    LinkError {
        errno: code,
        message,
    }
}

fn address_of(msg: &AddressMessage) -> Option<std::net::IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// An IPv6 link-local address (which every up link has): not the node's network.
pub fn is_link_local(msg: &AddressMessage) -> bool {
    matches!(address_of(msg), Some(std::net::IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The addresses that count as the node's own network on a link: every IPv4
/// one and every IPv6 one but link-local.
pub fn observe_addresses(messages: &[AddressMessage], observed: &mut Observed) {
    for msg in messages {
        if is_link_local(msg) {
            continue;
        }
        let Some(ip) = address_of(msg) else { continue };
        observed
            .addresses
            .entry(msg.header.index)
            .or_default()
            .push(format!("{ip}/{}", msg.header.prefix_len));
    }
}

pub fn observe(messages: &[LinkMessage]) -> Observed {
    let mut observed = Observed::default();
    for msg in messages {
        observe_one(msg, &mut observed);
    }
    observed
}

fn observe_one(msg: &LinkMessage, observed: &mut Observed) {
    if msg
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Group(g) if *g == LINK_GROUP))
    {
        observed.in_our_group.insert(msg.header.index);
    }
    observed.links.push(LinkSummary::from_message(msg));
}

impl RtLinks {
    /// The links alone (what the garbage collector needs); see [`super::dump`].
    pub async fn dump_links(&self) -> Result<Observed, LinkError> {
        super::dump::links().await
    }
}

impl Links for RtLinks {
    /// Read one datagram at a time, each message summarised as it arrives
    /// ([`super::dump`]): a dump of thousands of links never holds their
    /// netlink messages.
    async fn dump(&self) -> Result<Observed, LinkError> {
        super::dump::links_and_addresses().await
    }

    /// SIOCGIFINDEX in this thread's namespace, the daemon's (as `ip` does):
    /// an RTM_GETLINK would have the kernel fill and us parse the whole link,
    /// a bridge's every option included, to read one number.
    async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        match nix::net::if_::if_nametoindex(name) {
            Ok(index) => Ok(Some(index)),
            Err(nix::errno::Errno::ENODEV) => Ok(None),
            Err(e) => Err(LinkError {
                errno: Some(e as i32),
                message: format!("looking up {name}: {}", e.desc()),
            }),
        }
    }

    async fn create_vlan(
        &self,
        name: &str,
        parent: u32,
        vid: u16,
        mtu: u32,
        placed: Placement,
    ) -> Result<(), LinkError> {
        let mut builder = LinkVlan::new(name, parent, vid)
            .mtu(mtu)
            .link_group(LINK_GROUP);
        if let Some(controller) = placed.controller {
            builder = builder.controller(controller);
        }
        self.add(builder.build()).await
    }

    async fn create_bridge(&self, name: &str, mtu: u32, mac: MacAddr) -> Result<(), LinkError> {
        let message = LinkBridge::new(name)
            .mtu(mtu)
            .address(mac.0.to_vec())
            .link_group(LINK_GROUP)
            .build();
        self.add(message).await
    }

    async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        placed: Placement,
    ) -> Result<(), LinkError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .link_group(LINK_GROUP);
        let mut builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .link_group(LINK_GROUP)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(controller) = placed.controller {
            builder = builder.controller(controller);
        }
        self.add(builder.build()).await
    }

    async fn release_controller(&self, index: u32) -> Result<(), LinkError> {
        let message = link_change(index).nocontroller().build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_alias(&self, index: u32, alias: &str) -> Result<(), LinkError> {
        let message = link_change(index).alias(alias).build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_alias_by_name(&self, name: &str, alias: &str) -> Result<(), LinkError> {
        // Index 0 and IFLA_IFNAME: the kernel finds the link by its name.
        let message = LinkUnspec::new_with_name(name).alias(alias).build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_mtu_and_alias(&self, index: u32, mtu: u32, alias: &str) -> Result<(), LinkError> {
        let message = link_change(index).mtu(mtu).alias(alias).build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError> {
        let message = link_change(index).mtu(mtu).build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_address(&self, index: u32, mac: MacAddr) -> Result<(), LinkError> {
        let message = link_change(index).address(mac.0.to_vec()).build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_controller(&self, index: u32, controller: u32) -> Result<(), LinkError> {
        let message = link_change(index).controller(controller).build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn set_up(&self, index: u32) -> Result<(), LinkError> {
        let message = link_change(index).up().build();
        self.netlink.set_link(message).await.map_err(link_error)
    }

    async fn delete(&self, index: u32) -> Result<(), LinkError> {
        self.netlink.delete_link(index).await.map_err(link_error)
    }

    async fn ensure_native_guard(&self) -> Result<bool, LinkError> {
        // nf_tables, not rtnetlink: a short blocking exchange on its own socket.
        crate::portsec::ensure_native_guard().map_err(|e| LinkError {
            errno: None,
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root: runs in a network namespace of its own, on a thread of its own.
    #[test]
    fn a_new_bridge_keeps_its_mtu_when_a_smaller_port_joins() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let ip = |args: &[&str]| {
                let status = std::process::Command::new("ip").args(args).status();
                assert!(status.is_ok_and(|s| s.success()), "ip {args:?}");
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let links = RtLinks {
                    netlink: Netlink::connect().expect("netlink"),
                };
                let pinned = MacAddr([0x02, 0, 0, 0, 0, 0x42]);
                let make = super::super::planner::Step {
                    portgroup: "test".into(),
                    op: super::super::planner::Operation::CreateBridge {
                        name: "pgbrtest.1".into(),
                        mtu: 1500,
                        mac: pinned,
                        alias: "test".into(),
                    },
                };
                let applied = super::super::applier::apply(&links, &[make]).await;
                assert!(applied.failures.is_empty(), "{:?}", applied.failures);
                // A port with a lower MAC: an unpinned bridge would take it.
                ip(&[
                    "link",
                    "add",
                    "va",
                    "mtu",
                    "1400",
                    "address",
                    "02:00:00:00:00:01",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "vb",
                ]);
                ip(&["link", "set", "va", "master", "pgbrtest.1"]);
                let bridge = links
                    .netlink
                    .link_by_name("pgbrtest.1")
                    .await
                    .expect("lookup")
                    .expect("bridge exists");
                assert_eq!(bridge.mtu, 1500, "the bridge followed its smaller port");
                assert_eq!(bridge.mac, Some(pinned), "the bridge took its port's MAC");
                // Drift (someone set another MAC) is put back.
                ip(&["link", "set", "pgbrtest.1", "address", "02:00:00:00:00:99"]);
                links
                    .set_address(bridge.index, pinned)
                    .await
                    .expect("set address");
                let bridge = links
                    .netlink
                    .link_by_name("pgbrtest.1")
                    .await
                    .expect("lookup")
                    .expect("bridge exists");
                assert_eq!(bridge.mac, Some(pinned));
            });
        })
        .join()
        .expect("test thread");
    }
}
