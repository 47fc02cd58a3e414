//! What the node config (the cluster admin) decides and a network config cannot
//! change: who attaches to a portgroup, port security, `bridge:` mode, shared
//! bridge state, and the limits on what one attachment may ask for.

use crate::common::{conf, merge, Lab};
use serde_json::{json, Value};

const VM_MAC: &str = "00:50:56:aa:bb:01";

/// A node state whose portgroup `prod-web` is the lab's br0.
fn state(portgroup: Value, top: Value) -> Value {
    let mut pg = json!({
        "name": "prod-web", "vlan": 100, "uplink": "eth1", "bridge": "br0",
        "vlanInterface": "pgv0000.100", "mtu": 1500, "ready": true, "reason": null,
        "reservations": [{"mac": VM_MAC, "ips": ["10.10.100.21/24"]}]
    });
    merge(&mut pg, portgroup);
    let mut s = json!({
        "node": "worker-3", "generation": 1, "reconciledAt": "2026-11-23T10:00:00Z",
        "portgroups": [pg]
    });
    merge(&mut s, top);
    s
}

fn portgroup_conf(extra: Value) -> Value {
    let mut c = conf("1.0.0", json!({"bridge": null, "portgroup": "prod-web"}));
    merge(&mut c, extra);
    c
}

/// CNI_ARGS as Multus sends them.
fn multus_args(namespace: &str) -> String {
    format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=virt-launcher-vm-x7k2p;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=0f1e"
    )
}

#[test]
fn namespaces_allowed_refused_glob_and_missing() {
    let (lab, _pod, path) = Lab::with_pod();
    let c = portgroup_conf(json!({}));
    let cases: &[(Value, Option<&str>, u64)] = &[
        (json!(null), Some("anyone"), 0),
        (json!(null), None, 0),
        (json!(["team-a"]), Some("team-a"), 0),
        (json!(["team-a"]), Some("team-b"), 108),
        (json!(["team-*", "ops"]), Some("team-b"), 0),
        (json!(["team-*", "ops"]), Some("ops"), 0),
        (json!(["team-*", "ops"]), Some("dev"), 108),
        // A bare libcni runtime sends no namespace: only "any namespace" admits it.
        (json!(["team-a"]), None, 108),
        (json!(["*"]), None, 0),
    ];
    for (namespaces, namespace, want) in cases {
        lab.write_state(&state(json!({"namespaces": namespaces}), json!({})));
        let args = namespace.map(multus_args).unwrap_or_default();
        let mut env = Lab::attach_env("c1", &path, "net1");
        env.push(("CNI_ARGS", &args));
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(
            add.cni_code(),
            *want,
            "{namespaces} {namespace:?}: {}",
            add.stdout
        );
        if *want == 108 {
            let details = add.json["details"].as_str().unwrap();
            assert!(details.contains("prod-web"), "{details}");
            if let Some(ns) = namespace {
                assert!(details.contains(ns), "{details}");
            }
        }
        assert_eq!(lab.cni("DEL", &c, &env).code, 0);
        lab.assert_clean(&["br0"]);
    }
}

#[test]
fn a_reserved_mac_stays_with_its_namespaces() {
    let (lab, _pod, path) = Lab::with_pod();
    lab.write_state(&state(json!({"namespaces": ["team-a"]}), json!({})));
    let c = portgroup_conf(json!({"runtimeConfig": {"mac": VM_MAC}}));
    let other = multus_args("team-b");
    let mut env = Lab::attach_env("c1", &path, "net1");
    env.push(("CNI_ARGS", &other));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.cni_code(), 108, "{}", add.stdout);
    lab.assert_clean(&["br0"]);
    let own = multus_args("team-a");
    env.pop();
    env.push(("CNI_ARGS", &own));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn strict_portgroup_refuses_an_extra_declared_ip() {
    let (lab, _pod, path) = Lab::with_pod();
    lab.write_state(&state(json!({"strict": true}), json!({})));
    let env = Lab::attach_env("c1", &path, "net1");
    let extra = portgroup_conf(
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.10.100.21/24", "10.10.100.1/24"]}}),
    );
    let add = lab.cni("ADD", &extra, &env);
    assert_eq!(add.cni_code(), 105, "{}", add.stdout);
    assert!(add.stdout.contains("10.10.100.1"), "{}", add.stdout);
    lab.assert_clean(&["br0"]);
    let reserved =
        portgroup_conf(json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.10.100.21/24"]}}));
    let add = lab.cni("ADD", &reserved, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert_eq!(lab.cni("DEL", &reserved, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn forced_spoof_check_and_probe() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    lab.write_state(&state(
        json!({"requireSpoofCheck": true, "requireConflictProbe": true}),
        json!({}),
    ));
    for field in ["spoofCheck", "conflictProbe"] {
        let mut c = portgroup_conf(json!({}));
        c[field] = false.into();
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(add.cni_code(), 109, "{field}: {}", add.stdout);
        assert!(add.stdout.contains(field));
        lab.assert_clean(&["br0"]);
    }
    // Where the admin does not require them, the planner's spoofCheck: false stays possible.
    lab.write_state(&state(json!({}), json!({})));
    let open = portgroup_conf(json!({"spoofCheck": false}));
    let add = lab.cni("ADD", &open, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert!(lab.secured_ports().is_empty());
    assert_eq!(lab.cni("DEL", &open, &env).code, 0);
}

#[test]
fn bridge_mode_never_takes_a_portgroupd_bridge() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    lab.add_bridge("pgbr1a2b.200");
    lab.node_ip(&[
        "link",
        "set",
        "pgbr1a2b.200",
        "alias",
        "portgroup:bridge db uplink=eth1 vlan=200",
    ]);
    let c = conf("1.0.0", json!({"bridge": "pgbr1a2b.200"}));
    // Even with no node state at all (the mark alone decides).
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.cni_code(), 109, "{}", add.stdout);
    assert!(add.stdout.contains("portgroup"), "{}", add.stdout);
    lab.assert_clean(&["br0", "pgbr1a2b.200"]);

    // Lab mode (no node state): any other bridge, as before.
    let lab_bridge = conf("1.0.0", json!({}));
    assert_eq!(lab.cni("ADD", &lab_bridge, &env).code, 0);
    assert_eq!(lab.cni("DEL", &lab_bridge, &env).code, 0);

    // With a node config: allowedBridges lists what bridge: mode may use, [] turns it off.
    lab.add_bridge("br1");
    lab.write_state(&state(json!({}), json!({"allowedBridges": ["br1"]})));
    let add = lab.cni("ADD", &lab_bridge, &env);
    assert_eq!(add.cni_code(), 109, "{}", add.stdout);
    assert!(add.stdout.contains("allowedBridges"));
    let br1 = conf("1.0.0", json!({"bridge": "br1"}));
    assert_eq!(lab.cni("ADD", &br1, &env).code, 0);
    assert_eq!(lab.cni("DEL", &br1, &env).code, 0);
    lab.write_state(&state(json!({}), json!({"allowedBridges": []})));
    assert_eq!(lab.cni("ADD", &br1, &env).cni_code(), 109);
    // STATUS says so too, for the owned bridge and for one bridge mode may not use.
    let mut status = br1.clone();
    status["cniVersion"] = "1.1.0".into();
    assert_eq!(lab.cni("STATUS", &status, &[]).cni_code(), 50);
    let mut owned = c.clone();
    owned["cniVersion"] = "1.1.0".into();
    let out = lab.cni("STATUS", &owned, &[]);
    assert_eq!(out.cni_code(), 50, "{}", out.stdout);
    assert!(
        out.stdout.contains("belongs to portgroupd"),
        "{}",
        out.stdout
    );
    lab.assert_clean(&["br0", "br1", "pgbr1a2b.200"]);
}

fn bridge_facts(lab: &Lab) -> (u64, Vec<String>) {
    let out = lab.node_ip(&["-j", "addr", "show", "dev", "br0"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut addrs: Vec<String> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    addrs.sort();
    (v[0]["mtu"].as_u64().unwrap(), addrs)
}

#[test]
fn pod_mtu_never_moves_the_bridge() {
    let (lab, pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    lab.node_ip(&["addr", "add", "2001:db8:1::1/64", "dev", "br0", "nodad"]);
    lab.node_ip(&["addr", "add", "192.0.2.1/24", "dev", "br0"]);
    let before = bridge_facts(&lab);
    assert_eq!(before.0, 1500);
    assert!(before.1.iter().any(|a| a.starts_with("2001:db8:1::1")));

    let small = conf("1.0.0", json!({"mtu": 68}));
    let add = lab.cni("ADD", &small, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert_eq!(crate::common::pod_link(&pod, "net1")["mtu"], 68);
    assert_eq!(bridge_facts(&lab), before, "bridge MTU or addresses moved");
    assert_eq!(lab.cni("DEL", &small, &env).code, 0);

    let big = conf("1.0.0", json!({"mtu": 9000}));
    let add = lab.cni("ADD", &big, &env);
    assert_eq!(add.cni_code(), 7, "{}", add.stdout);
    assert!(add.stdout.contains("mtu"));
    assert_eq!(bridge_facts(&lab), before);
    lab.assert_clean(&["br0"]);
}

#[test]
fn limits_have_clear_errors() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let v4: Vec<String> = (0..2100u32)
        .map(|i| format!("{}/8", std::net::Ipv4Addr::from(0x0a00_0001 + i)))
        .collect();
    let v6: Vec<String> = (0..1500u32)
        .map(|i| format!("2001:db8::{:x}/64", i + 1))
        .collect();
    let big_probe = conf("1.0.0", json!({"probe": {"count": 300}}));
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "2100 IPv4",
            serde_json::to_vec(&conf("1.0.0", json!({"runtimeConfig": {"ips": v4}}))).unwrap(),
            7,
            "at most 256",
        ),
        (
            "1500 IPv6",
            serde_json::to_vec(&conf("1.0.0", json!({"runtimeConfig": {"ips": v6}}))).unwrap(),
            7,
            "at most 256",
        ),
        (
            "probe count 300",
            serde_json::to_vec(&big_probe).unwrap(),
            7,
            "probe.count",
        ),
        (
            "probe wait",
            serde_json::to_vec(&conf("1.0.0", json!({"probe": {"waitMs": 60000}}))).unwrap(),
            7,
            "probe.waitMs",
        ),
        (
            "duplicate keys",
            br#"{"cniVersion":"1.0.0","name":"testnet","type":"portgroup","bridge":"br0","spoofCheck":true,"spoofCheck":false}"#.to_vec(),
            6,
            "duplicate key",
        ),
        (
            "duplicate nested keys",
            br#"{"cniVersion":"1.0.0","name":"testnet","type":"portgroup","bridge":"br0","runtimeConfig":{"mac":"00:50:56:aa:bb:01","mac":"00:50:56:aa:bb:02"}}"#.to_vec(),
            6,
            "duplicate key",
        ),
    ];
    for (what, input, code, names) in cases {
        let add = lab.cni_raw("ADD", &input, &env);
        assert_eq!(add.cni_code(), code, "{what}: {}", add.stdout);
        assert!(add.stdout.contains(names), "{what}: {}", add.stdout);
        lab.assert_clean(&["br0"]);
    }
}

#[test]
fn a_big_reservation_is_enforced_whole() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let mut ips: Vec<String> = (0..2100u32)
        .map(|i| format!("{}/8", std::net::Ipv4Addr::from(0x0a00_0001 + i)))
        .collect();
    ips.extend((0..1500u32).map(|i| format!("2001:db8::{:x}/64", i + 1)));
    lab.write_state(&state(
        json!({"reservations": [{"mac": VM_MAC, "ips": ips}]}),
        json!({}),
    ));
    let c = portgroup_conf(json!({"runtimeConfig": {"mac": VM_MAC}}));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let count = |set: &str| {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node,
                "nft",
                "-j",
                "list",
                "set",
                "bridge",
                "portgroup",
                set,
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("set"))
            .map(|s| s["elem"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    assert_eq!(count("port_ip4"), 2100);
    assert_eq!(count("port_ip6"), 1500);
    let check = {
        let mut with_prev = c.clone();
        with_prev["prevResult"] = add.json.clone();
        lab.cni("CHECK", &with_prev, &env)
    };
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn long_container_ids_and_colliding_record_names() {
    let (lab, pod, path) = Lab::with_pod();
    let hex64 = "0123456789abcdef".repeat(4);
    let long = format!("{}-{}", "a".repeat(200), "b".repeat(56));
    let uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let c = conf("1.1.0", json!({}));
    for id in [hex64.as_str(), long.as_str(), uuid] {
        assert!(id.len() <= 257);
        let env = Lab::attach_env(id, &path, "net1");
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(add.code, 0, "{}: {}", id.len(), add.stdout);
        let mut with_prev = c.clone();
        with_prev["prevResult"] = add.json.clone();
        assert_eq!(lab.cni("CHECK", &with_prev, &env).code, 0, "{}", id.len());
        assert_eq!(lab.cni("DEL", &c, &env).code, 0, "{}", id.len());
        lab.assert_clean(&["br0"]);
    }
    // GC of a long-ID attachment the runtime no longer lists.
    let env = Lab::attach_env(&long, &path, "net1");
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(lab.cni("GC", &gc, &[]).code, 0);
    lab.assert_clean(&["br0"]);

    // (a-b, c) and (a, b-c) are two attachments, each with its own record.
    let first = Lab::attach_env("a-b", &path, "c");
    let second = Lab::attach_env("a", &path, "b-c");
    assert_eq!(lab.cni("ADD", &c, &first).code, 0);
    let add = lab.cni("ADD", &c, &second);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert_eq!(lab.records().len(), 2, "{:?}", lab.records());
    assert_eq!(lab.cni("DEL", &c, &second).code, 0);
    assert_eq!(lab.records().len(), 1);
    assert!(crate::common::links(&pod).contains(&"c".to_string()));
    assert_eq!(lab.cni("DEL", &c, &first).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn a_live_mac_on_this_node_is_no_other_namespaces_migration() {
    let mut lab = Lab::new();
    let source_pod = lab.pod();
    let target_pod = lab.pod();
    let (source_path, target_path) = (Lab::netns_path(&source_pod), Lab::netns_path(&target_pod));
    lab.write_state(&state(json!({"reservations": []}), json!({})));
    let vm = |extra: Value| {
        let mut c = portgroup_conf(
            json!({"runtimeConfig": {"mac": "00:50:56:aa:bb:77", "ips": ["10.10.100.77/24"]}}),
        );
        merge(&mut c, extra);
        c
    };
    // The running VM, in namespace team-a, answering for its address.
    let source = vm(json!({"conflictProbe": false}));
    let a = multus_args("team-a");
    let mut source_env = Lab::attach_env("src", &source_path, "net1");
    source_env.push(("CNI_ARGS", &a));
    let add = lab.cni("ADD", &source, &source_env);
    assert_eq!(add.code, 0, "{}", add.stdout);

    // Another namespace claiming that MAC: the probe hears the VM, and the record of
    // the VM here says whose it is.
    let target = vm(json!({"linkDown": true, "conflictProbe": true, "logLevel": "info"}));
    let b = multus_args("team-b");
    let mut env = Lab::attach_env("dst", &target_path, "net1");
    env.push(("CNI_ARGS", &b));
    let add = lab.cni("ADD", &target, &env);
    assert_eq!(add.cni_code(), 108, "{} {}", add.stdout, add.stderr);
    assert!(
        add.stdout.contains("team-a") && add.stdout.contains("team-b"),
        "{}",
        add.stdout
    );
    assert_eq!(lab.records().len(), 1);

    // The same namespace: a live migration, as before.
    env.pop();
    env.push(("CNI_ARGS", &a));
    let add = lab.cni("ADD", &target, &env);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    assert!(add.stderr.contains("live migration"), "{}", add.stderr);
    assert_eq!(lab.cni("DEL", &target, &env).code, 0);
    assert_eq!(lab.cni("DEL", &source, &source_env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn a_reserved_mac_cannot_be_taken_through_another_portgroup() {
    let (lab, _pod, path) = Lab::with_pod();
    lab.add_bridge("br1");
    // prod-web (br0) reserves the VM's MAC for team-a; open (br1) admits anyone.
    let mut s = state(json!({"namespaces": ["team-a"]}), json!({}));
    s["portgroups"].as_array_mut().unwrap().push(json!({
        "name": "open", "vlan": 300, "uplink": "eth1", "bridge": "br1",
        "vlanInterface": "pgv0000.300", "mtu": 1500, "ready": true, "reason": null
    }));
    lab.write_state(&s);
    let b = multus_args("team-b");
    let mut env = Lab::attach_env("c1", &path, "net1");
    env.push(("CNI_ARGS", &b));
    let via_open = portgroup_conf(json!({"portgroup": "open", "runtimeConfig": {"mac": VM_MAC}}));
    let add = lab.cni("ADD", &via_open, &env);
    assert_eq!(add.cni_code(), 108, "{}", add.stdout);
    assert!(add.stdout.contains("prod-web"), "{}", add.stdout);
    let via_bridge = conf(
        "1.0.0",
        json!({"bridge": "br1", "runtimeConfig": {"mac": VM_MAC}}),
    );
    assert_eq!(lab.cni("ADD", &via_bridge, &env).cni_code(), 108);
    lab.assert_clean(&["br0", "br1"]);
    // Another MAC through the open portgroup is fine.
    let free =
        portgroup_conf(json!({"portgroup": "open", "runtimeConfig": {"mac": "00:50:56:aa:bb:99"}}));
    assert_eq!(lab.cni("ADD", &free, &env).code, 0);
    assert_eq!(lab.cni("DEL", &free, &env).code, 0);
    lab.assert_clean(&["br0", "br1"]);
}
