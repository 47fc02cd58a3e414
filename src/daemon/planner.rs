//! The pure planner: desired (node config, node name, previous state) plus observed
//! (one link dump) gives an ordered list of operations and the status of every
//! portgroup. No I/O here, so every rule is a table-driven unit test.
//!
//! The planner is level-triggered: it never remembers what it did, it only compares.
//! Running it again on the result of applying its plan must give no operations.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::naming::{self, bridge_name, owner_alias, vlan_interface_name, OWNER_MARK};
use crate::netlink::LinkSummary;
use crate::nodeconfig::{NodeConfig, PortgroupConfig};
use crate::state::{NodeState, PortgroupState};

/// IFLA_GROUP given to every link we create. The kernel ignores IFLA_IFALIAS on
/// RTM_NEWLINK, so the alias (the ownership mark) can only be set by a second
/// request; a daemon killed between the two would leave a link with our name and
/// no mark, which it must then refuse to touch forever. The group is accepted at
/// creation, so a link with our name, our group and no alias at all is one we made
/// and did not get to mark yet.
pub const LINK_GROUP: u32 = 0x7067_0001;

pub const ROLE_BRIDGE: &str = "bridge";
pub const ROLE_VLAN: &str = "vlan";

/// What one link dump showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub links: Vec<LinkSummary>,
    /// Indexes of links in [`LINK_GROUP`] (see there).
    pub in_our_group: BTreeSet<u32>,
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
        uplink: String,
        uplink_index: u32,
        vid: u16,
        mtu: u32,
        alias: String,
    },
    CreateBridge {
        name: String,
        mtu: u32,
        alias: String,
    },
    SetController {
        name: String,
        controller: String,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    SetAlias {
        name: String,
        alias: String,
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
            | Operation::SetController { name, .. }
            | Operation::SetMtu { name, .. }
            | Operation::SetAlias { name, .. }
            | Operation::Delete { name, .. } => name,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::SetUp { name } => write!(f, "set {name} up"),
            Operation::CreateVlan {
                name,
                uplink,
                vid,
                mtu,
                ..
            } => write!(
                f,
                "create VLAN interface {name} on {uplink} vid {vid} mtu {mtu}"
            ),
            Operation::CreateBridge { name, mtu, .. } => {
                write!(f, "create bridge {name} mtu {mtu}")
            }
            Operation::SetController { name, controller } => {
                write!(f, "attach {name} to bridge {controller}")
            }
            Operation::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            Operation::SetAlias { name, alias } => write!(f, "set {name} alias {alias:?}"),
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
}

impl Plan {
    pub fn steps_for<'a>(&'a self, portgroup: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps.iter().filter(move |s| s.portgroup == portgroup)
    }
}

/// What the ownership mark says of a link, parsed back from the alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub role: String,
    pub portgroup: String,
    pub uplink: String,
    pub vlan: u16,
}

/// Parses an alias made by [`naming::owner_alias`]; None if it is not one.
pub fn parse_mark(alias: &str) -> Option<Mark> {
    let rest = alias.strip_prefix(OWNER_MARK)?;
    let mut words = rest.split_whitespace();
    let role = words.next()?.to_string();
    let portgroup = words.next()?.to_string();
    let mut uplink = None;
    let mut vlan = None;
    for word in words {
        if let Some(v) = word.strip_prefix("uplink=") {
            uplink = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("vlan=") {
            vlan = v.parse().ok();
        }
    }
    Some(Mark {
        role,
        portgroup,
        uplink: uplink?,
        vlan: vlan?,
    })
}

struct View<'a> {
    by_name: HashMap<&'a str, &'a LinkSummary>,
    observed: &'a Observed,
}

impl<'a> View<'a> {
    fn new(observed: &'a Observed) -> Self {
        View {
            by_name: observed
                .links
                .iter()
                .map(|l| (l.name.as_str(), l))
                .collect(),
            observed,
        }
    }

    fn get(&self, name: &str) -> Option<&'a LinkSummary> {
        self.by_name.get(name).copied()
    }

    fn owned(&self, link: &LinkSummary) -> bool {
        naming::is_owned(link.alias.as_deref())
            || (link.alias.as_deref().is_none_or(str::is_empty)
                && self.observed.in_our_group.contains(&link.index))
    }

    fn ports_of(&self, bridge: u32) -> impl Iterator<Item = &'a LinkSummary> + 'a {
        self.observed
            .links
            .iter()
            .filter(move |l| l.controller == Some(bridge))
    }
}

fn not_owned_reason(name: &str) -> String {
    format!("interface {name} exists and is not owned by portgroup; rename or remove it")
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
    let view = View::new(observed);
    let mut plan = Plan::default();
    let uplink_name = config.uplink_for(node);

    let desired_names: HashSet<String> = uplink_name
        .map(|u| {
            config
                .portgroups
                .iter()
                .flat_map(|pg| [bridge_name(u, pg.vlan), vlan_interface_name(u, pg.vlan)])
                .collect()
        })
        .unwrap_or_default();

    let draining = plan_stale(&view, &desired_names, previous, &mut plan);

    let mut uplink_up_planned = false;
    for pg in &config.portgroups {
        let status = match uplink_name {
            None => not_ready_unplaced(pg, node),
            Some(uplink) => {
                plan_portgroup(pg, uplink, node, &view, &mut uplink_up_planned, &mut plan)
            }
        };
        plan.portgroups.push(status);
    }
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

fn not_ready_unplaced(pg: &PortgroupConfig, node: &str) -> PortgroupState {
    PortgroupState {
        name: pg.name.clone(),
        vlan: pg.vlan,
        uplink: String::new(),
        bridge: String::new(),
        vlan_interface: String::new(),
        mtu: pg.mtu,
        ready: false,
        reason: Some(format!(
            "no uplink configured for node {node}: set \"uplink\" or \"nodeUplinks.{node}\""
        )),
        draining: false,
        strict: pg.strict,
        reservations: pg.reservations.clone(),
        policy: pg.policy.clone(),
        allow_router_advertisements: pg.allow_router_advertisements,
        allow_dhcp_server: pg.allow_dhcp_server,
    }
}

/// Owned bridges and VLAN interfaces that no configured portgroup wants: torn down,
/// unless VM ports remain on the bridge; then it drains.
fn plan_stale(
    view: &View<'_>,
    desired: &HashSet<String>,
    previous: Option<&NodeState>,
    plan: &mut Plan,
) -> Vec<PortgroupState> {
    let stale = |l: &&LinkSummary| {
        !desired.contains(&l.name)
            && view.owned(l)
            // Only what the daemon itself makes: a host veth the plugin marked is never ours to remove.
            && (l.is_kind("bridge") || l.is_kind("vlan"))
            && l.alias.as_deref().and_then(parse_mark).is_none_or(|m| {
                (m.role == ROLE_BRIDGE && l.is_kind("bridge"))
                    || (m.role == ROLE_VLAN && l.is_kind("vlan"))
            })
    };
    let mut draining = Vec::new();
    let mut kept_bridges = HashSet::new();
    let mut deletes = Vec::new();
    for bridge in view
        .observed
        .links
        .iter()
        .filter(stale)
        .filter(|l| l.is_kind("bridge"))
    {
        let mark = bridge.alias.as_deref().and_then(parse_mark);
        let pg_name = mark
            .as_ref()
            .map(|m| m.portgroup.clone())
            .unwrap_or_else(|| bridge.name.clone());
        let vm_ports: Vec<&str> = view
            .ports_of(bridge.index)
            .filter(|p| !(p.is_kind("vlan") && view.owned(p)))
            .map(|p| p.name.as_str())
            .collect();
        if vm_ports.is_empty() {
            deletes.push(Step {
                portgroup: pg_name,
                op: Operation::Delete {
                    index: bridge.index,
                    name: bridge.name.clone(),
                },
            });
            continue;
        }
        kept_bridges.insert(bridge.index);
        let before = previous.and_then(|s| s.portgroups.iter().find(|p| p.name == pg_name));
        let vlan_interface = view
            .ports_of(bridge.index)
            .find(|p| p.is_kind("vlan") && view.owned(p))
            .map(|p| p.name.clone())
            .unwrap_or_default();
        draining.push(PortgroupState {
            name: pg_name,
            vlan: mark.as_ref().map(|m| m.vlan).unwrap_or_default(),
            uplink: mark.as_ref().map(|m| m.uplink.clone()).unwrap_or_default(),
            bridge: bridge.name.clone(),
            vlan_interface,
            mtu: Some(bridge.mtu),
            ready: false,
            reason: Some(format!(
                "removed from the config; kept until its last VM port leaves ({} left: {})",
                vm_ports.len(),
                vm_ports.join(", ")
            )),
            draining: true,
            strict: before.is_some_and(|b| b.strict),
            reservations: before.map(|b| b.reservations.clone()).unwrap_or_default(),
            policy: before.map(|b| b.policy.clone()).unwrap_or_default(),
            allow_router_advertisements: before.is_some_and(|b| b.allow_router_advertisements),
            allow_dhcp_server: before.is_some_and(|b| b.allow_dhcp_server),
        });
    }
    for vlan in view
        .observed
        .links
        .iter()
        .filter(stale)
        .filter(|l| l.is_kind("vlan"))
    {
        // The VLAN interface of a draining bridge still carries its VMs' traffic.
        if vlan.controller.is_some_and(|c| kept_bridges.contains(&c)) {
            continue;
        }
        let pg_name = vlan
            .alias
            .as_deref()
            .and_then(parse_mark)
            .map(|m| m.portgroup)
            .unwrap_or_else(|| vlan.name.clone());
        deletes.push(Step {
            portgroup: pg_name,
            op: Operation::Delete {
                index: vlan.index,
                name: vlan.name.clone(),
            },
        });
    }
    plan.steps.extend(deletes);
    draining
}

fn plan_portgroup(
    pg: &PortgroupConfig,
    uplink_name: &str,
    node: &str,
    view: &View<'_>,
    uplink_up_planned: &mut bool,
    plan: &mut Plan,
) -> PortgroupState {
    let bname = bridge_name(uplink_name, pg.vlan);
    let vname = vlan_interface_name(uplink_name, pg.vlan);
    let mut status = PortgroupState {
        name: pg.name.clone(),
        vlan: pg.vlan,
        uplink: uplink_name.to_string(),
        bridge: bname.clone(),
        vlan_interface: vname.clone(),
        mtu: pg.mtu,
        ready: false,
        reason: None,
        draining: false,
        strict: pg.strict,
        reservations: pg.reservations.clone(),
        policy: pg.policy.clone(),
        allow_router_advertisements: pg.allow_router_advertisements,
        allow_dhcp_server: pg.allow_dhcp_server,
    };
    let Some(uplink) = view.get(uplink_name) else {
        status.reason = Some(format!("uplink {uplink_name} not found on node {node}"));
        return status;
    };
    let mtu = pg.mtu.unwrap_or(uplink.mtu);
    status.mtu = Some(mtu);

    let mut problems = Vec::new();
    for name in [&vname, &bname] {
        if let Some(link) = view.get(name) {
            if !view.owned(link) {
                problems.push(not_owned_reason(name));
            }
        }
    }
    // The kernel allows one VLAN interface per (parent, vid): an unowned one blocks ours.
    if let Some(other) = view.observed.links.iter().find(|l| {
        l.is_kind("vlan")
            && l.link == Some(uplink.index)
            && l.link_netns_id.is_none()
            && l.vlan_id == Some(pg.vlan)
            && l.name != vname
            && !view.owned(l)
    }) {
        problems.push(format!(
            "VLAN {} on uplink {uplink_name} is already used by interface {}, which is not owned by portgroup; remove it",
            pg.vlan, other.name
        ));
    }
    if mtu > uplink.mtu {
        problems.push(format!(
            "mtu {mtu} is larger than uplink {uplink_name}'s mtu {}; raise the uplink's MTU or lower the portgroup's",
            uplink.mtu
        ));
    }
    if !problems.is_empty() {
        status.reason = Some(problems.join("; "));
        return status;
    }

    let step = |op| Step {
        portgroup: pg.name.clone(),
        op,
    };
    let mut steps = Vec::new();
    let mut uplink_reason = None;
    if !uplink.admin_up {
        if !*uplink_up_planned {
            steps.push(step(Operation::SetUp {
                name: uplink_name.to_string(),
            }));
            *uplink_up_planned = true;
        }
        uplink_reason = Some(format!("uplink {uplink_name} is down; bringing it up"));
    } else if !uplink.lower_up {
        uplink_reason = Some(format!(
            "uplink {uplink_name} is up but has no carrier (cable, switch port or bond members down)"
        ));
    }

    let vlan_alias = owner_alias(ROLE_VLAN, &pg.name, uplink_name, pg.vlan);
    let bridge_alias = owner_alias(ROLE_BRIDGE, &pg.name, uplink_name, pg.vlan);

    let vlan = view.get(&vname).filter(|l| {
        let right = l.is_kind("vlan")
            && l.vlan_id == Some(pg.vlan)
            && l.link == Some(uplink.index)
            && l.link_netns_id.is_none();
        if !right {
            steps.push(step(Operation::Delete {
                index: l.index,
                name: l.name.clone(),
            }));
        }
        right
    });
    let bridge = view.get(&bname).filter(|l| {
        let right = l.is_kind("bridge");
        if !right {
            steps.push(step(Operation::Delete {
                index: l.index,
                name: l.name.clone(),
            }));
        }
        right
    });

    match vlan {
        None => steps.push(step(Operation::CreateVlan {
            name: vname.clone(),
            uplink: uplink_name.to_string(),
            uplink_index: uplink.index,
            vid: pg.vlan,
            mtu,
            alias: vlan_alias,
        })),
        Some(l) => {
            if l.alias.as_deref() != Some(vlan_alias.as_str()) {
                steps.push(step(Operation::SetAlias {
                    name: vname.clone(),
                    alias: vlan_alias,
                }));
            }
            if l.mtu != mtu {
                steps.push(step(Operation::SetMtu {
                    name: vname.clone(),
                    mtu,
                }));
            }
        }
    }
    match bridge {
        None => steps.push(step(Operation::CreateBridge {
            name: bname.clone(),
            mtu,
            alias: bridge_alias,
        })),
        Some(l) => {
            if l.alias.as_deref() != Some(bridge_alias.as_str()) {
                steps.push(step(Operation::SetAlias {
                    name: bname.clone(),
                    alias: bridge_alias,
                }));
            }
            if l.mtu != mtu {
                steps.push(step(Operation::SetMtu {
                    name: bname.clone(),
                    mtu,
                }));
            }
        }
    }
    let attached = matches!((vlan, bridge), (Some(v), Some(b)) if v.controller == Some(b.index));
    if !attached {
        steps.push(step(Operation::SetController {
            name: vname.clone(),
            controller: bname.clone(),
        }));
    }
    if !vlan.is_some_and(|l| l.admin_up) {
        steps.push(step(Operation::SetUp { name: vname }));
    }
    if !bridge.is_some_and(|l| l.admin_up) {
        steps.push(step(Operation::SetUp { name: bname }));
    }

    let converged = steps.is_empty();
    let pending = steps.len();
    plan.steps.extend(steps);
    match (uplink_reason, converged) {
        (Some(reason), _) => status.reason = Some(reason),
        (None, false) => {
            status.reason = Some(format!("converging: {pending} change(s) pending"));
        }
        (None, true) => status.ready = true,
    }
    status
}

#[cfg(test)]
mod tests;
