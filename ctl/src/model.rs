//! The inventory as read: VMs with their NICs, and what each source says about
//! each vSphere network. No decisions here; the plan makes them.

use portgroup::mac::MacAddr;

use crate::values::{Addr, Vlan};

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub vms: Vec<Vm>,
    pub networks: Vec<NetworkObservation>,
    /// VMs whose guest addresses came from govc rather than RVTools.
    pub govc_guest_overrides: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    /// The vCenter (RVTools `VI SDK Server`), or the export's file name.
    pub vcenter: String,
    pub datacenter: String,
    pub cluster: String,
    pub host: String,
    pub template: bool,
    pub srm_placeholder: bool,
    pub powered_on: bool,
    pub nics: Vec<Nic>,
    /// Where the VM was read, for messages.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Nic {
    /// "Network adapter 1".
    pub label: String,
    pub mac: MacAddr,
    /// assigned | generated | manual, as vSphere reports it ("" when unknown).
    pub address_type: String,
    /// The vSphere network (port group) name; None when the NIC has none.
    pub network: Option<String>,
    /// The network's managed object ID (`network-12`, `dvportgroup-34`) where known.
    pub network_id: Option<String>,
    pub switch: Option<String>,
    pub connected: bool,
    pub starts_connected: bool,
    pub addrs: Vec<Addr>,
}

/// One source's view of one port group: a vPort row (one per host), a dvPort
/// row, or a govc entry.
#[derive(Debug, Clone)]
pub struct NetworkObservation {
    /// None for govc distributed ports, which carry only the portgroup key.
    pub name: Option<String>,
    pub id: Option<String>,
    pub vcenter: String,
    pub datacenter: String,
    pub cluster: String,
    /// The host, for standard port groups (which exist per host).
    pub host: Option<String>,
    pub switch: String,
    pub distributed: bool,
    pub uplink: bool,
    pub vlan: Vlan,
    pub promiscuous: bool,
    pub mac_changes: bool,
    pub forged_transmits: bool,
}
