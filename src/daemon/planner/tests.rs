use super::*;
use crate::daemon::applier::apply;
use crate::daemon::fake::{FakeKernel, FakeLinks};
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
    panic!("no convergence in 5 passes");
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
            "controller",
            "up",
            "up", // prod-web
            "create-vlan",
            "create-bridge",
            "controller",
            "up",
            "up", // db
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

#[test]
fn marks_round_trip() {
    let alias = owner_alias("bridge", "prod-web", "enp129s0f0np0", 4094);
    assert_eq!(
        parse_mark(&alias),
        Some(Mark {
            role: "bridge".into(),
            portgroup: "prod-web".into(),
            uplink: "enp129s0f0np0".into(),
            vlan: 4094
        })
    );
    assert_eq!(parse_mark("portgroup:port x"), None);
    assert_eq!(parse_mark("nope"), None);
}
