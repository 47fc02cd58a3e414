//! Untagged portgroups need no 802.1Q: the raw uplink becomes a port of the
//! portgroup's bridge. In network namespaces on any kernel: a refusal while the
//! uplink holds an address, traffic from a VM port to a host on the uplink's
//! untagged network, drift repair, removal freeing the uplink.

use std::time::Duration;

use crate::common::{sh, DaemonLab, Netns};
use portgroup::naming::{is_owned, untagged_bridge_name};
use portgroup::state::PortgroupMode;

const UNTAGGED: &str = r#"{"uplink": "eth1", "portgroups": [
    {"name": "vm-network", "untagged": true}]}"#;

/// A VM's port as the plugin makes one: a veth on the bridge, the other end in
/// its own namespace with an address.
fn vm_port(lab: &DaemonLab, vm: &Netns, bridge: &str, address: &str) {
    sh(&[
        "ip",
        "-n",
        &lab.node.name,
        "link",
        "add",
        "pg00000000000a",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &vm.name,
    ]);
    lab.node
        .ip(&["link", "set", "pg00000000000a", "master", bridge, "up"]);
    vm.ip(&["addr", "add", address, "dev", "eth0"]);
    vm.ip(&["link", "set", "eth0", "up"]);
}

fn pings(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

#[test]
fn untagged_portgroup_bridges_the_raw_uplink() {
    let lab = DaemonLab::new();
    lab.write_config(UNTAGGED);
    let bridge = untagged_bridge_name("eth1");

    // The node's own address on the uplink: refused, nothing touched.
    lab.node
        .ip(&["addr", "add", "198.51.100.7/24", "dev", "eth1"]);
    lab.node.ip(&["link", "set", "eth1", "up"]);
    // A resync far away: what follows is driven by link and address events.
    let _daemon = lab.start(&["--listen", "127.0.0.1:9770", "--resync", "3600"]);
    let state = lab.wait_state(Duration::from_secs(60), "refused", |s| {
        s.portgroups.first().is_some_and(|p| p.reason.is_some())
    });
    let pg = &state.portgroups[0];
    assert!(!pg.ready);
    assert_eq!(pg.mode, PortgroupMode::Untagged);
    let reason = pg.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("uplink eth1 holds IP addresses (198.51.100.7/24): an untagged portgroup makes it a bridge port"),
        "{reason}"
    );
    assert!(!lab.node.has_link(&bridge), "nothing made");
    assert_eq!(lab.node.link("eth1").and_then(|l| l.master), None);

    // Without the address: the bridge, with the uplink as its port.
    lab.node.ip(&["addr", "flush", "dev", "eth1"]);
    let state = lab.wait_state(Duration::from_secs(60), "ready", |s| {
        s.portgroups.first().is_some_and(|p| p.ready)
    });
    assert_eq!(state.portgroups[0].bridge, bridge);
    let b = lab.node.link(&bridge).expect("bridge");
    assert!(b.is_up() && is_owned(b.ifalias.as_deref()), "{b:?}");
    assert_eq!(
        lab.node.link("eth1").and_then(|l| l.master).as_deref(),
        Some(bridge.as_str())
    );

    // A VM on the portgroup reaches a host on the uplink's untagged network.
    lab.switch
        .ip(&["addr", "add", "192.0.2.1/24", "dev", "sw0"]);
    let vm = Netns::new("vm");
    vm_port(&lab, &vm, &bridge, "192.0.2.10/24");
    crate::common::wait_until(Duration::from_secs(30), "VM reaches the host", || {
        if pings(&vm, "192.0.2.1") {
            Ok(())
        } else {
            Err("no answer".to_string())
        }
    });

    // Drift: the uplink taken out of the bridge is put back.
    lab.node.ip(&["link", "set", "eth1", "nomaster"]);
    crate::common::wait_until(
        Duration::from_secs(60),
        "uplink back in the bridge",
        || match lab.node.link("eth1").and_then(|l| l.master) {
            Some(m) if m == bridge => Ok(()),
            other => Err(format!("master {other:?}")),
        },
    );
    assert!(pings(&vm, "192.0.2.1"), "traffic flows again");

    // Removed from the config while the VM is on it: drains, keeps working.
    lab.write_config(r#"{"uplink": "eth1", "portgroups": []}"#);
    let state = lab.wait_state(Duration::from_secs(60), "draining", |s| {
        s.portgroups.first().is_some_and(|p| p.draining)
    });
    assert_eq!(state.portgroups[0].mode, PortgroupMode::Untagged);
    assert!(
        pings(&vm, "192.0.2.1"),
        "a draining portgroup still carries its VMs"
    );
    // The VM leaves: the bridge goes and the uplink is free again.
    lab.node.ip(&["link", "del", "pg00000000000a"]);
    crate::common::wait_until(Duration::from_secs(60), "bridge gone", || {
        if lab.node.has_link(&bridge) {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    });
    assert_eq!(lab.node.link("eth1").and_then(|l| l.master), None);
    assert!(
        lab.node.has_link("eth1"),
        "the uplink itself is never deleted"
    );
}

/// The trunk's own links need no 802.1Q: its bridge and the veth pair feeding
/// it are made and marked on any kernel; without 802.1Q its per-VID
/// sub-interfaces cannot be, and the trunk is not ready, saying why.
#[test]
fn trunk_bridge_and_feed_pair_are_made_and_marked() {
    use portgroup::naming::{trunk_bridge_name, trunk_feed_name, trunk_port_name};
    let lab = DaemonLab::new();
    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "fw", "trunk": "100,200"}]}"#);
    assert!(lab.once().status.success());
    let (tb, tp, tq) = (
        trunk_bridge_name("eth1", "fw"),
        trunk_port_name("eth1", "fw"),
        trunk_feed_name("eth1", "fw"),
    );
    let bridge = lab.node.link(&tb).expect("trunk bridge");
    let port = lab.node.link(&tp).expect("trunk port");
    let feed = lab.node.link(&tq).expect("trunk feed");
    assert_eq!(bridge.kind().as_deref(), Some("bridge"));
    assert_eq!(
        (port.kind().as_deref(), feed.kind().as_deref()),
        (Some("veth"), Some("veth"))
    );
    assert_eq!(port.master.as_deref(), Some(tb.as_str()));
    assert_eq!(
        feed.master, None,
        "no native VLAN: untagged frames go nowhere"
    );
    for l in [&bridge, &port, &feed] {
        assert!(is_owned(l.ifalias.as_deref()) && l.is_up(), "{l:?}");
    }
    let state = lab.state().expect("state");
    let fw = &state.portgroups[0];
    assert_eq!(fw.mode, PortgroupMode::Trunk);
    if portgroup_testkit::has_8021q() {
        assert!(fw.ready, "{fw:?}");
    } else {
        assert!(!fw.ready);
        let reason = fw.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("8021q"), "{reason}");
    }
    // Removed from the config with no VM on it: every link of it goes.
    lab.write_config(r#"{"uplink": "eth1", "portgroups": []}"#);
    assert!(lab.once().status.success());
    for name in [&tb, &tp, &tq] {
        assert!(!lab.node.has_link(name), "{name} left behind");
    }
}

/// One series of the daemon's /metrics (the first line starting with `series `).
fn metric(lab: &crate::common::DaemonLab, port: u16, series: &str) -> u64 {
    let (_, body) = crate::common::http_get(&lab.node, port, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// VM ports coming and going (made, enslaved to a portgroup's bridge, raised,
/// deleted) are not the daemon's business: a burst of them wakes no reconcile
/// and writes no state. A change to one of its own links still does.
#[test]
fn a_burst_of_vm_port_events_causes_no_reconcile_and_no_state_write() {
    use std::os::unix::fs::MetadataExt;
    let lab = DaemonLab::new();
    lab.write_config(UNTAGGED);
    lab.node.ip(&["link", "set", "eth1", "up"]);
    let daemon = lab.start(&["--listen", "127.0.0.1:9771", "--resync", "3600"]);
    lab.wait_state(Duration::from_secs(60), "ready", |s| {
        s.portgroups.first().is_some_and(|p| p.ready)
    });
    let bridge = untagged_bridge_name("eth1");
    // Let the events of the daemon's own work settle.
    let settled = || {
        let mut last = metric(&lab, 9771, "portgroupd_reconciles_total");
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = metric(&lab, 9771, "portgroupd_reconciles_total");
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let reconciles = settled();
    let written = metric(&lab, 9771, "portgroupd_state_files_written_total");
    let ignored = metric(
        &lab,
        9771,
        "portgroupd_link_events_total{outcome=\"ignored\"}",
    );
    let state_file = lab.run_dir().join("state.json");
    let meta = std::fs::metadata(&state_file).expect("state file");

    let vm = Netns::new("vm");
    let ports: Vec<String> = (0..20).map(|i| format!("pg{i:012x}")).collect();
    for (i, port) in ports.iter().enumerate() {
        lab.node.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            &format!("eth{}", 10 + i),
            "netns",
            &vm.name,
        ]);
        lab.node.ip(&["link", "set", port, "master", &bridge, "up"]);
    }
    for port in &ports {
        lab.node.ip(&["link", "del", port]);
    }
    std::thread::sleep(Duration::from_secs(1));

    assert!(
        metric(
            &lab,
            9771,
            "portgroupd_link_events_total{outcome=\"ignored\"}"
        ) >= ignored + 20,
        "the events were seen (their DELLINKs at least: the kernel's socket filter drops the rest)"
    );
    assert_eq!(
        metric(&lab, 9771, "portgroupd_reconciles_total"),
        reconciles,
        "reconciled:\n{}",
        daemon.log()
    );
    assert_eq!(
        metric(&lab, 9771, "portgroupd_state_files_written_total"),
        written,
        "state written"
    );
    let after = std::fs::metadata(&state_file).expect("state file");
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (meta.ino(), meta.mtime(), meta.mtime_nsec()),
        "state.json replaced"
    );

    // The counters can move: the uplink taken out of the bridge is a change.
    lab.node.ip(&["link", "set", "eth1", "nomaster"]);
    crate::common::wait_until(Duration::from_secs(30), "a reconcile", || {
        match metric(&lab, 9771, "portgroupd_reconciles_total") {
            n if n > reconciles => Ok(()),
            n => Err(format!("{n}")),
        }
    });
}
