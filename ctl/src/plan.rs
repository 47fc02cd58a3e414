//! The plan: every decision portgroupctl makes, as a pure function of the
//! inventory and the options. Renderers only format what is decided here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portgroup::mac::MacAddr;
use portgroup::nodeconfig::{Segment, VidSet};

use crate::model::{Inventory, NetworkObservation, Nic, Vm};
use crate::names::{dns_label, with_suffix};
use crate::values::{mac_origin, Addr, MacOrigin, Vlan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Namespace of the NADs and the VMs.
    pub namespace: String,
    /// The node uplink that carries the VLAN trunk.
    pub uplink: String,
    /// The uplink of the untagged portgroup (vSphere's VLAN 0), when it is not
    /// `uplink`: untagged traffic usually has a NIC of its own.
    pub untagged_uplink: Option<String>,
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
            untagged_uplink: None,
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
    TrunkVlans,
}

impl FindingKind {
    pub const ALL: [FindingKind; 12] = [
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
        FindingKind::TrunkVlans,
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
            FindingKind::TrunkVlans => "trunk-vlans",
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
            FindingKind::TrunkVlans => "Trunks whose VLAN list the network team must confirm",
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
            | FindingKind::InconsistentVlan
            | FindingKind::TrunkVlans => &[Field::Portgroup],
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
    /// What its VM ports carry, in the node config's own terms: an access VLAN,
    /// a trunk (`trunk: "100-110,200"`) or the uplink's untagged traffic.
    pub segment: Segment,
    /// Its own uplink (`--untagged-uplink` for the untagged portgroup); None:
    /// the node's.
    pub uplink: Option<String>,
    /// The vSphere port groups it stands for (one VLAN may carry several).
    pub vsphere: Vec<String>,
    /// False when a vSphere port group it stands for accepted forged
    /// transmits or MAC changes.
    pub spoof_check: bool,
    pub reservations: Vec<Reservation>,
    pub nics: usize,
}

impl PlannedPortgroup {
    /// The access VLAN, for an access portgroup.
    pub fn vlan(&self) -> Option<u16> {
        match self.segment {
            Segment::Access(vid) => Some(vid),
            _ => None,
        }
    }

    /// The tagged VLANs its ports carry (what the nodes' uplink must trunk).
    pub fn vids(&self) -> Vec<u16> {
        match &self.segment {
            Segment::Access(vid) => vec![*vid],
            Segment::Trunk { vids, native } => vids.vids().iter().copied().chain(*native).collect(),
            Segment::Untagged => Vec::new(),
        }
    }

    /// "VLAN 100", "trunk 100-110,200", "untagged", as the reports say it.
    pub fn describe(&self) -> String {
        match &self.segment {
            Segment::Access(vid) => format!("VLAN {vid}"),
            Segment::Trunk { vids, .. } => format!("trunk {vids}"),
            Segment::Untagged => "untagged".into(),
        }
    }

    /// The short form for table cells: "100", "trunk 100-110,200", "untagged".
    pub fn vlan_cell(&self) -> String {
        match &self.segment {
            Segment::Access(vid) => vid.to_string(),
            _ => self.describe(),
        }
    }
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
    /// vSphere cluster -> tagged VLAN -> planned NICs on it (a trunk NIC counts
    /// on each of its VLANs).
    pub clusters: BTreeMap<String, BTreeMap<u16, usize>>,
    /// vSphere cluster -> planned NICs on tagged VLANs (access and trunk).
    pub cluster_nics: BTreeMap<String, usize>,
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
        Vlan::Pvlan(id) => format!("is a private VLAN (secondary {id}): private VLAN isolation has no equivalent in portgroup; plan these NICs by hand (for example as an access VLAN with its own port security)"),
        Vlan::Unknown(text) if text == PER_HOST => "has different VLANs on different hosts and none is known for these VMs' hosts (no vPort row): plan these NICs by hand with the VLAN their host really uses".into(),
        Vlan::Unknown(text) if text.is_empty() => "has no VLAN information (no vPort or dvPort row, or an NSX network): add the port group's rows to the export or plan it by hand".into(),
        Vlan::Unknown(text) => format!("has a VLAN setting this release cannot read ({text:?}): plan it by hand"),
        // Planned, or refused with plan_trunk's reason.
        Vlan::Access(_) | Vlan::None | Vlan::Trunk(_) => String::new(),
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

    // How each used network is planned: an access VLAN as an access portgroup,
    // VLAN 0 as the untagged one, trunk ranges and 4095 as trunks. Networks
    // that share a segment share its portgroup.
    let mut segment_of: BTreeMap<NetKey, SegKey> = BTreeMap::new();
    let mut not_planned: BTreeMap<NetKey, String> = BTreeMap::new();
    // Trunks whose list is the planner's guess or drops VLAN 0: (network, its
    // segment, what happened), worded once the portgroup has a name.
    let mut trunk_notes: Vec<(String, SegKey, String)> = Vec::new();
    for key in used.keys() {
        if uplink_names.contains(&key.name) {
            continue;
        }
        let segment = match &key.vlan {
            Vlan::Access(v) => SegKey::Access(*v),
            Vlan::None => SegKey::Untagged,
            Vlan::Trunk(spec) => match plan_trunk(&index, &key.name, spec) {
                Ok((segment, note)) => {
                    if let Some(note) = note {
                        trunk_notes.push((key.name.clone(), segment.clone(), note));
                    }
                    segment
                }
                Err(why) => {
                    not_planned.insert(key.clone(), why);
                    continue;
                }
            },
            Vlan::Pvlan(_) | Vlan::Unknown(_) => continue,
        };
        segment_of.insert(key.clone(), segment);
    }
    let mut by_segment: BTreeMap<SegKey, BTreeSet<String>> = BTreeMap::new();
    for (key, segment) in &segment_of {
        by_segment
            .entry(segment.clone())
            .or_default()
            .insert(key.name.clone());
    }
    let names = assign_names(&by_segment);
    let planned_name = |key: &NetKey| -> Option<String> {
        segment_of.get(key).and_then(|s| names.get(s)).cloned()
    };
    let is_trunk = |key: &NetKey| matches!(segment_of.get(key), Some(SegKey::Trunk(_)));
    let reason_for = |key: &NetKey| -> String {
        not_planned
            .get(key)
            .cloned()
            .unwrap_or_else(|| unsupported_reason(&key.vlan, uplink_names.contains(&key.name)))
    };
    for (network, segment, note) in &trunk_notes {
        let pg = names.get(segment).cloned().unwrap_or_default();
        let mut f = Finding::new(
            FindingKind::TrunkVlans,
            format!("{network} {note}; planned as trunk portgroup {pg} (trunk: \"{}\" in node-config.json)", segment.describe_vids()),
        );
        f.portgroup = Some(network.clone());
        findings.push(f);
    }

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
        if n.net
            .as_ref()
            .is_some_and(|k| planned_name(k).is_some() && !is_trunk(k))
        {
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
            let mut f = Finding::new(
                FindingKind::UnsupportedPortgroup,
                format!(
                    "{} {}; {count} NIC(s) use it and are left out of the plan",
                    key.name,
                    reason_for(key)
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
        // A trunk port reserves its MAC only: the guest's addresses are on
        // its VLANs, inside tagged frames.
        let trunk = n.net.as_ref().is_some_and(is_trunk);
        let addrs = usable_addrs(n.nic)
            .into_iter()
            .filter(|a| !trunk && !dup_ips.contains(&a.ip))
            .collect();
        reservations.entry(pg).or_default().push(Reservation {
            mac: n.nic.mac,
            addrs,
        });
    }
    let mut portgroups: Vec<PlannedPortgroup> = by_segment
        .iter()
        .filter_map(|(segment, members)| {
            let name = names.get(segment)?.clone();
            let spoof_check = !members
                .iter()
                .any(|m| insecure.get(m).is_some_and(|s| s.1 || s.2));
            let mut res = reservations.remove(&name).unwrap_or_default();
            res.sort_by_key(|r| r.mac);
            Some(PlannedPortgroup {
                nics: planned_counts.get(&name).copied().unwrap_or(0),
                name,
                segment: segment.to_segment(),
                uplink: match segment {
                    SegKey::Untagged => options.untagged_uplink.clone(),
                    _ => None,
                },
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
        let fate = match (&planned, segment_of.get(&key), count) {
            (Some(pg), Some(segment), _) => {
                format!("planned as portgroup {pg} ({})", segment.describe())
            }
            (_, _, 0) => "not used by a VM in scope".to_string(),
            _ => format!("not planned: {}", reason_for(&key)),
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
    let mut cluster_nics: BTreeMap<String, usize> = BTreeMap::new();
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
                    let vids = n
                        .net
                        .as_ref()
                        .and_then(|k| segment_of.get(k))
                        .map(SegKey::tagged)
                        .unwrap_or_default();
                    if !vids.is_empty() {
                        *cluster_nics.entry(cluster.clone()).or_default() += 1;
                        let counts = clusters.entry(cluster).or_default();
                        for vid in vids {
                            *counts.entry(vid).or_default() += 1;
                        }
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
        cluster_nics,
        findings,
        govc_guest_overrides,
        srm_placeholders,
    }
}

/// How a used network is planned; networks with the same one share a portgroup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SegKey {
    Access(u16),
    Untagged,
    /// The VIDs, ascending, each once.
    Trunk(Vec<u16>),
}

impl SegKey {
    fn to_segment(&self) -> Segment {
        match self {
            SegKey::Access(vid) => Segment::Access(*vid),
            SegKey::Untagged => Segment::Untagged,
            SegKey::Trunk(vids) => Segment::Trunk {
                vids: vids.iter().copied().collect(),
                native: None,
            },
        }
    }

    /// The tagged VLANs a port of this segment carries.
    fn tagged(&self) -> Vec<u16> {
        match self {
            SegKey::Access(vid) => vec![*vid],
            SegKey::Untagged => Vec::new(),
            SegKey::Trunk(vids) => vids.clone(),
        }
    }

    /// The trunk spec as node-config.json writes it (the validator's own form).
    fn describe_vids(&self) -> String {
        self.tagged().into_iter().collect::<VidSet>().to_string()
    }

    fn describe(&self) -> String {
        match self {
            SegKey::Access(vid) => format!("VLAN {vid}"),
            SegKey::Untagged => "untagged".into(),
            SegKey::Trunk(_) => format!("trunk {}", self.describe_vids()),
        }
    }
}

/// A vSphere trunk (`4095`, or ranges like `0-10,100-199`) as a trunk
/// portgroup: its VIDs, and what the network team must confirm (None: the
/// ranges are planned as vSphere has them). Err: why it cannot be planned.
///
/// portgroup passes only listed VLANs. 4095 (and a range of every VLAN) lists
/// none, so the plan lists the access VLANs the inventory knows on the same
/// switch: what the guests can have been using, to be confirmed. VLAN 0 in a
/// range is untagged traffic, which a trunk portgroup carries only as a tagged
/// native VLAN: it is left out, and said so.
fn plan_trunk(
    index: &NetworkIndex,
    network: &str,
    spec: &str,
) -> Result<(SegKey, Option<String>), String> {
    let guest_tagging = spec == "4095";
    let (vids, with_zero) = if guest_tagging {
        (VidSet::default(), false)
    } else {
        trunk_ranges(spec).ok_or_else(|| {
            format!("has a VLAN trunk this release cannot read ({spec:?}): plan it by hand")
        })?
    };
    let everything = guest_tagging || vids.len() == usize::from(portgroup::nodeconfig::VID_MAX);
    let what = if guest_tagging {
        "has VLAN 4095 (the guest tags its own VLANs)".to_string()
    } else {
        format!("is a VLAN trunk of every VLAN ({spec})")
    };
    if everything {
        let (known, switches) = known_vids(index, network);
        if known.is_empty() {
            return Err(format!(
                "{what}, and no access VLAN is known on its switch ({}): portgroup passes only listed VLANs; list the VLANs its guests use by hand (a portgroup with trunk: \"...\")",
                switches.join(", ")
            ));
        }
        let segment = SegKey::Trunk(known);
        let note = format!(
            "{what}: portgroup passes only the VLANs a trunk lists, so the plan lists the access VLANs the inventory knows on its switch ({}): {}. Ask the network team to confirm the VLANs its guests really tag (and that the nodes' uplink trunks them), then edit the list; untagged frames from these guests are not carried",
            switches.join(", "),
            segment.describe_vids()
        );
        return Ok((segment, Some(note)));
    }
    if vids.is_empty() {
        // A "trunk" of VLAN 0 alone: untagged traffic.
        return Ok((SegKey::Untagged, None));
    }
    let note = with_zero.then(|| {
        "is a VLAN trunk that includes VLAN 0 (untagged): a trunk portgroup carries untagged frames only as a tagged native VLAN (nativeVlan), so untagged frames from these guests are not carried; ask the network team which VLAN the guests' untagged traffic belongs to and set nativeVlan, or confirm it is unused".to_string()
    });
    Ok((SegKey::Trunk(vids.vids().to_vec()), note))
}

/// A normalised trunk spec (`a-b,c`, from [`crate::values::parse_vlan`]) as the
/// node config's VID set, and whether it included VLAN 0.
fn trunk_ranges(spec: &str) -> Option<(VidSet, bool)> {
    let mut with_zero = false;
    let mut items = Vec::new();
    for item in spec.split(',') {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        match (a, b) {
            (0, 0) => with_zero = true,
            (0, b) => {
                with_zero = true;
                items.push(format!("1-{b}"));
            }
            (a, b) => items.push(format!("{a}-{b}")),
        }
    }
    if items.is_empty() {
        return Some((VidSet::default(), with_zero));
    }
    VidSet::parse(&items.join(",")).ok().map(|v| (v, with_zero))
}

/// The access VLANs of the port groups on the same switch as `network` (for a
/// standard switch: on the hosts that have `network`), and the switches' names.
fn known_vids(index: &NetworkIndex, network: &str) -> (Vec<u16>, Vec<String>) {
    let own = index.by_name.get(network).cloned().unwrap_or_default();
    let places: BTreeSet<(&str, bool)> = own
        .iter()
        .map(|o| (o.switch.as_str(), o.distributed))
        .collect();
    let hosts: BTreeSet<Option<&str>> = own.iter().map(|o| o.host.as_deref()).collect();
    let mut vids = BTreeSet::new();
    for obs in index.by_name.values().flatten() {
        let same_switch =
            !obs.switch.is_empty() && places.contains(&(obs.switch.as_str(), obs.distributed));
        let same_host = obs.distributed
            || obs.host.is_none()
            || hosts.contains(&None)
            || hosts.contains(&obs.host.as_deref());
        if let (Vlan::Access(v), true, true, false) =
            (&obs.vlan, same_switch, same_host, obs.uplink)
        {
            vids.insert(*v);
        }
    }
    let switches = places
        .iter()
        .map(|(s, _)| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                s.to_string()
            }
        })
        .collect();
    (vids.into_iter().collect(), switches)
}

/// Portgroup names: a DNS label from the (first) vSphere name of each segment;
/// names that normalise alike (`Prod-Web`, `Prod Web`) all get a suffix (their
/// VLAN, `untagged`, `trunk<n>`), so no name depends on which was read first.
fn assign_names(by_segment: &BTreeMap<SegKey, BTreeSet<String>>) -> BTreeMap<SegKey, String> {
    let mut candidates: BTreeMap<SegKey, String> = BTreeMap::new();
    let mut suffixes: BTreeMap<SegKey, String> = BTreeMap::new();
    let mut trunks = 0;
    for (segment, members) in by_segment {
        let suffix = match segment {
            SegKey::Access(vlan) => format!("v{vlan}"),
            SegKey::Untagged => "untagged".into(),
            SegKey::Trunk(_) => {
                trunks += 1;
                format!("trunk{trunks}")
            }
        };
        let first = members.iter().next().map(String::as_str).unwrap_or("");
        let base = dns_label(first, 63);
        candidates.insert(
            segment.clone(),
            match (base.is_empty(), segment) {
                (false, _) => base,
                (true, SegKey::Access(vlan)) => format!("vlan{vlan}"),
                (true, _) => suffix.clone(),
            },
        );
        suffixes.insert(segment.clone(), suffix);
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
        for (segment, name) in candidates.iter_mut() {
            if clashing.contains(name) {
                *name = with_suffix(name, &suffixes[segment]);
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
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        by_vlan.insert(SegKey::Access(100), set(&["Prod-Web"]));
        by_vlan.insert(SegKey::Access(101), set(&["Prod Web"]));
        by_vlan.insert(SegKey::Access(200), set(&["DB", "db-old"]));
        by_vlan.insert(SegKey::Access(300), set(&["prod-web-v100"]));
        by_vlan.insert(SegKey::Access(301), set(&["###"]));
        by_vlan.insert(SegKey::Untagged, set(&["Prod_Web"]));
        by_vlan.insert(SegKey::Trunk(vec![100, 200]), set(&["FW"]));
        by_vlan.insert(SegKey::Trunk(vec![300]), set(&["fw"]));
        by_vlan.insert(SegKey::Trunk(vec![301]), set(&["@@"]));
        let names = assign_names(&by_vlan);
        let unique: BTreeSet<&String> = names.values().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(names[&SegKey::Access(101)], "prod-web-v101");
        assert_eq!(names[&SegKey::Untagged], "prod-web-untagged");
        assert_eq!(names[&SegKey::Access(200)], "db");
        assert_eq!(names[&SegKey::Access(301)], "vlan301");
        assert_eq!(names[&SegKey::Trunk(vec![100, 200])], "fw-trunk1");
        assert_eq!(names[&SegKey::Trunk(vec![300])], "fw-trunk2");
        assert_eq!(names[&SegKey::Trunk(vec![301])], "trunk3");
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
            .map(|p| (p.name.clone(), p.vlan().unwrap_or(0)))
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

    /// How each vSphere VLAN setting is planned, as a table: the network's
    /// setting (and its switch's access port groups) in, the planned segment
    /// and the findings out. Every rendered node config passes the daemon's
    /// validation.
    #[test]
    fn untagged_trunks_and_guest_tagging() {
        let on = |name: &str, host: Option<&str>, switch: &str, vlan: Vlan| {
            let mut o = obs(name, host, vlan);
            o.switch = switch.into();
            o
        };
        // The access port groups the switches know: vSwitch0 on h1 has 100 and
        // 300, on h2 110; vSwitch1 on h1 has 500; dvs-a has 200 and 210.
        let known = vec![
            on("A100", Some("h1"), "vSwitch0", Vlan::Access(100)),
            on("A300", Some("h1"), "vSwitch0", Vlan::Access(300)),
            on("A110", Some("h2"), "vSwitch0", Vlan::Access(110)),
            on("A500", Some("h1"), "vSwitch1", Vlan::Access(500)),
            on("D200", None, "dvs-a", Vlan::Access(200)),
            on("D210", None, "dvs-a", Vlan::Access(210)),
        ];
        type Want = (&'static str, &'static str, &'static [&'static str]);
        let cases: Vec<(NetworkObservation, Want)> = vec![
            (
                on("VM Network", Some("h1"), "vSwitch0", Vlan::None),
                ("vm-network", "untagged", &[]),
            ),
            (
                on("Trunk", None, "dvs-a", Vlan::Trunk("100-110,200".into())),
                ("trunk", "trunk 100-110,200", &[]),
            ),
            // 4095 on a standard switch: the access VLANs of that switch on its hosts.
            (
                on("VGT", Some("h1"), "vSwitch0", Vlan::Trunk("4095".into())),
                ("vgt", "trunk 100,300", &["trunk-vlans"]),
            ),
            // Every VLAN of a distributed switch: the same, on that switch.
            (
                on("All", None, "dvs-a", Vlan::Trunk("0-4094".into())),
                ("all", "trunk 200,210", &["trunk-vlans"]),
            ),
            // VLAN 0 in a range: left out, said so.
            (
                on("Zero", None, "dvs-a", Vlan::Trunk("0,5-6".into())),
                ("zero", "trunk 5-6", &["trunk-vlans"]),
            ),
            (
                on("OnlyZero", None, "dvs-a", Vlan::Trunk("0".into())),
                ("onlyzero", "untagged", &[]),
            ),
            // 4095 where nothing is known: not planned, with the reason.
            (
                on("Lonely", Some("h9"), "vSwitch9", Vlan::Trunk("4095".into())),
                ("", "", &["unsupported-portgroup"]),
            ),
            (
                on("PV", None, "dvs-a", Vlan::Pvlan(7)),
                ("", "", &["unsupported-portgroup"]),
            ),
        ];
        for (network, (want_name, want_segment, want_findings)) in cases {
            let name = network.name.clone().unwrap();
            let mut networks = known.clone();
            networks.push(network);
            let inventory = Inventory {
                vms: vec![vm(
                    "a",
                    "h1",
                    vec![nic(&name, "00:50:56:00:00:01", "10.0.0.1")],
                )],
                networks,
                govc_guest_overrides: vec![],
            };
            let plan = plan(&inventory, &Options::default());
            let got_findings: Vec<&str> = plan.findings.iter().map(|f| f.kind.as_str()).collect();
            assert_eq!(got_findings, *want_findings, "{name}: {:?}", plan.findings);
            let files = crate::render::render(&plan, crate::render::ReportFormats::default());
            let config = portgroup::nodeconfig::NodeConfig::parse(&files["node-config.json"])
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            if want_name.is_empty() {
                assert!(plan.portgroups.is_empty(), "{name}: {:?}", plan.portgroups);
                assert!(config.portgroups.is_empty());
                let why = &plan.findings[0].message;
                assert!(why.contains("; 1 NIC(s) use it"), "{why}");
                continue;
            }
            assert_eq!(plan.portgroups.len(), 1, "{name}");
            let pg = &plan.portgroups[0];
            assert_eq!(
                (pg.name.as_str(), pg.describe()),
                (want_name, want_segment.to_string()),
                "{name}"
            );
            assert_eq!(config.portgroups[0].segment, pg.segment, "{name}");
            // A trunk reserves the MAC only, and its VM is no no-ip case.
            let ips = pg.reservations[0].addrs.len();
            assert_eq!(
                ips,
                usize::from(!want_segment.starts_with("trunk")),
                "{name}"
            );
        }
    }

    #[test]
    fn vlan_zero_networks_share_one_untagged_portgroup_on_its_own_uplink() {
        let inventory = Inventory {
            vms: vec![
                vm(
                    "a",
                    "h1",
                    vec![nic("VM Network", "00:50:56:00:00:01", "10.0.0.1")],
                ),
                vm(
                    "b",
                    "h1",
                    vec![nic("Backup LAN", "00:50:56:00:00:02", "10.0.0.2")],
                ),
                vm("c", "h1", vec![nic("Web", "00:50:56:00:00:03", "10.0.1.3")]),
            ],
            networks: vec![
                obs("VM Network", Some("h1"), Vlan::None),
                obs("Backup LAN", None, Vlan::None),
                obs("Web", Some("h1"), Vlan::Access(5)),
            ],
            govc_guest_overrides: vec![],
        };
        let options = Options {
            untagged_uplink: Some("eth2".into()),
            ..Options::default()
        };
        let plan = plan(&inventory, &options);
        let untagged: Vec<&PlannedPortgroup> = plan
            .portgroups
            .iter()
            .filter(|p| p.segment == Segment::Untagged)
            .collect();
        assert_eq!(untagged.len(), 1, "{:?}", plan.portgroups);
        assert_eq!(untagged[0].vsphere, vec!["Backup LAN", "VM Network"]);
        assert_eq!(untagged[0].uplink.as_deref(), Some("eth2"));
        let files = crate::render::render(&plan, crate::render::ReportFormats::default());
        let config =
            portgroup::nodeconfig::NodeConfig::parse(&files["node-config.json"]).expect("valid");
        let pg = config
            .portgroups
            .iter()
            .find(|p| p.segment == Segment::Untagged)
            .expect("untagged");
        assert_eq!(config.uplink_of(pg, "worker-1"), Some("eth2"));
        assert_eq!(
            plan.clusters["C"].keys().copied().collect::<Vec<_>>(),
            vec![5],
            "untagged needs no VLAN"
        );
    }

    #[test]
    fn trunk_specs_from_vsphere() {
        let cases: &[(&str, Option<(&str, bool)>)] = &[
            ("100-110,200", Some(("100-110,200", false))),
            ("0-4094", Some(("1-4094", true))),
            ("0,5-6", Some(("5-6", true))),
            ("0", Some(("", true))),
            ("7-7", Some(("7", false))),
            ("5-x", None),
        ];
        for (spec, want) in cases {
            let got = trunk_ranges(spec).map(|(v, zero)| (v.to_string(), zero));
            assert_eq!(got, want.map(|(v, z)| (v.to_string(), z)), "{spec}");
        }
    }
}
