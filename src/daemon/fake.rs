//! An in-memory kernel link table for unit tests: enough of rtnetlink's behaviour
//! (indexes, ports, VLAN parents, "no 802.1Q") to drive the planner and the loop.

use crate::mac::MacAddr;
use std::cell::RefCell;
use std::collections::BTreeSet;

use nix::libc;

use super::applier::{LinkError, Links, Placement};
use super::planner::Observed;
use crate::netlink::LinkSummary;

#[derive(Debug, Default)]
pub struct FakeKernel {
    pub links: Vec<LinkSummary>,
    /// Links in the daemon's IFLA_GROUP: every link `create_*` makes, as in the real applier.
    pub group: BTreeSet<u32>,
    pub next_index: u32,
    /// Like a kernel without 802.1Q: VLAN creation fails with EOPNOTSUPP.
    pub no_8021q: bool,
    pub calls: Vec<String>,
    /// Like a node without nf_tables' bridge family: the native-VLAN guard fails.
    pub no_nft_bridge: bool,
    /// IP addresses by link index, as the address dump shows them.
    pub addresses: std::collections::BTreeMap<u32, Vec<String>>,
}

#[derive(Debug, Default)]
pub struct FakeLinks(pub RefCell<FakeKernel>);

fn err(errno: i32, message: &str) -> LinkError {
    LinkError {
        errno: Some(errno),
        message: message.to_string(),
    }
}

impl FakeKernel {
    pub fn with(links: Vec<LinkSummary>) -> Self {
        let next_index = links.iter().map(|l| l.index).max().unwrap_or(1) + 1;
        FakeKernel {
            links,
            next_index,
            ..Default::default()
        }
    }

    pub fn observed(&self) -> Observed {
        Observed {
            links: self.links.clone(),
            in_our_group: self.group.clone(),
            addresses: self.addresses.clone(),
            native_guard_failure: None,
        }
    }

    pub fn get(&self, name: &str) -> Option<&LinkSummary> {
        self.links.iter().find(|l| l.name == name)
    }

    fn by_index(&mut self, index: u32) -> Result<&mut LinkSummary, LinkError> {
        self.links
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or_else(|| err(libc::ENODEV, "No such device"))
    }

    fn add(&mut self, mut link: LinkSummary) -> Result<(), LinkError> {
        if self.get(&link.name).is_some() {
            return Err(err(libc::EEXIST, "File exists"));
        }
        link.index = self.next_index;
        self.next_index += 1;
        self.group.insert(link.index);
        self.links.push(link);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(link) = self.get(name).cloned() {
            self.delete_index(link.index);
        }
    }

    fn delete_index(&mut self, index: u32) {
        // Like the kernel: a deleted parent takes its VLANs along, a deleted veth
        // its peer, a deleted bridge frees its ports.
        let Some(link) = self.links.iter().find(|l| l.index == index).cloned() else {
            return;
        };
        let mut children: Vec<u32> = self
            .links
            .iter()
            .filter(|l| l.is_kind("vlan") && l.link == Some(index))
            .map(|l| l.index)
            .collect();
        if link.is_kind("veth") {
            children.extend(link.link);
        }
        self.links.retain(|l| l.index != index);
        self.group.remove(&index);
        for l in &mut self.links {
            if l.controller == Some(index) {
                l.controller = None;
            }
        }
        for child in children {
            self.delete_index(child);
        }
    }
}

impl Links for FakeLinks {
    async fn dump(&self) -> Result<Observed, LinkError> {
        Ok(self.0.borrow().observed())
    }

    async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("index_of {name}"));
        Ok(k.get(name).map(|l| l.index))
    }

    async fn create_vlan(
        &self,
        name: &str,
        parent: u32,
        vid: u16,
        mtu: u32,
        placed: Placement,
    ) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("create_vlan {name}"));
        if let Some(controller) = placed.controller {
            // Like the kernel: a controller that is gone fails the whole creation.
            k.by_index(controller)?;
        }
        if k.no_8021q {
            return Err(err(libc::EOPNOTSUPP, "Operation not supported"));
        }
        let parent = k.by_index(parent)?.clone();
        if mtu > parent.mtu {
            return Err(err(libc::ERANGE, "Numerical result out of range"));
        }
        k.add(LinkSummary {
            name: name.into(),
            kind: Some("vlan".into()),
            mtu,
            link: Some(parent.index),
            vlan_id: Some(vid),
            controller: placed.controller,
            ..Default::default()
        })
    }

    async fn create_bridge(&self, name: &str, mtu: u32, mac: MacAddr) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("create_bridge {name}"));
        k.add(LinkSummary {
            name: name.into(),
            kind: Some("bridge".into()),
            mtu,
            mac: Some(mac),
            ..Default::default()
        })
    }

    async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        placed: Placement,
    ) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("create_veth {name} {peer}"));
        if let Some(controller) = placed.controller {
            k.by_index(controller)?;
        }
        if k.get(name).is_some() || k.get(peer).is_some() {
            return Err(err(17, "File exists"));
        }
        let (a, b) = (k.next_index, k.next_index + 1);
        let end = |name: &str, other: u32| LinkSummary {
            name: name.into(),
            kind: Some("veth".into()),
            mtu,
            link: Some(other),
            ..Default::default()
        };
        k.add(LinkSummary {
            controller: placed.controller,
            ..end(name, b)
        })?;
        k.add(end(peer, a))
    }

    async fn release_controller(&self, index: u32) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("release_controller {index}"));
        k.by_index(index)?.controller = None;
        Ok(())
    }

    async fn set_alias(&self, index: u32, alias: &str) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_alias {index}"));
        k.by_index(index)?.alias = Some(alias.into());
        Ok(())
    }

    async fn set_alias_by_name(&self, name: &str, alias: &str) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_alias_by_name {name}"));
        let index = k
            .get(name)
            .map(|l| l.index)
            .ok_or_else(|| err(libc::ENODEV, "No such device"))?;
        k.by_index(index)?.alias = Some(alias.into());
        Ok(())
    }

    async fn set_mtu_and_alias(&self, index: u32, mtu: u32, alias: &str) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_mtu_and_alias {index} {mtu}"));
        let link = k.by_index(index)?;
        link.mtu = mtu;
        link.alias = Some(alias.into());
        Ok(())
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_mtu {index} {mtu}"));
        k.by_index(index)?.mtu = mtu;
        Ok(())
    }

    async fn set_address(&self, index: u32, mac: MacAddr) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_address {index} {mac}"));
        k.by_index(index)?.mac = Some(mac);
        Ok(())
    }

    async fn set_controller(&self, index: u32, controller: u32) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_controller {index} {controller}"));
        k.by_index(controller)?;
        k.by_index(index)?.controller = Some(controller);
        Ok(())
    }

    async fn set_up(&self, index: u32) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("set_up {index}"));
        let link = k.by_index(index)?;
        link.admin_up = true;
        link.lower_up = true;
        Ok(())
    }

    async fn delete(&self, index: u32) -> Result<(), LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push(format!("delete {index}"));
        k.by_index(index)?;
        k.delete_index(index);
        Ok(())
    }

    async fn ensure_native_guard(&self) -> Result<bool, LinkError> {
        let mut k = self.0.borrow_mut();
        k.calls.push("ensure_native_guard".into());
        if k.no_nft_bridge {
            return Err(err(libc::EOPNOTSUPP, "Operation not supported"));
        }
        Ok(false)
    }
}
