//! Resolving where the VM's port goes: the portgroup's bridge through the node
//! state, or the admin's bridge by name. The plugin never creates a bridge.

use portgroup::netlink::{LinkSummary, Netlink};
use portgroup::paths::RunDir;
use portgroup::state::{read_ready_portgroup, PortgroupState};
use portgroup::Error;
use portgroup_plugin::cni::netconf::{NetConf, Target};

pub struct Resolved {
    pub bridge: LinkSummary,
    pub portgroup: Option<PortgroupState>,
}

impl Resolved {
    /// How a person names the L2 segment in messages ("VLAN 100", "bridge br0").
    pub fn segment(&self) -> String {
        match &self.portgroup {
            Some(pg) => format!("VLAN {}", pg.vlan),
            None => format!("bridge {}", self.bridge.name),
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
            })
        }
    }
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
