//! ADD, CHECK, DEL, GC, STATUS and VERSION through the built binary, as a runtime
//! runs it, in private network namespaces.

use crate::common::{conf, links, pod_link, Lab};
use serde_json::{json, Value};

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn add_check_del_every_version() {
    for (i, version) in VERSIONS.iter().enumerate() {
        let (lab, pod, path) = Lab::with_pod();
        let id = format!("ctr{i}");
        let c = conf(
            version,
            json!({"mtu": 1400, "runtimeConfig": {"mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24", "2001:db8:100::21/64"]}}),
        );
        let env = Lab::attach_env(&id, &path, "net1");
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(add.code, 0, "{version}: {} {}", add.stdout, add.stderr);
        let r = &add.json;
        assert_eq!(r["cniVersion"], *version);
        assert_eq!(r["interfaces"][1]["name"], "net1");
        assert_eq!(r["interfaces"][1]["mac"], "00:50:56:aa:bb:01");
        assert_eq!(r["interfaces"][1]["sandbox"], path.as_str());
        assert_eq!(r["ips"][0]["address"], "10.10.100.21/24");
        assert_eq!(r["ips"][0]["interface"], 1);
        let legacy = version.starts_with("0.");
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            legacy,
            "{version}: {r}"
        );
        if legacy {
            assert_eq!(r["ips"][1]["version"], "6");
        }

        let link = pod_link(&pod, "net1");
        assert_eq!(link["address"], "00:50:56:aa:bb:01");
        assert_eq!(link["mtu"], 1400);
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let addrs: Vec<_> = link["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["local"].clone())
            .collect();
        assert!(
            addrs.contains(&json!("10.10.100.21")) && addrs.contains(&json!("2001:db8:100::21"))
        );
        let host = r["interfaces"][0]["name"].as_str().unwrap();
        let master = lab.node_ip(&["-j", "link", "show", host]);
        assert!(master.contains("\"master\":\"br0\""), "{master}");

        if *version >= "0.4.0" {
            let check = lab.cni("CHECK", &with_prev(&c, r), &env);
            assert_eq!(check.code, 0, "{version} CHECK: {}", check.stdout);
        } else {
            let check = lab.cni("CHECK", &with_prev(&c, r), &env);
            assert_eq!(check.cni_code(), 1, "{version}: CHECK needs 0.4.0");
        }
        let del = lab.cni("DEL", &c, &env);
        assert_eq!(del.code, 0, "{version} DEL: {}", del.stdout);
        assert!(del.stdout.trim().is_empty());
        lab.assert_clean(&["br0"]);
        assert_eq!(links(&pod), Vec::<String>::new());
    }
}

#[test]
fn mac_from_cni_args_and_random_fallback_and_link_down() {
    let (lab, pod, path) = Lab::with_pod();
    let mut env = Lab::attach_env("c1", &path, "net1");
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=vm;MAC=00:50:56:00:00:07",
    ));
    let add = lab.cni("ADD", &conf("1.0.0", json!({"linkDown": true})), &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let link = pod_link(&pod, "net1");
    assert_eq!(link["address"], "00:50:56:00:00:07");
    assert!(
        !link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "linkDown: {link}"
    );
    // No IP source at all: plain L2.
    assert!(add.json.get("ips").is_none());

    let env2 = Lab::attach_env("c2", &path, "net2");
    let add = lab.cni("ADD", &conf("1.0.0", json!({})), &env2);
    assert_eq!(add.code, 0);
    let mac = add.json["interfaces"][1]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(
        first & 0x03,
        0x02,
        "random MAC must be local unicast: {mac}"
    );
    // The bridge MTU is the default.
    assert_eq!(pod_link(&pod, "net2")["mtu"], 1500);
    for (id, ifname) in [("c1", "net1"), ("c2", "net2")] {
        assert_eq!(
            lab.cni(
                "DEL",
                &conf("1.0.0", json!({})),
                &Lab::attach_env(id, &path, ifname)
            )
            .code,
            0
        );
    }
    lab.assert_clean(&["br0"]);
}

#[test]
fn add_onto_existing_interface_fails_and_leaks_nothing() {
    let (lab, pod, path) = Lab::with_pod();
    lab.pod_ip(
        &pod,
        &[
            "link", "add", "net1", "type", "veth", "peer", "name", "other",
        ],
    );
    let add = lab.cni(
        "ADD",
        &conf("1.0.0", json!({})),
        &Lab::attach_env("c1", &path, "net1"),
    );
    assert_eq!(add.cni_code(), 101, "{}", add.stdout);
    assert!(add.json["details"]
        .as_str()
        .unwrap()
        .contains("already exists in the pod"));
    lab.assert_clean(&["br0"]);
    let mut pod_links = links(&pod);
    pod_links.sort();
    assert_eq!(pod_links, vec!["net1", "other"]);
}

#[test]
fn second_add_of_same_attachment_keeps_the_first() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let c = conf("1.0.0", json!({}));
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    let again = lab.cni("ADD", &c, &env);
    assert_eq!(again.cni_code(), 101);
    // The first attachment is intact.
    assert_eq!(lab.node_links().len(), 2);
    assert_eq!(lab.records().len(), 1);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn del_is_idempotent() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let c = conf("1.0.0", json!({}));
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0, "second DEL");
    // DEL with no netns at all, and for something never added.
    let no_netns = vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "net1")];
    assert_eq!(lab.cni("DEL", &c, &no_netns).code, 0);
    assert_eq!(
        lab.cni("DEL", &c, &Lab::attach_env("never", &path, "net9"))
            .code,
        0
    );
    // DEL still works when the config has since become invalid (but is JSON).
    assert_eq!(
        lab.cni("DEL", &conf("1.0.0", json!({"mtu": 1})), &env).code,
        0
    );
    lab.assert_clean(&["br0"]);
}

#[test]
fn del_after_netns_is_gone() {
    let (lab, pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let c = conf("1.0.0", json!({}));
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    crate::common::sh(&["ip", "netns", "del", &pod]);
    let del = lab.cni("DEL", &c, &env);
    assert_eq!(del.code, 0, "{}", del.stdout);
    lab.assert_clean(&["br0"]);
}

#[test]
fn check_fails_when_host_veth_leaves_the_bridge_and_follows_renames() {
    let (lab, pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let c = conf("1.0.0", json!({"runtimeConfig": {"ips": ["10.0.0.2/24"]}}));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0);
    let checked = with_prev(&c, &add.json);
    // KubeVirt renames the pod interface and moves its MAC: CHECK follows the index.
    lab.pod_ip(&pod, &["link", "set", "net1", "down"]);
    lab.pod_ip(
        &pod,
        &[
            "link",
            "set",
            "net1",
            "name",
            "k6t-net1",
            "address",
            "02:00:00:00:00:99",
        ],
    );
    lab.pod_ip(&pod, &["link", "set", "k6t-net1", "up"]);
    let check = lab.cni("CHECK", &checked, &env);
    assert_eq!(check.code, 0, "after rename: {}", check.stdout);
    // Address removed: CHECK fails.
    lab.pod_ip(&pod, &["addr", "del", "10.0.0.2/24", "dev", "k6t-net1"]);
    assert_eq!(lab.cni("CHECK", &checked, &env).cni_code(), 107);
    lab.pod_ip(&pod, &["addr", "add", "10.0.0.2/24", "dev", "k6t-net1"]);
    assert_eq!(lab.cni("CHECK", &checked, &env).code, 0);
    // Host veth detached from the bridge: CHECK fails.
    let host = add.json["interfaces"][0]["name"].as_str().unwrap();
    lab.node_ip(&["link", "set", host, "nomaster"]);
    let check = lab.cni("CHECK", &checked, &env);
    assert_eq!(check.cni_code(), 107, "{}", check.stdout);
    assert!(check.json["details"]
        .as_str()
        .unwrap()
        .contains("not on bridge br0"));
    // Host veth down: fails too.
    lab.node_ip(&["link", "set", host, "master", "br0"]);
    lab.node_ip(&["link", "set", host, "down"]);
    assert_eq!(lab.cni("CHECK", &checked, &env).cni_code(), 107);
    // Without prevResult CHECK cannot know what to check.
    assert_eq!(lab.cni("CHECK", &c, &env).cni_code(), 7);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn killed_add_then_del_leaves_nothing() {
    let stages = [
        "record-written",
        "port-security-installed",
        "veth-created",
        "addresses-added",
        "probed",
    ];
    for stage in stages {
        let (lab, pod, path) = Lab::with_pod();
        let mut env = Lab::attach_env("c1", &path, "net1");
        let c = conf(
            "1.0.0",
            json!({"runtimeConfig": {"ips": ["10.0.0.2/24"]}, "conflictProbe": true}),
        );
        env.push(("PORTGROUP_TEST_EXIT_AT", stage));
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(add.code, 137, "{stage}: the ADD should have died there");
        assert!(
            !lab.records().is_empty(),
            "{stage}: the record is written first"
        );
        env.pop();
        let del = lab.cni("DEL", &c, &env);
        assert_eq!(del.code, 0, "{stage}: {}", del.stdout);
        lab.assert_clean(&["br0"]);
        assert_eq!(links(&pod), Vec::<String>::new(), "{stage}");
    }
}

#[test]
fn delegated_ipam_static() {
    let (lab, pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let c = conf(
            version,
            json!({"ipam": {"type": "static",
                "addresses": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {"nameservers": ["10.1.0.53"]}}}),
        );
        let add = lab.cni("ADD", &c, &env);
        assert_eq!(add.code, 0, "{version}: {} {}", add.stdout, add.stderr);
        assert_eq!(add.json["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(add.json["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(add.json["ips"][0]["interface"], 1);
        assert_eq!(add.json["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(add.json["dns"]["nameservers"][0], "10.1.0.53");
        let routes = lab.pod_ip(&pod, &["route", "show", "default"]);
        assert!(routes.contains("via 10.1.0.1 dev net1"), "{routes}");
        let check = lab.cni("CHECK", &with_prev(&c, &add.json), &env);
        assert_eq!(check.code, 0, "{version} CHECK: {}", check.stdout);
        assert_eq!(lab.cni("DEL", &c, &env).code, 0);
        lab.assert_clean(&["br0"]);
    }
    // An IPAM plugin that does not exist fails ADD with our code and leaves nothing.
    let c = conf("1.0.0", json!({"ipam": {"type": "no-such-ipam"}}));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.cni_code(), 103, "{}", add.stdout);
    assert!(add.json["details"]
        .as_str()
        .unwrap()
        .contains("no-such-ipam"));
    lab.assert_clean(&["br0"]);
    // An IPAM plugin's own error code passes through.
    let c = conf(
        "1.0.0",
        json!({"ipam": {"type": "static", "addresses": [{"address": "not-an-ip"}]}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_ne!(add.code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn chaining_keeps_prev_result() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": path}],
        "ips": [{"address": "192.168.0.5/24", "gateway": "192.168.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.0.1"}],
        "dns": {"nameservers": ["192.168.0.53"]}
    });
    let c = conf(
        "1.0.0",
        json!({"prevResult": prev, "runtimeConfig": {"ips": ["10.0.0.2/24"]}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let r = &add.json;
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][2]["name"], "net1");
    assert_eq!(r["ips"][0]["address"], "192.168.0.5/24");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert_eq!(r["ips"][1]["address"], "10.0.0.2/24");
    assert_eq!(r["ips"][1]["interface"], 2);
    assert_eq!(r["routes"][0]["gw"], "192.168.0.1");
    assert_eq!(r["dns"]["nameservers"][0], "192.168.0.53");
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn gc_removes_what_is_not_listed() {
    let (lab, pod, path) = Lab::with_pod();
    let c = conf("1.1.0", json!({}));
    for (id, ifname) in [("keep", "net1"), ("stale1", "net2"), ("stale2", "net3")] {
        assert_eq!(
            lab.cni("ADD", &c, &Lab::attach_env(id, &path, ifname)).code,
            0
        );
    }
    // Another network's attachment is not ours to collect.
    let mut other = c.clone();
    other["name"] = "othernet".into();
    assert_eq!(
        lab.cni("ADD", &other, &Lab::attach_env("foreign", &path, "net4"))
            .code,
        0
    );
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "net1"}]);
    let out = lab.cni("GC", &gc, &[]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let mut records = lab.records();
    records.sort();
    assert_eq!(records, vec!["foreign-net4.json", "keep-net1.json"]);
    let mut pod_links = links(&pod);
    pod_links.sort();
    assert_eq!(pod_links, vec!["net1", "net4"]);
    assert_eq!(lab.node_links().len(), 3);
    // GC needs 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = "1.0.0".into();
    assert_eq!(lab.cni("GC", &old, &[]).cni_code(), 1);
    assert_eq!(
        lab.cni("DEL", &c, &Lab::attach_env("keep", &path, "net1"))
            .code,
        0
    );
    assert_eq!(
        lab.cni("DEL", &other, &Lab::attach_env("foreign", &path, "net4"))
            .code,
        0
    );
    lab.assert_clean(&["br0"]);
}

fn state(ready: bool, reason: Option<&str>, strict: bool) -> Value {
    json!({
        "node": "worker-3", "generation": 1, "reconciledAt": "2026-11-23T10:00:00Z",
        "portgroups": [{
            "name": "prod-web", "vlan": 100, "uplink": "eth1", "bridge": "br0",
            "vlanInterface": "pgv0000.100", "mtu": 1500, "ready": ready, "reason": reason,
            "strict": strict,
            "reservations": [{"mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24"]}]
        }]
    })
}

fn portgroup_conf(version: &str, extra: Value) -> Value {
    let mut c = conf(version, json!({"bridge": null, "portgroup": "prod-web"}));
    crate::common::merge(&mut c, extra);
    c
}

#[test]
fn portgroup_mode_resolves_through_node_state() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("c1", &path, "net1");
    let c = portgroup_conf(
        "1.0.0",
        json!({"runtimeConfig": {"mac": "00:50:56:aa:bb:01"}}),
    );

    // No state: try again later, naming the file.
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.cni_code(), 11, "{}", add.stdout);
    assert!(add.json["details"].as_str().unwrap().contains("state.json"));
    lab.assert_clean(&["br0"]);

    lab.write_state(&state(
        false,
        Some("uplink eth1 not found on node worker-3"),
        false,
    ));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.cni_code(), 11);
    assert!(add.json["details"]
        .as_str()
        .unwrap()
        .contains("uplink eth1 not found on node worker-3"));
    lab.assert_clean(&["br0"]);

    let other = portgroup_conf("1.0.0", json!({"portgroup": "db"}));
    assert_eq!(lab.cni("ADD", &other, &env).cni_code(), 11);

    lab.write_state(&state(true, None, false));
    // As Multus sends it: the device the kubelet allocated for the NAD's
    // resourceName, kept in the attachment record.
    let mut c = c;
    crate::common::merge(&mut c, json!({"deviceID": "prod-web-17"}));
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let records = lab.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record: Value = serde_json::from_slice(
        &std::fs::read(lab.run_dir.join("attachments").join(&records[0])).unwrap(),
    )
    .unwrap();
    assert_eq!(record["deviceID"], "prod-web-17", "{record}");
    assert_eq!(record["portgroup"], "prod-web");
    let check = lab.cni("CHECK", &with_prev(&c, &add.json), &env);
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);

    // strict: a MAC with no reservation is refused; the reserved one passes.
    lab.write_state(&state(true, None, true));
    let unknown = portgroup_conf(
        "1.0.0",
        json!({"runtimeConfig": {"mac": "00:50:56:00:00:99"}}),
    );
    let add = lab.cni("ADD", &unknown, &env);
    assert_eq!(add.cni_code(), 105, "{}", add.stdout);
    lab.assert_clean(&["br0"]);
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn status_reports_readiness() {
    let lab = Lab::new();
    let c = portgroup_conf("1.1.0", json!({}));
    let out = lab.cni("STATUS", &c, &[]);
    assert_eq!(out.cni_code(), 50, "{}", out.stdout);
    lab.write_state(&state(
        false,
        Some("uplink eth1 not found on node worker-3"),
        false,
    ));
    let out = lab.cni("STATUS", &c, &[]);
    assert_eq!(out.cni_code(), 50);
    assert!(out.json["details"]
        .as_str()
        .unwrap()
        .contains("uplink eth1 not found"));
    std::fs::write(lab.run_dir.join("state.json"), b"{broken").unwrap();
    assert_eq!(lab.cni("STATUS", &c, &[]).cni_code(), 50);
    lab.write_state(&state(true, None, false));
    let out = lab.cni("STATUS", &c, &[]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.trim().is_empty());
    // Bridge mode: the bridge must exist.
    assert_eq!(lab.cni("STATUS", &conf("1.1.0", json!({})), &[]).code, 0);
    assert_eq!(
        lab.cni("STATUS", &conf("1.1.0", json!({"bridge": "nope0"})), &[])
            .cni_code(),
        50
    );
    // STATUS needs 1.1.0.
    assert_eq!(
        lab.cni("STATUS", &conf("1.0.0", json!({})), &[]).cni_code(),
        1
    );
}

#[test]
fn version_lists_supported_versions() {
    let lab = Lab::new();
    let out = lab.cni_raw("VERSION", br#"{"cniVersion": "0.4.0"}"#, &[]);
    assert_eq!(out.code, 0);
    assert_eq!(out.json["cniVersion"], "0.4.0");
    assert_eq!(out.json["supportedVersions"], json!(VERSIONS));
    let out = lab.cni_raw("VERSION", b"", &[]);
    assert_eq!(out.json["cniVersion"], "1.1.0");
}

#[test]
fn fifty_parallel_adds_then_dels() {
    let (lab, pod, path) = Lab::with_pod();
    let c = conf("1.0.0", json!({"spoofCheck": true}));
    let lab = &lab;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (c, path) = (&c, &path);
                scope.spawn(move || {
                    let id = format!("par{i}");
                    let ifname = format!("net{i}");
                    let ips = json!({"runtimeConfig": {"ips": [format!("10.2.{}.{}/16", i / 200, i % 200 + 1)]}});
                    let mut c = c.clone();
                    crate::common::merge(&mut c, ips);
                    lab.cni("ADD", &c, &Lab::attach_env(&id, path, &ifname))
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let out = h.join().unwrap();
            assert_eq!(out.code, 0, "ADD {i}: {} {}", out.stdout, out.stderr);
        }
    });
    assert_eq!(links(&pod).len(), 50);
    assert_eq!(lab.records().len(), 50);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (c, path) = (&c, &path);
                scope.spawn(move || {
                    lab.cni(
                        "DEL",
                        c,
                        &Lab::attach_env(&format!("par{i}"), path, &format!("net{i}")),
                    )
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let out = h.join().unwrap();
            assert_eq!(out.code, 0, "DEL {i}: {}", out.stdout);
        }
    });
    lab.assert_clean(&["br0"]);
    assert_eq!(links(&pod), Vec::<String>::new());
}

#[test]
fn logs_never_reach_stdout_and_log_file_works() {
    let (lab, _pod, path) = Lab::with_pod();
    let log = lab.log_dir().join("plugin.log");
    let c = conf(
        "1.0.0",
        json!({"logLevel": "debug", "logFile": "plugin.log"}),
    );
    let env = Lab::attach_env("c1", &path, "net1");
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0);
    // Exactly one JSON document on stdout (Lab::cni already parsed it whole).
    assert!(add.stdout.trim_start().starts_with('{') && add.stdout.trim_end().ends_with('}'));
    let bad = lab.cni(
        "ADD",
        &conf(
            "1.0.0",
            json!({"logFile": "plugin.log", "bridge": "missing0"}),
        ),
        &Lab::attach_env("c2", &path, "net2"),
    );
    assert_eq!(bad.cni_code(), 102);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("missing0"), "log file: {text}");
    assert!(bad.stderr.contains("missing0"));
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
}
