//! The node network config (`config.json` in the ConfigMap): parsing and validation.
//!
//! Validation walks the JSON by hand rather than through serde so that one pass
//! names every problem, each by its path ("portgroups[1].vlan"), not just the first.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::mac::MacAddr;
use crate::naming::validate_ifname;

/// A validated node config; only [`NodeConfig::parse`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub uplink: Option<String>,
    pub node_uplinks: BTreeMap<String, String>,
    pub portgroups: Vec<PortgroupConfig>,
    /// Bridges a network config may name with `bridge:`: None allows any bridge
    /// portgroupd does not own, an empty list turns `bridge:` mode off.
    pub allowed_bridges: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortgroupConfig {
    pub name: String,
    /// What the VM's port carries: `vlan`, `trunk` (+ `nativeVlan`) or `untagged`.
    pub segment: Segment,
    /// The portgroup's own uplink: overrides the node's (`nodeUplinks`, `uplink`)
    /// on every node.
    pub uplink: Option<String>,
    pub mtu: Option<u32>,
    pub strict: bool,
    pub reservations: Vec<Reservation>,
    pub policy: AttachPolicy,
    /// VMs on this portgroup may be routers: send router advertisements and redirects.
    pub allow_router_advertisements: bool,
    /// VMs on this portgroup may be DHCPv4/DHCPv6 servers.
    pub allow_dhcp_server: bool,
}

impl PortgroupConfig {
    /// The access VLAN, for an access portgroup.
    pub fn vlan(&self) -> Option<u16> {
        match self.segment {
            Segment::Access(vid) => Some(vid),
            _ => None,
        }
    }
}

/// What a portgroup's VM ports carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `vlan`: one VLAN, untagged on the VM's port.
    Access(u16),
    /// `trunk`: the listed VLANs, 802.1Q-tagged on the VM's port; untagged frames
    /// belong to `native` (`nativeVlan`) when set and are dropped otherwise.
    Trunk { vids: VidSet, native: Option<u16> },
    /// `untagged: true`: the uplink's own untagged traffic (vSphere's VLAN 0).
    Untagged,
}

/// A set of VLAN IDs (1 to 4094), sorted, each once; written as a trunk spec like
/// `100-110,200`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VidSet(Vec<u16>);

pub const VID_MIN: u16 = 1;
pub const VID_MAX: u16 = 4094;

impl VidSet {
    /// Parses a trunk spec: VLAN IDs and ranges separated by commas
    /// (`"100-110,200"`); overlaps are fine, 0 and 4095 are not VLAN IDs.
    pub fn parse(spec: &str) -> Result<VidSet, String> {
        let mut vids = Vec::new();
        let vid = |text: &str| -> Result<u16, String> {
            let text = text.trim();
            match text.parse::<u32>() {
                Ok(0) => Err(format!(
                    "0 is not a VLAN ID (1 to {VID_MAX}); for untagged frames set nativeVlan, or use a portgroup with untagged: true"
                )),
                Ok(4095) => Err(format!(
                    "4095 is not a VLAN ID (1 to {VID_MAX}); vSphere's 4095 (all VLANs) becomes the list of VLANs the VM needs"
                )),
                Ok(v @ 1..=4094) => Ok(v as u16),
                Ok(v) => Err(format!("{v} is not a VLAN ID (1 to {VID_MAX})")),
                Err(_) => Err(format!(
                    "{text:?} is not a VLAN ID or a range (like \"100-110,200\")"
                )),
            }
        };
        for item in spec.split(',') {
            if item.trim().is_empty() {
                return Err(format!(
                    "{spec:?} has an empty item; list VLAN IDs and ranges like \"100-110,200\""
                ));
            }
            match item.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (vid(low)?, vid(high)?);
                    if low > high {
                        return Err(format!(
                            "range {low}-{high} runs backwards; write {high}-{low}"
                        ));
                    }
                    vids.extend(low..=high);
                }
                None => vids.push(vid(item)?),
            }
        }
        vids.sort_unstable();
        vids.dedup();
        Ok(VidSet(vids))
    }

    pub fn vids(&self) -> &[u16] {
        &self.0
    }

    pub fn contains(&self, vid: u16) -> bool {
        self.0.binary_search(&vid).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<u16> for VidSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut vids: Vec<u16> = iter.into_iter().collect();
        vids.sort_unstable();
        vids.dedup();
        VidSet(vids)
    }
}

/// The canonical spec: ascending, runs of two or more as ranges (`100-110,200`).
impl std::fmt::Display for VidSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end > start {
                write!(f, "{start}-{end}")?;
            } else {
                write!(f, "{start}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// Who may attach to a portgroup and what a network config may not turn off there:
/// the cluster admin's say, enforced by the plugin on every ADD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachPolicy {
    /// Namespaces whose pods may attach: exact names or simple globs (`team-*`).
    /// None: any namespace, and runtimes that send none (podman, a bare libcni).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// A network config cannot set `spoofCheck: false` here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_spoof_check: bool,
    /// A network config cannot set `conflictProbe: false` here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_conflict_probe: bool,
}

impl AttachPolicy {
    /// Whether a pod of `namespace` (None: the runtime sent no K8S_POD_NAMESPACE) may attach.
    pub fn allows_namespace(&self, namespace: Option<&str>) -> bool {
        match (&self.namespaces, namespace) {
            (None, _) => true,
            (Some(patterns), None) => patterns.iter().any(|p| p == "*"),
            (Some(patterns), Some(ns)) => patterns.iter().any(|p| glob_match(p, ns)),
        }
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A namespace pattern: a Kubernetes namespace name (DNS label) where `*` may
/// stand for any run of characters.
fn validate_namespace_pattern(pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 63
        && pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{pattern:?} is not a namespace name or pattern (lowercase letters, digits, '-', '*' for any run)"
        ))
    }
}

fn validate_string_list(
    path: &str,
    value: Option<&Value>,
    check: impl Fn(&str) -> Result<(), String>,
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(text) => match check(text) {
                        Ok(()) => out.push(text.to_string()),
                        Err(why) => problems.push(format!("{path}[{i}]: {why}")),
                    },
                    None => problems.push(format!("{path}[{i}]: must be a string")),
                }
            }
            Some(out)
        }
        Some(_) => {
            problems.push(format!("{path}: must be an array of strings"));
            None
        }
    }
}

fn validate_attach_policy(
    path: &str,
    obj: &Map<String, Value>,
    problems: &mut Vec<String>,
) -> AttachPolicy {
    let flag = |key: &str, problems: &mut Vec<String>| match obj.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(format!("{path}.{key}: must be true or false"));
            false
        }
    };
    AttachPolicy {
        namespaces: validate_string_list(
            &format!("{path}.namespaces"),
            obj.get("namespaces"),
            validate_namespace_pattern,
            problems,
        ),
        require_spoof_check: flag("requireSpoofCheck", problems),
        require_conflict_probe: flag("requireConflictProbe", problems),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub mac: MacAddr,
    #[serde(default)]
    pub ips: Vec<IpNetwork>,
}

pub const MTU_MIN: u32 = 68;
pub const MTU_MAX: u32 = 65_535;

impl NodeConfig {
    /// The node's uplink: `nodeUplinks[node]`, else `uplink`.
    pub fn uplink_for(&self, node: &str) -> Option<&str> {
        self.node_uplinks
            .get(node)
            .or(self.uplink.as_ref())
            .map(String::as_str)
    }

    /// A portgroup's uplink on this node: its own `uplink`, else the node's.
    pub fn uplink_of<'a>(&'a self, pg: &'a PortgroupConfig, node: &str) -> Option<&'a str> {
        pg.uplink.as_deref().or_else(|| self.uplink_for(node))
    }

    /// Parses and validates; on failure returns every problem found.
    pub fn parse(bytes: &[u8]) -> Result<NodeConfig, Vec<String>> {
        let root: Value = serde_json::from_slice(bytes)
            .map_err(|e| vec![format!("config is not valid JSON: {e}")])?;
        let mut problems = Vec::new();
        let config = validate(&root, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(problems),
        }
    }
}

/// Every problem of a node config, in the words the daemon logs them (each names
/// its field path, like `portgroups[1].vlan: ...`); empty when the config is valid.
/// The one node-config validation that `portgroupd --check-config`, the daemon's
/// reload and any other tool share.
pub fn check(bytes: &[u8]) -> Vec<String> {
    NodeConfig::parse(bytes).err().unwrap_or_default()
}

/// [`check`] for a file, an unreadable file being one problem, worded as the
/// daemon's reload words it.
pub fn check_file(path: &Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => check(&bytes),
        Err(e) => vec![read_problem(path, &e)],
    }
}

/// The problem of a config file that cannot be read.
pub fn read_problem(path: &Path, error: &std::io::Error) -> String {
    format!("reading {}: {error}", path.display())
}

/// DNS-label style: lowercase letters, digits and '-', at most 63, starting and
/// ending alphanumeric.
pub fn validate_portgroup_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !valid_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "{name:?} is not a DNS label (lowercase letters, digits and '-', 1 to 63 characters, not starting or ending with '-')"
        ));
    }
    Ok(())
}

fn validate(root: &Value, problems: &mut Vec<String>) -> Option<NodeConfig> {
    let Some(obj) = root.as_object() else {
        problems.push("config must be a JSON object".into());
        return None;
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "uplink" | "nodeUplinks" | "portgroups" | "allowedBridges"
        ) {
            problems.push(format!("{key}: unknown field"));
        }
    }
    let uplink = optional_ifname(obj, "uplink", "uplink", problems);
    let mut node_uplinks = BTreeMap::new();
    match obj.get("nodeUplinks") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (node, value) in map {
                let path = format!("nodeUplinks.{node}");
                match value.as_str() {
                    Some(name) => match validate_ifname(name) {
                        Ok(()) => {
                            node_uplinks.insert(node.clone(), name.to_string());
                        }
                        Err(why) => problems.push(format!("{path}: {why}")),
                    },
                    None => problems.push(format!("{path}: must be an interface name string")),
                }
            }
        }
        Some(_) => {
            problems.push("nodeUplinks: must be an object of node name to interface name".into())
        }
    }
    let mut portgroups = Vec::new();
    let mut every_portgroup_has_an_uplink = true;
    match obj.get("portgroups") {
        Some(Value::Array(items)) => {
            every_portgroup_has_an_uplink = !items.is_empty();
            let mut names: HashMap<String, usize> = HashMap::new();
            // Per uplink (None: the node's): one access portgroup per VLAN, one untagged.
            let mut vlans: HashMap<(Option<String>, u16), usize> = HashMap::new();
            let mut untagged: HashMap<Option<String>, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("portgroups[{i}]");
                let own_uplink = item.get("uplink").is_some_and(|u| !u.is_null());
                every_portgroup_has_an_uplink &= own_uplink;
                if let Some(pg) = validate_portgroup(&path, item, problems) {
                    if let Some(first) = names.insert(pg.name.clone(), i) {
                        problems.push(format!(
                            "{path}.name: {:?} is already used by portgroups[{first}]",
                            pg.name
                        ));
                    }
                    let on = |uplink: &Option<String>| match uplink {
                        Some(u) => format!("uplink {u}"),
                        None => "the node's uplink".to_string(),
                    };
                    match pg.segment {
                        Segment::Access(vid) => {
                            if let Some(first) = vlans.insert((pg.uplink.clone(), vid), i) {
                                problems.push(format!(
                                    "{path}.vlan: {vid} is already used by portgroups[{first}] on {}",
                                    on(&pg.uplink)
                                ));
                            }
                        }
                        Segment::Untagged => {
                            if let Some(first) = untagged.insert(pg.uplink.clone(), i) {
                                problems.push(format!(
                                    "{path}.untagged: the untagged traffic of {} is already portgroups[{first}]'s",
                                    on(&pg.uplink)
                                ));
                            }
                        }
                        Segment::Trunk { .. } => {}
                    }
                    portgroups.push(pg);
                }
            }
        }
        None => problems.push("portgroups: required (an array, may be empty)".into()),
        Some(_) => problems.push("portgroups: must be an array".into()),
    }
    if uplink.is_none() && node_uplinks.is_empty() && !every_portgroup_has_an_uplink {
        problems.push(
            "uplink: required (or nodeUplinks for every node, or an uplink on every portgroup)"
                .into(),
        );
    }
    let allowed_bridges = validate_string_list(
        "allowedBridges",
        obj.get("allowedBridges"),
        validate_ifname,
        problems,
    );
    Some(NodeConfig {
        uplink,
        node_uplinks,
        portgroups,
        allowed_bridges,
    })
}

fn optional_ifname(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => match validate_ifname(name) {
            Ok(()) => Some(name.clone()),
            Err(why) => {
                problems.push(format!("{path}: {why}"));
                None
            }
        },
        Some(_) => {
            problems.push(format!("{path}: must be an interface name string"));
            None
        }
    }
}

/// Every field a portgroup may have (what the node schema documents).
pub const PORTGROUP_FIELDS: &[&str] = &[
    "name",
    "vlan",
    "trunk",
    "nativeVlan",
    "untagged",
    "uplink",
    "mtu",
    "strict",
    "reservations",
    "namespaces",
    "requireSpoofCheck",
    "requireConflictProbe",
    "allowRouterAdvertisements",
    "allowDhcpServer",
];

fn validate_portgroup(
    path: &str,
    item: &Value,
    problems: &mut Vec<String>,
) -> Option<PortgroupConfig> {
    let Some(obj) = item.as_object() else {
        problems.push(format!("{path}: must be an object"));
        return None;
    };
    let before = problems.len();
    for key in obj.keys() {
        if !PORTGROUP_FIELDS.contains(&key.as_str()) {
            problems.push(format!("{path}.{key}: unknown field"));
        }
    }
    let name = match obj.get("name") {
        Some(Value::String(name)) => {
            if let Err(why) = validate_portgroup_name(name) {
                problems.push(format!("{path}.name: {why}"));
            }
            name.clone()
        }
        Some(_) => {
            problems.push(format!("{path}.name: must be a string"));
            String::new()
        }
        None => {
            problems.push(format!("{path}.name: required"));
            String::new()
        }
    };
    let segment = validate_segment(path, obj, problems);
    let uplink = optional_ifname(obj, "uplink", &format!("{path}.uplink"), problems);
    let mtu = match obj.get("mtu") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(m) if (u64::from(MTU_MIN)..=u64::from(MTU_MAX)).contains(&m) => Some(m as u32),
            _ => {
                problems.push(format!(
                    "{path}.mtu: must be from {MTU_MIN} to {MTU_MAX}, got {value}"
                ));
                None
            }
        },
    };
    let flag = |key: &str, problems: &mut Vec<String>| match obj.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(format!("{path}.{key}: must be true or false"));
            false
        }
    };
    let strict = flag("strict", problems);
    let allow_router_advertisements = flag("allowRouterAdvertisements", problems);
    let allow_dhcp_server = flag("allowDhcpServer", problems);
    let mut reservations = Vec::new();
    match obj.get("reservations") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut macs: HashMap<MacAddr, usize> = HashMap::new();
            let mut ips: HashMap<IpAddr, (usize, usize)> = HashMap::new();
            for (j, r) in items.iter().enumerate() {
                let rpath = format!("{path}.reservations[{j}]");
                if let Some(res) = validate_reservation(&rpath, r, problems) {
                    if let Some(first) = macs.insert(res.mac, j) {
                        problems.push(format!(
                            "{rpath}.mac: {} is already reserved by reservations[{first}]",
                            res.mac
                        ));
                    }
                    // Compared by address: 10.0.0.5 and 10.0.0.5/24 are the same host.
                    for (k, ip) in res.ips.iter().enumerate() {
                        if let Some((fj, fk)) = ips.insert(ip.ip(), (j, k)) {
                            problems.push(format!(
                                "{rpath}.ips[{k}]: {} is already reserved by reservations[{fj}].ips[{fk}]",
                                ip.ip()
                            ));
                        }
                    }
                    reservations.push(res);
                }
            }
        }
        Some(_) => problems.push(format!("{path}.reservations: must be an array")),
    }
    if matches!(segment, Some(Segment::Trunk { .. })) {
        // A trunk port's source addresses are not locked: they are per VLAN,
        // inside tagged frames, and locking them would drop every tagged frame.
        for (j, r) in reservations.iter().enumerate() {
            if !r.ips.is_empty() {
                problems.push(format!(
                    "{path}.reservations[{j}].ips: a trunk portgroup reserves MACs only (its VMs' addresses are on their VLANs, not locked or probed here)"
                ));
            }
        }
    }
    let policy = validate_attach_policy(path, obj, problems);
    match segment {
        Some(segment) if problems.len() == before => Some(PortgroupConfig {
            name,
            segment,
            uplink,
            mtu,
            strict,
            reservations,
            policy,
            allow_router_advertisements,
            allow_dhcp_server,
        }),
        _ => None,
    }
}

/// A VLAN ID field (`vlan`, `nativeVlan`): a whole number from 1 to 4094.
fn vid_field(path: &str, key: &str, value: &Value, problems: &mut Vec<String>) -> Option<u16> {
    match value.as_u64() {
        Some(v @ 1..=4094) => Some(v as u16),
        Some(0) if key == "vlan" => {
            problems.push(format!(
                "{path}.{key}: must be a whole number from 1 to 4094, got 0 (vSphere's VLAN 0: use untagged: true)"
            ));
            None
        }
        Some(4095) if key == "vlan" => {
            problems.push(format!(
                "{path}.{key}: must be a whole number from 1 to 4094, got 4095 (vSphere's VLAN 4095: use trunk with the VLANs the VM tags)"
            ));
            None
        }
        _ => {
            problems.push(format!(
                "{path}.{key}: must be a whole number from 1 to 4094, got {value}"
            ));
            None
        }
    }
}

/// Exactly one of `vlan`, `trunk` (with an optional `nativeVlan`) or `untagged: true`.
fn validate_segment(
    path: &str,
    obj: &Map<String, Value>,
    problems: &mut Vec<String>,
) -> Option<Segment> {
    let present = |key: &str| obj.get(key).filter(|v| !v.is_null());
    let untagged = match present("untagged") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(format!("{path}.untagged: must be true or false"));
            return None;
        }
    };
    let given: Vec<&str> = [
        ("vlan", present("vlan").is_some()),
        ("trunk", present("trunk").is_some()),
        ("untagged", untagged),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    let native = present("nativeVlan");
    if native.is_some() && !given.contains(&"trunk") {
        problems.push(format!(
            "{path}.nativeVlan: only a trunk portgroup has a native VLAN (set trunk, or use vlan for an access portgroup)"
        ));
    }
    match given.as_slice() {
        [] => {
            problems.push(format!(
                "{path}.vlan: required: a portgroup is one of vlan (access), trunk (tagged VLANs) or untagged: true"
            ));
            None
        }
        ["vlan"] => vid_field(path, "vlan", &obj["vlan"], problems).map(Segment::Access),
        ["untagged"] => Some(Segment::Untagged),
        ["trunk"] => {
            let vids = match &obj["trunk"] {
                Value::String(spec) => match VidSet::parse(spec) {
                    Ok(vids) => Some(vids),
                    Err(why) => {
                        problems.push(format!("{path}.trunk: {why}"));
                        None
                    }
                },
                other => {
                    problems.push(format!(
                        "{path}.trunk: must be a string of VLAN IDs and ranges like \"100-110,200\", got {other}"
                    ));
                    None
                }
            };
            let native = match native {
                None => Some(None),
                Some(value) => vid_field(path, "nativeVlan", value, problems).map(Some),
            };
            let (vids, native) = (vids?, native?);
            if let Some(n) = native.filter(|n| vids.contains(*n)) {
                problems.push(format!(
                    "{path}.nativeVlan: {n} is also in trunk; a VLAN is either tagged (trunk) or untagged (nativeVlan) on the port, not both"
                ));
                return None;
            }
            Some(Segment::Trunk { vids, native })
        }
        several => {
            let last = several.last().copied().unwrap_or("vlan");
            problems.push(format!(
                "{path}.{last}: {} exclude each other; a portgroup is exactly one of vlan, trunk or untagged: true",
                several.join(" and ")
            ));
            None
        }
    }
}

fn validate_reservation(
    path: &str,
    item: &Value,
    problems: &mut Vec<String>,
) -> Option<Reservation> {
    let Some(obj) = item.as_object() else {
        problems.push(format!("{path}: must be an object with mac and ips"));
        return None;
    };
    let before = problems.len();
    for key in obj.keys() {
        if !matches!(key.as_str(), "mac" | "ips") {
            problems.push(format!("{path}.{key}: unknown field"));
        }
    }
    let mac = match obj.get("mac").and_then(Value::as_str) {
        Some(text) => match MacAddr::parse_unicast(text) {
            Ok(mac) => Some(mac),
            Err(why) => {
                problems.push(format!("{path}.mac: {why}"));
                None
            }
        },
        None => {
            problems.push(format!("{path}.mac: required, a MAC address string"));
            None
        }
    };
    let mut ips = Vec::new();
    match obj.get("ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (k, ip) in items.iter().enumerate() {
                match ip.as_str().map(parse_host_or_cidr) {
                    Some(Ok(net)) => ips.push(net),
                    Some(Err(why)) => problems.push(format!("{path}.ips[{k}]: {why}")),
                    None => problems.push(format!(
                        "{path}.ips[{k}]: must be a string like 10.0.0.5 or 10.0.0.5/24"
                    )),
                }
            }
        }
        Some(_) => problems.push(format!("{path}.ips: must be an array")),
    }
    match mac {
        Some(mac) if problems.len() == before => Some(Reservation { mac, ips }),
        _ => None,
    }
}

/// An address with its prefix length, as interfaces carry them ("10.0.0.5/24").
pub fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    if !text.contains('/') {
        return Err(format!("{text:?} needs a prefix length, like {text}/24"));
    }
    text.parse::<IpNetwork>()
        .map_err(|e| format!("{text:?} is not an IP address with prefix: {e}"))
}

/// A reserved address: bare (`10.1.1.5`, `2001:db8::5`, the host address, /32 or
/// /128) or with its prefix length (`10.1.1.5/24`). Inventories such as RVTools
/// exports carry no prefix lengths, and port security and the conflict probe use
/// only the address, so the prefix is optional here (unlike [`parse_cidr`], for
/// addresses the plugin configures on an interface).
pub fn parse_host_or_cidr(text: &str) -> Result<IpNetwork, String> {
    if text.contains('/') {
        return parse_cidr(text);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNetwork::from)
        .map_err(|_| format!("{text:?} is not an IP address (like 10.0.0.5 or 10.0.0.5/24)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "uplink": "eth1",
      "nodeUplinks": { "worker-3": "bond0" },
      "portgroups": [
        { "name": "prod-web", "vlan": 100, "mtu": 1500,
          "reservations": [
            { "mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24", "2001:db8:100::21/64"] }
          ] },
        { "name": "db", "vlan": 200 }
      ]
    }"#;

    #[test]
    fn design_example_parses() {
        let config = NodeConfig::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(config.portgroups.len(), 2);
        assert_eq!(config.uplink_for("worker-3"), Some("bond0"));
        assert_eq!(config.uplink_for("worker-1"), Some("eth1"));
        assert_eq!(config.portgroups[0].reservations[0].ips.len(), 2);
        assert_eq!(config.portgroups[1].mtu, None);
    }

    #[test]
    fn every_problem_is_named() {
        let cases: &[(&str, &[&str])] = &[
            ("[]", &["must be a JSON object"]),
            ("{", &["not valid JSON"]),
            (r#"{"portgroups": []}"#, &["uplink: required"]),
            (r#"{"uplink": "eth1"}"#, &["portgroups: required"]),
            (
                r#"{"uplink": "this-name-is-too-long", "portgroups": []}"#,
                &["uplink:"],
            ),
            (r#"{"uplink": 5, "portgroups": []}"#, &["uplink: must be"]),
            (
                r#"{"uplink": "eth1", "portgroups": [], "extra": 1}"#,
                &["extra: unknown field"],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "A_b", "vlan": 0}]}"#,
                &["portgroups[0].name", "portgroups[0].vlan"],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 4095, "mtu": 10}]}"#,
                &["portgroups[0].vlan", "portgroups[0].mtu"],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 5}, {"name": "a", "vlan": 5}]}"#,
                &[
                    "portgroups[1].name: \"a\" is already used",
                    "portgroups[1].vlan: 5 is already used",
                ],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": "5"}]}"#,
                &["portgroups[0].vlan"],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 5, "allowRouterAdvertisements": "yes", "allowDhcpServer": 1}]}"#,
                &[
                    "portgroups[0].allowRouterAdvertisements: must be true or false",
                    "portgroups[0].allowDhcpServer: must be true or false",
                ],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 5, "reservations": [{"mac": "01:00:5e:00:00:01", "ips": ["10.0.0.256"]}]}]}"#,
                &["reservations[0].mac", "reservations[0].ips[0]"],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 5, "reservations": [{"mac": "00:50:56:00:00:01"}, {"mac": "00:50:56:00:00:01"}]}]}"#,
                &["reservations[1].mac"],
            ),
            (
                r#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 5, "strict": "yes"}]}"#,
                &["portgroups[0].strict"],
            ),
        ];
        for (input, wanted) in cases {
            let problems = NodeConfig::parse(input.as_bytes()).expect_err(input);
            for want in *wanted {
                assert!(
                    problems.iter().any(|p| p.contains(want)),
                    "{input}: wanted {want:?} in {problems:?}"
                );
            }
        }
    }

    #[test]
    fn trunk_specs() {
        let ok: &[(&str, &str, usize)] = &[
            ("100", "100", 1),
            ("100-110,200", "100-110,200", 12),
            (" 200 , 100-110 ", "100-110,200", 12),
            // Overlaps and repeats are fine.
            ("100-110,105-120,110", "100-120", 21),
            ("1-4094", "1-4094", 4094),
            ("1,3,5-6", "1,3,5-6", 4),
        ];
        for (spec, canonical, len) in ok {
            let vids = VidSet::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(vids.to_string(), *canonical, "{spec}");
            assert_eq!(vids.len(), *len, "{spec}");
        }
        let bad: &[(&str, &str)] = &[
            ("0", "0 is not a VLAN ID"),
            ("4095", "4095 is not a VLAN ID"),
            ("1-4095", "4095 is not a VLAN ID"),
            ("5000", "5000 is not a VLAN ID"),
            ("110-100", "range 110-100 runs backwards"),
            ("", "has an empty item"),
            ("100,,200", "has an empty item"),
            ("abc", "\"abc\" is not a VLAN ID or a range"),
            ("100-", "\"\" is not a VLAN ID"),
            ("-5", "\"\" is not a VLAN ID"),
        ];
        for (spec, want) in bad {
            let err = VidSet::parse(spec).expect_err(spec);
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn segment_rules_name_their_field() {
        let one = |pg: &str| format!(r#"{{"uplink": "eth1", "portgroups": [{pg}]}}"#);
        let cases: &[(&str, &str)] = &[
            (
                r#"{"name": "a"}"#,
                "portgroups[0].vlan: required: a portgroup is one of vlan (access), trunk (tagged VLANs) or untagged: true",
            ),
            (
                r#"{"name": "a", "vlan": 5, "trunk": "6"}"#,
                "portgroups[0].trunk: vlan and trunk exclude each other",
            ),
            (
                r#"{"name": "a", "vlan": 5, "untagged": true}"#,
                "portgroups[0].untagged: vlan and untagged exclude each other",
            ),
            (
                r#"{"name": "a", "trunk": "6", "untagged": true}"#,
                "portgroups[0].untagged: trunk and untagged exclude each other",
            ),
            (
                r#"{"name": "a", "untagged": "yes"}"#,
                "portgroups[0].untagged: must be true or false",
            ),
            (
                r#"{"name": "a", "vlan": 5, "nativeVlan": 6}"#,
                "portgroups[0].nativeVlan: only a trunk portgroup has a native VLAN",
            ),
            (
                r#"{"name": "a", "trunk": "100-110", "nativeVlan": 105}"#,
                "portgroups[0].nativeVlan: 105 is also in trunk",
            ),
            (
                r#"{"name": "a", "trunk": "100", "nativeVlan": 0}"#,
                "portgroups[0].nativeVlan: must be a whole number from 1 to 4094, got 0",
            ),
            (
                r#"{"name": "a", "trunk": "0-10"}"#,
                "portgroups[0].trunk: 0 is not a VLAN ID",
            ),
            (
                r#"{"name": "a", "trunk": "1-4095"}"#,
                "portgroups[0].trunk: 4095 is not a VLAN ID (1 to 4094); vSphere's 4095",
            ),
            (
                r#"{"name": "a", "trunk": [100, 200]}"#,
                "portgroups[0].trunk: must be a string of VLAN IDs and ranges",
            ),
            (
                r#"{"name": "a", "vlan": 4095}"#,
                "portgroups[0].vlan: must be a whole number from 1 to 4094, got 4095 (vSphere's VLAN 4095: use trunk",
            ),
            (
                r#"{"name": "a", "vlan": 5, "uplink": "a/b"}"#,
                "portgroups[0].uplink: \"a/b\" contains '/'",
            ),
            (
                r#"{"name": "a", "trunk": "100", "reservations": [{"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1"]}]}"#,
                "portgroups[0].reservations[0].ips: a trunk portgroup reserves MACs only",
            ),
        ];
        for (pg, want) in cases {
            let problems = check(one(pg).as_bytes());
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{pg}: wanted {want:?} in {problems:?}"
            );
        }
    }

    #[test]
    fn trunk_untagged_and_own_uplinks_parse() {
        let config = NodeConfig::parse(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "web", "vlan": 100},
                {"name": "fw", "trunk": "100-110,200", "nativeVlan": 300},
                {"name": "fw2", "trunk": "100-110"},
                {"name": "vm-network", "untagged": true, "uplink": "eth2"},
                {"name": "web2", "vlan": 100, "uplink": "eth2"},
                {"name": "plain", "untagged": true, "vlan": null, "trunk": null},
                {"name": "big", "trunk": "1-2000", "reservations": [{"mac": "00:50:56:00:00:01"}]}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let pgs = &config.portgroups;
        assert_eq!(pgs[0].segment, Segment::Access(100));
        match &pgs[1].segment {
            Segment::Trunk { vids, native } => {
                assert_eq!(
                    (vids.to_string(), *native),
                    ("100-110,200".into(), Some(300))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pgs[3].segment, Segment::Untagged);
        assert_eq!(config.uplink_of(&pgs[3], "worker-3"), Some("eth2"));
        assert_eq!(config.uplink_of(&pgs[0], "worker-3"), Some("eth1"));
        assert_eq!(pgs[5].segment, Segment::Untagged);
        assert!(matches!(&pgs[6].segment, Segment::Trunk { vids, .. } if vids.len() == 2000));
        // Per uplink: the same VLAN twice, or two untagged portgroups, on one uplink.
        let twice = check(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "a", "vlan": 100, "uplink": "eth2"}, {"name": "b", "vlan": 100, "uplink": "eth2"},
                {"name": "c", "untagged": true}, {"name": "d", "untagged": true}]}"#,
        );
        assert_eq!(
            twice,
            vec![
                "portgroups[1].vlan: 100 is already used by portgroups[0] on uplink eth2".to_string(),
                "portgroups[3].untagged: the untagged traffic of the node's uplink is already portgroups[2]'s".to_string(),
            ]
        );
        // Every portgroup on an uplink of its own: no node uplink needed.
        assert_eq!(
            check(br#"{"portgroups": [{"name": "a", "untagged": true, "uplink": "eth2"}]}"#),
            Vec::<String>::new()
        );
        assert_eq!(
            check(br#"{"portgroups": [{"name": "a", "untagged": true, "uplink": "eth2"}, {"name": "b", "vlan": 5}]}"#),
            vec!["uplink: required (or nodeUplinks for every node, or an uplink on every portgroup)".to_string()]
        );
    }

    #[test]
    fn reservations_take_bare_host_addresses() {
        let config = NodeConfig::parse(
            br#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 5, "reservations": [
                {"mac": "00:50:56:00:00:01", "ips": ["10.1.1.5", "2001:db8::5", "10.1.2.5/24"]}]}]}"#,
        )
        .unwrap();
        let ips = &config.portgroups[0].reservations[0].ips;
        assert_eq!(ips[0], "10.1.1.5/32".parse::<IpNetwork>().unwrap());
        assert_eq!(ips[1], "2001:db8::5/128".parse::<IpNetwork>().unwrap());
        assert_eq!(ips[2], "10.1.2.5/24".parse::<IpNetwork>().unwrap());
    }

    #[test]
    fn reserved_addresses_are_unique_per_portgroup() {
        let config = |reservations: &str| {
            format!(
                r#"{{"uplink": "eth1", "portgroups": [
                    {{"name": "a", "vlan": 5, "reservations": {reservations}}},
                    {{"name": "b", "vlan": 6, "reservations": [
                        {{"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1", "2001:db8::1"]}}]}}]}}"#
            )
        };
        // The same MAC and IPs on another portgroup (another VLAN) are fine.
        let ok = config(r#"[{"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1", "2001:db8::1"]}]"#);
        assert_eq!(check(ok.as_bytes()), Vec::<String>::new());
        let cases: &[(&str, &str)] = &[
            (
                r#"[{"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1"]}, {"mac": "00:50:56:00:00:02", "ips": ["10.0.0.1/24"]}]"#,
                "portgroups[0].reservations[1].ips[0]: 10.0.0.1 is already reserved by reservations[0].ips[0]",
            ),
            (
                r#"[{"mac": "00:50:56:00:00:01", "ips": ["10.0.0.2", "2001:db8::1/64", "2001:DB8::1"]}]"#,
                "portgroups[0].reservations[0].ips[2]: 2001:db8::1 is already reserved by reservations[0].ips[1]",
            ),
            (
                r#"[{"mac": "00:50:56:00:00:01"}, {"mac": "00-50-56-00-00-01"}]"#,
                "portgroups[0].reservations[1].mac: 00:50:56:00:00:01 is already reserved by reservations[0]",
            ),
        ];
        for (reservations, want) in cases {
            assert_eq!(
                check(config(reservations).as_bytes()),
                vec![want.to_string()]
            );
        }
    }

    #[test]
    fn node_uplinks_alone_are_a_valid_config() {
        // Nodes missing from nodeUplinks have no uplink: their portgroups are
        // reported not ready with that reason, the config itself is fine.
        let config = NodeConfig::parse(
            br#"{"nodeUplinks": {"worker-1": "eth1"}, "portgroups": [{"name": "a", "vlan": 5}]}"#,
        )
        .unwrap();
        assert_eq!(config.uplink_for("worker-1"), Some("eth1"));
        assert_eq!(config.uplink_for("worker-2"), None);
        assert_eq!(
            check(br#"{"nodeUplinks": {}, "portgroups": []}"#),
            vec![
                "uplink: required (or nodeUplinks for every node, or an uplink on every portgroup)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn check_file_words_problems_as_the_daemon() {
        let dir = std::env::temp_dir().join(format!("pg-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            br#"{"uplink": "eth1", "portgroups": [{"name": "a", "vlan": 0}]}"#,
        )
        .unwrap();
        assert_eq!(
            check_file(&path),
            vec![
                "portgroups[0].vlan: must be a whole number from 1 to 4094, got 0 (vSphere's VLAN 0: use untagged: true)"
                    .to_string()
            ]
        );
        std::fs::write(&path, br#"{"uplink": "eth1", "portgroups": []}"#).unwrap();
        assert!(check_file(&path).is_empty());
        let missing = dir.join("missing.json");
        let problems = check_file(&missing);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(&format!("reading {}: ", missing.display())),
            "{problems:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reserved_address_forms() {
        for (text, want) in [
            ("10.1.1.5", "10.1.1.5/32"),
            ("2001:db8::5", "2001:db8::5/128"),
            ("10.1.1.5/24", "10.1.1.5/24"),
            ("2001:db8::5/64", "2001:db8::5/64"),
        ] {
            assert_eq!(
                parse_host_or_cidr(text),
                Ok(want.parse::<IpNetwork>().unwrap()),
                "{text}"
            );
        }
        for bad in [
            "",
            "10.1.1",
            "10.1.1.256",
            "10.1.1.5/33",
            "2001:db8::5/129",
            "10.1.1.5/",
            "host",
            " 10.1.1.5",
        ] {
            assert!(parse_host_or_cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_security_opt_ins_default_off() {
        let config = NodeConfig::parse(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "a", "vlan": 5},
                {"name": "b", "vlan": 6, "allowRouterAdvertisements": true, "allowDhcpServer": null},
                {"name": "c", "vlan": 7, "allowDhcpServer": true}]}"#,
        )
        .unwrap();
        let flags: Vec<(bool, bool)> = config
            .portgroups
            .iter()
            .map(|pg| (pg.allow_router_advertisements, pg.allow_dhcp_server))
            .collect();
        assert_eq!(flags, [(false, false), (true, false), (false, true)]);
    }

    /// The node schema documents exactly the portgroup fields the validator knows.
    #[test]
    fn schema_lists_the_portgroup_fields() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/manifests/schemas/portgroup-node-config.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut documented: Vec<&str> = schema["properties"]["portgroups"]["items"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort();
        let mut known = PORTGROUP_FIELDS.to_vec();
        known.sort();
        assert_eq!(documented, known);
    }

    #[test]
    fn portgroup_names() {
        for ok in ["a", "prod-web", "db1", "x".repeat(63).as_str()] {
            assert!(validate_portgroup_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Prod",
            "a_b",
            "a.b",
            "x".repeat(64).as_str(),
        ] {
            assert!(validate_portgroup_name(bad).is_err(), "{bad}");
        }
    }
}
