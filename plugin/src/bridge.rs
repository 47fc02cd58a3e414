//! Resolving where the VM's port goes: the portgroup's bridge through the node
//! state, or the admin's bridge by name. The plugin never creates a bridge.

use portgroup::mac::MacAddr;
use portgroup::netlink::{LinkSummary, Netlink};
use portgroup::paths::RunDir;
use portgroup::state::{
    read_mac_owners, read_ready_portgroup, MacOwner, NodeState, PortgroupState,
};
use portgroup::Error;
use portgroup_plugin::cni::netconf::{NetConf, Target};

use crate::spec::Place;

pub struct Resolved {
    pub bridge: LinkSummary,
    pub portgroup: Option<PortgroupState>,
    /// `bridge:` mode on a node with a node state: its `allowedBridges`.
    pub allowed_bridges: Option<Vec<String>>,
}

impl Resolved {
    /// How a person names the L2 segment in messages ("VLAN 100", "bridge br0").
    pub fn segment(&self) -> String {
        match &self.portgroup {
            Some(pg) => pg.segment(),
            None => format!("bridge {}", self.bridge.name),
        }
    }

    /// What the attachment spec needs to know of the place; `mac_owners` are the
    /// portgroups reserving the requested MAC (see [`mac_owners`]).
    pub fn place<'a>(&'a self, mac_owners: &'a [MacOwner]) -> Place<'a> {
        Place {
            bridge: &self.bridge.name,
            bridge_mtu: self.bridge.mtu,
            bridge_alias: self.bridge.alias.as_deref(),
            portgroup: self.portgroup.as_ref(),
            allowed_bridges: self.allowed_bridges.as_deref(),
            mac_owners,
        }
    }
}

pub async fn resolve(nl: &Netlink, conf: &NetConf, run: &RunDir) -> Result<Resolved, Error> {
    match &conf.target {
        Target::Portgroup(name) => {
            let pg = read_ready_portgroup(run, name)?;
            let bridge = lookup(nl, &pg.bridge).await?.ok_or_else(|| {
                Error::TryAgainLater(format!(
                    "bridge {} of portgroup {name:?} is missing; portgroupd recreates it",
                    pg.bridge
                ))
            })?;
            Ok(Resolved {
                bridge,
                portgroup: Some(pg),
                allowed_bridges: None,
            })
        }
        Target::Bridge(name) => {
            let bridge = lookup(nl, name).await?.ok_or_else(|| {
                Error::BridgeUnusable(format!(
                    "bridge {name} does not exist; create it first (the plugin never creates bridges)"
                ))
            })?;
            Ok(Resolved {
                bridge,
                portgroup: None,
                allowed_bridges: node_allowed_bridges(run)?,
            })
        }
    }
}

/// Without portgroupd (a lab, podman) there is no node state and `bridge:` mode is
/// the admin's alone; with one, the node config's `allowedBridges` applies.
pub fn node_allowed_bridges(run: &RunDir) -> Result<Option<Vec<String>>, Error> {
    let path = run.state_file();
    if !path.exists() {
        return Ok(None);
    }
    Ok(NodeState::read(&path)?.allowed_bridges)
}

async fn lookup(nl: &Netlink, name: &str) -> Result<Option<LinkSummary>, Error> {
    let link = nl
        .link_by_name(name)
        .await
        .map_err(|e| Error::netlink(format!("looking up bridge {name}"), e))?;
    match link {
        Some(link) if !link.is_kind("bridge") => Err(Error::BridgeUnusable(format!(
            "{name} is a {} interface, not a bridge",
            link.kind.as_deref().unwrap_or("physical")
        ))),
        other => Ok(other),
    }
}

/// Which portgroups on this node reserve `mac` (one small file, written by
/// portgroupd): none without portgroupd, or when no MAC is requested.
pub fn mac_owners(run: &RunDir, mac: Option<MacAddr>) -> Result<Vec<MacOwner>, Error> {
    match mac {
        Some(mac) => read_mac_owners(run, mac),
        None => Ok(Vec::new()),
    }
}
