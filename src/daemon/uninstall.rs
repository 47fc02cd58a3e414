//! `portgroupd --uninstall`: removes everything portgroup put on a node, and
//! nothing else. Run after the DaemonSet is deleted (a running portgroupd would
//! make its bridges again).
//!
//! What is ours:
//! - links whose alias is exactly a mark portgroupd writes
//!   ([`naming::owner_alias`], reparsed and rendered again, kind and name
//!   checked: a link whose alias merely starts with "portgroup:" is not ours),
//!   and links portgroupd created but had not yet marked (in its link group, no
//!   alias, a bridge or VLAN with a portgroup name);
//! - host veths of VM attachments, by their records (only with `force`);
//! - `table bridge portgroup` (port security);
//! - the CNI plugin binary `<cni-bin-dir>/portgroup`;
//! - the run directory (`/run/portgroup`: node state, per-portgroup files,
//!   attachment records), so that a plugin left behind cannot read stale state.
//!
//! VM ports still on our bridges make it refuse, unless forced: removing a
//! bridge cuts those VMs off.

use std::path::{Path, PathBuf};

use super::applier::Links;
use super::planner::{
    Observed, LINK_GROUP, ROLE_BRIDGE, ROLE_TRUNK, ROLE_TRUNK_FEED, ROLE_TRUNK_PORT,
    ROLE_TRUNK_VLAN, ROLE_VLAN,
};
use crate::attachment::{self, Record};
use crate::naming::parse_mark;
use crate::naming::{
    bridge_name, owner_alias, trunk_bridge_name, trunk_feed_name, trunk_port_name, trunk_vlan_name,
    vlan_interface_name,
};
use crate::netlink::LinkSummary;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLink {
    pub index: u32,
    pub name: String,
    /// "bridge of portgroup prod-web (uplink eth1, vlan 100)", ...
    pub what: String,
}

/// What an uninstall would remove, from one link dump and the attachment records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// Bridges and VLAN interfaces, bridges first (their ports go with them).
    pub links: Vec<OwnedLink>,
    /// Ports on our bridges other than our VLAN interfaces: VM attachments.
    pub vm_ports: Vec<OwnedLink>,
    /// Host veths named by attachment records (deleted only when forced).
    pub attachment_veths: Vec<OwnedLink>,
}

/// The owner of a link, by its mark; None when the link is not ours.
pub fn owned_link(link: &LinkSummary, observed: &Observed) -> Option<OwnedLink> {
    let owned = |what: String| OwnedLink {
        index: link.index,
        name: link.name.clone(),
        what,
    };
    match link.alias.as_deref().filter(|a| !a.is_empty()) {
        Some(alias) => {
            let mark = parse_mark(alias)?;
            // Strict: exactly what portgroupd writes, for a link of that kind and name.
            if owner_alias(&mark.role, &mark.portgroup, &mark.uplink, mark.vlan) != alias {
                return None;
            }
            let (kind, name) = match mark.role.as_str() {
                ROLE_BRIDGE => ("bridge", bridge_name(&mark.uplink, mark.vlan)),
                ROLE_VLAN => ("vlan", vlan_interface_name(&mark.uplink, mark.vlan)),
                ROLE_TRUNK => ("bridge", trunk_bridge_name(&mark.uplink, &mark.portgroup)),
                ROLE_TRUNK_PORT => ("veth", trunk_port_name(&mark.uplink, &mark.portgroup)),
                ROLE_TRUNK_FEED => ("veth", trunk_feed_name(&mark.uplink, &mark.portgroup)),
                ROLE_TRUNK_VLAN => (
                    "vlan",
                    trunk_vlan_name(&mark.uplink, &mark.portgroup, mark.vlan),
                ),
                _ => return None,
            };
            (link.is_kind(kind) && link.name == name).then(|| {
                owned(format!(
                    "{} of portgroup {} (uplink {}, vlan {})",
                    mark.role, mark.portgroup, mark.uplink, mark.vlan
                ))
            })
        }
        // Created (in our group) but not yet marked: portgroupd stopped between the two.
        None => {
            let ours = observed.in_our_group.contains(&link.index)
                && ((link.is_kind("bridge")
                    && (link.name.starts_with("pgbr") || link.name.starts_with("pgtb")))
                    || (link.is_kind("vlan")
                        && (link.name.starts_with("pgv") || link.name.starts_with("pgq")))
                    || (link.is_kind("veth")
                        && (link.name.starts_with("pgtp") || link.name.starts_with("pgtq"))));
            ours.then(|| {
                owned(format!(
                    "unmarked {} in portgroup's link group {LINK_GROUP:#x}",
                    link.kind.as_deref().unwrap_or("link")
                ))
            })
        }
    }
}

pub fn plan_links(observed: &Observed, records: &[Record]) -> LinkPlan {
    let mut plan = LinkPlan::default();
    for link in &observed.links {
        if let Some(owned) = owned_link(link, observed) {
            plan.links.push(owned);
        }
    }
    // Bridges first: deleting one releases its ports.
    let is_bridge = |o: &OwnedLink| {
        observed
            .links
            .iter()
            .any(|l| l.index == o.index && l.is_kind("bridge"))
    };
    plan.links.sort_by_key(|o| (!is_bridge(o), o.name.clone()));
    let bridges: Vec<u32> = observed
        .links
        .iter()
        .filter(|l| l.is_kind("bridge") && plan.links.iter().any(|o| o.index == l.index))
        .map(|l| l.index)
        .collect();
    for link in &observed.links {
        let Some(controller) = link.controller else {
            continue;
        };
        if !bridges.contains(&controller) || plan.links.iter().any(|o| o.index == link.index) {
            continue;
        }
        // An untagged portgroup's uplink is a port of its bridge, not a VM's.
        let uplink_of_bridge = observed
            .links
            .iter()
            .find(|l| l.index == controller)
            .and_then(|l| l.alias.as_deref())
            .and_then(parse_mark)
            .is_some_and(|m| m.uplink == link.name);
        if uplink_of_bridge {
            continue;
        }
        let bridge = observed
            .links
            .iter()
            .find(|l| l.index == controller)
            .map_or_else(|| controller.to_string(), |l| l.name.clone());
        plan.vm_ports.push(OwnedLink {
            index: link.index,
            name: link.name.clone(),
            what: format!("port on {bridge}"),
        });
    }
    for record in records {
        if let Some(link) = observed
            .links
            .iter()
            .find(|l| l.name == record.host_veth && l.is_kind("veth"))
        {
            plan.attachment_veths.push(OwnedLink {
                index: link.index,
                name: link.name.clone(),
                what: format!(
                    "host veth of attachment {}/{} (network {})",
                    record.container_id, record.ifname, record.network
                ),
            });
        }
    }
    plan
}

#[derive(Debug)]
pub struct Options {
    pub run_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub force: bool,
}

#[derive(Debug, Default)]
pub struct Report {
    /// One line per thing removed, for the operator.
    pub removed: Vec<String>,
    pub errors: Vec<String>,
    /// Why nothing was done (VM ports attached, no force).
    pub refused: Option<String>,
}

/// Exit status when refusing (VM ports still attached).
pub const EXIT_REFUSED: i32 = 3;

pub async fn uninstall<L: Links>(links: &L, opts: &Options) -> Report {
    let mut report = Report::default();
    let observed = match links.dump().await {
        Ok(observed) => observed,
        Err(e) => {
            report.errors.push(format!("reading the node's links: {e}"));
            return report;
        }
    };
    let (records, _) = attachment::list(&opts.run_dir.join("attachments"));
    let plan = plan_links(&observed, &records);

    let mut attached: Vec<String> = plan
        .vm_ports
        .iter()
        .map(|p| format!("{} ({})", p.name, p.what))
        .collect();
    for veth in &plan.attachment_veths {
        if !plan.vm_ports.iter().any(|p| p.index == veth.index) {
            attached.push(format!("{} ({})", veth.name, veth.what));
        }
    }
    if !attached.is_empty() && !opts.force {
        report.refused = Some(format!(
            "{} VM port(s) still attached, removing portgroup would cut them off: {}. \
             Stop or move those VMs first, or pass --force",
            attached.len(),
            attached.join(", ")
        ));
        return report;
    }

    if opts.force {
        for veth in &plan.attachment_veths {
            delete(links, veth, &mut report).await;
        }
    }
    for link in &plan.links {
        delete(links, link, &mut report).await;
    }

    match crate::portsec::delete_table() {
        Ok(true) => report
            .removed
            .push(format!("nftables table bridge {}", crate::portsec::TABLE)),
        Ok(false) => {}
        Err(e) => report.errors.push(e.to_string()),
    }
    match crate::portsec::delete_native_guard() {
        Ok(true) => report.removed.push(format!(
            "nftables table bridge {}",
            crate::portsec::GUARD_TABLE
        )),
        Ok(false) => {}
        Err(e) => report.errors.push(e.to_string()),
    }

    let plugin = opts.cni_bin_dir.join("portgroup");
    match std::fs::remove_file(&plugin) {
        Ok(()) => report
            .removed
            .push(format!("CNI plugin {}", plugin.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report
            .errors
            .push(format!("removing {}: {e}", plugin.display())),
    }

    if opts.run_dir.exists() {
        let what = describe_run_dir(&opts.run_dir);
        match std::fs::remove_dir_all(&opts.run_dir) {
            Ok(()) => report
                .removed
                .push(format!("{} ({what})", opts.run_dir.display())),
            Err(e) => report
                .errors
                .push(format!("removing {}: {e}", opts.run_dir.display())),
        }
    }
    report
}

async fn delete<L: Links>(links: &L, link: &OwnedLink, report: &mut Report) {
    match links.delete(link.index).await {
        Ok(()) => report
            .removed
            .push(format!("link {}: {}", link.name, link.what)),
        // A bridge's deletion can take a port with it, or someone was quicker.
        Err(e) if e.is_not_found() => {}
        Err(e) => report
            .errors
            .push(format!("deleting link {} ({}): {e}", link.name, link.what)),
    }
}

fn describe_run_dir(dir: &Path) -> String {
    let count = |sub: &str| {
        std::fs::read_dir(dir.join(sub))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    format!(
        "node state{}, {} portgroup file(s), {} attachment record(s)",
        if dir.join("state.json").exists() {
            ""
        } else {
            " (none)"
        },
        count("portgroups"),
        count("attachments")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: &str, alias: Option<String>) -> LinkSummary {
        LinkSummary {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            alias,
            ..Default::default()
        }
    }

    #[test]
    fn only_exact_marks_of_the_right_kind_and_name_are_ours() {
        let br = bridge_name("eth1", 100);
        let vl = vlan_interface_name("eth1", 100);
        let mark = |role: &str| Some(owner_alias(role, "web", "eth1", 100));
        let cases = [
            (link(1, &br, "bridge", mark(ROLE_BRIDGE)), true),
            (link(2, &vl, "vlan", mark(ROLE_VLAN)), true),
            // Merely starts with the mark.
            (
                link(3, "br0", "bridge", Some("portgroup: hands off".into())),
                false,
            ),
            (link(4, "br1", "bridge", Some("portgroup:".into())), false),
            // A copied mark on a link of another name or kind.
            (link(5, "br2", "bridge", mark(ROLE_BRIDGE)), false),
            (link(6, &br, "vlan", mark(ROLE_BRIDGE)), false),
            // Trailing words, an unknown role.
            (
                link(
                    7,
                    &br,
                    "bridge",
                    Some(format!(
                        "{} extra",
                        owner_alias(ROLE_BRIDGE, "web", "eth1", 100)
                    )),
                ),
                false,
            ),
            (link(8, &br, "bridge", mark("port")), false),
            (link(9, "eth1", "veth", None), false),
        ];
        let observed = Observed {
            links: cases.iter().map(|(l, _)| l.clone()).collect(),
            ..Default::default()
        };
        for (l, ours) in &cases {
            assert_eq!(owned_link(l, &observed).is_some(), *ours, "{l:?}");
        }
    }

    #[test]
    fn unmarked_links_count_only_in_our_group() {
        let br = bridge_name("eth1", 100);
        let mut observed = Observed {
            links: vec![
                link(1, &br, "bridge", None),
                link(2, "pgbrfoo", "veth", None),
            ],
            ..Default::default()
        };
        assert!(owned_link(&observed.links[0], &observed).is_none());
        observed.in_our_group.extend([1, 2]);
        assert!(owned_link(&observed.links[0], &observed).is_some());
        assert!(
            owned_link(&observed.links[1], &observed).is_none(),
            "not a bridge"
        );
    }

    #[test]
    fn vm_ports_are_the_ports_of_our_bridges_that_are_not_ours() {
        let br = bridge_name("eth1", 100);
        let vl = vlan_interface_name("eth1", 100);
        let mut vlan = link(
            2,
            &vl,
            "vlan",
            Some(owner_alias(ROLE_VLAN, "web", "eth1", 100)),
        );
        vlan.controller = Some(1);
        let mut vm = link(3, "pg0123456789ab", "veth", None);
        vm.controller = Some(1);
        let mut elsewhere = link(5, "vethx", "veth", None);
        elsewhere.controller = Some(4);
        let observed = Observed {
            links: vec![
                link(
                    1,
                    &br,
                    "bridge",
                    Some(owner_alias(ROLE_BRIDGE, "web", "eth1", 100)),
                ),
                vlan,
                vm,
                link(4, "br0", "bridge", None),
                elsewhere,
            ],
            ..Default::default()
        };
        let plan = plan_links(&observed, &[]);
        let names: Vec<&str> = plan.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, [br.as_str(), vl.as_str()], "bridge first");
        assert_eq!(plan.vm_ports.len(), 1);
        assert_eq!(plan.vm_ports[0].name, "pg0123456789ab");
        assert_eq!(plan.vm_ports[0].what, format!("port on {br}"));
    }

    #[test]
    fn trunk_and_untagged_links_are_ours_and_the_uplink_is_no_vm_port() {
        let tb = trunk_bridge_name("eth1", "fw");
        let tp = trunk_port_name("eth1", "fw");
        let tq = trunk_feed_name("eth1", "fw");
        let sub = trunk_vlan_name("eth1", "fw", 200);
        let ub = bridge_name("eth2", 0);
        let marked = |index, name: &str, kind, role, uplink, vlan| {
            link(
                index,
                name,
                kind,
                Some(owner_alias(role, "fw", uplink, vlan)),
            )
        };
        let mut port = marked(2, &tp, "veth", ROLE_TRUNK_PORT, "eth1", 0);
        port.controller = Some(1);
        let mut vm = link(5, "pg0123456789ab", "veth", None);
        vm.controller = Some(1);
        let mut uplink = link(7, "eth2", "veth", None);
        uplink.controller = Some(6);
        let observed = Observed {
            links: vec![
                marked(1, &tb, "bridge", ROLE_TRUNK, "eth1", 0),
                port,
                marked(3, &tq, "veth", ROLE_TRUNK_FEED, "eth1", 0),
                marked(4, &sub, "vlan", ROLE_TRUNK_VLAN, "eth1", 200),
                vm,
                link(
                    6,
                    &ub,
                    "bridge",
                    Some(owner_alias(ROLE_BRIDGE, "net", "eth2", 0)),
                ),
                uplink,
                // A trunk mark on a link of another portgroup's name.
                marked(
                    8,
                    &trunk_bridge_name("eth1", "other"),
                    "bridge",
                    ROLE_TRUNK,
                    "eth1",
                    0,
                ),
            ],
            ..Default::default()
        };
        let plan = plan_links(&observed, &[]);
        let mut names: Vec<&str> = plan.links.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        let mut want = [
            tb.as_str(),
            tp.as_str(),
            tq.as_str(),
            sub.as_str(),
            ub.as_str(),
        ];
        want.sort_unstable();
        assert_eq!(names, want);
        let ports: Vec<&str> = plan.vm_ports.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            ports,
            ["pg0123456789ab"],
            "the untagged uplink is not a VM port"
        );
    }
}
