//! govc JSON, alone and merged with an RVTools export.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{realistic, run, Scratch};
use serde_json::{json, Value};

fn nic(key: i64, label: &str, mac: &str, backing: Value, start_connected: bool) -> Value {
    json!({
        "key": key,
        "deviceInfo": { "label": label, "summary": "" },
        "backing": backing,
        "connectable": { "startConnected": start_connected, "allowGuestControl": true, "connected": start_connected, "status": "ok" },
        "addressType": "assigned",
        "macAddress": mac
    })
}

fn guest(key: i64, network: &str, mac: &str, addrs: &[(&str, u64)]) -> Value {
    json!({
        "network": network,
        "ipAddress": addrs.iter().map(|(ip, _)| ip).collect::<Vec<_>>(),
        "macAddress": mac,
        "connected": true,
        "deviceConfigId": key,
        "ipConfig": { "ipAddress": addrs.iter().map(|(ip, p)| json!({"ipAddress": ip, "prefixLength": p, "origin": "manual", "state": "preferred"})).collect::<Vec<_>>() }
    })
}

/// `govc vm.info -json` for two VMs: web01 (also in the RVTools export) and
/// govc01 (only here), on a standard and a distributed port group.
fn vm_info() -> Value {
    let standard = json!({ "deviceName": "Prod-Web", "network": { "type": "Network", "value": "network-12" } });
    let distributed = json!({ "port": { "switchUuid": "50 2a", "portgroupKey": "dvportgroup-101", "portKey": "12" } });
    json!({ "virtualMachines": [
        {
            "name": "web01",
            "config": { "name": "web01", "template": false, "hardware": { "device": [
                { "key": 1000, "deviceInfo": { "label": "SCSI controller 0" } },
                nic(4000, "Network adapter 1", "00:50:56:81:01:01", standard.clone(), true)
            ] } },
            "guest": { "net": [ guest(4000, "Prod-Web", "00:50:56:81:01:01", &[("10.1.100.11", 24), ("fe80::1", 64), ("2001:db8:100::11", 64)]) ] },
            "runtime": { "powerState": "poweredOn", "host": { "type": "HostSystem", "value": "host-21" } }
        },
        {
            "name": "govc01",
            "config": { "name": "govc01", "template": false, "hardware": { "device": [
                nic(4000, "Network adapter 1", "00:50:56:82:00:01", distributed, true),
                nic(4001, "Network adapter 2", "00:50:56:82:00:02", standard, false)
            ] } },
            "guest": { "net": [ guest(4000, "DV-App", "00:50:56:82:00:01", &[("10.1.200.250", 24)]) ] },
            "runtime": { "powerState": "poweredOn", "host": { "type": "HostSystem", "value": "host-22" } }
        },
        {
            "name": "fw01",
            "config": { "name": "fw01", "template": false, "hardware": { "device": [
                nic(4000, "Network adapter 1", "00:50:56:82:00:11", dv_backing("dvportgroup-103"), true),
                nic(4001, "Network adapter 2", "00:50:56:82:00:12", std_backing("Guest-Trunk", "network-13"), true),
                nic(4002, "Network adapter 3", "00:50:56:82:00:13", std_backing("VM Network", "network-14"), true),
                nic(4003, "Network adapter 4", "00:50:56:82:00:14", dv_backing("dvportgroup-106"), true)
            ] } },
            "guest": { "net": [
                guest(4000, "DV-Trunk", "00:50:56:82:00:11", &[("10.41.0.1", 24)]),
                guest(4002, "VM Network", "00:50:56:82:00:13", &[("192.168.1.1", 24)]),
                guest(4003, "DV-Zero", "00:50:56:82:00:14", &[])
            ] },
            "runtime": { "powerState": "poweredOn", "host": { "type": "HostSystem", "value": "host-22" } }
        }
    ] })
}

fn dv_backing(key: &str) -> Value {
    json!({ "port": { "switchUuid": "50 2a", "portgroupKey": key, "portKey": "77" } })
}

fn std_backing(name: &str, id: &str) -> Value {
    json!({ "deviceName": name, "network": { "type": "Network", "value": id } })
}

fn host_portgroups() -> Value {
    json!({ "portgroup": [
        { "spec": { "name": "Prod-Web", "vlanId": 100, "vswitchName": "vSwitch0", "policy": { "security": {} } },
          "computedPolicy": { "security": { "allowPromiscuous": false, "macChanges": false, "forgedTransmits": false } } },
        { "spec": { "name": "Guest-Trunk", "vlanId": 4095, "vswitchName": "vSwitch0", "policy": {} } },
        { "spec": { "name": "VM Network", "vlanId": 0, "vswitchName": "vSwitch0", "policy": {} } }
    ] })
}

fn dv_ports() -> Value {
    json!({ "port": [
        { "key": "12", "portgroupKey": "dvportgroup-101", "dvsUuid": "50 2a",
          "config": { "setting": { "vlan": { "vlanId": 200, "inherited": false },
                                   "securityPolicy": { "allowPromiscuous": { "value": false }, "macChanges": { "value": false }, "forgedTransmits": { "value": false } } } } },
        { "key": "13", "portgroupKey": "dvportgroup-101", "dvsUuid": "50 2a",
          "config": { "setting": { "vlan": { "vlanId": 200 } } } },
        { "key": "40", "portgroupKey": "dvportgroup-103", "dvsUuid": "50 2a",
          "config": { "setting": { "vlan": { "vlanId": [ { "start": 100, "end": 199 }, { "start": 300, "end": 300 } ] } } } },
        { "key": "50", "portgroupKey": "dvportgroup-104", "dvsUuid": "50 2a",
          "config": { "setting": { "vlan": { "pvlanId": 500 } } } },
        { "key": "60", "portgroupKey": "dvportgroup-106", "dvsUuid": "50 2a",
          "config": { "setting": { "vlan": { "vlanId": [ { "start": 0, "end": 0 }, { "start": 200, "end": 210 } ] } } } }
    ] })
}

fn write(scratch: &Scratch) -> Vec<String> {
    let mut args = Vec::new();
    for (name, value) in [
        ("vm-info.json", vm_info()),
        ("host-pg.json", host_portgroups()),
        ("dvs-pg.json", dv_ports()),
    ] {
        let path = scratch.path(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
        args.push("--govc".to_string());
        args.push(path.display().to_string());
    }
    args
}

fn config(out: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("node-config.json")).unwrap()).unwrap()
}

fn reservation(config: &Value, mac: &str) -> Option<Value> {
    config["portgroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["reservations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (p["name"].clone(), r))
        })
        .find(|(_, r)| r["mac"] == mac)
        .map(|(name, mut r)| {
            r["portgroup"] = name;
            r
        })
}

#[test]
fn govc_alone_plans_with_prefix_lengths() {
    let scratch = Scratch::new("govc-alone");
    let out = scratch.path("out");
    let mut args: Vec<String> = vec!["plan".into(), "--out".into(), out.display().to_string()];
    args.extend(write(&scratch));
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = config(&out);
    let web = reservation(&c, "00:50:56:81:01:01").expect("web01 reserved");
    assert_eq!(web["ips"], json!(["10.1.100.11/24", "2001:db8:100::11/64"]));
    assert_eq!(web["portgroup"], "prod-web");
    let dv = reservation(&c, "00:50:56:82:00:01").expect("govc01 reserved");
    assert_eq!(dv["ips"], json!(["10.1.200.250/24"]));
    // The distributed port group's name comes from the guest's network name.
    assert_eq!(dv["portgroup"], "dv-app");
    let check = run(&[
        "check-config",
        out.join("node-config.json").to_str().unwrap(),
    ]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let stanza = std::fs::read_to_string(out.join("vms/govc01.yaml")).unwrap();
    assert!(stanza.contains("state: down"), "{stanza}");

    // fw01's NICs: a distributed trunk, a standard 4095, VLAN 0, and a trunk
    // with VLAN 0 in its ranges.
    let portgroup = |name: &str| -> Value {
        c["portgroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no portgroup {name}: {c}"))
    };
    let fw = |mac: &str| reservation(&c, mac).unwrap_or_else(|| panic!("{mac} not reserved"));
    assert_eq!(
        fw("00:50:56:82:00:11"),
        json!({"mac": "00:50:56:82:00:11", "portgroup": "dv-trunk"}),
        "MAC only"
    );
    assert_eq!(portgroup("dv-trunk")["trunk"], "100-199,300");
    assert_eq!(fw("00:50:56:82:00:12")["portgroup"], "guest-trunk");
    // 4095: the access VLANs on its vSwitch (Prod-Web's 100).
    assert_eq!(portgroup("guest-trunk")["trunk"], "100");
    assert_eq!(fw("00:50:56:82:00:13")["portgroup"], "vm-network");
    assert_eq!(portgroup("vm-network")["untagged"], true);
    assert_eq!(fw("00:50:56:82:00:13")["ips"], json!(["192.168.1.1/24"]));
    assert_eq!(fw("00:50:56:82:00:14")["portgroup"], "dv-zero");
    assert_eq!(portgroup("dv-zero")["trunk"], "200-210");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let confirm: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "trunk-vlans")
        .map(|f| {
            (
                f["portgroup"].as_str().unwrap(),
                f["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(confirm.len(), 2, "{confirm:?}");
    assert_eq!(confirm[0].0, "DV-Zero");
    assert!(confirm[0].1.contains("includes VLAN 0"), "{confirm:?}");
    assert_eq!(confirm[1].0, "Guest-Trunk");
    assert!(
        confirm[1].1.contains("Ask the network team to confirm"),
        "{confirm:?}"
    );
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "unsupported-portgroup"),
        "{report}"
    );
    let map = std::fs::read_to_string(out.join("networkmap.yaml")).unwrap();
    assert!(
        map.contains("id: \"dvportgroup-101\"") && map.contains("id: \"network-12\""),
        "{map}"
    );
}

#[test]
fn govc_guest_data_wins_over_rvtools_and_the_report_says_so() {
    let scratch = Scratch::new("govc-merge");
    let xlsx = scratch.path("export.xlsx");
    realistic().write_xlsx(&xlsx);
    let out = scratch.path("out");
    let mut args: Vec<String> = vec![
        "plan".into(),
        "--rvtools".into(),
        xlsx.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(write(&scratch));
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = config(&out);
    // web01: RVTools had 10.1.100.11 bare; govc has it with its prefix.
    assert_eq!(
        reservation(&c, "00:50:56:81:01:01").unwrap()["ips"],
        json!(["10.1.100.11/24", "2001:db8:100::11/64"])
    );
    // web02: RVTools only, bare.
    assert_eq!(
        reservation(&c, "00:50:56:81:01:02").unwrap()["ips"],
        json!(["10.1.100.12"])
    );
    // govc01 exists only in govc: planned on the same portgroup as RVTools' DV-App.
    assert_eq!(
        reservation(&c, "00:50:56:82:00:01").unwrap()["portgroup"],
        "dv-app"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(
            "Guest addresses from govc (with prefix lengths) replace RVTools' for 1 VM(s): web01."
        ),
        "{md}"
    );
    let check = run(&[
        "check-config",
        out.join("node-config.json").to_str().unwrap(),
    ]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
