//! portgroupd in network namespaces, the parts that need no 802.1Q: config
//! handling, exit codes, dry run, HTTP, SIGTERM, garbage collection.
//! Root only; every link lives in a namespace the test makes and deletes.

use std::time::Duration;

use crate::common::{http_get, DaemonLab, Netns, NODE};
use nix::sys::signal::Signal;
use portgroup::attachment::Record;
use portgroup::naming::{bridge_name, host_veth_name, is_owned};

const ONE_PG: &str = r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100,
    "reservations": [{"mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24"]}]}]}"#;

#[test]
fn once_with_missing_uplink_reports_it() {
    let lab = DaemonLab::bare();
    lab.write_config(ONE_PG);
    let out = lab.once();
    assert!(out.status.success(), "{out:?}");
    let state = lab.state().expect("state written");
    assert_eq!(state.node, NODE);
    assert_eq!(state.generation, 1);
    let pg = &state.portgroups[0];
    assert!(!pg.ready);
    assert_eq!(
        pg.reason.as_deref(),
        Some("uplink eth1 not found on node worker-3")
    );
    assert_eq!(pg.reservations.len(), 1);
    assert!(state.config_errors.is_empty());
    // Nothing was made without the uplink.
    assert_eq!(lab.node.links().len(), 1, "only lo");
    // A second run that changes nothing writes nothing: same generation, same file.
    let inode = |p: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("state file"))
    };
    let before = inode(&lab.run_dir().join("state.json"));
    assert!(lab.once().status.success());
    assert_eq!(lab.state().map(|s| s.generation), Some(1));
    assert_eq!(
        inode(&lab.run_dir().join("state.json")),
        before,
        "rewritten"
    );
    // A change goes on counting.
    lab.write_config(&ONE_PG.replace("prod-web", "prod-app"));
    assert!(lab.once().status.success());
    assert_eq!(lab.state().map(|s| s.generation), Some(2));
}

#[test]
fn once_with_invalid_config_exits_2_and_names_every_problem() {
    let lab = DaemonLab::new();
    lab.write_config(
        r#"{"uplink": "eth1", "portgroups": [{"name": "Prod", "vlan": 5000}, {"vlan": 7}]}"#,
    );
    let out = lab.once();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let state = lab.state().expect("state written with the errors");
    for field in [
        "portgroups[0].name",
        "portgroups[0].vlan",
        "portgroups[1].name",
    ] {
        assert!(
            state.config_errors.iter().any(|e| e.starts_with(field)),
            "{field} not named in {:?}",
            state.config_errors
        );
    }
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("portgroups[0].vlan"), "{log}");
    assert_eq!(lab.node.links().len(), 2, "lo and eth1 only: nothing made");

    // Not even readable JSON, or no file at all: still 2.
    lab.write_config("{");
    assert_eq!(lab.once().status.code(), Some(2));
    std::fs::remove_file(lab.config_path()).expect("rm config");
    assert_eq!(lab.once().status.code(), Some(2));
    let state = lab.state().expect("state");
    assert!(state.config_errors[0].contains("No such file"), "{state:?}");
}

/// `--check-config` prints exactly what the daemon refuses a config for, each
/// problem prefixed with the file, and exits 1; a valid config is "ok" and 0.
#[test]
fn check_config_lists_what_the_daemon_refuses() {
    let lab = DaemonLab::bare();
    let path = lab.config_path();
    let check = |file: &std::path::Path| {
        let out = std::process::Command::new(crate::common::BIN)
            .arg("--check-config")
            .arg(file)
            .output()
            .expect("run portgroupd --check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for bad in [
        r#"{"uplink": "eth1", "portgroups": [{"name": "Prod", "vlan": 5000}, {"vlan": 7,
            "reservations": [{"mac": "00:50:56:aa:bb:01", "ips": ["10.0.0.1", "10.0.0.1/24"]}]}]}"#,
        "{",
    ] {
        lab.write_config(bad);
        assert_eq!(lab.once().status.code(), Some(2));
        let state = lab.state().expect("state written with the errors");
        assert!(!state.config_errors.is_empty());
        let want: String = state
            .config_errors
            .iter()
            .map(|e| format!("{}: {e}\n", path.display()))
            .collect();
        assert_eq!(check(&path), (Some(1), want), "{bad}");
    }
    std::fs::remove_file(&path).expect("rm config");
    assert_eq!(lab.once().status.code(), Some(2));
    let state = lab.state().expect("state");
    assert_eq!(
        check(&path),
        (
            Some(1),
            format!("{}: {}\n", path.display(), state.config_errors[0])
        )
    );

    lab.write_config(ONE_PG);
    assert_eq!(check(&path), (Some(0), format!("{}: ok\n", path.display())));
    assert!(lab.once().status.success());
}

#[test]
fn dry_run_changes_nothing() {
    let lab = DaemonLab::new();
    lab.write_config(ONE_PG);
    let before = lab.node.links();
    let out = lab.command(&["--dry-run"]).output().expect("dry run");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bridge = bridge_name("eth1", 100);
    assert!(
        stdout.contains(&format!("create bridge {bridge}")),
        "{stdout}"
    );
    assert!(stdout.contains("set eth1 up"), "{stdout}");
    assert!(stdout.contains("prod-web (vlan 100"), "{stdout}");
    let after = lab.node.links();
    assert_eq!(
        before
            .iter()
            .map(|l| (&l.ifname, l.is_up()))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|l| (&l.ifname, l.is_up()))
            .collect::<Vec<_>>()
    );
    assert!(lab.state().is_none(), "no state written");

    lab.write_config(r#"{"portgroups": []}"#);
    let out = lab.command(&["--dry-run"]).output().expect("dry run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("uplink: required"));
}

#[test]
fn http_endpoints_and_sigterm_leaves_topology() {
    let lab = DaemonLab::new();
    lab.write_config(ONE_PG);
    let mut daemon = lab.start(&["--listen", "127.0.0.1:9750"]);
    lab.wait_state(Duration::from_secs(30), "first reconcile", |s| {
        s.generation >= 1
    });

    let get = |path: &str| {
        let start = std::time::Instant::now();
        loop {
            if let Some(r) = http_get(&lab.node, 9750, path) {
                return r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no answer on {path}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200);
    assert_eq!(get("/nope").0, 404);
    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "portgroupd_reconciles_total",
        "portgroupd_reconcile_duration_seconds_bucket",
        "portgroupd_drift_repairs_total",
        "portgroupd_portgroups{state=\"ready\"}",
        "portgroupd_portgroups{state=\"not_ready\"}",
        "portgroupd_portgroups{state=\"draining\"}",
        "portgroupd_attachments",
        "portgroupd_gc_removed_total",
        "portgroupd_errors_total",
        "portgroupd_config_generation 1",
        "portgroup_portsec_drops_total{reason=\"bpdu\"} 0",
        "portgroup_portsec_drops_total{reason=\"ra\"} 0",
        "\nportgroup_ports_awaiting_handover 0\n",
        "\nportgroup_handover_held_frames_total 0\n",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // A migration target waiting for its guest shows in the gauge, read from
    // the kernel at scrape time.
    lab.node
        .run(|| {
            portgroup::portsec::hold(&portgroup::portsec::Hold {
                host_veth: "pgheld0".into(),
                mac: "00:50:56:aa:bb:01".parse().expect("mac"),
                ips: vec!["10.0.0.2".parse().expect("ip")],
            })
        })
        .expect("hold");
    let (_, metrics) = get("/metrics");
    assert!(
        metrics.contains("\nportgroup_ports_awaiting_handover 1\n"),
        "{metrics}"
    );
    lab.node
        .run(|| portgroup::portsec::remove("pgheld0"))
        .expect("remove");

    // The bridge needs no 802.1Q: it is made, marked and up on any kernel.
    let bridge = bridge_name("eth1", 100);
    let link = lab.node.link(&bridge).expect("bridge made");
    assert!(is_owned(link.ifalias.as_deref()), "{link:?}");
    assert!(
        lab.node.link("eth1").expect("uplink").is_up(),
        "uplink brought up"
    );

    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait(Duration::from_secs(30))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(daemon.log().contains("SIGTERM: stopping"));
    let after = lab.node.link(&bridge).expect("bridge left in place");
    assert_eq!(after.ifindex, link.ifindex);
}

#[test]
fn config_reload_through_a_kubelet_symlink_swap() {
    // Kubelet's ConfigMap layout: config.json -> ..data/config.json, ..data -> ..<timestamp>.
    let lab = DaemonLab::bare();
    let dir = &lab.dir.0;
    let version = |n: u32, json: &str| {
        let d = dir.join(format!("..2026_11_23_{n}"));
        std::fs::create_dir_all(&d).expect("version dir");
        std::fs::write(d.join("config.json"), json).expect("write");
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(d.file_name().expect("name"), &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    };
    version(
        1,
        r#"{"uplink": "eth1", "portgroups": [{"name": "BAD", "vlan": 100}]}"#,
    );
    std::os::unix::fs::symlink("..data/config.json", lab.config_path()).expect("symlink");

    let daemon = lab.start(&["--listen", "127.0.0.1:9751", "--resync", "3600"]);
    let state = lab.wait_state(Duration::from_secs(30), "config errors", |s| {
        !s.config_errors.is_empty()
    });
    assert!(
        state.config_errors[0].contains("portgroups[0].name"),
        "{state:?}"
    );
    assert!(state.portgroups.is_empty());
    assert_eq!(http_get(&lab.node, 9751, "/readyz").map(|r| r.0), Some(503));

    version(2, ONE_PG);
    let state = lab.wait_state(Duration::from_secs(30), "the new config", |s| {
        s.config_errors.is_empty() && s.portgroups.len() == 1
    });
    assert_eq!(
        state.portgroups[0].reason.as_deref(),
        Some("uplink eth1 not found on node worker-3")
    );
    assert_eq!(http_get(&lab.node, 9751, "/readyz").map(|r| r.0), Some(200));

    // Refused again: the last good config stays in force, the errors are published.
    version(
        3,
        r#"{"uplink": "eth1", "portgroups": [{"name": "x", "vlan": 100, "mtu": 1}]}"#,
    );
    let state = lab.wait_state(Duration::from_secs(30), "refusal", |s| {
        !s.config_errors.is_empty()
    });
    assert!(
        state.config_errors[0].contains("portgroups[0].mtu"),
        "{state:?}"
    );
    assert_eq!(state.portgroups[0].name, "prod-web");
    assert!(
        daemon.log().contains("keeping the last good config"),
        "{}",
        daemon.log()
    );
}

#[test]
fn gc_removes_attachments_whose_host_veth_is_gone() {
    let lab = DaemonLab::new();
    lab.write_config(r#"{"uplink": "eth1", "portgroups": []}"#);
    let node = &lab.node;
    node.ip(&["link", "add", "name", "br0", "type", "bridge"]);
    node.ip(&["link", "set", "br0", "up"]);
    let attachments = lab.run_dir().join("attachments");

    let vm_live = Netns::new("vm");
    let vm_dead = Netns::new("vm");
    let vm_gone = Netns::new("vm");
    let record = |cid: &str, netns: &Netns| Record {
        container_id: cid.into(),
        ifname: "net1".into(),
        network: "prod-web".into(),
        netns: netns.path().display().to_string(),
        host_veth: host_veth_name(cid, "net1"),
        bridge: "br0".into(),
        portgroup: None,
        vlan: None,
        mac: "00:50:56:aa:bb:01".parse().expect("mac"),
        ips: vec![],
        spoof_check: false,
        ipam: None,
        cni_version: "1.1.0".into(),
        created_at: "2026-11-23T10:00:00Z".into(),
        namespace: None,
        port_security: None,
        handover: None,
        device_id: None,
    };
    // live: veth into a namespace that stays. dead: veth into a namespace that is
    // deleted (the kernel takes the veth along). gone: the record's namespace is
    // deleted but its host veth survives (its peer was elsewhere): a live host
    // veth is a live attachment, whatever the record's netns path says, so it is
    // kept (portgroupd does not judge netns paths: it has no view of them).
    for (cid, ns, peer_ns) in [
        ("live", &vm_live, vm_live.name.clone()),
        ("dead", &vm_dead, vm_dead.name.clone()),
        ("gone", &vm_gone, node.name.clone()),
    ] {
        let r = record(cid, ns);
        let peer = format!("p-{cid}");
        node.ip(&[
            "link",
            "add",
            "name",
            &r.host_veth,
            "master",
            "br0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &peer_ns,
        ]);
        r.write(&attachments).expect("record");
        crate::common::age_file(&r.path(&attachments), Duration::from_secs(120));
    }
    // Too young to judge: an ADD may still be running.
    let young = record("young", &vm_dead);
    young.write(&attachments).expect("record");

    drop(vm_dead);
    drop(vm_gone);
    let gone_veth = host_veth_name("gone", "net1");
    assert!(node.has_link(&gone_veth));
    // The kernel's netns cleanup is asynchronous: wait for the dead veth to go.
    let dead_veth = host_veth_name("dead", "net1");
    let start = std::time::Instant::now();
    while node.has_link(&dead_veth) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "veth outlived its netns"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = lab.once();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    let present = |cid: &str| {
        Record::find(&attachments, cid, "net1")
            .expect("read")
            .is_some()
    };
    assert!(present("live"), "{log}");
    assert!(!present("dead"), "{log}");
    assert!(present("gone"), "{log}");
    assert!(present("young"), "{log}");
    assert!(
        node.has_link(&gone_veth),
        "a host veth is never deleted by GC"
    );
    assert!(node.has_link(&host_veth_name("live", "net1")));
    assert!(node.has_link("br0"), "an unowned bridge is never touched");
    assert_eq!(
        log.matches("collected stale attachment").count(),
        1,
        "{log}"
    );
}

#[test]
fn removed_portgroup_drains_until_its_last_vm_port_leaves() {
    let lab = DaemonLab::new();
    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100}, {"name": "db", "vlan": 200}]}"#);
    assert!(lab.once().status.success());
    let db_bridge = bridge_name("eth1", 200);
    assert!(lab.node.has_link(&db_bridge), "bridges need no 802.1Q");
    // A VM port on db's bridge.
    let vm = Netns::new("vm");
    lab.node.ip(&[
        "link", "add", "name", "pgvmport", "master", &db_bridge, "type", "veth", "peer", "name",
        "eth0", "netns", &vm.name,
    ]);

    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100}]}"#);
    assert!(lab.once().status.success());
    let state = lab.state().expect("state");
    let db = state
        .portgroups
        .iter()
        .find(|p| p.name == "db")
        .expect("db still listed");
    assert!(db.draining && !db.ready, "{db:?}");
    assert_eq!(db.bridge, db_bridge);
    assert!(
        db.reason
            .as_deref()
            .unwrap_or_default()
            .contains("pgvmport"),
        "{db:?}"
    );
    assert!(
        lab.node.has_link(&db_bridge),
        "kept while a VM port is on it"
    );

    drop(vm); // the VM goes: its veth pair with it, once the kernel's async netns cleanup runs
    let start = std::time::Instant::now();
    while lab.node.has_link("pgvmport") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "VM port outlived its netns"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.once().status.success());
    let state = lab.state().expect("state");
    assert!(state.portgroups.iter().all(|p| p.name != "db"), "{state:?}");
    assert!(!lab.node.has_link(&db_bridge), "torn down once empty");
    assert!(lab.node.has_link(&bridge_name("eth1", 100)));
}

/// An admin's bridges whose aliases only start like portgroupd's mark: never
/// re-marked, remade or deleted, whatever their names, over a long-running
/// daemon's reconciles and resyncs.
#[test]
fn the_daemon_leaves_an_admin_bridge_with_alias_portgroup_reserved_alone() {
    let lab = DaemonLab::new();
    let admin = [
        ("br-admin".to_string(), "portgroup: reserved"),
        // The name of prod-web's VLAN interface, on a bridge: the wrong kind for it.
        (
            portgroup::naming::vlan_interface_name("eth1", 100),
            "portgroup: reserved",
        ),
        // Words that parse, but not as the daemon writes them, on a name no
        // portgroup wants: it would pass for a stale portgroup's bridge.
        (
            bridge_name("eth1", 300),
            "portgroup:bridge old uplink=eth1 vlan=300 (kept by the network team)",
        ),
    ];
    for (name, alias) in &admin {
        lab.node
            .ip(&["link", "add", "name", name, "type", "bridge"]);
        lab.node.ip(&["link", "set", name, "alias", alias, "up"]);
    }
    let before: Vec<_> = admin
        .iter()
        .map(|(name, _)| lab.node.link(name).expect("admin bridge"))
        .collect();
    lab.write_config(ONE_PG);
    let _daemon = lab.start(&["--listen", "127.0.0.1:9752", "--resync", "1"]);
    let state = lab.wait_state(Duration::from_secs(30), "a few resyncs", |s| {
        s.portgroups.first().is_some_and(|p| p.reason.is_some())
    });
    std::thread::sleep(Duration::from_secs(3));
    let reason = state.portgroups[0].reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&format!("interface {} exists and is not owned", admin[1].0)),
        "{reason}"
    );
    for ((name, alias), was) in admin.iter().zip(&before) {
        let now = lab
            .node
            .link(name)
            .unwrap_or_else(|| panic!("{name} deleted"));
        assert_eq!(now.ifindex, was.ifindex, "{name} remade");
        assert_eq!(now.ifalias.as_deref(), Some(*alias), "{name} re-marked");
        assert!(now.is_up(), "{name}");
    }
    // Nothing of prod-web's path is made while one of its names is taken.
    assert!(!lab.node.has_link(&bridge_name("eth1", 100)));
}

/// `/readyz` is 503 while the node state cannot be written (here: the run dir
/// mounted read-only in the daemon's own mount namespace), and 200 again once a
/// retry gets through; the state then holds what changed meanwhile.
#[test]
fn readyz_is_503_while_the_node_state_cannot_be_written() {
    let lab = DaemonLab::new();
    lab.write_config(ONE_PG);
    std::fs::create_dir_all(lab.run_dir()).expect("run dir");
    let daemon = lab.start(&["--listen", "127.0.0.1:9753", "--resync", "3600"]);
    let readyz = || http_get(&lab.node, 9753, "/readyz").map(|r| r.0);
    let wait_readyz = |want: u16| {
        crate::common::wait_until(Duration::from_secs(30), format!("/readyz {want}"), || {
            match readyz() {
                Some(code) if code == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    };
    wait_readyz(200);
    let run = lab.run_dir().display().to_string();
    let pid = daemon.child.id().to_string();
    let in_daemon_mounts = |script: &str| {
        crate::common::sh(&["nsenter", "-t", &pid, "-m", "--", "sh", "-ec", script]);
    };
    in_daemon_mounts(&format!(
        "mount --bind '{run}' '{run}' && mount -o remount,bind,ro '{run}'"
    ));

    // Something to publish: another portgroup.
    lab.write_config(
        r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100}, {"name": "db", "vlan": 200}]}"#,
    );
    wait_readyz(503);
    let (_, metrics) = http_get(&lab.node, 9753, "/metrics").expect("metrics");
    assert!(
        metrics.contains("portgroupd_state_write_failing 1"),
        "{metrics}"
    );
    assert_eq!(lab.state().map(|s| s.portgroups.len()), Some(1));
    assert!(
        daemon.log().contains("writing node state under"),
        "{}",
        daemon.log()
    );

    in_daemon_mounts(&format!("umount '{run}'"));
    wait_readyz(200);
    let state = lab.state().expect("state");
    assert_eq!(state.portgroups.len(), 2, "{state:?}");
}
