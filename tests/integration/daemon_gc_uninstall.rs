//! portgroupd's collector against the plugin's own DEL and young records, and
//! `portgroupd --uninstall`, in network namespaces. Root only; every link and
//! nftables table lives in a namespace the test makes and deletes.

use std::time::{Duration, Instant};

use crate::common::{DaemonLab, Netns};
use portgroup::attachment::{self, Record};
use portgroup::naming::{bridge_name, host_veth_name};

const NO_PORTGROUPS: &str = r#"{"uplink": "eth1", "portgroups": []}"#;

fn record(cid: &str, netns: &Netns, bridge: &str) -> Record {
    Record {
        container_id: cid.into(),
        ifname: "net1".into(),
        network: "prod-web".into(),
        netns: netns.path().display().to_string(),
        host_veth: host_veth_name(cid, "net1"),
        bridge: bridge.into(),
        portgroup: None,
        vlan: None,
        mac: "00:50:56:aa:bb:01".parse().expect("mac"),
        ips: vec![],
        spoof_check: false,
        ipam: None,
        namespace: None,
        port_security: None,
        handover: None,
        device_id: None,
        cni_version: "1.1.0".into(),
        created_at: "2026-11-23T10:00:00Z".into(),
    }
}

/// A VM port: a veth on `bridge` in the lab's node, its peer in `vm`.
fn vm_port(lab: &DaemonLab, r: &Record, vm: &Netns) {
    lab.node.ip(&[
        "link",
        "add",
        "name",
        &r.host_veth,
        "master",
        &r.bridge,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &vm.name,
    ]);
}

fn wait_for(what: &str, timeout: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn collector_leaves_an_attachment_whose_del_is_running_alone() {
    let lab = DaemonLab::new();
    lab.write_config(NO_PORTGROUPS);
    lab.node
        .ip(&["link", "add", "name", "br0", "type", "bridge"]);
    let attachments = lab.run_dir().join("attachments");
    let (vm_a, vm_b) = (Netns::new("vm"), Netns::new("vm"));
    let (deleting, leaked) = (
        record("deleting", &vm_a, "br0"),
        record("leaked", &vm_b, "br0"),
    );
    for (r, vm) in [(&deleting, &vm_a), (&leaked, &vm_b)] {
        vm_port(&lab, r, vm);
        r.write(&attachments).expect("record");
        crate::common::age_file(&r.path(&attachments), Duration::from_secs(120));
    }
    let daemon = lab.start(&["--listen", "127.0.0.1:9761", "--resync", "3600"]);
    lab.wait_state(Duration::from_secs(30), "first reconcile", |s| {
        s.generation >= 1
    });

    // A DEL in flight: it holds the record's lock, deletes the veth, and only then
    // removes the record. The veth's disappearance wakes the collector meanwhile.
    let held = attachment::lock(&attachments, "deleting", "net1")
        .expect("lock")
        .expect("record exists");
    lab.node.ip(&["link", "del", &deleting.host_veth]);
    wait_for(
        "the collector to see the DEL",
        Duration::from_secs(30),
        || daemon.log().contains("in a running ADD or DEL"),
    );
    assert!(
        Record::find(&attachments, "deleting", "net1")
            .expect("read")
            .is_some(),
        "left to its DEL"
    );
    assert!(
        !daemon.log().contains("collected stale attachment"),
        "{}",
        daemon.log()
    );
    attachment::remove(&attachments, "deleting", "net1").expect("the DEL finishes");
    drop(held);

    // A real leak (no DEL holds it) is collected as one, on the link event.
    drop(vm_b);
    wait_for("the leak to be collected", Duration::from_secs(30), || {
        Record::find(&attachments, "leaked", "net1")
            .expect("read")
            .is_none()
    });
    // The record goes first, the log line right after: wait for the line too.
    wait_for(
        "the collection to be logged",
        Duration::from_secs(10),
        || daemon.log().contains("collected stale attachment"),
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("collected stale attachment").count(),
        1,
        "{log}"
    );
    assert!(log.contains("attachment=leaked/net1"), "{log}");
    assert_eq!(log.matches("in a running ADD or DEL").count(), 1, "{log}");
}

#[test]
fn a_young_record_is_collected_when_it_comes_of_age_not_at_the_resync() {
    let lab = DaemonLab::new();
    lab.write_config(NO_PORTGROUPS);
    lab.node
        .ip(&["link", "add", "name", "br0", "type", "bridge"]);
    let attachments = lab.run_dir().join("attachments");
    let vm = Netns::new("vm");
    let young = record("young", &vm, "br0");
    vm_port(&lab, &young, &vm);
    young.write(&attachments).expect("record");
    // MIN_AGE is 30 s: this record comes of age about 15 s from now.
    crate::common::age_file(&young.path(&attachments), Duration::from_secs(15));
    let daemon = lab.start(&["--listen", "127.0.0.1:9762", "--resync", "3600"]);
    lab.wait_state(Duration::from_secs(30), "first reconcile", |s| {
        s.generation >= 1
    });

    drop(vm);
    wait_for(
        "the VM port to go with its netns",
        Duration::from_secs(30),
        || !lab.node.has_link(&young.host_veth),
    );
    // The link event woke the collector, which left the young record alone.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        Record::find(&attachments, "young", "net1")
            .expect("read")
            .is_some(),
        "too young to collect on the link event: {}",
        daemon.log()
    );
    // No resync for an hour and no further link event: only the wake-up can do it.
    wait_for(
        "the record to be collected when it comes of age",
        Duration::from_secs(60),
        || {
            Record::find(&attachments, "young", "net1")
                .expect("read")
                .is_none()
        },
    );
    // The record goes first, the log line right after: wait for the line too.
    wait_for(
        "the collection to be logged",
        Duration::from_secs(10),
        || daemon.log().contains("collected stale attachment"),
    );
}

fn nft_tables(ns: &Netns) -> String {
    crate::common::sh(&["ip", "netns", "exec", &ns.name, "nft", "list", "tables"])
}

#[test]
fn uninstall_removes_what_is_ours_and_nothing_else() {
    let lab = DaemonLab::new();
    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100}]}"#);
    assert!(lab.once().status.success());
    let ours = bridge_name("eth1", 100);
    assert!(lab.node.has_link(&ours), "portgroupd made its bridge");
    // What is not ours: an unowned bridge, one whose alias merely starts with the
    // mark, a foreign nftables table, another CNI plugin.
    let node = &lab.node;
    node.ip(&["link", "add", "name", "br0", "type", "bridge"]);
    node.ip(&["link", "add", "name", "brfake", "type", "bridge"]);
    node.ip(&["link", "set", "brfake", "alias", "portgroup: made by hand"]);
    for table in ["foreign", "portgroup"] {
        crate::common::sh(&[
            "ip", "netns", "exec", &node.name, "nft", "add", "table", "bridge", table,
        ]);
    }
    let cni_bin = lab.dir.0.join("cni-bin");
    std::fs::create_dir_all(&cni_bin).expect("cni bin");
    std::fs::write(cni_bin.join("portgroup"), b"plugin").expect("plugin");
    std::fs::write(cni_bin.join("bridge"), b"another plugin").expect("other");
    // A VM still attached to our bridge.
    let vm = Netns::new("vm");
    let attached = record("vm1", &vm, &ours);
    vm_port(&lab, &attached, &vm);
    attached
        .write(&lab.run_dir().join("attachments"))
        .expect("record");

    let uninstall = |extra: &[&str]| {
        let mut args = vec!["--uninstall", "--cni-bin-dir"];
        let dir = cni_bin.display().to_string();
        args.push(&dir);
        args.extend_from_slice(extra);
        lab.command(&args).output().expect("run --uninstall")
    };
    let refused = uninstall(&[]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains(&attached.host_veth) && why.contains("--force"),
        "{why}"
    );
    assert!(node.has_link(&ours) && cni_bin.join("portgroup").exists() && lab.run_dir().exists());
    assert!(
        nft_tables(node).contains("table bridge portgroup"),
        "nothing removed when refusing"
    );

    let out = uninstall(&["--force"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    for what in [
        format!("removed link {}", attached.host_veth),
        format!("removed link {ours}: bridge of portgroup prod-web"),
        "removed nftables table bridge portgroup".to_string(),
        format!("removed CNI plugin {}", cni_bin.join("portgroup").display()),
        format!(
            "removed {} (node state, 1 portgroup file(s), 1 attachment record(s))",
            lab.run_dir().display()
        ),
    ] {
        assert!(said.contains(&what), "{what:?} not said:\n{said}");
    }
    assert!(!node.has_link(&ours) && !node.has_link(&attached.host_veth));
    assert!(node.has_link("br0") && node.has_link("brfake") && node.has_link("eth1"));
    let tables = nft_tables(node);
    assert!(
        tables.contains("table bridge foreign") && !tables.contains("table bridge portgroup"),
        "{tables}"
    );
    assert!(!cni_bin.join("portgroup").exists() && cni_bin.join("bridge").exists());
    assert!(!lab.run_dir().exists());

    let again = uninstall(&[]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing of portgroup's found"));
}
