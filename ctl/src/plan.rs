//! The plan: every decision portgroupctl makes, as a pure function of the
//! inventory and the options. Renderers only format what is decided here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portgroup::mac::MacAddr;

use crate::model::{Inventory, NetworkObservation, Nic, Vm};
use crate::names::{dns_label, with_suffix};
use crate::values::{mac_origin, Addr, MacOrigin, Vlan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Namespace of the NADs and the VMs.
    pub namespace: String,
    /// The node uplink that carries the VLAN trunk.
    pub uplink: String,
    /// Namespace of portgroup's ConfigMap (where the daemon runs).
    pub config_namespace: String,
    /// Namespace of Forklift's NetworkMap and its providers.
    pub forklift_namespace: String,
    pub source_provider: String,
    pub destination_provider: String,
    /// `k8s.v1.cni.cncf.io/resourceName: portgroup.io/<name>` on each NAD, so
    /// KubeVirt requests the portgroup's device-plugin resource and VMs land only
    /// where their portgroup is ready.
    pub resource_name_annotation: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "default".into(),
            uplink: "eth1".into(),
            config_namespace: "portgroup-system".into(),
            forklift_namespace: "openshift-mtv".into(),
            source_provider: "vsphere".into(),
            destination_provider: "host".into(),
            resource_name_annotation: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    DuplicateMac,
    DuplicateIp,
    NoIp,
    HostGeneratedMac,
    NonVmwareMac,
    DisconnectedNic,
    NicWithoutNetwork,
    Template,
    UnsupportedPortgroup,
    InsecurePortgroup,
    InconsistentVlan,
}

impl FindingKind {
    pub const ALL: [FindingKind; 11] = [
        FindingKind::DuplicateMac,
        FindingKind::DuplicateIp,
        FindingKind::NoIp,
        FindingKind::HostGeneratedMac,
        FindingKind::NonVmwareMac,
        FindingKind::DisconnectedNic,
        FindingKind::NicWithoutNetwork,
        FindingKind::Template,
        FindingKind::UnsupportedPortgroup,
        FindingKind::InsecurePortgroup,
        FindingKind::InconsistentVlan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::DuplicateMac => "duplicate-mac",
            FindingKind::DuplicateIp => "duplicate-ip",
            FindingKind::NoIp => "no-ip",
            FindingKind::HostGeneratedMac => "host-generated-mac",
            FindingKind::NonVmwareMac => "non-vmware-mac",
            FindingKind::DisconnectedNic => "disconnected-nic",
            FindingKind::NicWithoutNetwork => "nic-without-network",
            FindingKind::Template => "template",
            FindingKind::UnsupportedPortgroup => "unsupported-portgroup",
            FindingKind::InsecurePortgroup => "insecure-portgroup",
            FindingKind::InconsistentVlan => "inconsistent-vlan",
        }
    }

    /// The heading of the finding's group in the reports.
    pub fn title(self) -> &'static str {
        match self {
            FindingKind::DuplicateMac => "Duplicate MAC addresses",
            FindingKind::DuplicateIp => "Duplicate IP addresses",
            FindingKind::NoIp => "VMs without a known IP address",
            FindingKind::HostGeneratedMac => "Host-generated MACs (00:0c:29)",
            FindingKind::NonVmwareMac => "MACs outside VMware's ranges",
            FindingKind::DisconnectedNic => "Disconnected NICs",
            FindingKind::NicWithoutNetwork => "NICs without a network",
            FindingKind::Template => "Templates (not planned)",
            FindingKind::UnsupportedPortgroup => "Port groups this release does not plan",
            FindingKind::InsecurePortgroup => "Port groups with a relaxed security policy",
            FindingKind::InconsistentVlan => "Standard port groups with different VLANs per host",
        }
    }

    /// The fields that identify a finding of this kind (the reports' columns,
    /// before the message).
    pub fn fields(self) -> &'static [Field] {
        match self {
            FindingKind::DuplicateMac => &[Field::Mac],
            FindingKind::DuplicateIp => &[Field::Ip],
            FindingKind::NoIp | FindingKind::Template => &[Field::Vm],
            FindingKind::HostGeneratedMac
            | FindingKind::NonVmwareMac
            | FindingKind::DisconnectedNic
            | FindingKind::NicWithoutNetwork => &[Field::Vm, Field::Nic, Field::Mac],
            FindingKind::UnsupportedPortgroup
            | FindingKind::InsecurePortgroup
            | FindingKind::InconsistentVlan => &[Field::Portgroup],
        }
    }

    /// Whether the finding blocks a VM's network from working as on vSphere
    /// (shown first and marked in the reports).
    pub fn is_blocking(self) -> bool {
        matches!(
            self,
            FindingKind::DuplicateMac
                | FindingKind::DuplicateIp
                | FindingKind::UnsupportedPortgroup
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Vm,
    Nic,
    Mac,
    Ip,
    Portgroup,
}

impl Field {
    pub fn title(self) -> &'static str {
        match self {
            Field::Vm => "VM",
            Field::Nic => "NIC",
            Field::Mac => "MAC",
            Field::Ip => "IP",
            Field::Portgroup => "Port group",
        }
    }

    /// Monospaced in the HTML report.
    pub fn is_address(self) -> bool {
        matches!(self, Field::Mac | Field::Ip)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub kind: FindingKind,
    pub portgroup: Option<String>,
    pub vm: Option<String>,
    pub nic: Option<String>,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub message: String,
}

impl Finding {
    pub fn field(&self, field: Field) -> &str {
        let value = match field {
            Field::Vm => &self.vm,
            Field::Nic => &self.nic,
            Field::Mac => &self.mac,
            Field::Ip => &self.ip,
            Field::Portgroup => &self.portgroup,
        };
        value.as_deref().unwrap_or("")
    }

    fn new(kind: FindingKind, message: String) -> Self {
        Finding {
            kind,
            portgroup: None,
            vm: None,
            nic: None,
            mac: None,
            ip: None,
            message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: MacAddr,
    pub addrs: Vec<Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPortgroup {
    pub name: String,
    pub vlan: u16,
    /// The vSphere port groups it stands for (one VLAN may carry several).
    pub vsphere: Vec<String>,
    /// False when a vSphere port group it stands for accepted forged
    /// transmits or MAC changes.
    pub spoof_check: bool,
    pub reservations: Vec<Reservation>,
    pub nics: usize,
}

/// A vSphere port group (one entry per VLAN setting it has) and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VspherePortgroup {
    pub vsphere: String,
    pub planned: Option<String>,
    /// access | untagged | trunk | pvlan | uplink; None when no VLAN is known.
    pub kind: Option<&'static str>,
    pub vlan: Option<u16>,
    pub vlans: Option<String>,
    pub distributed: bool,
    pub nics: usize,
    pub fate: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedInterface {
    /// `net-<n>`: n is the NIC's position on vSphere, as Forklift names it.
    pub name: String,
    pub label: String,
    pub mac: MacAddr,
    pub portgroup: String,
    pub down: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVm {
    /// The Kubernetes name (DNS label).
    pub name: String,
    pub vsphere: String,
    pub cluster: String,
    pub interfaces: Vec<PlannedInterface>,
    /// NICs left out of the stanza, each with why.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MapSource {
    Id(String),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MapPair {
    pub source: MapSource,
    pub vsphere: String,
    pub portgroup: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub options: Options,
    pub vms: usize,
    pub nics: usize,
    pub portgroups: Vec<PlannedPortgroup>,
    pub vsphere: Vec<VspherePortgroup>,
    pub planned_vms: Vec<PlannedVm>,
    pub network_map: Vec<MapPair>,
    /// Used vSphere networks the NetworkMap leaves out (not planned).
    pub unmapped: Vec<String>,
    /// vSphere cluster -> VLAN -> planned NICs.
    pub clusters: BTreeMap<String, BTreeMap<u16, usize>>,
    pub findings: Vec<Finding>,
    pub govc_guest_overrides: Vec<String>,
    pub srm_placeholders: Vec<String>,
}

/// What the plan knows about one NIC's network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NetKey {
    name: String,
    vlan: Vlan,
}

struct NicRef<'a> {
    vm: &'a Vm,
    index: usize,
    nic: &'a Nic,
    net: Option<NetKey>,
    source: Option<MapSource>,
}

fn vm_label(vm: &Vm) -> String {
    vm.name.clone()
}

/// Addresses a reservation may hold: not link-local, not loopback/multicast;
/// one per IP, with the prefix where a source knew it.
fn usable_addrs(nic: &Nic) -> Vec<Addr> {
    let mut by_ip: BTreeMap<IpAddr, Addr> = BTreeMap::new();
    for a in &nic.addrs {
        if a.is_link_local() || a.is_unusable() {
            continue;
        }
        let entry = by_ip.entry(a.ip).or_insert(*a);
        if entry.prefix.is_none() {
            entry.prefix = a.prefix;
        }
    }
    let mut out: Vec<Addr> = by_ip.into_values().collect();
    out.sort_by_key(|a| (a.ip.is_ipv6(), a.ip));
    out
}

struct NetworkIndex<'a> {
    by_name: BTreeMap<String, Vec<&'a NetworkObservation>>,
    by_id: BTreeMap<String, Vec<&'a NetworkObservation>>,
    id_names: BTreeMap<String, String>,
}

impl<'a> NetworkIndex<'a> {
    fn new(inventory: &'a Inventory) -> Self {
        let mut id_names = BTreeMap::new();
        for obs in &inventory.networks {
            if let (Some(id), Some(name)) = (&obs.id, &obs.name) {
                id_names.entry(id.clone()).or_insert_with(|| name.clone());
            }
        }
        for vm in &inventory.vms {
            for nic in &vm.nics {
                if let (Some(id), Some(name)) = (&nic.network_id, &nic.network) {
                    id_names.entry(id.clone()).or_insert_with(|| name.clone());
                }
            }
        }
        let mut by_name: BTreeMap<String, Vec<&NetworkObservation>> = BTreeMap::new();
        let mut by_id: BTreeMap<String, Vec<&NetworkObservation>> = BTreeMap::new();
        for obs in &inventory.networks {
            let name = obs
                .name
                .clone()
                .or_else(|| obs.id.as_ref().and_then(|id| id_names.get(id).cloned()))
                .or_else(|| obs.id.clone());
            if let Some(name) = name {
                by_name.entry(name).or_default().push(obs);
            }
            if let Some(id) = &obs.id {
                by_id.entry(id.clone()).or_default().push(obs);
            }
        }
        NetworkIndex {
            by_name,
            by_id,
            id_names,
        }
    }

    /// The observations that describe this NIC's network: by ID when known,
    /// else by name; for standard port groups the NIC's own host's row wins.
    fn resolve(&self, vm: &Vm, nic: &Nic) -> Option<(String, Vec<&'a NetworkObservation>)> {
        let name = nic
            .network
            .clone()
            .or_else(|| {
                nic.network_id
                    .as_ref()
                    .and_then(|id| self.id_names.get(id).cloned())
            })
            .or_else(|| nic.network_id.clone())?;
        let candidates: Vec<&NetworkObservation> = nic
            .network_id
            .as_ref()
            .and_then(|id| self.by_id.get(id).cloned())
            .or_else(|| self.by_name.get(&name).cloned())
            .unwrap_or_default();
        let on_host: Vec<&NetworkObservation> = candidates
            .iter()
            .copied()
            .filter(|o| {
                !o.distributed && o.host.as_deref() == Some(vm.host.as_str()) && !vm.host.is_empty()
            })
            .collect();
        Some((
            name,
            if on_host.is_empty() {
                candidates
            } else {
                on_host
            },
        ))
    }
}

/// The VLAN of a NIC whose network has different VLANs on different hosts,
/// none of them on the VM's own host.
const PER_HOST: &str = "different per host";

/// The port group's kind as the reports name it.
fn kind_of(vlan: &Vlan, uplink: bool) -> Option<&'static str> {
    if uplink {
        return Some("uplink");
    }
    match vlan {
        Vlan::Unknown(_) => None,
        other => Some(other.kind()),
    }
}

fn unsupported_reason(vlan: &Vlan, uplink: bool) -> String {
    if uplink {
        return "is a distributed switch's uplink port group (a trunk of all VLANs): VMs do not belong on it; move the VM's NIC to an access port group on vSphere or plan it by hand".into();
    }
    match vlan {
        Vlan::None => "has VLAN 0 (untagged): portgroup plans access VLANs 1-4094 only; give the network a VLAN, or attach these NICs to an untagged network (bridge) by hand".into(),
        Vlan::Trunk(spec) if spec == "4095" => "has VLAN 4095 (the guest tags its own VLANs): VLAN trunks to VMs are not planned by this release; these NICs need a trunk attachment, planned by hand".into(),
        Vlan::Trunk(spec) => format!("is a VLAN trunk ({spec}): VLAN trunks to VMs are not planned by this release; these NICs need a trunk attachment, planned by hand"),
        Vlan::Pvlan(id) => format!("is a private VLAN (secondary {id}): private VLAN isolation has no equivalent in portgroup; plan these NICs by hand (for example as an access VLAN with its own port security)"),
        Vlan::Unknown(text) if text == PER_HOST => "has different VLANs on different hosts and none is known for these VMs' hosts (no vPort row): plan these NICs by hand with the VLAN their host really uses".into(),
        Vlan::Unknown(text) if text.is_empty() => "has no VLAN information (no vPort or dvPort row, or an NSX network): add the port group's rows to the export or plan it by hand".into(),
        Vlan::Unknown(text) => format!("has a VLAN setting this release cannot read ({text:?}): plan it by hand"),
        Vlan::Access(_) => String::new(),
    }
}

pub fn plan(inventory: &Inventory, options: &Options) -> Plan {
    let index = NetworkIndex::new(inventory);
    let mut findings: Vec<Finding> = Vec::new();

    // Scope: every VM except templates (reported) and SRM placeholders (the
    // protected VM is planned at the other site).
    let mut vms: Vec<&Vm> = inventory.vms.iter().collect();
    vms.sort_by(|a, b| (&a.name, &a.vcenter).cmp(&(&b.name, &b.vcenter)));
    let mut in_scope: Vec<&Vm> = Vec::new();
    let mut srm_placeholders = Vec::new();
    for vm in vms {
        if vm.template {
            let mut f = Finding::new(
                FindingKind::Template,
                format!(
                    "{} is a template: templates are not migrated as VMs and get no reservations; convert it to a VM first if it must move",
                    vm.name
                ),
            );
            f.vm = Some(vm_label(vm));
            findings.push(f);
        } else if vm.srm_placeholder {
            srm_placeholders.push(vm.name.clone());
        } else {
            in_scope.push(vm);
        }
    }

    // Every in-scope NIC with its network (name and VLAN setting).
    let mut nics: Vec<NicRef> = Vec::new();
    let mut uplink_names: BTreeSet<String> = BTreeSet::new();
    let mut distributed_names: BTreeSet<String> = BTreeSet::new();
    // nics[vm_nics[k]] are in_scope[k]'s NICs, in order.
    let mut vm_nics: Vec<std::ops::Range<usize>> = Vec::with_capacity(in_scope.len());
    for vm in &in_scope {
        let first = nics.len();
        for (i, nic) in vm.nics.iter().enumerate() {
            let resolved = index.resolve(vm, nic);
            let (net, source) = match resolved {
                None => (None, None),
                Some((name, obs)) => {
                    let settings: BTreeSet<&Vlan> = obs.iter().map(|o| &o.vlan).collect();
                    let vlan = match settings.len() {
                        1 => settings
                            .into_iter()
                            .next()
                            .cloned()
                            .unwrap_or(Vlan::Unknown(String::new())),
                        0 => Vlan::Unknown(String::new()),
                        _ => Vlan::Unknown(PER_HOST.into()),
                    };
                    if obs.iter().any(|o| o.uplink) {
                        uplink_names.insert(name.clone());
                    }
                    if obs.iter().any(|o| o.distributed) {
                        distributed_names.insert(name.clone());
                    }
                    let id = nic.network_id.clone().or_else(|| {
                        let ids: BTreeSet<&String> =
                            obs.iter().filter_map(|o| o.id.as_ref()).collect();
                        (ids.len() == 1)
                            .then(|| ids.into_iter().next().cloned())
                            .flatten()
                    });
                    let source = match id {
                        Some(id) => MapSource::Id(id),
                        None if !vm.datacenter.is_empty() => {
                            MapSource::Name(format!("/{}/network/{}", vm.datacenter, name))
                        }
                        None => MapSource::Name(name.clone()),
                    };
                    (Some(NetKey { name, vlan }), Some(source))
                }
            };
            nics.push(NicRef {
                vm,
                index: i,
                nic,
                net,
                source,
            });
        }
        vm_nics.push(first..nics.len());
    }

    // Observations per name, for the port-group table and findings.
    let mut observed: BTreeMap<String, BTreeSet<Vlan>> = BTreeMap::new();
    for (name, obs) in &index.by_name {
        for o in obs {
            observed
                .entry(name.clone())
                .or_default()
                .insert(o.vlan.clone());
            if o.uplink {
                uplink_names.insert(name.clone());
            }
            if o.distributed {
                distributed_names.insert(name.clone());
            }
        }
    }
    let mut used: BTreeMap<NetKey, usize> = BTreeMap::new();
    for n in &nics {
        if let Some(key) = &n.net {
            *used.entry(key.clone()).or_default() += 1;
        }
    }

    // Planned portgroups: one per access VLAN in use.
    let mut by_vlan: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for key in used.keys() {
        if let (Vlan::Access(v), false) = (&key.vlan, uplink_names.contains(&key.name)) {
            by_vlan.entry(*v).or_default().insert(key.name.clone());
        }
    }
    let names = assign_names(&by_vlan);
    let planned_name = |key: &NetKey| -> Option<String> {
        match (&key.vlan, uplink_names.contains(&key.name)) {
            (Vlan::Access(v), false) => names.get(v).cloned(),
            _ => None,
        }
    };

    // Security policy per vSphere name.
    let mut insecure: BTreeMap<String, (bool, bool, bool)> = BTreeMap::new();
    for (name, obs) in &index.by_name {
        for o in obs {
            let e = insecure.entry(name.clone()).or_default();
            e.0 |= o.promiscuous;
            e.1 |= o.mac_changes;
            e.2 |= o.forged_transmits;
        }
    }

    // Duplicates across every in-scope NIC.
    let mut by_mac: BTreeMap<MacAddr, Vec<&NicRef>> = BTreeMap::new();
    let mut by_ip: BTreeMap<IpAddr, Vec<&NicRef>> = BTreeMap::new();
    for n in &nics {
        by_mac.entry(n.nic.mac).or_default().push(n);
        for a in usable_addrs(n.nic) {
            by_ip.entry(a.ip).or_default().push(n);
        }
    }
    let dup_macs: BTreeSet<MacAddr> = by_mac
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(m, _)| *m)
        .collect();
    let dup_ips: BTreeSet<IpAddr> = by_ip
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(ip, _)| *ip)
        .collect();
    let who = |list: &[&NicRef]| -> String {
        list.iter()
            .map(|n| format!("{} ({})", n.vm.name, n.nic.label))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for mac in &dup_macs {
        let list = &by_mac[mac];
        let mut f = Finding::new(
            FindingKind::DuplicateMac,
            format!(
                "{mac} is on {} NICs: {}. Two ports with one MAC break each other's traffic; none of them is reserved. Give all but one a new MAC on vSphere (or in the VM stanza) before migrating, then plan again",
                list.len(),
                who(list)
            ),
        );
        f.mac = Some(mac.to_string());
        findings.push(f);
    }
    for ip in &dup_ips {
        let list = &by_ip[ip];
        let mut f = Finding::new(
            FindingKind::DuplicateIp,
            format!(
                "{ip} is reported on {} NICs: {}. It is left out of their reservations (port security would let only one of them use it); find out which VM really owns it and add it to that reservation by hand",
                list.len(),
                who(list)
            ),
        );
        f.ip = Some(ip.to_string());
        findings.push(f);
    }

    // Per-NIC findings.
    for n in &nics {
        let vm = n.vm;
        let nic_finding = |kind, message: String| {
            let mut f = Finding::new(kind, message);
            f.vm = Some(vm_label(vm));
            f.nic = Some(n.nic.label.clone());
            f.mac = Some(n.nic.mac.to_string());
            f
        };
        if n.net.is_none() {
            findings.push(nic_finding(
                FindingKind::NicWithoutNetwork,
                format!(
                    "{} {} is attached to no network: it is left out of the plan; attach it on vSphere or add it to the VM by hand",
                    vm.name, n.nic.label
                ),
            ));
        }
        if !n.nic.starts_connected {
            findings.push(nic_finding(
                FindingKind::DisconnectedNic,
                format!(
                    "{} {} does not start connected: its interface gets state: down, as on vSphere; remove that line from the VM stanza if it should come up",
                    vm.name, n.nic.label
                ),
            ));
        } else if vm.powered_on && !n.nic.connected {
            findings.push(nic_finding(
                FindingKind::DisconnectedNic,
                format!(
                    "{} {} is disconnected now but set to start connected: it will come up after migration; check that this is wanted",
                    vm.name, n.nic.label
                ),
            ));
        }
        match mac_origin(&n.nic.mac) {
            MacOrigin::HostGenerated => findings.push(nic_finding(
                FindingKind::HostGeneratedMac,
                format!(
                    "{} {} has a host-generated MAC ({}): ESXi derives it from the VM's UUID and path, so it is not guaranteed unique across hosts; it is kept, and checked for duplicates across the whole inventory",
                    vm.name, n.nic.label, n.nic.mac
                ),
            )),
            MacOrigin::Other => findings.push(nic_finding(
                FindingKind::NonVmwareMac,
                format!(
                    "{} {} has a MAC outside VMware's ranges ({}): set by hand or by a MAC-range policy; it is kept; make sure nothing else on the VLAN uses it",
                    vm.name, n.nic.label, n.nic.mac
                ),
            )),
            MacOrigin::Vmware => {}
        }
    }

    // no-ip: VMs with planned NICs but no address on any of them.
    let mut planned_nics_by_vm: BTreeMap<(String, String), Vec<&NicRef>> = BTreeMap::new();
    for n in &nics {
        if n.net.as_ref().and_then(&planned_name).is_some() {
            planned_nics_by_vm
                .entry((n.vm.name.clone(), n.vm.vcenter.clone()))
                .or_default()
                .push(n);
        }
    }
    for list in planned_nics_by_vm.values() {
        if list.iter().all(|n| usable_addrs(n.nic).is_empty()) {
            let vm = list[0].vm;
            let why = if !vm.powered_on {
                "it is powered off (vSphere reports guest addresses only while VMware Tools runs)"
            } else {
                "VMware Tools reports none (Tools not running, or DHCP)"
            };
            let mut f = Finding::new(
                FindingKind::NoIp,
                format!(
                    "{} has no known IP address on its planned NICs: {why}. Its MACs are reserved without IPs, so IP port security and the conflict probe cannot protect it; add its addresses to node-config.json by hand if they are static",
                    vm.name
                ),
            );
            f.vm = Some(vm_label(vm));
            findings.push(f);
        }
    }

    // Port-group findings, for port groups that in-scope NICs use.
    let used_names: BTreeSet<String> = used.keys().map(|k| k.name.clone()).collect();
    for (key, count) in &used {
        if planned_name(key).is_none() {
            let uplink = uplink_names.contains(&key.name);
            let mut f = Finding::new(
                FindingKind::UnsupportedPortgroup,
                format!(
                    "{} {}; {count} NIC(s) use it and are left out of the plan",
                    key.name,
                    unsupported_reason(&key.vlan, uplink)
                ),
            );
            f.portgroup = Some(key.name.clone());
            findings.push(f);
        }
    }
    for name in &used_names {
        if let Some((promiscuous, mac_changes, forged)) = insecure.get(name).copied() {
            if promiscuous || mac_changes || forged {
                let accepted: Vec<&str> = [
                    (promiscuous, "promiscuous mode"),
                    (mac_changes, "MAC changes"),
                    (forged, "forged transmits"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, what)| *what)
                .collect();
                let todo = if mac_changes || forged {
                    "its NAD gets spoofCheck: false so that what vSphere allowed keeps working (VRRP virtual MACs, nested hypervisors); MAC port security is off for it"
                } else {
                    "portgroup does not mirror other ports' traffic to a VM, so software relying on promiscuous mode (IDS, packet capture) will not see it"
                };
                let mut f = Finding::new(
                    FindingKind::InsecurePortgroup,
                    format!("{name} accepts {} on vSphere: {todo}", accepted.join(", ")),
                );
                f.portgroup = Some(name.clone());
                findings.push(f);
            }
        }
        let host_vlans: BTreeSet<&Vlan> = index
            .by_name
            .get(name)
            .map(|obs| {
                obs.iter()
                    .filter(|o| !o.distributed)
                    .map(|o| &o.vlan)
                    .collect()
            })
            .unwrap_or_default();
        if host_vlans.len() > 1 {
            let list = host_vlans
                .iter()
                .map(|v| v.describe())
                .collect::<Vec<_>>()
                .join(", ");
            let mut f = Finding::new(
                FindingKind::InconsistentVlan,
                format!(
                    "{name} is a standard port group with different VLANs on different hosts ({list}): each VM is planned with its own host's VLAN; networkmap.yaml can map the network to one NAD only, so apply the VM stanzas in vms/ after Forklift creates the VMs"
                ),
            );
            f.portgroup = Some(name.clone());
            findings.push(f);
        }
    }

    // Reservations and the per-portgroup NIC counts.
    let mut reservations: BTreeMap<String, Vec<Reservation>> = BTreeMap::new();
    let mut planned_counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &nics {
        let Some(pg) = n.net.as_ref().and_then(&planned_name) else {
            continue;
        };
        *planned_counts.entry(pg.clone()).or_default() += 1;
        if dup_macs.contains(&n.nic.mac) {
            continue;
        }
        let addrs = usable_addrs(n.nic)
            .into_iter()
            .filter(|a| !dup_ips.contains(&a.ip))
            .collect();
        reservations.entry(pg).or_default().push(Reservation {
            mac: n.nic.mac,
            addrs,
        });
    }
    let mut portgroups: Vec<PlannedPortgroup> = by_vlan
        .iter()
        .filter_map(|(vlan, members)| {
            let name = names.get(vlan)?.clone();
            let spoof_check = !members
                .iter()
                .any(|m| insecure.get(m).is_some_and(|s| s.1 || s.2));
            let mut res = reservations.remove(&name).unwrap_or_default();
            res.sort_by_key(|r| r.mac);
            Some(PlannedPortgroup {
                nics: planned_counts.get(&name).copied().unwrap_or(0),
                name,
                vlan: *vlan,
                vsphere: members.iter().cloned().collect(),
                spoof_check,
                reservations: res,
            })
        })
        .collect();
    portgroups.sort_by(|a, b| a.name.cmp(&b.name));

    // The vSphere port-group table: every observed port group, and used
    // networks nothing describes.
    let mut vsphere = Vec::new();
    let mut table_keys: BTreeSet<NetKey> = used.keys().cloned().collect();
    for (name, vlans) in &observed {
        for vlan in vlans {
            table_keys.insert(NetKey {
                name: name.clone(),
                vlan: vlan.clone(),
            });
        }
    }
    for key in table_keys {
        let uplink = uplink_names.contains(&key.name);
        let planned = planned_name(&key);
        let count = used.get(&key).copied().unwrap_or(0);
        let fate = match (&planned, count) {
            (Some(pg), _) => format!(
                "planned as portgroup {pg} (VLAN {})",
                match key.vlan {
                    Vlan::Access(v) => v,
                    _ => 0,
                }
            ),
            (None, 0) => "not used by a VM in scope".to_string(),
            (None, _) => format!("not planned: {}", unsupported_reason(&key.vlan, uplink)),
        };
        let (vlan, vlans) = match &key.vlan {
            Vlan::Access(v) => (Some(*v), None),
            Vlan::None => (Some(0), None),
            Vlan::Trunk(spec) if spec == "4095" => (Some(4095), Some(spec.clone())),
            Vlan::Trunk(spec) => (None, Some(spec.clone())),
            Vlan::Pvlan(v) => (Some(*v), None),
            Vlan::Unknown(_) => (None, None),
        };
        vsphere.push(VspherePortgroup {
            distributed: distributed_names.contains(&key.name),
            kind: kind_of(&key.vlan, uplink),
            vsphere: key.name,
            planned,
            vlan,
            vlans,
            nics: count,
            fate,
        });
    }

    // VM stanzas and the NetworkMap.
    let mut planned_vms = Vec::new();
    let mut vm_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut pairs: BTreeMap<MapSource, (String, BTreeSet<String>)> = BTreeMap::new();
    let mut unmapped: BTreeSet<String> = BTreeSet::new();
    let mut clusters: BTreeMap<String, BTreeMap<u16, usize>> = BTreeMap::new();
    for (vm, range) in in_scope.iter().zip(&vm_nics) {
        let mut interfaces = Vec::new();
        let mut skipped = Vec::new();
        for n in &nics[range.clone()] {
            match (n.net.as_ref(), n.net.as_ref().and_then(&planned_name)) {
                (_, Some(pg)) => {
                    if let Some(source) = &n.source {
                        let entry = pairs.entry(source.clone()).or_insert_with(|| {
                            (
                                n.net.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
                                BTreeSet::new(),
                            )
                        });
                        entry.1.insert(pg.clone());
                    }
                    let cluster = if vm.cluster.is_empty() {
                        "(no cluster)".to_string()
                    } else {
                        vm.cluster.clone()
                    };
                    if let Some(Vlan::Access(v)) = n.net.as_ref().map(|k| &k.vlan) {
                        *clusters.entry(cluster).or_default().entry(*v).or_default() += 1;
                    }
                    interfaces.push(PlannedInterface {
                        name: format!("net-{}", n.index),
                        label: n.nic.label.clone(),
                        mac: n.nic.mac,
                        portgroup: pg,
                        down: !n.nic.starts_connected,
                    });
                }
                (Some(key), None) => {
                    unmapped.insert(key.name.clone());
                    skipped.push(format!(
                        "{} ({}): port group {} is not planned",
                        n.nic.label, n.nic.mac, key.name
                    ));
                }
                (None, None) => {
                    skipped.push(format!("{} ({}): no network", n.nic.label, n.nic.mac))
                }
            }
        }
        if interfaces.is_empty() {
            continue;
        }
        let base = match dns_label(&vm.name, 63) {
            b if b.is_empty() => "vm".to_string(),
            b => b,
        };
        let seen = vm_names.entry(base.clone()).or_default();
        *seen += 1;
        let name = if *seen == 1 {
            base
        } else {
            with_suffix(&base, &seen.to_string())
        };
        planned_vms.push(PlannedVm {
            name,
            vsphere: vm.name.clone(),
            cluster: vm.cluster.clone(),
            interfaces,
            skipped,
        });
    }
    planned_vms.sort_by(|a, b| a.name.cmp(&b.name));
    let network_map = pairs
        .into_iter()
        .filter_map(|(source, (vsphere, pgs))| {
            // A network whose hosts disagree on the VLAN maps to one NAD only
            // (the inconsistent-vlan finding says so); the VM stanzas are exact.
            let portgroup = pgs.into_iter().next()?;
            Some(MapPair {
                source,
                vsphere,
                portgroup,
            })
        })
        .collect();

    findings.sort();
    findings.dedup();
    let mut govc_guest_overrides = inventory.govc_guest_overrides.clone();
    govc_guest_overrides.sort();
    govc_guest_overrides.dedup();
    Plan {
        options: options.clone(),
        vms: in_scope.len(),
        nics: nics.len(),
        portgroups,
        vsphere,
        planned_vms,
        network_map,
        unmapped: unmapped.into_iter().collect(),
        clusters,
        findings,
        govc_guest_overrides,
        srm_placeholders,
    }
}

/// Portgroup names: a DNS label from the (first) vSphere name on each VLAN;
/// names that normalise alike (`Prod-Web`, `Prod Web`) all get their VLAN as a
/// suffix, so no name depends on which of them was read first.
fn assign_names(by_vlan: &BTreeMap<u16, BTreeSet<String>>) -> BTreeMap<u16, String> {
    let mut candidates: BTreeMap<u16, String> = BTreeMap::new();
    for (vlan, members) in by_vlan {
        let first = members.iter().next().map(String::as_str).unwrap_or("");
        let base = dns_label(first, 63);
        candidates.insert(
            *vlan,
            if base.is_empty() {
                format!("vlan{vlan}")
            } else {
                base
            },
        );
    }
    // Suffix every member of a clash; repeat in case a suffixed name meets an
    // existing one (a vSphere port group literally called "prod-web-v100").
    for _ in 0..4 {
        let mut count: BTreeMap<&String, usize> = BTreeMap::new();
        for name in candidates.values() {
            *count.entry(name).or_default() += 1;
        }
        let clashing: BTreeSet<String> = count
            .into_iter()
            .filter(|(_, c)| *c > 1)
            .map(|(n, _)| n.clone())
            .collect();
        if clashing.is_empty() {
            break;
        }
        for (vlan, name) in candidates.iter_mut() {
            if clashing.contains(name) {
                *name = with_suffix(name, &format!("v{vlan}"));
            }
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_normalise_alike_get_their_vlan() {
        let mut by_vlan = BTreeMap::new();
        by_vlan.insert(100, BTreeSet::from(["Prod-Web".to_string()]));
        by_vlan.insert(101, BTreeSet::from(["Prod Web".to_string()]));
        by_vlan.insert(
            200,
            BTreeSet::from(["DB".to_string(), "db-old".to_string()]),
        );
        by_vlan.insert(300, BTreeSet::from(["prod-web-v100".to_string()]));
        by_vlan.insert(301, BTreeSet::from(["###".to_string()]));
        let names = assign_names(&by_vlan);
        let unique: BTreeSet<&String> = names.values().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(names[&101], "prod-web-v101");
        assert_eq!(names[&200], "db");
        assert_eq!(names[&301], "vlan301");
        for name in names.values() {
            assert!(
                portgroup::nodeconfig::validate_portgroup_name(name).is_ok(),
                "{name}"
            );
        }
    }
}

#[cfg(test)]
mod decisions {
    use super::*;
    use crate::model::{NetworkObservation, Nic, Vm};
    use crate::values::{parse_addrs, parse_mac};

    fn obs(name: &str, host: Option<&str>, vlan: Vlan) -> NetworkObservation {
        NetworkObservation {
            name: Some(name.into()),
            id: None,
            vcenter: "vc".into(),
            datacenter: "DC".into(),
            cluster: "C".into(),
            host: host.map(str::to_string),
            switch: "vSwitch0".into(),
            distributed: host.is_none(),
            uplink: false,
            vlan,
            promiscuous: false,
            mac_changes: false,
            forged_transmits: false,
        }
    }

    fn nic(network: &str, mac: &str, ips: &str) -> Nic {
        Nic {
            label: "Network adapter 1".into(),
            mac: parse_mac(mac).unwrap(),
            address_type: "assigned".into(),
            network: (!network.is_empty()).then(|| network.to_string()),
            network_id: None,
            switch: None,
            connected: true,
            starts_connected: true,
            addrs: parse_addrs(ips).unwrap(),
        }
    }

    fn vm(name: &str, host: &str, nics: Vec<Nic>) -> Vm {
        Vm {
            name: name.into(),
            vcenter: "vc".into(),
            datacenter: "DC".into(),
            cluster: "C".into(),
            host: host.into(),
            template: false,
            srm_placeholder: false,
            powered_on: true,
            nics,
            source: "test".into(),
        }
    }

    fn kinds(plan: &Plan) -> Vec<(&'static str, String)> {
        plan.findings
            .iter()
            .map(|f| {
                let key = f
                    .kind
                    .fields()
                    .iter()
                    .map(|k| f.field(*k))
                    .collect::<Vec<_>>()
                    .join("/");
                (f.kind.as_str(), key)
            })
            .collect()
    }

    #[test]
    fn port_groups_sharing_a_vlan_become_one_portgroup() {
        let inventory = Inventory {
            vms: vec![
                vm(
                    "a",
                    "h1",
                    vec![nic("App-Std", "00:50:56:00:00:01", "10.0.0.1")],
                ),
                vm(
                    "b",
                    "h1",
                    vec![nic("App-DV", "00:50:56:00:00:02", "10.0.0.2")],
                ),
            ],
            networks: vec![
                obs("App-Std", Some("h1"), Vlan::Access(200)),
                obs("App-DV", None, Vlan::Access(200)),
            ],
            govc_guest_overrides: vec![],
        };
        let plan = plan(&inventory, &Options::default());
        assert_eq!(plan.portgroups.len(), 1);
        assert_eq!(plan.portgroups[0].name, "app-dv");
        assert_eq!(plan.portgroups[0].vsphere, vec!["App-DV", "App-Std"]);
        assert_eq!(plan.portgroups[0].reservations.len(), 2);
        assert_eq!(
            plan.network_map.len(),
            2,
            "both vSphere networks map to the one NAD"
        );
        assert!(plan.network_map.iter().all(|p| p.portgroup == "app-dv"));
        assert!(plan.findings.is_empty(), "{:?}", kinds(&plan));
    }

    #[test]
    fn each_vm_gets_its_own_hosts_vlan() {
        let inventory = Inventory {
            vms: vec![
                vm(
                    "a",
                    "h1",
                    vec![nic("Legacy", "00:50:56:00:00:01", "10.0.0.1")],
                ),
                vm(
                    "b",
                    "h2",
                    vec![nic("Legacy", "00:50:56:00:00:02", "10.0.1.1")],
                ),
                // On a host without a vPort row: the hosts disagree, so no VLAN.
                vm(
                    "c",
                    "h9",
                    vec![nic("Legacy", "00:50:56:00:00:03", "10.0.2.1")],
                ),
            ],
            networks: vec![
                obs("Legacy", Some("h1"), Vlan::Access(300)),
                obs("Legacy", Some("h2"), Vlan::Access(301)),
            ],
            govc_guest_overrides: vec![],
        };
        let plan = plan(&inventory, &Options::default());
        let vlans: Vec<(String, u16)> = plan
            .portgroups
            .iter()
            .map(|p| (p.name.clone(), p.vlan))
            .collect();
        assert_eq!(
            vlans,
            vec![("legacy-v300".into(), 300), ("legacy-v301".into(), 301)]
        );
        assert_eq!(
            kinds(&plan),
            vec![
                ("unsupported-portgroup", "Legacy".into()),
                ("inconsistent-vlan", "Legacy".into())
            ]
        );
        let why = &plan.findings[0].message;
        assert!(why.contains("none is known for these VMs' hosts"), "{why}");
    }

    #[test]
    fn duplicates_link_local_templates_and_uplinks() {
        let mut template = vm("t", "h1", vec![nic("Web", "00:50:56:00:00:01", "10.0.0.9")]);
        template.template = true;
        let mut srm = vm("s", "h1", vec![nic("Web", "00:50:56:00:00:05", "10.0.0.5")]);
        srm.srm_placeholder = true;
        let mut uplink = obs("DVS-DVUplinks-1", None, Vlan::Trunk("0-4094".into()));
        uplink.uplink = true;
        let inventory = Inventory {
            vms: vec![
                template,
                srm,
                // The template's MAC and IP again: templates are out of the check.
                vm(
                    "a",
                    "h1",
                    vec![nic(
                        "Web",
                        "00:50:56:00:00:01",
                        "10.0.0.9, fe80::1, 169.254.1.1",
                    )],
                ),
                // Same MAC as c, in upper case; same IP as d.
                vm("b", "h1", vec![nic("Web", "00:50:56:00:00:AB", "10.0.0.2")]),
                vm("c", "h1", vec![nic("Web", "00:50:56:00:00:ab", "10.0.0.3")]),
                vm(
                    "d",
                    "h1",
                    vec![nic("Web", "00:50:56:00:00:0d", "10.0.0.2, 2001:db8::d")],
                ),
                vm(
                    "e",
                    "h1",
                    vec![nic("DVS-DVUplinks-1", "00:50:56:00:00:0e", "10.0.0.14")],
                ),
            ],
            networks: vec![obs("Web", Some("h1"), Vlan::Access(100)), uplink],
            govc_guest_overrides: vec![],
        };
        let plan = plan(&inventory, &Options::default());
        assert_eq!(
            kinds(&plan),
            vec![
                ("duplicate-mac", "00:50:56:00:00:ab".into()),
                ("duplicate-ip", "10.0.0.2".into()),
                ("template", "t".into()),
                ("unsupported-portgroup", "DVS-DVUplinks-1".into()),
            ]
        );
        assert_eq!(plan.srm_placeholders, vec!["s"]);
        assert_eq!(plan.vms, 5);
        let res: Vec<(String, Vec<String>)> = plan.portgroups[0]
            .reservations
            .iter()
            .map(|r| {
                (
                    r.mac.to_string(),
                    r.addrs.iter().map(|a| a.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            res,
            vec![
                ("00:50:56:00:00:01".into(), vec!["10.0.0.9".into()]),
                ("00:50:56:00:00:0d".into(), vec!["2001:db8::d".into()]),
            ]
        );
        let uplink_row = plan
            .vsphere
            .iter()
            .find(|p| p.vsphere == "DVS-DVUplinks-1")
            .unwrap();
        assert_eq!((uplink_row.kind, uplink_row.nics), (Some("uplink"), 1));
    }
}
