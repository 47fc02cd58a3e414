//! The node state file (`/run/portgroup/state.json`): written by portgroupd after
//! every reconcile, read by the plugin on ADD, CHECK and STATUS.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::nodeconfig::Reservation;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub node: String,
    pub generation: u64,
    pub reconciled_at: String,
    /// Problems of the newest config when it was refused; the last good one stays in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_errors: Vec<String>,
    pub portgroups: Vec<PortgroupState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortgroupState {
    pub name: String,
    pub vlan: u16,
    pub uplink: String,
    pub bridge: String,
    pub vlan_interface: String,
    pub mtu: Option<u32>,
    pub ready: bool,
    pub reason: Option<String>,
    /// Removed from the config but VM ports remain on its bridge.
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub strict: bool,
    #[serde(default)]
    pub reservations: Vec<Reservation>,
}

impl NodeState {
    pub fn read(path: &Path) -> Result<NodeState, Error> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::TryAgainLater(format!(
                    "node state {} does not exist: is portgroupd running on this node?",
                    path.display()
                ))
            } else {
                Error::TryAgainLater(format!("reading node state {}: {e}", path.display()))
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::TryAgainLater(format!("node state {} is unreadable: {e}", path.display()))
        })
    }

    /// The portgroup as ADD may use it: listed, not draining, and ready.
    pub fn ready_portgroup(&self, name: &str) -> Result<&PortgroupState, Error> {
        let pg = self
            .portgroups
            .iter()
            .find(|pg| pg.name == name)
            .ok_or_else(|| {
                Error::TryAgainLater(format!(
                    "portgroup {name:?} is not configured on node {} (known: {})",
                    self.node,
                    self.portgroups
                        .iter()
                        .filter(|pg| !pg.draining)
                        .map(|pg| pg.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if pg.draining {
            return Err(Error::TryAgainLater(format!(
                "portgroup {name:?} was removed from the config and is draining on node {}",
                self.node
            )));
        }
        if !pg.ready {
            return Err(Error::TryAgainLater(format!(
                "portgroup {name:?} is not ready on node {}: {}",
                self.node,
                pg.reason.as_deref().unwrap_or("no reason given")
            )));
        }
        Ok(pg)
    }
}

impl PortgroupState {
    pub fn reservation_for(&self, mac: crate::mac::MacAddr) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.mac == mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        let pg = |name: &str, ready: bool, draining: bool| PortgroupState {
            name: name.into(),
            vlan: 100,
            uplink: "eth1".into(),
            bridge: "pgbr0000.100".into(),
            vlan_interface: "pgv0000.100".into(),
            mtu: Some(1500),
            ready,
            reason: (!ready).then(|| "uplink eth1 not found on node worker-3".into()),
            draining,
            strict: false,
            reservations: vec![],
        };
        NodeState {
            node: "worker-3".into(),
            generation: 7,
            reconciled_at: "2026-11-23T10:00:00Z".into(),
            config_errors: vec![],
            portgroups: vec![
                pg("web", true, false),
                pg("db", false, false),
                pg("old", true, true),
            ],
        }
    }

    #[test]
    fn lookup() {
        let s = state();
        assert_eq!(s.ready_portgroup("web").unwrap().bridge, "pgbr0000.100");
        let cases = [
            ("db", "uplink eth1 not found on node worker-3"),
            ("old", "draining"),
            ("nope", "not configured on node worker-3"),
        ];
        for (name, want) in cases {
            let err = s.ready_portgroup(name).unwrap_err();
            assert_eq!(err.code(), crate::error::code::TRY_AGAIN_LATER);
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn round_trip_and_design_shape() {
        let s = state();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"reconciledAt\""));
        assert_eq!(serde_json::from_str::<NodeState>(&text).unwrap(), s);
    }
}
