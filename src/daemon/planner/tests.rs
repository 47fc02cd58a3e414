use super::*;
use crate::daemon::applier::apply;
use crate::daemon::fake::{FakeKernel, FakeLinks};
use crate::state::PortgroupMode;
use futures::executor::block_on;

const NODE: &str = "worker-3";

fn config(json: &str) -> NodeConfig {
    NodeConfig::parse(json.as_bytes()).expect("test config is valid")
}

fn two_pgs() -> NodeConfig {
    config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "prod-web", "vlan": 100, "mtu": 1400,
             "reservations": [{"mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24"]}]},
            {"name": "db", "vlan": 200}]}"#,
    )
}

fn nic(index: u32, name: &str, mtu: u32, up: bool) -> LinkSummary {
    LinkSummary {
        index,
        name: name.into(),
        admin_up: up,
        lower_up: up,
        mtu,
        ..Default::default()
    }
}

fn host() -> FakeLinks {
    FakeLinks(RefCell::new(FakeKernel::with(vec![
        nic(1, "lo", 65536, true),
        nic(2, "eth0", 1500, true),
        nic(3, "eth1", 1500, true),
    ])))
}

use std::cell::RefCell;

fn plan_on(links: &FakeLinks, config: &NodeConfig, previous: Option<&NodeState>) -> Plan {
    plan(config, NODE, previous, &links.0.borrow().observed())
}

/// Applies plans until none is needed; returns the number of passes that changed something.
fn converge(links: &FakeLinks, config: &NodeConfig) -> (usize, Plan) {
    for pass in 0..5 {
        let p = plan_on(links, config, None);
        if p.steps.is_empty() {
            return (pass, p);
        }
        let applied = block_on(apply(links, &p.steps));
        assert!(applied.failures.is_empty(), "{:?}", applied.failures);
    }
    panic!(
        "no convergence in 5 passes: {:?}",
        ops(&plan_on(links, config, None))
    );
}

fn status<'a>(p: &'a Plan, name: &str) -> &'a PortgroupState {
    p.portgroups
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name} in {:?}", p.portgroups))
}

fn ops(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.op.to_string()).collect()
}

fn kinds(p: &Plan) -> Vec<&'static str> {
    p.steps
        .iter()
        .map(|s| match s.op {
            Operation::SetUp { .. } => "up",
            Operation::CreateVlan { .. } => "create-vlan",
            Operation::CreateBridge { .. } => "create-bridge",
            Operation::CreateVeth { .. } => "create-veth",
            Operation::SetController { .. } => "controller",
            Operation::ReleaseController { .. } => "release",
            Operation::SetMtu { .. } => "mtu",
            Operation::SetAlias { .. } => "alias",
            Operation::SetAddress { .. } => "address",
            Operation::Delete { .. } => "delete",
        })
        .collect()
}

#[test]
fn create_from_nothing_then_idempotent() {
    let links = host();
    let cfg = two_pgs();
    let first = plan_on(&links, &cfg, None);
    assert_eq!(
        kinds(&first),
        [
            "create-vlan",
            "create-bridge",
            "controller", // prod-web
            "create-vlan",
            "create-bridge",
            "controller", // db
            "up",
            "up",
            "up",
            "up", // every link up last
        ]
    );
    assert!(first.portgroups.iter().all(|s| !s.ready));
    match &first.steps[0].op {
        Operation::CreateVlan {
            name,
            parent_index,
            vid,
            mtu,
            alias,
            ..
        } => {
            assert_eq!(name, &vlan_interface_name("eth1", 100));
            assert_eq!((*parent_index, *vid, *mtu), (Some(3), 100, 1400));
            assert_eq!(alias, &owner_alias("vlan", "prod-web", "eth1", 100));
        }
        other => panic!("{other:?}"),
    }
    let (passes, last) = converge(&links, &cfg);
    assert_eq!(passes, 1, "one pass must be enough");
    assert!(last.steps.is_empty());
    let web = status(&last, "prod-web");
    assert!(web.ready, "{web:?}");
    assert_eq!(web.reason, None);
    assert_eq!(web.bridge, bridge_name("eth1", 100));
    assert_eq!(web.mtu, Some(1400));
    assert_eq!(web.reservations.len(), 1);
    // db has no mtu: the uplink's.
    assert_eq!(status(&last, "db").mtu, Some(1500));
    let k = links.0.borrow();
    let br = k.get(&bridge_name("eth1", 200)).expect("bridge");
    let vl = k.get(&vlan_interface_name("eth1", 200)).expect("vlan");
    assert_eq!(vl.controller, Some(br.index));
    assert!(naming::is_owned(br.alias.as_deref()) && naming::is_owned(vl.alias.as_deref()));
}

#[test]
fn repair_after_deletion() {
    let cfg = two_pgs();
    type Case = (&'static str, fn(u16) -> String, &'static [&'static str]);
    let cases: &[Case] = &[
        (
            "bridge deleted",
            |v| bridge_name("eth1", v),
            &["create-bridge", "controller", "up"],
        ),
        (
            "vlan deleted",
            |v| vlan_interface_name("eth1", v),
            &["create-vlan", "controller", "up"],
        ),
    ];
    for (what, name, want) in cases {
        let links = host();
        converge(&links, &cfg);
        links.0.borrow_mut().remove(&name(100));
        let p = plan_on(&links, &cfg, None);
        assert_eq!(kinds(&p), *want, "{what}: {:?}", ops(&p));
        assert!(p.steps.iter().all(|s| s.portgroup == "prod-web"), "{what}");
        assert!(status(&p, "db").ready, "{what}: db is untouched");
        assert_eq!(converge(&links, &cfg).0, 1, "{what}");
    }
}

#[test]
fn uplink_down_is_brought_up_and_reported() {
    let links = host();
    links.0.borrow_mut().links[2].admin_up = false;
    links.0.borrow_mut().links[2].lower_up = false;
    let cfg = two_pgs();
    let p = plan_on(&links, &cfg, None);
    let ups: Vec<_> = ops(&p).into_iter().filter(|o| o == "set eth1 up").collect();
    assert_eq!(ups.len(), 1, "the uplink is brought up once: {:?}", ops(&p));
    for s in &p.portgroups {
        assert!(!s.ready);
        assert!(s.reason.as_deref().unwrap().contains("uplink eth1 is down"));
    }
    converge(&links, &cfg);
    // Up but no carrier: reported, nothing to do.
    links.0.borrow_mut().links[2].lower_up = false;
    let p = plan_on(&links, &cfg, None);
    assert!(p.steps.is_empty());
    assert!(status(&p, "db")
        .reason
        .as_deref()
        .unwrap()
        .contains("no carrier"));
}

#[test]
fn not_ready_without_touching_anything() {
    let unmarked_bridge = LinkSummary {
        index: 9,
        name: bridge_name("eth1", 100),
        kind: Some("bridge".into()),
        alias: Some("made by hand".into()),
        mtu: 1500,
        ..Default::default()
    };
    let unmarked_vlan = LinkSummary {
        index: 10,
        name: "eth1.200".into(),
        kind: Some("vlan".into()),
        link: Some(3),
        vlan_id: Some(200),
        mtu: 1500,
        ..Default::default()
    };
    type Case = (
        &'static str,
        Vec<LinkSummary>,
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "uplink missing",
            vec![nic(2, "eth0", 1500, true)],
            r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#,
            "web",
            "uplink eth1 not found on node worker-3",
        ),
        (
            "unmarked colliding bridge",
            vec![nic(3, "eth1", 1500, true), unmarked_bridge.clone()],
            r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#,
            "web",
            "exists and is not owned by portgroup; rename or remove it",
        ),
        (
            "unmarked VLAN with the same vid",
            vec![nic(3, "eth1", 1500, true), unmarked_vlan],
            r#"{"uplink": "eth1", "portgroups": [{"name": "db", "vlan": 200}]}"#,
            "db",
            "VLAN 200 on uplink eth1 is already used by interface eth1.200",
        ),
        (
            "mtu above the uplink's",
            vec![nic(3, "eth1", 1500, true)],
            r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100, "mtu": 9000}]}"#,
            "web",
            "mtu 9000 is larger than uplink eth1's mtu 1500",
        ),
        (
            "no uplink for this node",
            vec![nic(3, "eth1", 1500, true)],
            r#"{"nodeUplinks": {"worker-1": "eth1"}, "portgroups": [{"name": "web", "vlan": 100}]}"#,
            "web",
            "no uplink configured for node worker-3",
        ),
    ];
    for (what, links, cfg, pg, want) in cases {
        let observed = Observed {
            links,
            ..Default::default()
        };
        let p = plan(&config(cfg), NODE, None, &observed);
        assert!(p.steps.is_empty(), "{what}: {:?}", ops(&p));
        let s = status(&p, pg);
        assert!(!s.ready, "{what}");
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(want), "{what}: {reason}");
    }
    // The collision reason names the link.
    let observed = Observed {
        links: vec![nic(3, "eth1", 1500, true), unmarked_bridge],
        ..Default::default()
    };
    let cfg = config(r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#);
    let reason = plan(&cfg, NODE, None, &observed).portgroups[0]
        .reason
        .clone()
        .unwrap_or_default();
    assert!(
        reason.starts_with(&format!("interface {} exists", bridge_name("eth1", 100))),
        "{reason}"
    );
}

#[test]
fn unmarked_links_are_never_changed_or_deleted() {
    // Every name the daemon could want, taken by unowned links in every odd state.
    let links = host();
    let cfg = two_pgs();
    {
        let mut k = links.0.borrow_mut();
        for (i, name) in [
            bridge_name("eth1", 100),
            vlan_interface_name("eth1", 200),
            bridge_name("eth9", 300),
        ]
        .into_iter()
        .enumerate()
        {
            k.links.push(LinkSummary {
                index: 50 + i as u32,
                name,
                kind: Some("bridge".into()),
                mtu: 9000,
                ..Default::default()
            });
        }
    }
    let p = plan_on(&links, &cfg, None);
    assert!(p.steps.is_empty(), "{:?}", ops(&p));
    assert!(p.portgroups.iter().all(|s| !s.ready));
}

/// An alias that only starts like a mark is an admin's: the link is neither
/// changed, nor remade, nor deleted as stale, whatever its name and kind.
#[test]
fn links_whose_alias_only_looks_like_a_mark_are_left_alone() {
    let links = host();
    let cfg = two_pgs();
    let admin = [
        // Our bridge's name, right kind: would be re-marked and resized.
        (bridge_name("eth1", 100), "portgroup: reserved"),
        // Our VLAN interface's name on a bridge: would be deleted as the wrong kind.
        (vlan_interface_name("eth1", 200), "portgroup: reserved"),
        // Not wanted, and the words parse, but not as the daemon writes them:
        // would be torn down as a stale portgroup's.
        (
            bridge_name("eth1", 300),
            "portgroup:bridge old uplink=eth1 vlan=300 (kept by the network team)",
        ),
        // Not wanted, in our link group, but with an alias of its own.
        (bridge_name("eth1", 400), "portgroup: reserved"),
    ];
    {
        let mut k = links.0.borrow_mut();
        for (i, (name, alias)) in admin.iter().enumerate() {
            let index = 60 + i as u32;
            k.links.push(LinkSummary {
                index,
                name: name.clone(),
                kind: Some("bridge".into()),
                alias: Some(alias.to_string()),
                admin_up: true,
                mtu: 9000,
                ..Default::default()
            });
            k.group.insert(index);
        }
    }
    let p = plan_on(&links, &cfg, None);
    for step in &p.steps {
        let name = step.op.link_name();
        assert!(
            admin.iter().all(|(n, _)| n != name),
            "touches an admin's link: {}",
            step.op
        );
    }
    assert!(p.portgroups.iter().all(|s| !s.ready && !s.draining));
    assert_eq!(
        status(&p, "prod-web").reason.as_deref(),
        Some(not_owned_reason(&bridge_name("eth1", 100)).as_str())
    );
}

#[test]
fn node_uplinks_override() {
    let links = host();
    links.0.borrow_mut().links.push(nic(7, "bond0", 9000, true));
    let cfg = config(
        r#"{"uplink": "eth1", "nodeUplinks": {"worker-3": "bond0"},
            "portgroups": [{"name": "web", "vlan": 100}]}"#,
    );
    let (_, p) = converge(&links, &cfg);
    let web = status(&p, "web");
    assert!(web.ready);
    assert_eq!(web.uplink, "bond0");
    assert_eq!(web.bridge, bridge_name("bond0", 100));
    assert_eq!(web.mtu, Some(9000));
    let k = links.0.borrow();
    assert_eq!(
        k.get(&vlan_interface_name("bond0", 100)).unwrap().link,
        Some(7)
    );
    assert!(k.get(&bridge_name("eth1", 100)).is_none());
}

#[test]
fn mtu_changes() {
    let links = host();
    converge(&links, &two_pgs());
    let lower = config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "prod-web", "vlan": 100, "mtu": 1300}, {"name": "db", "vlan": 200}]}"#,
    );
    let p = plan_on(&links, &lower, None);
    assert_eq!(
        ops(&p),
        [
            format!("set {} mtu 1300", vlan_interface_name("eth1", 100)),
            format!("set {} mtu 1300", bridge_name("eth1", 100)),
        ]
    );
    assert_eq!(converge(&links, &lower).0, 1);
    // A portgroup without mtu follows the uplink's.
    links.0.borrow_mut().links[2].mtu = 1450;
    let p = plan_on(&links, &lower, None);
    assert_eq!(kinds(&p), ["mtu", "mtu"]);
    assert!(p.steps.iter().all(|s| s.portgroup == "db"));
}

#[test]
fn wrong_owned_links_are_recreated() {
    let cfg = config(r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#);
    let alias = |role| Some(owner_alias(role, "web", "eth1", 100));
    let cases: Vec<(&str, LinkSummary)> = vec![
        (
            "vlan with the wrong vid",
            LinkSummary {
                index: 20,
                name: vlan_interface_name("eth1", 100),
                kind: Some("vlan".into()),
                vlan_id: Some(101),
                link: Some(3),
                alias: alias("vlan"),
                mtu: 1500,
                ..Default::default()
            },
        ),
        (
            "vlan on the wrong parent",
            LinkSummary {
                index: 20,
                name: vlan_interface_name("eth1", 100),
                kind: Some("vlan".into()),
                vlan_id: Some(100),
                link: Some(2),
                alias: alias("vlan"),
                mtu: 1500,
                ..Default::default()
            },
        ),
        (
            "bridge that is not a bridge",
            LinkSummary {
                index: 20,
                name: bridge_name("eth1", 100),
                kind: Some("veth".into()),
                alias: alias("bridge"),
                mtu: 1500,
                ..Default::default()
            },
        ),
    ];
    for (what, link) in cases {
        let links = host();
        links.0.borrow_mut().links.push(link);
        let p = plan_on(&links, &cfg, None);
        assert_eq!(
            p.steps.first().map(|s| &s.op),
            Some(&Operation::Delete {
                index: 20,
                name: p.steps[0].op.link_name().to_string()
            }),
            "{what}: {:?}",
            ops(&p)
        );
        assert_eq!(converge(&links, &cfg).0, 1, "{what}");
    }
}

#[test]
fn half_made_link_is_finished_not_refused() {
    // Killed between creating the bridge and marking it: no alias, our group.
    let links = host();
    let cfg = config(r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#);
    {
        let mut k = links.0.borrow_mut();
        k.links.push(LinkSummary {
            index: 30,
            name: bridge_name("eth1", 100),
            kind: Some("bridge".into()),
            mtu: 1500,
            ..Default::default()
        });
        k.group.insert(30);
    }
    let p = plan_on(&links, &cfg, None);
    assert!(kinds(&p).contains(&"alias"), "{:?}", ops(&p));
    assert!(!kinds(&p).contains(&"create-bridge"));
    assert_eq!(converge(&links, &cfg).0, 1);
    // The same link without our group is someone else's.
    links.0.borrow_mut().group.clear();
    links.0.borrow_mut().links.iter_mut().for_each(|l| {
        if l.index == 30 {
            l.alias = None;
        }
    });
    let p = plan_on(&links, &cfg, None);
    assert!(!status(&p, "web").ready);
}

#[test]
fn removed_portgroup_drains_then_goes() {
    let links = host();
    converge(&links, &two_pgs());
    let db_bridge = links
        .0
        .borrow()
        .get(&bridge_name("eth1", 200))
        .unwrap()
        .index;
    links.0.borrow_mut().links.push(LinkSummary {
        index: 99,
        name: "pg0123456789ab".into(),
        kind: Some("veth".into()),
        controller: Some(db_bridge),
        // A port the plugin marked: still a VM port, never ours to delete.
        alias: Some("portgroup:port db".into()),
        mtu: 1500,
        ..Default::default()
    });
    let previous = NodeState {
        node: NODE.into(),
        generation: 1,
        reconciled_at: String::new(),
        config_errors: vec![],
        allowed_bridges: None,
        portgroups: vec![PortgroupState {
            strict: true,
            reservations: two_pgs().portgroups[0].reservations.clone(),
            ..plan_on(&links, &two_pgs(), None).portgroups[1].clone()
        }],
    };
    let only_web = config(
        r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100, "mtu": 1400}]}"#,
    );
    let p = plan_on(&links, &only_web, Some(&previous));
    assert!(
        p.steps.is_empty(),
        "nothing goes while a VM is on it: {:?}",
        ops(&p)
    );
    let db = status(&p, "db");
    assert!(db.draining && !db.ready);
    assert_eq!(db.vlan, Some(200));
    assert_eq!(db.bridge, bridge_name("eth1", 200));
    assert_eq!(db.vlan_interface, vlan_interface_name("eth1", 200));
    assert!(
        db.strict && db.reservations.len() == 1,
        "kept from the previous state"
    );
    assert!(db.reason.as_deref().unwrap().contains("pg0123456789ab"));

    links.0.borrow_mut().remove("pg0123456789ab");
    let p = plan_on(&links, &only_web, Some(&previous));
    assert_eq!(kinds(&p), ["delete", "delete"]);
    assert_eq!(p.portgroups.len(), 1);
    converge(&links, &only_web);
    let k = links.0.borrow();
    assert!(k.get(&bridge_name("eth1", 200)).is_none());
    assert!(k.get(&vlan_interface_name("eth1", 200)).is_none());
    assert!(k.get(&bridge_name("eth1", 100)).is_some());
}

#[test]
fn applier_goes_on_past_failures() {
    let links = host();
    links.0.borrow_mut().no_8021q = true;
    let cfg = two_pgs();
    let p = plan_on(&links, &cfg, None);
    let applied = block_on(apply(&links, &p.steps));
    let failed: Vec<_> = applied
        .failures
        .iter()
        .map(|f| f.portgroup.as_str())
        .collect();
    // One failure per portgroup: attaching and raising the missing VLAN is not even tried.
    assert_eq!(failed, ["prod-web", "db"]);
    assert!(applied.failures[0]
        .message
        .contains("Operation not supported"));
    assert!(applied.failures[0].message.contains("8021q"));
    assert_eq!(applied.done, 4, "both bridges made and up");
    assert!(links.0.borrow().get(&bridge_name("eth1", 200)).is_some());
}

// Trunk and untagged portgroups.

use crate::naming::{
    trunk_bridge_name, trunk_feed_name, trunk_port_name, trunk_vlan_name, untagged_bridge_name,
};

/// An access portgroup on 100 and a trunk over 100-110 and 200, the trunk listed
/// first: the shared path of VLAN 100 is still the access portgroup's.
fn access_and_trunk() -> NodeConfig {
    config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "fw", "trunk": "100-110,200"},
            {"name": "web", "vlan": 100}]}"#,
    )
}

fn link(links: &FakeLinks, name: &str) -> LinkSummary {
    links
        .0
        .borrow()
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// Every VID of the trunk has its sub-interface on the feed, in its VID's bridge.
fn assert_trunk_whole(links: &FakeLinks, pg: &str, vids: &[u16]) {
    let tb = link(links, &trunk_bridge_name("eth1", pg));
    let tp = link(links, &trunk_port_name("eth1", pg));
    let tq = link(links, &trunk_feed_name("eth1", pg));
    assert_eq!(tp.controller, Some(tb.index));
    assert_eq!((tp.link, tq.link), (Some(tq.index), Some(tp.index)));
    for l in [&tb, &tp, &tq] {
        assert!(l.admin_up && naming::is_owned(l.alias.as_deref()), "{l:?}");
    }
    for vid in vids {
        let sub = link(links, &trunk_vlan_name("eth1", pg, *vid));
        let path = link(links, &bridge_name("eth1", *vid));
        let up = link(links, &vlan_interface_name("eth1", *vid));
        assert_eq!((sub.link, sub.vlan_id), (Some(tq.index), Some(*vid)));
        assert_eq!(sub.controller, Some(path.index), "VLAN {vid}");
        assert_eq!(up.controller, Some(path.index), "VLAN {vid}");
        assert!(sub.admin_up && naming::is_owned(sub.alias.as_deref()));
    }
}

#[test]
fn trunk_is_made_in_one_pass_then_idempotent() {
    let links = host();
    let cfg = access_and_trunk();
    let first = plan_on(&links, &cfg, None);
    assert!(first.portgroups.iter().all(|s| !s.ready));
    let (passes, last) = converge(&links, &cfg);
    assert_eq!(passes, 1, "one pass must be enough");
    assert!(last.steps.is_empty());
    let vids: Vec<u16> = (100..=110).chain([200]).collect();
    assert_trunk_whole(&links, "fw", &vids);
    let fw = status(&last, "fw");
    assert!(fw.ready, "{fw:?}");
    assert_eq!(fw.mode, PortgroupMode::Trunk);
    assert_eq!(
        (fw.vlan, fw.trunk.as_deref(), fw.native_vlan),
        (None, Some("100-110,200"), None)
    );
    assert_eq!(fw.bridge, trunk_bridge_name("eth1", "fw"));
    assert!(status(&last, "web").ready);
    // The shared VLAN 100 path is the access portgroup's; 200 is the trunk's own.
    let alias = |name: &str| link(&links, name).alias.unwrap_or_default();
    assert_eq!(
        alias(&bridge_name("eth1", 100)),
        owner_alias("bridge", "web", "eth1", 100)
    );
    assert_eq!(
        alias(&bridge_name("eth1", 200)),
        owner_alias("bridge", "fw", "eth1", 200)
    );
    // One path per VID, not one per user.
    let k = links.0.borrow();
    let paths = k.links.iter().filter(|l| l.name.starts_with("pgv")).count();
    assert_eq!(paths, 12);
}

#[test]
fn trunk_drift_of_one_vid_is_repaired_and_readiness_follows() {
    type Case = (&'static str, String, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            "the trunk's sub-interface of VID 105",
            trunk_vlan_name("eth1", "fw", 105),
            &["create-vlan", "controller", "up"],
        ),
        (
            "the uplink sub-interface of VID 200 (the trunk's own path)",
            vlan_interface_name("eth1", 200),
            &["create-vlan", "controller", "up"],
        ),
        (
            "the bridge of VID 107 (the trunk's sub-interface is freed)",
            bridge_name("eth1", 107),
            &["create-bridge", "controller", "controller", "up"],
        ),
    ];
    for (what, name, want) in cases {
        let links = host();
        let cfg = access_and_trunk();
        converge(&links, &cfg);
        links.0.borrow_mut().remove(&name);
        let p = plan_on(&links, &cfg, None);
        assert_eq!(kinds(&p), want, "{what}: {:?}", ops(&p));
        let fw = status(&p, "fw");
        assert!(
            !fw.ready,
            "{what}: the trunk is not ready while a VID is missing"
        );
        assert!(
            fw.reason
                .as_deref()
                .unwrap_or_default()
                .contains("converging"),
            "{what}: {fw:?}"
        );
        assert!(status(&p, "web").ready, "{what}: web is untouched");
        let (passes, last) = converge(&links, &cfg);
        assert_eq!(passes, 1, "{what}");
        assert!(status(&last, "fw").ready, "{what}");
        assert_trunk_whole(&links, "fw", &[100, 105, 107, 110, 200]);
    }
}

#[test]
fn trunk_is_not_ready_while_one_vid_path_is_blocked() {
    let links = host();
    // An admin's own VLAN 200 interface on the uplink: the path cannot be made.
    links.0.borrow_mut().links.push(LinkSummary {
        index: 40,
        name: "eth1.200".into(),
        kind: Some("vlan".into()),
        link: Some(3),
        vlan_id: Some(200),
        mtu: 1500,
        ..Default::default()
    });
    let cfg = access_and_trunk();
    let (_, p) = converge(&links, &cfg);
    let fw = status(&p, "fw");
    assert!(!fw.ready);
    assert_eq!(
        fw.reason.as_deref(),
        Some("VLAN 200: VLAN 200 on uplink eth1 is already used by interface eth1.200, which is not owned by portgroup; remove it")
    );
    assert!(status(&p, "web").ready);
    let k = links.0.borrow();
    assert!(k.get(&trunk_vlan_name("eth1", "fw", 200)).is_none());
    assert!(k.get(&trunk_vlan_name("eth1", "fw", 110)).is_some());
    assert!(k.get("eth1.200").is_some_and(|l| l.controller.is_none()));
}

#[test]
fn trunk_vid_list_changes_and_native_vlan() {
    let links = host();
    converge(&links, &access_and_trunk());
    let bridge_before = link(&links, &trunk_bridge_name("eth1", "fw")).index;
    // Fewer VIDs and a native VLAN: the other sub-interfaces go, and the paths
    // nobody else uses; the trunk's bridge (and its VM ports) stays.
    let fewer = config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "fw", "trunk": "100,200", "nativeVlan": 300},
            {"name": "web", "vlan": 100}]}"#,
    );
    let (passes, p) = converge(&links, &fewer);
    assert_eq!(passes, 1);
    assert!(status(&p, "fw").ready, "{:?}", status(&p, "fw"));
    assert_eq!(status(&p, "fw").native_vlan, Some(300));
    assert_eq!(
        link(&links, &trunk_bridge_name("eth1", "fw")).index,
        bridge_before
    );
    assert_trunk_whole(&links, "fw", &[100, 200]);
    {
        let k = links.0.borrow();
        for vid in 101..=110 {
            assert!(k.get(&trunk_vlan_name("eth1", "fw", vid)).is_none());
            assert!(k.get(&bridge_name("eth1", vid)).is_none());
            assert!(k.get(&vlan_interface_name("eth1", vid)).is_none());
        }
    }
    // Untagged frames of the trunk's VMs: into VLAN 300's bridge.
    let feed = link(&links, &trunk_feed_name("eth1", "fw"));
    assert_eq!(
        feed.controller,
        Some(link(&links, &bridge_name("eth1", 300)).index)
    );
    // Without the native VLAN, the feed leaves that bridge (and the path goes).
    let no_native = config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "fw", "trunk": "100,200"}, {"name": "web", "vlan": 100}]}"#,
    );
    let p = plan_on(&links, &no_native, None);
    assert!(kinds(&p).contains(&"release"), "{:?}", ops(&p));
    converge(&links, &no_native);
    assert_eq!(
        link(&links, &trunk_feed_name("eth1", "fw")).controller,
        None
    );
    assert!(links.0.borrow().get(&bridge_name("eth1", 300)).is_none());
}

#[test]
fn removed_trunk_drains_with_its_paths_then_goes() {
    let links = host();
    converge(&links, &access_and_trunk());
    let tb = link(&links, &trunk_bridge_name("eth1", "fw")).index;
    links.0.borrow_mut().links.push(LinkSummary {
        index: 99,
        name: "pg0123456789ab".into(),
        kind: Some("veth".into()),
        controller: Some(tb),
        mtu: 1500,
        ..Default::default()
    });
    let previous = NodeState {
        node: NODE.into(),
        generation: 1,
        reconciled_at: String::new(),
        config_errors: vec![],
        allowed_bridges: None,
        portgroups: plan_on(&links, &access_and_trunk(), None).portgroups,
    };
    let only_web = config(r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#);
    let p = plan_on(&links, &only_web, Some(&previous));
    assert!(
        p.steps.is_empty(),
        "nothing of the trunk's goes while a VM is on it: {:?}",
        ops(&p)
    );
    let fw = status(&p, "fw");
    assert!(fw.draining && !fw.ready);
    assert_eq!(fw.mode, PortgroupMode::Trunk);
    assert_eq!(fw.trunk.as_deref(), Some("100-110,200"));
    assert!(fw
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("pg0123456789ab"));

    links.0.borrow_mut().remove("pg0123456789ab");
    let (_, p) = converge(&links, &only_web);
    assert_eq!(p.portgroups.len(), 1);
    let k = links.0.borrow();
    let left: Vec<&str> = k
        .links
        .iter()
        .filter(|l| l.name.starts_with("pg"))
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(left.len(), 2, "only web's path is left: {left:?}");
    assert!(k.get(&bridge_name("eth1", 100)).is_some());
}

#[test]
fn trunk_names_taken_by_others_are_left_alone() {
    let links = host();
    links.0.borrow_mut().links.push(LinkSummary {
        index: 41,
        name: trunk_feed_name("eth1", "fw"),
        kind: Some("veth".into()),
        mtu: 1500,
        ..Default::default()
    });
    let cfg = access_and_trunk();
    let p = plan_on(&links, &cfg, None);
    // The trunk's VLAN paths may be made; nothing of the trunk's own is.
    assert!(
        ops(&p)
            .iter()
            .all(|o| !o.contains("pgt") && !o.contains("pgq")),
        "{:?}",
        ops(&p)
    );
    let fw = status(&p, "fw");
    assert!(!fw.ready);
    assert_eq!(
        fw.reason.as_deref(),
        Some(not_owned_reason(&trunk_feed_name("eth1", "fw")).as_str())
    );
    assert!(converge(&links, &cfg).1.portgroups[1].ready, "web is made");
}

fn untagged_host() -> FakeLinks {
    FakeLinks(RefCell::new(FakeKernel::with(vec![
        nic(1, "lo", 65536, true),
        nic(2, "eth0", 1500, true),
        nic(3, "eth1", 1500, true),
        nic(4, "eth2", 1500, true),
    ])))
}

#[test]
fn untagged_portgroup_bridges_its_own_uplink() {
    let links = untagged_host();
    let cfg = config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "vm-network", "untagged": true, "uplink": "eth2"},
            {"name": "web", "vlan": 100}]}"#,
    );
    let (passes, p) = converge(&links, &cfg);
    assert_eq!(passes, 1);
    let net = status(&p, "vm-network");
    assert!(net.ready, "{net:?}");
    assert_eq!(net.mode, PortgroupMode::Untagged);
    assert_eq!((net.vlan, net.uplink.as_str()), (None, "eth2"));
    assert_eq!(net.bridge, untagged_bridge_name("eth2"));
    let bridge = link(&links, &untagged_bridge_name("eth2"));
    assert_eq!(link(&links, "eth2").controller, Some(bridge.index));
    assert_eq!(
        bridge.alias.as_deref(),
        Some(owner_alias("bridge", "vm-network", "eth2", 0).as_str())
    );
    // The web portgroup stays on the node's uplink.
    assert_eq!(status(&p, "web").uplink, "eth1");

    // Drift: the uplink taken out of the bridge is put back.
    links.0.borrow_mut().links[3].controller = None;
    assert_eq!(kinds(&plan_on(&links, &cfg, None)), ["controller"]);
    assert_eq!(converge(&links, &cfg).0, 1);

    // Removed from the config: the bridge goes, which frees the uplink.
    let without = config(r#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#);
    converge(&links, &without);
    assert!(links
        .0
        .borrow()
        .get(&untagged_bridge_name("eth2"))
        .is_none());
    assert_eq!(link(&links, "eth2").controller, None);
}

#[test]
fn untagged_portgroup_is_refused_on_an_uplink_it_cannot_take() {
    let cfg = config(
        r#"{"uplink": "eth1", "portgroups": [{"name": "vm-network", "untagged": true, "uplink": "eth2"}]}"#,
    );
    type Case = (&'static str, fn(&mut FakeKernel), &'static str);
    let cases: &[Case] = &[
        (
            "the uplink holds an address",
            |k| {
                k.addresses
                    .insert(4, vec!["192.0.2.5/24".into(), "2001:db8::5/64".into()]);
            },
            "uplink eth2 holds IP addresses (192.0.2.5/24, 2001:db8::5/64): an untagged portgroup makes it a bridge port, which would cut the node's own traffic over it",
        ),
        (
            "the uplink is someone else's bridge port",
            |k| {
                k.links.push(LinkSummary {
                    index: 50,
                    name: "br0".into(),
                    kind: Some("bridge".into()),
                    mtu: 1500,
                    ..Default::default()
                });
                k.links[3].controller = Some(50);
            },
            "uplink eth2 is already a port of br0",
        ),
        (
            "the uplink is a bridge",
            |k| k.links[3].kind = Some("bridge".into()),
            "uplink eth2 is a bridge",
        ),
    ];
    for (what, setup, want) in cases {
        let links = untagged_host();
        setup(&mut links.0.borrow_mut());
        let p = plan_on(&links, &cfg, None);
        assert!(p.steps.is_empty(), "{what}: {:?}", ops(&p));
        let s = status(&p, "vm-network");
        assert!(!s.ready, "{what}");
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with(want), "{what}: {reason}");
    }
    // Once the addresses are gone, it is made.
    let links = untagged_host();
    links
        .0
        .borrow_mut()
        .addresses
        .insert(4, vec!["192.0.2.5/24".into()]);
    assert!(!converge(&links, &cfg).1.portgroups[0].ready);
    links.0.borrow_mut().addresses.clear();
    assert!(converge(&links, &cfg).1.portgroups[0].ready);
}

#[test]
fn a_trunk_of_2000_vids_converges_in_one_pass() {
    let links = host();
    let cfg = config(r#"{"uplink": "eth1", "portgroups": [{"name": "fw", "trunk": "1-2000"}]}"#);
    let (passes, p) = converge(&links, &cfg);
    assert_eq!(passes, 1);
    assert!(p.portgroups[0].ready);
    let k = links.0.borrow();
    // 2000 paths (2 links each), 2000 sub-interfaces, the bridge and the pair.
    assert_eq!(
        k.links.iter().filter(|l| l.name.starts_with("pg")).count(),
        6003
    );
}

/// Requests to the kernel for a trunk made from nothing, counted where a
/// stopwatch would flake. Per VID the `ip -batch` floor sends 8 netlink
/// requests (three creates, two attaches, three ups); the applier 9: the bridge
/// (create; MTU and mark in one), the uplink's and the feed's sub-interfaces
/// (each created attached, then marked by name), three ups, last. Each link's
/// index is looked up once, with SIOCGIFINDEX (an ioctl, as `ip` does), not an
/// RTM_GETLINK.
#[test]
fn applying_a_trunk_costs_nine_requests_per_vid() {
    let links = host();
    let cfg = config(r#"{"uplink": "eth1", "portgroups": [{"name": "fw", "trunk": "1-100"}]}"#);
    let p = plan_on(&links, &cfg, None);
    links.0.borrow_mut().calls.clear();
    let applied = block_on(apply(&links, &p.steps));
    assert!(applied.failures.is_empty(), "{:?}", applied.failures);
    assert_eq!(
        applied.done,
        p.steps.len(),
        "every step done, some by a creation"
    );
    let k = links.0.borrow();
    let count = |prefix: &str| k.calls.iter().filter(|c| c.starts_with(prefix)).count();
    // 100 paths of two links, 100 sub-interfaces, the bridge and the pair: once each.
    assert_eq!(count("index_of"), 303);
    assert_eq!(count("set_controller"), 0, "attached as they are made");
    assert_eq!(count("set_up"), 303, "every link made, last");
    let requests = k.calls.len() - count("index_of");
    // The trunk's bridge (made and raised as a path's bridge) and its pair
    // (created, both ends marked and raised).
    assert_eq!(requests, 9 * 100 + 3 + 5);
}

/// The feed joins the native VLAN's bridge only behind the guard that keeps
/// tagged frames off it: without the guard the feed leaves that bridge (or never
/// joins it) and the trunk says why; with it back, the feed joins again.
#[test]
fn native_vlan_waits_for_the_guard() {
    let links = host();
    let native = config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "fw", "trunk": "100,200", "nativeVlan": 300}]}"#,
    );
    converge(&links, &native);
    let feed = trunk_feed_name("eth1", "fw");
    let native_bridge = link(&links, &bridge_name("eth1", 300)).index;
    assert_eq!(link(&links, &feed).controller, Some(native_bridge));

    let unguarded = |links: &FakeLinks| {
        let mut observed = links.0.borrow().observed();
        observed.native_guard_failure = Some("no nf_tables bridge family".into());
        plan(&native, NODE, None, &observed)
    };
    let p = unguarded(&links);
    assert_eq!(ops(&p), vec![format!("detach {feed} from its bridge")]);
    let fw = status(&p, "fw");
    assert!(!fw.ready);
    assert_eq!(
        fw.reason.as_deref(),
        Some("nativeVlan 300: untagged frames are not carried until tagged ones can be kept off VLAN 300's bridge: no nf_tables bridge family")
    );
    block_on(apply(&links, &p.steps));
    let p = unguarded(&links);
    assert!(p.steps.is_empty(), "{:?}", ops(&p));
    assert_eq!(link(&links, &feed).controller, None);
    // The VIDs' paths and sub-interfaces stay: tagged traffic is not concerned.
    assert_trunk_whole(&links, "fw", &[100, 200]);

    let p = plan_on(&links, &native, None);
    assert_eq!(
        ops(&p),
        vec![format!(
            "attach {feed} to bridge {}",
            bridge_name("eth1", 300)
        )]
    );
}

#[test]
fn bridge_macs_are_pinned_and_drift_is_put_back() {
    let links = host();
    let cfg = two_pgs();
    let (_, last) = converge(&links, &cfg);
    assert!(last.steps.is_empty());
    let name = bridge_name("eth1", 100);
    let pinned = naming::bridge_mac(NODE, &name);
    assert_eq!(link(&links, &name).mac, Some(pinned));
    assert!(
        !pinned.is_multicast() && pinned.0[0] & 0x02 == 0x02,
        "{pinned}"
    );
    // Another node's bridge of the same name has another MAC.
    assert_ne!(naming::bridge_mac("other-node", &name), pinned);
    // Drift: the bridge took another MAC; one step puts it back.
    links
        .0
        .borrow_mut()
        .links
        .iter_mut()
        .find(|l| l.name == name)
        .expect("bridge")
        .mac = Some(MacAddr([0x02, 0, 0, 0, 0, 1]));
    let repair = plan_on(&links, &cfg, None);
    assert_eq!(ops(&repair), [format!("set {name} address {pinned}")]);
    let (passes, _) = converge(&links, &cfg);
    assert_eq!(passes, 1);
    assert_eq!(link(&links, &name).mac, Some(pinned));
}
