//! The pure planner: desired (node config, node name, previous state) plus observed
//! (one link dump, the uplinks' addresses) gives an ordered list of operations and
//! the status of every portgroup. No I/O here, so every rule is a table-driven
//! unit test.
//!
//! The planner is level-triggered: it never remembers what it did, it only compares.
//! Running it again on the result of applying its plan must give no operations.
//!
//! What it builds, per uplink:
//! - a VLAN path per VID in use: `pgv<tag>.<vid>` on the uplink, a port of the
//!   bridge `pgbr<tag>.<vid>`; shared by the access portgroup of that VID and
//!   every trunk listing it (the same broadcast domain);
//! - per trunk portgroup: the bridge `pgtb…` for its VM ports, fed through the
//!   veth pair `pgtp…` (on that bridge) / `pgtq…`, which carries one VLAN
//!   sub-interface `pgq….<vid>` per listed VID, each a port of that VID's bridge;
//!   with a native VLAN, `pgtq…` itself is a port of the native VLAN's bridge.
//!   A tagged frame whose VID has a sub-interface goes to it and never to the
//!   bridge hook, which is why the VIDs are demultiplexed on `pgtq…` and not on
//!   the uplink, where the access paths' sub-interfaces already are;
//! - per untagged portgroup: the bridge `pgbr<tag>.0` with the raw uplink as a port.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::mac::MacAddr;
use crate::naming::{
    self, bridge_name, owner_alias, parse_mark, trunk_bridge_name, trunk_feed_name,
    trunk_port_name, trunk_vlan_name, untagged_bridge_name, vlan_interface_name,
};
use crate::netlink::LinkSummary;
use crate::nodeconfig::{NodeConfig, PortgroupConfig, Segment, VidSet};
use crate::state::{NodeState, PortgroupMode, PortgroupState};

/// IFLA_GROUP given to every link we create. The kernel ignores IFLA_IFALIAS on
/// RTM_NEWLINK, so the alias (the ownership mark) can only be set by a second
/// request; a daemon killed between the two would leave a link with our name and
/// no mark, which it must then refuse to touch forever. The group is accepted at
/// creation, so a link with our name, our group and no alias at all is one we made
/// and did not get to mark yet.
pub const LINK_GROUP: u32 = 0x7067_0001;

/// A VLAN path's bridge (`vlan=<vid>`), or an untagged portgroup's (`vlan=0`).
pub const ROLE_BRIDGE: &str = "bridge";
/// A VLAN path's sub-interface on the uplink.
pub const ROLE_VLAN: &str = "vlan";
/// A trunk portgroup's bridge.
pub const ROLE_TRUNK: &str = "trunk";
/// The trunk's veth end on its bridge.
pub const ROLE_TRUNK_PORT: &str = "trunk-port";
/// The trunk's other veth end, parent of its per-VID sub-interfaces.
pub const ROLE_TRUNK_FEED: &str = "trunk-feed";
/// A trunk's sub-interface for one VID, a port of that VID's bridge.
pub const ROLE_TRUNK_VLAN: &str = "trunk-vlan";

/// The kind of link each role is.
fn role_kind(role: &str) -> Option<&'static str> {
    match role {
        ROLE_BRIDGE | ROLE_TRUNK => Some("bridge"),
        ROLE_VLAN | ROLE_TRUNK_VLAN => Some("vlan"),
        ROLE_TRUNK_PORT | ROLE_TRUNK_FEED => Some("veth"),
        _ => None,
    }
}

/// What one link dump showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub links: Vec<LinkSummary>,
    /// Indexes of links in [`LINK_GROUP`] (see there).
    pub in_our_group: BTreeSet<u32>,
    /// The IP addresses links hold (IPv6 link-local ones left out), by index:
    /// an untagged portgroup never makes a link with addresses a bridge port.
    pub addresses: BTreeMap<u32, Vec<String>>,
    /// Why the native-VLAN guard of trunk portgroups is not in place (see
    /// `portsec::ensure_native_guard`); None when it is, or is not needed.
    /// Without it no trunk's feed joins its native VLAN's bridge.
    pub native_guard_failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Brings an existing link administratively up (the uplink, or ours).
    SetUp {
        name: String,
    },
    /// Created down, in [`LINK_GROUP`]; the applier sets `alias` right after.
    CreateVlan {
        name: String,
        parent: String,
        /// The parent's index when the plan knew it (else looked up by name).
        parent_index: Option<u32>,
        vid: u16,
        mtu: u32,
        alias: String,
    },
    /// Created with its MAC pinned (see `naming::bridge_mac`).
    CreateBridge {
        name: String,
        mtu: u32,
        mac: MacAddr,
        alias: String,
    },
    /// A veth pair, both ends created down in [`LINK_GROUP`], then marked.
    CreateVeth {
        name: String,
        peer: String,
        mtu: u32,
        alias: String,
        peer_alias: String,
    },
    SetController {
        name: String,
        controller: String,
    },
    /// Takes a link out of the bridge it is a port of.
    ReleaseController {
        name: String,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    SetAlias {
        name: String,
        alias: String,
    },
    /// Puts a bridge's MAC back where it was pinned.
    SetAddress {
        name: String,
        mac: MacAddr,
    },
    /// By index: the name may already be taken again by the time this runs.
    Delete {
        index: u32,
        name: String,
    },
}

impl Operation {
    /// The link the operation is about, for logs.
    pub fn link_name(&self) -> &str {
        match self {
            Operation::SetUp { name }
            | Operation::CreateVlan { name, .. }
            | Operation::CreateBridge { name, .. }
            | Operation::CreateVeth { name, .. }
            | Operation::SetController { name, .. }
            | Operation::ReleaseController { name }
            | Operation::SetMtu { name, .. }
            | Operation::SetAlias { name, .. }
            | Operation::SetAddress { name, .. }
            | Operation::Delete { name, .. } => name,
        }
    }

    /// The links that must exist for the operation to work.
    pub fn needs(&self) -> Vec<&str> {
        match self {
            Operation::SetController { name, controller } => vec![name, controller],
            Operation::CreateVlan { parent, .. } => vec![parent],
            Operation::CreateBridge { .. } | Operation::CreateVeth { .. } => vec![],
            op => vec![op.link_name()],
        }
    }

    /// The links the operation makes.
    pub fn makes(&self) -> Vec<&str> {
        match self {
            Operation::CreateVlan { name, .. } | Operation::CreateBridge { name, .. } => {
                vec![name]
            }
            Operation::CreateVeth { name, peer, .. } => vec![name, peer],
            _ => vec![],
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::SetUp { name } => write!(f, "set {name} up"),
            Operation::CreateVlan {
                name,
                parent,
                vid,
                mtu,
                ..
            } => write!(
                f,
                "create VLAN interface {name} on {parent} vid {vid} mtu {mtu}"
            ),
            Operation::CreateBridge { name, mtu, mac, .. } => {
                write!(f, "create bridge {name} mtu {mtu} address {mac}")
            }
            Operation::CreateVeth {
                name, peer, mtu, ..
            } => write!(f, "create veth pair {name}/{peer} mtu {mtu}"),
            Operation::SetController { name, controller } => {
                write!(f, "attach {name} to bridge {controller}")
            }
            Operation::ReleaseController { name } => write!(f, "detach {name} from its bridge"),
            Operation::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            Operation::SetAlias { name, alias } => write!(f, "set {name} alias {alias:?}"),
            Operation::SetAddress { name, mac } => write!(f, "set {name} address {mac}"),
            Operation::Delete { index, name } => write!(f, "delete {name} (index {index})"),
        }
    }
}

/// One operation and the portgroup it is for, so a failure lands in that
/// portgroup's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub portgroup: String,
    pub op: Operation,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Configured portgroups in config order, then draining ones.
    pub portgroups: Vec<PortgroupState>,
    /// Portgroups whose readiness hangs on steps filed under another portgroup
    /// (a trunk on the VLAN paths an access portgroup owns): a failure of
    /// theirs is the dependent's reason too.
    pub depends_on: BTreeMap<String, BTreeSet<String>>,
    /// Every link name the configured portgroups want on this node.
    pub wanted: HashSet<String>,
}

impl Plan {
    pub fn steps_for<'a>(&'a self, portgroup: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps.iter().filter(move |s| s.portgroup == portgroup)
    }

    /// Whether a failure filed under `failed` also concerns `portgroup`.
    pub fn concerns(&self, portgroup: &str, failed: &str) -> bool {
        portgroup == failed
            || self
                .depends_on
                .get(portgroup)
                .is_some_and(|owners| owners.contains(failed))
    }
}

struct View<'a> {
    by_name: HashMap<&'a str, &'a LinkSummary>,
    by_index: HashMap<u32, &'a LinkSummary>,
    /// VLAN interfaces in this namespace by (parent index, VID).
    vlans: HashMap<(u32, u16), Vec<&'a LinkSummary>>,
    observed: &'a Observed,
    /// This node's name: part of every bridge's pinned MAC.
    node: &'a str,
}

impl<'a> View<'a> {
    fn new(observed: &'a Observed, node: &'a str) -> Self {
        View {
            by_name: observed
                .links
                .iter()
                .map(|l| (l.name.as_str(), l))
                .collect(),
            by_index: observed.links.iter().map(|l| (l.index, l)).collect(),
            vlans: observed
                .links
                .iter()
                .filter(|l| l.is_kind("vlan") && l.link_netns_id.is_none())
                .filter_map(|l| Some(((l.link?, l.vlan_id?), l)))
                .fold(HashMap::new(), |mut map, (key, l)| {
                    map.entry(key).or_insert_with(Vec::new).push(l);
                    map
                }),
            observed,
            node,
        }
    }

    fn get(&self, name: &str) -> Option<&'a LinkSummary> {
        self.by_name.get(name).copied()
    }

    fn owned(&self, link: &LinkSummary) -> bool {
        is_ours(link, &self.observed.in_our_group)
    }

    /// Made by portgroupd (not a VM's port, which the plugin owns): marked with one
    /// of the daemon's roles on a link of that role's kind, or unmarked in our group.
    fn daemon_made(&self, link: &LinkSummary) -> bool {
        match link.alias.as_deref().filter(|a| !a.is_empty()) {
            Some(alias) => naming::is_exact_mark(alias)
                .then(|| parse_mark(alias))
                .flatten()
                .and_then(|m| role_kind(&m.role))
                .is_some_and(|kind| link.is_kind(kind)),
            None => {
                self.observed.in_our_group.contains(&link.index)
                    && (link.is_kind("bridge") || link.is_kind("vlan") || link.is_kind("veth"))
            }
        }
    }

    fn ports_of(&self, bridge: u32) -> impl Iterator<Item = &'a LinkSummary> + 'a {
        self.observed
            .links
            .iter()
            .filter(move |l| l.controller == Some(bridge))
    }

    /// A VLAN interface of `parent` in this namespace with this VID.
    fn is_vlan_of(link: &LinkSummary, parent: u32, vid: u16) -> bool {
        link.is_kind("vlan")
            && link.vlan_id == Some(vid)
            && link.link == Some(parent)
            && link.link_netns_id.is_none()
    }
}

/// The only links the daemon ever changes or deletes: those whose alias is
/// exactly a mark it writes, and those in its link group with no alias at all
/// (made, not yet marked). An alias that merely starts with "portgroup:" is an
/// admin's, not ours.
pub fn is_ours(link: &LinkSummary, in_our_group: &BTreeSet<u32>) -> bool {
    match link.alias.as_deref().filter(|a| !a.is_empty()) {
        Some(alias) => naming::is_exact_mark(alias),
        None => in_our_group.contains(&link.index),
    }
}

fn not_owned_reason(name: &str) -> String {
    format!("interface {name} exists and is not owned by portgroup; rename or remove it")
}

/// A VLAN path every user of (uplink, vid) shares.
#[derive(Debug, Clone)]
struct PathWant<'c> {
    uplink: &'c str,
    vid: u16,
    /// The portgroup its steps are filed under and its mark names: the access
    /// portgroup of the VID, else the first trunk listing it.
    owner: &'c str,
    /// The access portgroup's MTU, else the first trunk's; else the uplink's.
    mtu: Option<u32>,
}

/// Where each configured portgroup goes on this node.
struct Placed<'c> {
    pg: &'c PortgroupConfig,
    uplink: Option<&'c str>,
}

/// Plans one reconcile. `previous` lends draining portgroups what the config no
/// longer says of them (reservations, strict), so port security keeps working
/// for the VMs still on them.
pub fn plan(
    config: &NodeConfig,
    node: &str,
    previous: Option<&NodeState>,
    observed: &Observed,
) -> Plan {
    let view = View::new(observed, node);
    let mut plan = Plan::default();
    let placed: Vec<Placed> = config
        .portgroups
        .iter()
        .map(|pg| Placed {
            pg,
            uplink: config.uplink_of(pg, node),
        })
        .collect();

    // Every VLAN path in use, in the order the config first needs it.
    let mut paths: Vec<PathWant> = Vec::new();
    let mut path_at: HashMap<(&str, u16), usize> = HashMap::new();
    for access_first in [true, false] {
        for p in &placed {
            let Some(uplink) = p.uplink else { continue };
            let vids: Vec<u16> = match (&p.pg.segment, access_first) {
                (Segment::Access(vid), true) => vec![*vid],
                (Segment::Trunk { vids, native }, false) => {
                    vids.vids().iter().copied().chain(*native).collect()
                }
                _ => continue,
            };
            for vid in vids {
                match path_at.get(&(uplink, vid)) {
                    Some(&i) => {
                        if paths[i].mtu.is_none() {
                            paths[i].mtu = p.pg.mtu;
                        }
                    }
                    None => {
                        path_at.insert((uplink, vid), paths.len());
                        paths.push(PathWant {
                            uplink,
                            vid,
                            owner: &p.pg.name,
                            mtu: p.pg.mtu,
                        });
                    }
                }
            }
        }
    }

    // Every name wanted, and by whom: two wants of one name (a hash collision)
    // make the later one not ready instead of fighting over the link.
    let mut claims: HashMap<String, String> = HashMap::new();
    let mut collisions: HashMap<String, String> = HashMap::new();
    let mut claim = |name: String, by: String, pg: &str| {
        if let Some(first) = claims.get(&name) {
            if *first != by {
                collisions.entry(pg.to_string()).or_insert(format!(
                    "interface name {name} is also wanted for {first}; rename this portgroup"
                ));
            }
        } else {
            claims.insert(name, by);
        }
    };
    for path in &paths {
        let by = format!("VLAN {} on {}", path.vid, path.uplink);
        claim(bridge_name(path.uplink, path.vid), by.clone(), path.owner);
        claim(vlan_interface_name(path.uplink, path.vid), by, path.owner);
    }
    for p in &placed {
        let Some(uplink) = p.uplink else { continue };
        let by = format!("portgroup {}", p.pg.name);
        match &p.pg.segment {
            Segment::Access(_) => {}
            Segment::Untagged => claim(untagged_bridge_name(uplink), by, &p.pg.name),
            Segment::Trunk { vids, .. } => {
                claim(
                    trunk_bridge_name(uplink, &p.pg.name),
                    by.clone(),
                    &p.pg.name,
                );
                claim(trunk_port_name(uplink, &p.pg.name), by.clone(), &p.pg.name);
                claim(trunk_feed_name(uplink, &p.pg.name), by.clone(), &p.pg.name);
                for vid in vids.vids() {
                    claim(
                        trunk_vlan_name(uplink, &p.pg.name, *vid),
                        by.clone(),
                        &p.pg.name,
                    );
                }
            }
        }
    }
    let desired: HashSet<String> = claims.into_keys().collect();

    let draining = plan_stale(&view, &desired, previous, &mut plan);
    plan.wanted = desired;

    let mut uplinks_up: HashSet<&str> = HashSet::new();
    let mut path_results: HashMap<(&str, u16), Result<usize, String>> = HashMap::new();
    for path in &paths {
        let result = match view.get(path.uplink) {
            None => Err(format!("uplink {} not found on node {node}", path.uplink)),
            Some(uplink) => match collisions.get(path.owner) {
                Some(why) => Err(why.clone()),
                None => plan_path(path, uplink, &view, &mut plan),
            },
        };
        path_results.insert((path.uplink, path.vid), result);
    }

    for p in &placed {
        let pg = p.pg;
        let Some(uplink_name) = p.uplink else {
            plan.portgroups.push(not_ready_unplaced(pg, node));
            continue;
        };
        let mut status = PortgroupState::from_config(pg, Some(uplink_name));
        let Some(uplink) = view.get(uplink_name) else {
            status.reason = Some(format!("uplink {uplink_name} not found on node {node}"));
            plan.portgroups.push(status);
            continue;
        };
        let mtu = pg.mtu.unwrap_or(uplink.mtu);
        status.mtu = Some(mtu);
        let result = match (collisions.get(&pg.name), &pg.segment) {
            (Some(why), _) => Err(why.clone()),
            (None, Segment::Access(vid)) => {
                let path = &paths[path_at[&(uplink_name, *vid)]];
                status.mtu = Some(path.mtu.unwrap_or(uplink.mtu));
                path_results[&(uplink_name, *vid)].clone()
            }
            (None, Segment::Trunk { vids, native }) => {
                let owners: BTreeSet<String> = vids
                    .vids()
                    .iter()
                    .chain(native.as_ref())
                    .map(|vid| paths[path_at[&(uplink_name, *vid)]].owner)
                    .filter(|owner| *owner != pg.name)
                    .map(str::to_string)
                    .collect();
                if !owners.is_empty() {
                    plan.depends_on.insert(pg.name.clone(), owners);
                }
                plan_trunk(
                    pg,
                    uplink_name,
                    vids,
                    *native,
                    mtu,
                    &view,
                    &path_results,
                    &mut plan,
                )
            }
            (None, Segment::Untagged) => plan_untagged(pg, uplink, mtu, &view, &mut plan),
        };
        // The uplink is brought up once, before anything is made on it.
        let mut uplink_reason = None;
        if !uplink.admin_up {
            if uplinks_up.insert(uplink_name) {
                plan.steps.insert(
                    0,
                    Step {
                        portgroup: pg.name.clone(),
                        op: Operation::SetUp {
                            name: uplink_name.to_string(),
                        },
                    },
                );
            }
            uplink_reason = Some(format!("uplink {uplink_name} is down; bringing it up"));
        } else if !uplink.lower_up {
            uplink_reason = Some(format!(
                "uplink {uplink_name} is up but has no carrier (cable, switch port or bond members down)"
            ));
        }
        match (result, uplink_reason) {
            (Err(reason), _) => status.reason = Some(reason),
            (Ok(_), Some(reason)) => status.reason = Some(reason),
            (Ok(0), None) => status.ready = true,
            (Ok(pending), None) => {
                status.reason = Some(format!("converging: {pending} change(s) pending"));
            }
        }
        plan.portgroups.push(status);
    }
    bring_up_last(&mut plan.steps, &uplinks_up);
    for d in draining {
        if plan.portgroups.iter().any(|p| p.name == d.name) {
            // The same portgroup moved (a new uplink): its new bridge is the one the
            // plugin must use; the old one is kept for its VMs but not listed twice.
            continue;
        }
        plan.portgroups.push(d);
    }
    plan
}

/// Moves the steps that bring our links up after every other step (the
/// uplinks', first, stay first). A link that is up gets IPv6 routes, and every
/// MTU change in the namespace walks all of them (rt6_mtu_change): made and
/// set while down, a trunk of N VIDs costs O(N) instead of O(N²) in the kernel.
/// Nothing needs a link up before it is attached or marked.
fn bring_up_last(steps: &mut Vec<Step>, uplinks: &HashSet<&str>) {
    let (ups, rest): (Vec<Step>, Vec<Step>) = std::mem::take(steps).into_iter().partition(
        |s| matches!(&s.op, Operation::SetUp { name } if !uplinks.contains(name.as_str())),
    );
    *steps = rest;
    steps.extend(ups);
}

fn not_ready_unplaced(pg: &PortgroupConfig, node: &str) -> PortgroupState {
    PortgroupState {
        reason: Some(format!(
            "no uplink configured for node {node}: set \"uplink\" or \"nodeUplinks.{node}\""
        )),
        ..PortgroupState::from_config(pg, None)
    }
}

/// Owned links that no configured portgroup wants: torn down, unless VM ports
/// remain on a bridge; then it drains, and so does everything that carries its
/// traffic (a trunk's veth pair, its sub-interfaces, the VLAN paths they feed).
fn plan_stale(
    view: &View<'_>,
    desired: &HashSet<String>,
    previous: Option<&NodeState>,
    plan: &mut Plan,
) -> Vec<PortgroupState> {
    let stale: Vec<&LinkSummary> = view
        .observed
        .links
        .iter()
        .filter(|l| !desired.contains(&l.name) && view.owned(l) && view.daemon_made(l))
        .collect();
    let mut draining = Vec::new();
    let mut keep: HashSet<u32> = HashSet::new();
    for bridge in stale.iter().filter(|l| l.is_kind("bridge")) {
        let mark = bridge.alias.as_deref().and_then(parse_mark);
        let uplink = mark.as_ref().map(|m| m.uplink.as_str());
        let vm_ports: Vec<&str> = view
            .ports_of(bridge.index)
            .filter(|p| !view.daemon_made(p) && Some(p.name.as_str()) != uplink)
            .map(|p| p.name.as_str())
            .collect();
        if vm_ports.is_empty() {
            continue;
        }
        keep.insert(bridge.index);
        let pg_name = mark
            .as_ref()
            .map(|m| m.portgroup.clone())
            .unwrap_or_else(|| bridge.name.clone());
        let before = previous.and_then(|s| s.portgroups.iter().find(|p| p.name == pg_name));
        let mode = match mark.as_ref() {
            Some(m) if m.role == ROLE_TRUNK => PortgroupMode::Trunk,
            Some(m) if m.vlan == 0 => PortgroupMode::Untagged,
            _ => PortgroupMode::Access,
        };
        let vlan_interface = view
            .ports_of(bridge.index)
            .find(|p| p.is_kind("vlan") && view.daemon_made(p))
            .filter(|_| mode == PortgroupMode::Access)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let reason = format!(
            "removed from the config; kept until its last VM port leaves ({} left: {})",
            vm_ports.len(),
            vm_ports.join(", ")
        );
        draining.push(PortgroupState::draining(
            pg_name,
            mode,
            mark.as_ref(),
            bridge,
            vlan_interface,
            before,
            reason,
        ));
    }
    // What a draining bridge's traffic still runs through: its own daemon-made
    // ports, a veth's peer, VLAN sub-interfaces of a kept link, the bridge a kept
    // link is a port of.
    let mut queue: Vec<u32> = keep.iter().copied().collect();
    while let Some(index) = queue.pop() {
        let Some(link) = view.by_index.get(&index).copied() else {
            continue;
        };
        let mut next: Vec<u32> = view
            .observed
            .links
            .iter()
            .filter(|l| {
                l.controller == Some(index)
                    || (l.is_kind("vlan") && l.link == Some(index) && l.link_netns_id.is_none())
            })
            .map(|l| l.index)
            .collect();
        if link.is_kind("veth") && link.link_netns_id.is_none() {
            next.extend(link.link);
        }
        next.extend(link.controller);
        for n in next {
            let daemon = view
                .by_index
                .get(&n)
                .is_some_and(|l| view.owned(l) && view.daemon_made(l));
            if daemon && keep.insert(n) {
                queue.push(n);
            }
        }
    }
    for link in stale {
        if keep.contains(&link.index) {
            continue;
        }
        let pg_name = link
            .alias
            .as_deref()
            .and_then(parse_mark)
            .map(|m| m.portgroup)
            .unwrap_or_else(|| link.name.clone());
        plan.steps.push(Step {
            portgroup: pg_name,
            op: Operation::Delete {
                index: link.index,
                name: link.name.clone(),
            },
        });
    }
    draining
}

/// Steps that make `name` (of `kind`) right, or delete it when it is not: a
/// link of ours with the right name and the wrong kind or parent is remade.
struct Ensure<'v, 'a> {
    view: &'v View<'a>,
    portgroup: &'v str,
    steps: Vec<Step>,
}

impl<'a> Ensure<'_, 'a> {
    fn step(&mut self, op: Operation) {
        self.steps.push(Step {
            portgroup: self.portgroup.to_string(),
            op,
        });
    }

    /// The link by this name if it is right; a wrong one is deleted.
    fn existing(
        &mut self,
        name: &str,
        right: impl Fn(&LinkSummary) -> bool,
    ) -> Option<&'a LinkSummary> {
        let link = self.view.get(name)?;
        if right(link) {
            Some(link)
        } else {
            self.step(Operation::Delete {
                index: link.index,
                name: link.name.clone(),
            });
            None
        }
    }

    /// Alias and MTU of an existing link.
    fn tend(&mut self, link: &LinkSummary, alias: &str, mtu: u32) {
        if link.alias.as_deref() != Some(alias) {
            self.step(Operation::SetAlias {
                name: link.name.clone(),
                alias: alias.to_string(),
            });
        }
        if link.mtu != mtu {
            self.step(Operation::SetMtu {
                name: link.name.clone(),
                mtu,
            });
        }
    }

    fn controller(
        &mut self,
        link: Option<&LinkSummary>,
        name: &str,
        bridge: Option<&LinkSummary>,
        bridge_name: &str,
    ) {
        let attached =
            matches!((link, bridge), (Some(l), Some(b)) if l.controller == Some(b.index));
        if !attached {
            self.step(Operation::SetController {
                name: name.to_string(),
                controller: bridge_name.to_string(),
            });
        }
    }

    fn up(&mut self, link: Option<&LinkSummary>, name: &str) {
        if !link.is_some_and(|l| l.admin_up) {
            self.step(Operation::SetUp {
                name: name.to_string(),
            });
        }
    }

    fn bridge(&mut self, name: &str, mtu: u32, alias: String) -> Option<&'a LinkSummary> {
        let bridge = self.existing(name, |l| l.is_kind("bridge"));
        self.make_bridge(bridge, name, mtu, alias);
        bridge
    }

    fn make_bridge(&mut self, bridge: Option<&LinkSummary>, name: &str, mtu: u32, alias: String) {
        let mac = naming::bridge_mac(self.view.node, name);
        match bridge {
            None => self.step(Operation::CreateBridge {
                name: name.to_string(),
                mtu,
                mac,
                alias,
            }),
            Some(l) => {
                self.tend(l, &alias, mtu);
                if l.mac != Some(mac) {
                    self.step(Operation::SetAddress {
                        name: l.name.clone(),
                        mac,
                    });
                }
            }
        }
    }

    /// Moves the steps into the plan; how many there were.
    fn finish(self, plan: &mut Plan) -> usize {
        let n = self.steps.len();
        plan.steps.extend(self.steps);
        n
    }
}

/// Names taken by links that are not ours: nothing is done, the reason says which.
fn unowned(view: &View<'_>, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| view.get(name))
        .filter(|l| !view.owned(l))
        .map(|l| not_owned_reason(&l.name))
        .collect()
}

/// One VLAN path: sub-interface on the uplink, a port of its bridge, both up.
/// Ok(pending steps) or why it cannot be made.
fn plan_path(
    path: &PathWant<'_>,
    uplink: &LinkSummary,
    view: &View<'_>,
    plan: &mut Plan,
) -> Result<usize, String> {
    let (uplink_name, vid) = (path.uplink, path.vid);
    let bname = bridge_name(uplink_name, vid);
    let vname = vlan_interface_name(uplink_name, vid);
    let mtu = path.mtu.unwrap_or(uplink.mtu);
    let mut problems = unowned(view, &[&vname, &bname]);
    // The kernel allows one VLAN interface per (parent, vid): an unowned one blocks ours.
    if let Some(other) = view
        .vlans
        .get(&(uplink.index, vid))
        .into_iter()
        .flatten()
        .find(|l| l.name != vname && !view.owned(l))
    {
        problems.push(format!(
            "VLAN {vid} on uplink {uplink_name} is already used by interface {}, which is not owned by portgroup; remove it",
            other.name
        ));
    }
    if mtu > uplink.mtu {
        problems.push(format!(
            "mtu {mtu} is larger than uplink {uplink_name}'s mtu {}; raise the uplink's MTU or lower the portgroup's",
            uplink.mtu
        ));
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mut e = Ensure {
        view,
        portgroup: path.owner,
        steps: Vec::new(),
    };
    let vlan_alias = owner_alias(ROLE_VLAN, path.owner, uplink_name, vid);
    let bridge_alias = owner_alias(ROLE_BRIDGE, path.owner, uplink_name, vid);
    let vlan = e.existing(&vname, |l| View::is_vlan_of(l, uplink.index, vid));
    let bridge = e.existing(&bname, |l| l.is_kind("bridge"));
    match vlan {
        None => e.step(Operation::CreateVlan {
            name: vname.clone(),
            parent: uplink_name.to_string(),
            parent_index: Some(uplink.index),
            vid,
            mtu,
            alias: vlan_alias,
        }),
        Some(l) => e.tend(l, &vlan_alias, mtu),
    }
    e.make_bridge(bridge, &bname, mtu, bridge_alias);
    e.controller(vlan, &vname, bridge, &bname);
    e.up(vlan, &vname);
    e.up(bridge, &bname);
    Ok(e.finish(plan))
}

/// A trunk portgroup: its bridge, the veth pair feeding it, one sub-interface per
/// VID on the pair's far end, each a port of its VID's path bridge. Ready only
/// when every VID's path is.
#[allow(clippy::too_many_arguments)]
fn plan_trunk(
    pg: &PortgroupConfig,
    uplink_name: &str,
    vids: &VidSet,
    native: Option<u16>,
    mtu: u32,
    view: &View<'_>,
    paths: &HashMap<(&str, u16), Result<usize, String>>,
    plan: &mut Plan,
) -> Result<usize, String> {
    let tb = trunk_bridge_name(uplink_name, &pg.name);
    let tp = trunk_port_name(uplink_name, &pg.name);
    let tq = trunk_feed_name(uplink_name, &pg.name);
    let sub = |vid: u16| trunk_vlan_name(uplink_name, &pg.name, vid);
    let mut names = vec![tb.clone(), tp.clone(), tq.clone()];
    names.extend(vids.vids().iter().map(|v| sub(*v)));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let problems = unowned(view, &refs);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let alias = |role: &str, vid: u16| owner_alias(role, &pg.name, uplink_name, vid);
    let mut e = Ensure {
        view,
        portgroup: &pg.name,
        steps: Vec::new(),
    };
    let bridge = e.bridge(&tb, mtu, alias(ROLE_TRUNK, 0));
    // The pair is right when both ends are veths and each other's peer.
    let pair_right = |a: &LinkSummary, b: Option<&LinkSummary>| {
        a.is_kind("veth")
            && a.link_netns_id.is_none()
            && b.is_some_and(|b| a.link == Some(b.index) && b.link == Some(a.index))
    };
    let port = e.existing(&tp, |l| pair_right(l, view.get(&tq)));
    let feed = match port {
        Some(_) => view.get(&tq),
        None => {
            // A lone or mismatched far end goes too, or the new pair cannot take its name.
            if let Some(stray) = view.get(&tq) {
                e.step(Operation::Delete {
                    index: stray.index,
                    name: stray.name.clone(),
                });
            }
            e.step(Operation::CreateVeth {
                name: tp.clone(),
                peer: tq.clone(),
                mtu,
                alias: alias(ROLE_TRUNK_PORT, 0),
                peer_alias: alias(ROLE_TRUNK_FEED, 0),
            });
            None
        }
    };
    if let (Some(p), Some(f)) = (port, feed) {
        e.tend(p, &alias(ROLE_TRUNK_PORT, 0), mtu);
        e.tend(f, &alias(ROLE_TRUNK_FEED, 0), mtu);
    }
    e.controller(port, &tp, bridge, &tb);
    // Untagged frames from the VMs: into the native VLAN's bridge, else nowhere.
    // Only with the guard that keeps tagged frames off that bridge in both
    // directions: the feed also carries the tags the trunk does not list.
    let native_path_ok = native.is_some_and(|vid| {
        paths
            .get(&(uplink_name, vid))
            .is_some_and(|result| result.is_ok())
    }) && view.observed.native_guard_failure.is_none();
    match native.filter(|_| native_path_ok) {
        Some(vid) => {
            let nb = bridge_name(uplink_name, vid);
            e.controller(feed, &tq, view.get(&nb), &nb);
        }
        None => {
            if feed.is_some_and(|f| f.controller.is_some()) {
                e.step(Operation::ReleaseController { name: tq.clone() });
            }
        }
    }
    e.up(bridge, &tb);
    e.up(port, &tp);
    e.up(feed, &tq);
    for vid in vids.vids() {
        // A VID whose path cannot be made gets no sub-interface: it would have no
        // bridge to join. The trunk is not ready, saying why (below).
        if paths
            .get(&(uplink_name, *vid))
            .is_none_or(|result| result.is_err())
        {
            continue;
        }
        let name = sub(*vid);
        let link = feed.and_then(|f| e.existing(&name, |l| View::is_vlan_of(l, f.index, *vid)));
        let vlan_alias = alias(ROLE_TRUNK_VLAN, *vid);
        match link {
            None => e.step(Operation::CreateVlan {
                name: name.clone(),
                parent: tq.clone(),
                parent_index: feed.map(|f| f.index),
                vid: *vid,
                mtu,
                alias: vlan_alias,
            }),
            Some(l) => e.tend(l, &vlan_alias, mtu),
        }
        let vb = bridge_name(uplink_name, *vid);
        e.controller(link, &name, view.get(&vb), &vb);
        e.up(link, &name);
    }
    let pending = e.finish(plan);
    // Every VID's path, the native one included, or the trunk is not ready.
    let mut broken: Vec<String> = Vec::new();
    let mut converging = 0;
    for vid in vids.vids().iter().chain(native.as_ref()) {
        match paths.get(&(uplink_name, *vid)) {
            Some(Ok(n)) => converging += n,
            Some(Err(why)) => broken.push(format!("VLAN {vid}: {why}")),
            None => broken.push(format!("VLAN {vid}: no path planned")),
        }
    }
    if let (Some(vid), Some(why)) = (native, view.observed.native_guard_failure.as_ref()) {
        broken.push(format!(
            "nativeVlan {vid}: untagged frames are not carried until tagged ones can be kept off VLAN {vid}'s bridge: {why}"
        ));
    }
    if !broken.is_empty() {
        let more = broken.len().saturating_sub(3);
        broken.truncate(3);
        let mut reason = broken.join("; ");
        if more > 0 {
            reason.push_str(&format!("; and {more} more VLANs"));
        }
        return Err(reason);
    }
    Ok(pending + converging)
}

/// An untagged portgroup: a bridge with the raw uplink as a port. Refused while
/// the uplink holds IP addresses: as a bridge port it would stop answering on
/// them, and the node's own network must never be cut.
fn plan_untagged(
    pg: &PortgroupConfig,
    uplink: &LinkSummary,
    mtu: u32,
    view: &View<'_>,
    plan: &mut Plan,
) -> Result<usize, String> {
    let name = untagged_bridge_name(&uplink.name);
    let mut problems = unowned(view, &[&name]);
    if let Some(addresses) = view
        .observed
        .addresses
        .get(&uplink.index)
        .filter(|a| !a.is_empty())
    {
        problems.push(format!(
            "uplink {} holds IP addresses ({}): an untagged portgroup makes it a bridge port, which would cut the node's own traffic over it; give the portgroup an uplink of its own (\"uplink\") or move the addresses off {}",
            uplink.name,
            addresses.join(", "),
            uplink.name
        ));
    }
    if uplink.is_kind("bridge") {
        problems.push(format!(
            "uplink {} is a bridge; a bridge cannot be a port of another bridge",
            uplink.name
        ));
    }
    let ours = view.get(&name).map(|b| b.index);
    if let Some(other) = uplink
        .controller
        .filter(|c| Some(*c) != ours)
        .and_then(|c| view.by_index.get(&c))
    {
        problems.push(format!(
            "uplink {} is already a port of {}, which is not this portgroup's bridge",
            uplink.name, other.name
        ));
    }
    if mtu > uplink.mtu {
        problems.push(format!(
            "mtu {mtu} is larger than uplink {}'s mtu {}; raise the uplink's MTU or lower the portgroup's",
            uplink.name, uplink.mtu
        ));
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mut e = Ensure {
        view,
        portgroup: &pg.name,
        steps: Vec::new(),
    };
    let bridge = e.bridge(
        &name,
        mtu,
        owner_alias(ROLE_BRIDGE, &pg.name, &uplink.name, 0),
    );
    e.controller(Some(uplink), &uplink.name, bridge, &name);
    e.up(bridge, &name);
    Ok(e.finish(plan))
}

#[cfg(test)]
mod tests;
