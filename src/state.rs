//! The node state file (`/run/portgroup/state.json`): written by portgroupd after
//! every reconcile, read by the plugin on ADD, CHECK and STATUS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::mac::MacAddr;
use crate::naming::{
    bridge_name, trunk_bridge_name, untagged_bridge_name, vlan_interface_name, Mark,
};
use crate::netlink::LinkSummary;
use crate::nodeconfig::{AttachPolicy, PortgroupConfig, Reservation, Segment};
use crate::paths::{write_atomic, write_atomic_with, RunDir};

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
    /// The node config's `allowedBridges`: which bridges `bridge:` mode may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_bridges: Option<Vec<String>>,
}

/// What a portgroup's VM ports carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortgroupMode {
    /// One VLAN (`vlan`), untagged on the port.
    #[default]
    Access,
    /// The VLANs of `trunk`, 802.1Q-tagged on the port; untagged frames are
    /// `nativeVlan`'s, or dropped.
    Trunk,
    /// The uplink's own untagged traffic.
    Untagged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortgroupState {
    pub name: String,
    #[serde(default)]
    pub mode: PortgroupMode,
    /// The access VLAN; null for trunk and untagged portgroups.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// A trunk's VLANs, in canonical form (`100-110,200`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    /// A trunk's native VLAN (untagged frames on the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_vlan: Option<u16>,
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
    #[serde(default, flatten)]
    pub policy: AttachPolicy,
    /// Port security lets this portgroup's VMs send router advertisements.
    #[serde(default)]
    pub allow_router_advertisements: bool,
    /// Port security lets this portgroup's VMs send DHCP server replies.
    #[serde(default)]
    pub allow_dhcp_server: bool,
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
        pg.usable(&self.node)?;
        Ok(pg)
    }

    /// Publishes the state: one file per portgroup (what the plugin reads on ADD,
    /// so an ADD costs the same with 4094 portgroups as with one), then
    /// state.json. Only files that differ from `previous` (or are missing) are
    /// rewritten; files of portgroups no longer listed are removed. Returns how
    /// many files were written.
    pub fn write(&self, run: &RunDir, previous: Option<&NodeState>) -> std::io::Result<u64> {
        let mut written = 0;
        let dir = run.portgroups_dir();
        std::fs::create_dir_all(&dir)?;
        // By name, once: thousands of portgroups must not cost a scan each.
        let before: HashMap<&str, &PortgroupState> = previous
            .filter(|p| p.node == self.node)
            .map(|p| {
                p.portgroups
                    .iter()
                    .map(|pg| (pg.name.as_str(), pg))
                    .collect()
            })
            .unwrap_or_default();
        let names: HashSet<&str> = self.portgroups.iter().map(|p| p.name.as_str()).collect();
        for pg in &self.portgroups {
            let unchanged = before.get(pg.name.as_str()).is_some_and(|old| *old == pg);
            let path = run.portgroup_file(&pg.name);
            if unchanged && path.exists() {
                continue;
            }
            let file = PortgroupFile {
                node: self.node.clone(),
                portgroup: pg.clone(),
            };
            write_atomic(
                &path,
                &serde_json::to_vec(&file).map_err(std::io::Error::other)?,
            )?;
            written += 1;
        }
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = name
                .strip_suffix(".json")
                .is_some_and(|pg| names.contains(pg));
            if !listed && !name.starts_with('.') {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        written += self.write_mac_owners(run, previous)?;
        let state_file = run.state_file();
        if previous == Some(self) && state_file.exists() {
            return Ok(written);
        }
        write_atomic_with(&state_file, |file| {
            serde_json::to_writer_pretty(&mut *file, self).map_err(std::io::Error::other)?;
            file.write_all(b"\n")
        })?;
        Ok(written + 1)
    }

    /// Every reserved MAC and the portgroups (with their namespaces) reserving it.
    pub fn mac_owners(&self) -> BTreeMap<MacAddr, Vec<MacOwner>> {
        let mut owners: BTreeMap<MacAddr, Vec<MacOwner>> = BTreeMap::new();
        for pg in &self.portgroups {
            for reservation in &pg.reservations {
                owners.entry(reservation.mac).or_default().push(MacOwner {
                    portgroup: pg.name.clone(),
                    namespaces: pg.policy.namespaces.clone(),
                });
            }
        }
        owners
    }

    /// `<run-dir>/reserved-macs/<mac>.json`, so that ADD learns in one read whether
    /// the MAC it is given is reserved anywhere on the node, and for whom. Only
    /// files that changed are rewritten.
    fn write_mac_owners(&self, run: &RunDir, previous: Option<&NodeState>) -> std::io::Result<u64> {
        let mut written = 0;
        let dir = run.reserved_macs_dir();
        std::fs::create_dir_all(&dir)?;
        let owners = self.mac_owners();
        let before = previous
            .filter(|p| p.node == self.node)
            .map(NodeState::mac_owners)
            .unwrap_or_default();
        for (mac, list) in &owners {
            let path = run.reserved_mac_file(*mac);
            if before.get(mac) == Some(list) && path.exists() {
                continue;
            }
            write_atomic(
                &path,
                &serde_json::to_vec(list).map_err(std::io::Error::other)?,
            )?;
            written += 1;
        }
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = owners.keys().any(|mac| {
                run.reserved_mac_file(*mac).file_name() == Some(entry.file_name().as_os_str())
            });
            if !listed && !name.starts_with('.') {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(written)
    }
}

/// One portgroup reserving a MAC, and the namespaces it admits (None: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacOwner {
    pub portgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

/// The portgroups reserving `mac` on this node; none without a node state.
pub fn read_mac_owners(run: &RunDir, mac: MacAddr) -> Result<Vec<MacOwner>, Error> {
    let path = run.reserved_mac_file(mac);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::TryAgainLater(format!("node state {} is unreadable: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::TryAgainLater(format!(
            "reading node state {}: {e}",
            path.display()
        ))),
    }
}

/// `<run-dir>/portgroups/<name>.json`: one portgroup of the node state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortgroupFile {
    pub node: String,
    #[serde(flatten)]
    pub portgroup: PortgroupState,
}

/// What ADD, CHECK and STATUS need: the named portgroup, usable. Reads its own
/// file; only when there is none does it read state.json, to say why.
pub fn read_ready_portgroup(run: &RunDir, name: &str) -> Result<PortgroupState, Error> {
    let path = run.portgroup_file(name);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let file: PortgroupFile = serde_json::from_slice(&bytes).map_err(|e| {
                Error::TryAgainLater(format!("node state {} is unreadable: {e}", path.display()))
            })?;
            file.portgroup.usable(&file.node)?;
            Ok(file.portgroup)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeState::read(&run.state_file())?
            .ready_portgroup(name)
            .cloned(),
        Err(e) => Err(Error::TryAgainLater(format!(
            "reading node state {}: {e}",
            path.display()
        ))),
    }
}

impl PortgroupState {
    /// The portgroup as the config describes it, placed on `uplink` (None: this node
    /// has no uplink for it, so no links either). Not ready and without a reason:
    /// the planner decides those.
    pub fn from_config(pg: &PortgroupConfig, uplink: Option<&str>) -> Self {
        let (mode, vlan, trunk, native_vlan) = match &pg.segment {
            Segment::Access(vid) => (PortgroupMode::Access, Some(*vid), None, None),
            Segment::Trunk { vids, native } => {
                (PortgroupMode::Trunk, None, Some(vids.to_string()), *native)
            }
            Segment::Untagged => (PortgroupMode::Untagged, None, None, None),
        };
        let (bridge, vlan_interface) = match (uplink, &pg.segment) {
            (None, _) => Default::default(),
            (Some(uplink), Segment::Access(vid)) => {
                (bridge_name(uplink, *vid), vlan_interface_name(uplink, *vid))
            }
            (Some(uplink), Segment::Trunk { .. }) => {
                (trunk_bridge_name(uplink, &pg.name), String::new())
            }
            (Some(uplink), Segment::Untagged) => (untagged_bridge_name(uplink), String::new()),
        };
        PortgroupState {
            name: pg.name.clone(),
            mode,
            vlan,
            trunk,
            native_vlan,
            uplink: uplink.unwrap_or_default().to_string(),
            bridge,
            vlan_interface,
            mtu: pg.mtu,
            ready: false,
            reason: None,
            draining: false,
            strict: pg.strict,
            reservations: pg.reservations.clone(),
            policy: pg.policy.clone(),
            allow_router_advertisements: pg.allow_router_advertisements,
            allow_dhcp_server: pg.allow_dhcp_server,
        }
    }

    /// A portgroup removed from the config whose bridge (of `mode`) still holds VM
    /// ports, as the bridge, its ownership mark and the previous state (`before`)
    /// tell it.
    pub fn draining(
        name: String,
        mode: PortgroupMode,
        mark: Option<&Mark>,
        bridge: &LinkSummary,
        vlan_interface: String,
        before: Option<&PortgroupState>,
        reason: String,
    ) -> Self {
        PortgroupState {
            name,
            mode,
            vlan: mark
                .filter(|m| mode == PortgroupMode::Access && m.vlan != 0)
                .map(|m| m.vlan),
            trunk: before.and_then(|b| b.trunk.clone()),
            native_vlan: before.and_then(|b| b.native_vlan),
            uplink: mark.map(|m| m.uplink.clone()).unwrap_or_default(),
            bridge: bridge.name.clone(),
            vlan_interface,
            mtu: Some(bridge.mtu),
            ready: false,
            reason: Some(reason),
            draining: true,
            strict: before.is_some_and(|b| b.strict),
            reservations: before.map(|b| b.reservations.clone()).unwrap_or_default(),
            policy: before.map(|b| b.policy.clone()).unwrap_or_default(),
            allow_router_advertisements: before.is_some_and(|b| b.allow_router_advertisements),
            allow_dhcp_server: before.is_some_and(|b| b.allow_dhcp_server),
        }
    }

    /// The L2 segment in words, for messages: "VLAN 100", "trunk 100-110,200",
    /// "the untagged traffic of eth2".
    pub fn segment(&self) -> String {
        match (self.mode, self.vlan, &self.trunk) {
            (PortgroupMode::Trunk, _, Some(vids)) => match self.native_vlan {
                Some(native) => format!("trunk {vids} (native VLAN {native})"),
                None => format!("trunk {vids}"),
            },
            (PortgroupMode::Untagged, _, _) => {
                format!("the untagged traffic of {}", self.uplink)
            }
            (_, Some(vid), _) => format!("VLAN {vid}"),
            _ => format!("bridge {}", self.bridge),
        }
    }

    /// Whether frames on its VM ports carry 802.1Q tags (a trunk).
    pub fn tagged(&self) -> bool {
        self.mode == PortgroupMode::Trunk
    }

    pub fn reservation_for(&self, mac: crate::mac::MacAddr) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.mac == mac)
    }

    /// Ready and not draining, or why not, for node `node`.
    pub fn usable(&self, node: &str) -> Result<(), Error> {
        let name = &self.name;
        if self.draining {
            return Err(Error::TryAgainLater(format!(
                "portgroup {name:?} was removed from the config and is draining on node {node}"
            )));
        }
        if !self.ready {
            return Err(Error::TryAgainLater(format!(
                "portgroup {name:?} is not ready on node {node}: {}",
                self.reason.as_deref().unwrap_or("no reason given")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        let pg = |name: &str, ready: bool, draining: bool| PortgroupState {
            name: name.into(),
            mode: PortgroupMode::Access,
            vlan: Some(100),
            trunk: None,
            native_vlan: None,
            uplink: "eth1".into(),
            bridge: "pgbr0000.100".into(),
            vlan_interface: "pgv0000.100".into(),
            mtu: Some(1500),
            ready,
            reason: (!ready).then(|| "uplink eth1 not found on node worker-3".into()),
            draining,
            strict: false,
            reservations: vec![],
            policy: Default::default(),
            allow_router_advertisements: false,
            allow_dhcp_server: false,
        };
        NodeState {
            node: "worker-3".into(),
            generation: 7,
            reconciled_at: "2026-11-23T10:00:00Z".into(),
            config_errors: vec![],
            allowed_bridges: None,
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
    fn per_portgroup_files_follow_the_state() {
        let run = RunDir(std::env::temp_dir().join(format!("pg-state-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&run.0);
        let mut s = state();
        s.write(&run, None).unwrap();
        assert_eq!(
            read_ready_portgroup(&run, "web").unwrap().bridge,
            "pgbr0000.100"
        );
        let err = read_ready_portgroup(&run, "db").unwrap_err();
        assert!(
            err.to_string()
                .contains("uplink eth1 not found on node worker-3"),
            "{err}"
        );
        assert!(read_ready_portgroup(&run, "old")
            .unwrap_err()
            .to_string()
            .contains("draining"));
        // Not listed: no file, and state.json says why.
        let err = read_ready_portgroup(&run, "nope").unwrap_err();
        assert!(
            err.to_string().contains("not configured on node worker-3"),
            "{err}"
        );
        // A portgroup that leaves the state loses its file; one that changes is rewritten.
        let previous = s.clone();
        s.portgroups.retain(|pg| pg.name != "web");
        s.portgroups[0].ready = true;
        s.write(&run, Some(&previous)).unwrap();
        assert!(!run.portgroup_file("web").exists());
        assert!(read_ready_portgroup(&run, "db").is_ok());
        std::fs::remove_dir_all(&run.0).unwrap();
        // No state at all.
        let err = read_ready_portgroup(&run, "web").unwrap_err();
        assert!(err.to_string().contains("is portgroupd running"), "{err}");
    }

    #[test]
    fn reserved_mac_files_follow_the_reservations() {
        let run = RunDir(std::env::temp_dir().join(format!("pg-macs-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&run.0);
        let mac: MacAddr = "00:50:56:aa:bb:01".parse().unwrap();
        let other: MacAddr = "00:50:56:aa:bb:02".parse().unwrap();
        let mut s = state();
        s.portgroups[0].reservations = vec![Reservation { mac, ips: vec![] }];
        s.portgroups[0].policy.namespaces = Some(vec!["team-*".into()]);
        s.portgroups[1].reservations = vec![Reservation { mac, ips: vec![] }];
        s.write(&run, None).unwrap();
        let owners = read_mac_owners(&run, mac).unwrap();
        assert_eq!(owners.len(), 2);
        assert_eq!(owners[0].namespaces, Some(vec!["team-*".to_string()]));
        assert_eq!(owners[1].namespaces, None);
        assert_eq!(read_mac_owners(&run, other).unwrap(), vec![]);
        let previous = s.clone();
        for pg in &mut s.portgroups {
            pg.reservations.clear();
        }
        s.write(&run, Some(&previous)).unwrap();
        assert_eq!(read_mac_owners(&run, mac).unwrap(), vec![]);
        assert_eq!(
            std::fs::read_dir(run.reserved_macs_dir()).unwrap().count(),
            0
        );
        std::fs::remove_dir_all(&run.0).unwrap();
    }

    #[test]
    fn round_trip_and_design_shape() {
        let s = state();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"reconciledAt\""));
        assert_eq!(serde_json::from_str::<NodeState>(&text).unwrap(), s);
    }
}
