//! The realistic estate end to end through the binary: xlsx and CSV exports,
//! every output read back by its consumer (the daemon's validation for the
//! node config; parsers for the rest).

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{read_tree, realistic, run, Scratch, EXPECTED_FINDINGS};
use serde_json::Value;

fn plan_into(input: &Path, out: &Path) {
    let o = run(&[
        "plan",
        "--rvtools",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        "vms",
    ]);
    assert!(
        o.status.success(),
        "plan failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The estate written as xlsx, planned into `<scratch>/out-xlsx`.
fn planned(scratch: &Scratch) -> PathBuf {
    let xlsx = scratch.path("RVTools_export_all.xlsx");
    realistic().write_xlsx(&xlsx);
    let out = scratch.path("out-xlsx");
    plan_into(&xlsx, &out);
    out
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The reservations of portgroup `name` in a node config.
fn reservation_in(config: &Value, name: &str) -> Vec<Value> {
    config["portgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no portgroup {name}"))["reservations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn xlsx_and_csv_exports_give_byte_identical_plans() {
    let scratch = Scratch::new("same-plan");
    let xlsx_out = planned(&scratch);
    let estate = realistic();
    let semicolon = scratch.path("csv-semicolon");
    estate.write_csv_dir(&semicolon, ';');
    let comma = scratch.path("csv-comma");
    estate.write_csv_dir(&comma, ',');
    plan_into(&semicolon, &scratch.path("out-semicolon"));
    plan_into(&comma, &scratch.path("out-comma"));
    // Planning again over an existing plan replaces it, byte for byte.
    plan_into(&comma, &scratch.path("out-comma"));

    let reference = read_tree(&xlsx_out);
    assert!(reference.contains_key("node-config.json"));
    assert!(reference.keys().any(|k| k.starts_with("nads/")));
    assert!(reference.keys().any(|k| k.starts_with("vms/")));
    for other in ["out-semicolon", "out-comma"] {
        let tree = read_tree(&scratch.path(other));
        assert_eq!(
            reference.keys().collect::<Vec<_>>(),
            tree.keys().collect::<Vec<_>>(),
            "{other}: different files"
        );
        for (name, bytes) in &reference {
            assert!(
                tree[name] == *bytes,
                "{other}/{name} differs from the xlsx plan"
            );
        }
    }
}

#[test]
fn every_planted_finding_and_nothing_else() {
    let scratch = Scratch::new("findings");
    let out = planned(&scratch);
    let report = json(&out.join("report.json"));
    let mut got = BTreeSet::new();
    for f in report["findings"].as_array().unwrap() {
        let kind = f["kind"].as_str().unwrap().to_string();
        let field = match kind.as_str() {
            "duplicate-mac" | "host-generated-mac" | "non-vmware-mac" | "disconnected-nic" => "mac",
            "duplicate-ip" => "ip",
            "no-ip" | "nic-without-network" | "template" => "vm",
            _ => "portgroup",
        };
        let key = f[field]
            .as_str()
            .unwrap_or_else(|| panic!("{kind} without {field}: {f}"))
            .to_string();
        assert!(!f["message"].as_str().unwrap().is_empty());
        assert!(got.insert((kind, key)), "reported twice: {f}");
    }
    let want: BTreeSet<(String, String)> = EXPECTED_FINDINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nunexpected {extra:?}"
    );
    // Every kind the planner knows is exercised by this estate.
    let kinds: BTreeSet<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.len(), 12, "{kinds:?}");

    assert_eq!(
        report["vms"], 53,
        "templates are out of scope, the NIC-less VM is in"
    );
    assert_eq!(report["nics"], 57);
    let pgs = report["portgroups"].as_array().unwrap();
    let find = |name: &str, vlan: Option<u64>| {
        pgs.iter()
            .find(|p| p["vsphere"] == name && (vlan.is_none() || p["vlan"].as_u64() == vlan))
            .unwrap_or_else(|| panic!("no portgroup entry {name} {vlan:?}"))
    };
    assert_eq!(find("Prod-Web", None)["name"], "prod-web-v100");
    assert_eq!(find("Prod Web", None)["name"], "prod-web-v101");
    assert_eq!(find("DV-Trunk", None)["kind"], "trunk");
    assert_eq!(find("DV-Trunk", None)["vlans"], "100-199,300");
    assert_eq!(find("DV-Trunk", None)["name"], "dv-trunk");
    assert_eq!(find("Guest-Trunk", None)["kind"], "trunk");
    assert_eq!(find("Guest-Trunk", None)["name"], "guest-trunk");
    assert_eq!(find("DV-PVLAN", None)["kind"], "pvlan");
    assert_eq!(find("DV-PVLAN", None)["name"], Value::Null);
    assert_eq!(find("VM Network", None)["kind"], "untagged");
    assert_eq!(find("VM Network", None)["name"], "vm-network");
    // 4095 lists the access VLANs known on its switch on its hosts (vSwitch0
    // on the Prod hosts: Prod-Web and Legacy-App's two), to be confirmed.
    let confirm = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "trunk-vlans")
        .unwrap();
    let message = confirm["message"].as_str().unwrap();
    assert!(
        message.contains("vSwitch0): 100,300-301. Ask the network team to confirm"),
        "{message}"
    );
    assert_eq!(find("dvSwitch-Prod-DVUplinks-11", None)["kind"], "uplink");
    assert_eq!(find("dvSwitch-Prod-DVUplinks-11", None)["nics"], 0);
    assert_eq!(find("Legacy-App", Some(300))["name"], "legacy-app-v300");
    assert_eq!(find("Legacy-App", Some(301))["name"], "legacy-app-v301");
    assert_eq!(find("DV-App", None)["nics"], 17);
}

#[test]
fn node_config_passes_the_daemons_validation_and_holds_the_reservations() {
    let scratch = Scratch::new("nodeconfig");
    let out = planned(&scratch);
    let config_path = out.join("node-config.json");
    let check = run(&["check-config", config_path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let bytes = std::fs::read(&config_path).unwrap();
    let config = portgroup::nodeconfig::NodeConfig::parse(&bytes).expect("daemon validation");
    let raw = json(&config_path);
    use portgroup::nodeconfig::Segment;
    let names: Vec<(&str, String)> = config
        .portgroups
        .iter()
        .map(|p| {
            let segment = match &p.segment {
                Segment::Access(vid) => vid.to_string(),
                Segment::Trunk { vids, native } => format!("trunk {vids} native {native:?}"),
                Segment::Untagged => "untagged".into(),
            };
            (p.name.as_str(), segment)
        })
        .collect();
    let want: Vec<(&str, &str)> = vec![
        ("dmz-vrrp", "120"),
        ("dv-app", "200"),
        ("dv-db", "210"),
        ("dv-promisc", "220"),
        ("dv-trunk", "trunk 100-199,300 native None"),
        ("guest-trunk", "trunk 100,300-301 native None"),
        ("legacy-app-v300", "300"),
        ("legacy-app-v301", "301"),
        ("prod-web-v100", "100"),
        ("prod-web-v101", "101"),
        ("vm-network", "untagged"),
    ];
    assert_eq!(
        names,
        want.into_iter()
            .map(|(n, s)| (n, s.to_string()))
            .collect::<Vec<_>>()
    );
    // A trunk portgroup reserves MACs only; the untagged one as an access one.
    assert_eq!(
        reservation_in(&raw, "dv-trunk"),
        vec![serde_json::json!({"mac": "00:50:56:81:08:03"})]
    );
    assert_eq!(
        reservation_in(&raw, "vm-network"),
        vec![serde_json::json!({"mac": "00:50:56:81:08:01", "ips": ["192.168.1.10"]})]
    );
    let reservation = |mac: &str| -> Option<Value> {
        raw["portgroups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["reservations"].as_array().cloned().unwrap_or_default())
            .find(|r| r["mac"] == mac)
    };
    let ips = |mac: &str| -> Vec<String> {
        reservation(mac).unwrap_or_else(|| panic!("no reservation for {mac}"))["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    // Upper-case MAC in the export, lower case in the config.
    assert_eq!(ips("00:50:56:81:01:01"), vec!["10.1.100.11"]);
    // Multi-address cell: link-local left out.
    assert_eq!(
        ips("00:50:56:81:01:05"),
        vec!["10.1.100.15", "2001:db8:100::15"]
    );
    assert_eq!(ips("00:50:56:81:03:03"), vec!["10.1.200.13"]);
    // Dotted MAC form.
    assert_eq!(ips("00:50:56:81:03:04"), vec!["10.1.200.14"]);
    // Duplicate IP left out of both reservations; the other address stays.
    assert_eq!(ips("00:50:56:81:01:0c"), Vec::<String>::new());
    assert_eq!(ips("00:50:56:81:03:08"), vec!["10.1.200.18"]);
    // Duplicate MAC: not reserved at all.
    assert!(reservation("00:50:56:81:aa:aa").is_none());
    // No address: MAC reserved alone; host-generated and non-VMware MACs are kept.
    assert_eq!(ips("00:50:56:81:09:02"), Vec::<String>::new());
    assert_eq!(ips("00:0c:29:12:34:56"), vec!["10.1.200.161"]);
    assert_eq!(ips("52:54:00:ab:cd:ef"), vec!["10.1.200.162"]);
    // Unplanned port groups (the private VLAN) get nothing.
    assert!(reservation("00:50:56:81:08:04").is_none());
    // The ConfigMap carries the same JSON.
    let configmap = std::fs::read_to_string(out.join("configmap.yaml")).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let embedded: String = text.lines().map(|l| format!("    {l}\n")).collect();
    assert!(
        configmap.contains(&embedded),
        "configmap.yaml does not embed node-config.json"
    );
}

#[test]
fn nads_vm_stanzas_and_network_map() {
    let scratch = Scratch::new("manifests");
    let out = planned(&scratch);
    let nad = std::fs::read_to_string(out.join("nads/dmz-vrrp.yaml")).unwrap();
    assert!(nad.contains("\"spoofCheck\": false"), "{nad}");
    assert!(nad.contains("namespace: \"vms\""));
    assert!(
        nad.contains("k8s.v1.cni.cncf.io/resourceName: \"portgroup.io/dmz-vrrp\""),
        "the device-plugin annotation is on by default: {nad}"
    );
    let promisc = std::fs::read_to_string(out.join("nads/dv-promisc.yaml")).unwrap();
    assert!(
        promisc.contains("\"spoofCheck\": true"),
        "promiscuous mode alone keeps spoofCheck"
    );
    let files: BTreeSet<String> = read_tree(&out).into_keys().collect();
    assert_eq!(files.iter().filter(|f| f.starts_with("nads/")).count(), 11);
    // One stanza per VM with a planned NIC: 53 in scope minus pvlan01 and nonic01.
    assert_eq!(files.iter().filter(|f| f.starts_with("vms/")).count(), 51);
    let trunk = std::fs::read_to_string(out.join("nads/guest-trunk.yaml")).unwrap();
    assert!(
        trunk.contains("# vSphere port group(s) Guest-Trunk, trunk 100,300-301: 1 NIC(s) planned."),
        "{trunk}"
    );
    assert!(
        trunk.contains("\"capabilities\": { \"mac\": true }"),
        "{trunk}"
    );
    let vgt = std::fs::read_to_string(out.join("vms/vgt01.yaml")).unwrap();
    assert!(vgt.contains("networkName: \"vms/guest-trunk\""), "{vgt}");
    let disc = std::fs::read_to_string(out.join("vms/disc01.yaml")).unwrap();
    let expected = "          interfaces:
            - name: \"net-0\"  # Network adapter 1
              bridge: {}
              macAddress: \"00:50:56:81:0a:00\"
            - name: \"net-1\"  # Network adapter 2
              bridge: {}
              macAddress: \"00:50:56:81:0a:10\"
              state: down
      networks:
        - name: \"net-0\"
          multus:
            networkName: \"vms/prod-web-v100\"
        - name: \"net-1\"
          multus:
            networkName: \"vms/dv-db\"
";
    assert!(disc.ends_with(expected), "{disc}");
    let nonet = std::fs::read_to_string(out.join("vms/nonet01.yaml")).unwrap();
    assert!(nonet.contains("# Left out: Network adapter 2"), "{nonet}");
    assert!(!nonet.contains("net-1"));
    let map = std::fs::read_to_string(out.join("networkmap.yaml")).unwrap();
    assert!(map.contains("id: \"dvportgroup-101\""), "{map}");
    assert!(map.contains("name: \"/DC1/network/Prod-Web\""), "{map}");
    assert!(
        map.contains("# Not mapped (not planned, see report.md): DV-PVLAN"),
        "{map}"
    );
    assert!(
        map.contains("id: \"dvportgroup-103\""),
        "the trunk is mapped: {map}"
    );
    assert!(!map.contains("dvportgroup-104"));
}

#[test]
fn resource_name_annotation_can_be_left_off() {
    let scratch = Scratch::new("annotation");
    let xlsx = scratch.path("e.xlsx");
    realistic().write_xlsx(&xlsx);
    let out = scratch.path("out");
    let o = run(&[
        "plan",
        "--rvtools",
        xlsx.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-resource-name-annotation",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nad = std::fs::read_to_string(out.join("nads/dv-app.yaml")).unwrap();
    assert!(!nad.contains("resourceName"), "{nad}");
    assert!(out.join("report.json").exists());
    assert!(!out.join("report.html").exists() && !out.join("report.md").exists());
}

/// An older RVTools CSV export: no SRM Placeholder, NIC label, Starts Connected
/// or IPv6 column, one "IP Address" column, other header spellings, no vInfo,
/// comma-separated without quotes.
#[test]
fn older_export_layout_plans() {
    let scratch = Scratch::new("old-layout");
    let dir = scratch.path("old");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("RVTools_tabvNetwork.csv"),
        "VM,Power state,Template,Adapter,Network,Switch,Connected,MAC Address,Type,IP Address,Annotation,Cost Center,Datacenter,Cluster,Host,VI SDK Server\n\
         old01,poweredOn,FALSE,Vmxnet3,LAN 10,vSwitch1,TRUE,00:50:56:94:AE:C1,assigned,10.0.10.5 fe80::1 2001:db8:10::5,,cc-1,DC,C1,esx1,vc\n\
         old01,poweredOn,FALSE,E1000,LAN 10,vSwitch1,FALSE,00:50:56:94:ae:c2,assigned,unknown,,cc-1,DC,C1,esx1,vc\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("RVTools_tabvPort.csv"),
        "Host,Datacenter,Cluster,Port Group,Switch,VLAN,Promiscuous Mode,Mac Changes,Forged Transmits\nesx1,DC,C1,LAN 10,vSwitch1,10,False,False,False\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("RVTools_tabdvPort.csv"),
        "Port,Switch,VLAN,Allow Promiscuous,Mac Changes,Forged Transmits\n",
    )
    .unwrap();
    let out = scratch.path("out");
    plan_into(&dir, &out);
    let config = json(&out.join("node-config.json"));
    assert_eq!(config["portgroups"][0]["name"], "lan-10");
    assert_eq!(config["portgroups"][0]["vlan"], 10);
    assert_eq!(
        config["portgroups"][0]["reservations"][0],
        serde_json::json!({"mac": "00:50:56:94:ae:c1", "ips": ["10.0.10.5", "2001:db8:10::5"]})
    );
    let stanza = std::fs::read_to_string(out.join("vms/old01.yaml")).unwrap();
    // Without "Starts Connected", a NIC starts as it is now: the second is down.
    assert_eq!(stanza.matches("state: down").count(), 1, "{stanza}");
}

/// Two vCenters' exports merge: the same VM name in both is two VMs (two
/// stanzas, distinct Kubernetes names); a MAC that both vCenters handed out is
/// a duplicate across the whole estate; one vCenter exported twice does not
/// double its VMs.
#[test]
fn exports_of_several_vcenters_merge() {
    use common::estate::{add_dvport, add_vm, empty_estate, Cell, NicRow, PortRow, VmRow};
    let scratch = Scratch::new("vcenters");
    let export = |vcenter: &str, mac: &str, ip: &str| {
        let mut e = empty_estate();
        let pg = PortRow {
            name: "DV-App",
            vlan: Cell::Num(200.0),
            promiscuous: false,
            mac_changes: false,
            forged: false,
        };
        add_dvport(&mut e, &pg, "dvportgroup-101");
        add_vm(
            &mut e,
            &VmRow {
                name: "web01".into(),
                cluster: "C1",
                host: "esx01".into(),
                powered_on: true,
                template: false,
                nics: vec![
                    NicRow::new("DV-App", mac, ip),
                    NicRow::new("DV-App", &mac.replace(":01", ":02"), ""),
                ],
            },
        );
        for table in &mut e.tables {
            let col = table.headers.iter().position(|h| h == "VI SDK Server");
            for row in &mut table.rows {
                if let Some(c) = col {
                    row[c] = Cell::from(vcenter);
                }
            }
        }
        e
    };
    let a = scratch.path("vc-a.xlsx");
    export("vc-a.example.com", "00:50:56:80:00:01", "10.1.200.1").write_xlsx(&a);
    let b = scratch.path("vc-b");
    export("vc-b.example.com", "00:50:56:80:00:01", "10.1.200.2").write_csv_dir(&b, ';');
    let out = scratch.path("out");
    let o = run(&[
        "plan",
        "--rvtools",
        a.to_str().unwrap(),
        "--rvtools",
        b.to_str().unwrap(),
        "--rvtools",
        a.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = json(&out.join("report.json"));
    assert_eq!(report["vms"], 2, "vc-a exported twice counts once");
    assert_eq!(report["nics"], 4);
    let dup: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "duplicate-mac")
        .collect();
    assert_eq!(dup.len(), 2, "{dup:?}");
    assert_eq!(dup[0]["mac"], "00:50:56:80:00:01");
    assert!(out.join("vms/web01.yaml").exists() && out.join("vms/web01-2.yaml").exists());
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
