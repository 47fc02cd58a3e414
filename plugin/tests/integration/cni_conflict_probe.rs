//! The conflict probe through a real ADD: a legacy host on the segment still holds
//! the VM's IP (the source VM is still running on vSphere) → ADD fails naming the
//! IP and the MAC that answered, and leaves nothing behind; the VM's own MAC
//! answering (a live migration) lets ADD go on.

use crate::common::{conf, links, sh, Lab};
use serde_json::json;

const LEGACY_MAC: &str = "00:50:56:12:34:56";
const VM_MAC: &str = "00:50:56:aa:bb:01";

/// A host outside the cluster on the bridge's segment, holding `ips` with `mac`.
fn legacy_host(lab: &mut Lab, mac: &str, ips: &[&str]) -> String {
    let host = lab.pod();
    lab.node_ip(&[
        "link", "add", "legacy0", "type", "veth", "peer", "name", "eth0", "netns", &host,
    ]);
    lab.node_ip(&["link", "set", "legacy0", "master", "br0", "up"]);
    lab.pod_ip(&host, &["link", "set", "eth0", "address", mac, "up"]);
    for ip in ips {
        if ip.contains(':') {
            lab.pod_ip(&host, &["addr", "add", ip, "dev", "eth0", "nodad"]);
        } else {
            lab.pod_ip(&host, &["addr", "add", ip, "dev", "eth0"]);
        }
    }
    host
}

fn probing(ips: &[&str], mac: &str) -> serde_json::Value {
    conf(
        "1.0.0",
        json!({"conflictProbe": true, "runtimeConfig": {"mac": mac, "ips": ips}}),
    )
}

#[test]
fn ip_held_by_another_mac_fails_add() {
    for ip in ["10.10.100.21/24", "2001:db8:100::21/64"] {
        let mut lab = Lab::new();
        legacy_host(
            &mut lab,
            LEGACY_MAC,
            &["10.10.100.21/24", "2001:db8:100::21/64"],
        );
        let pod = lab.pod();
        let path = Lab::netns_path(&pod);
        let env = Lab::attach_env("vm1", &path, "net1");
        let add = lab.cni("ADD", &probing(&[ip], VM_MAC), &env);
        assert_eq!(add.cni_code(), 104, "{ip}: {}", add.stdout);
        let details = add.json["details"].as_str().unwrap();
        let bare = ip.split('/').next().unwrap();
        assert!(
            details.contains(&format!("{bare} is in use on bridge br0 by {LEGACY_MAC}"))
                && details.contains("source VM may still be running"),
            "{details}"
        );
        lab.assert_clean(&["br0", "legacy0"]);
        assert_eq!(links(&pod), Vec::<String>::new());
    }
}

#[test]
fn own_mac_answering_is_a_live_migration_whose_port_is_held() {
    let mut lab = Lab::new();
    legacy_host(
        &mut lab,
        VM_MAC,
        &["10.10.100.21/24", "2001:db8:100::21/64"],
    );
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let env = Lab::attach_env("vm1", &path, "net1");
    let mut c = probing(&["10.10.100.21/24", "2001:db8:100::21/64"], VM_MAC);
    c["logLevel"] = "info".into();
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    assert!(add.stderr.contains("live migration"), "{}", add.stderr);
    // The target's port is held, whether or not port security is on; the
    // record says so.
    let host_veth = add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lab.held_ports(), [host_veth]);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.run_dir.join("attachments").join("vm1-net1.json")).unwrap(),
    )
    .unwrap();
    let answered = record["handover"]["answered"].as_array().unwrap();
    assert_eq!(answered.len(), 2, "{record}");
    assert!(record["handover"]["heldAt"].is_string(), "{record}");
    // The pod's interface is up (no linkDown needed).
    assert!(sh(&["ip", "-n", &pod, "link", "show", "net1"]).contains("UP"));

    // CHECK: healthy, and says it waits for the handover.
    let mut check = c.clone();
    check["prevResult"] = add.json.clone();
    let out = lab.cni("CHECK", &check, &env);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("waits for the migration handover"),
        "{}",
        out.stderr
    );

    // DEL (the migration finished, or failed): the hold goes with the port.
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0", "legacy0"]);
}

#[test]
fn add_killed_while_holding_then_del_leaves_nothing() {
    let mut lab = Lab::new();
    legacy_host(&mut lab, VM_MAC, &["10.10.100.21/24"]);
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let mut env = Lab::attach_env("vm1", &path, "net1");
    let c = probing(&["10.10.100.21/24"], VM_MAC);
    env.push(("PORTGROUP_TEST_EXIT_AT", "held"));
    assert_eq!(lab.cni("ADD", &c, &env).code, 137);
    assert_eq!(lab.held_ports().len(), 1, "the ADD died holding the port");
    env.pop();
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0", "legacy0"]);
}

/// A migration that failed and whose target pod went without a DEL: GC
/// (nothing listed valid) takes the hold along with the port.
#[test]
fn gc_removes_a_held_port_and_its_hold() {
    let mut lab = Lab::new();
    legacy_host(&mut lab, VM_MAC, &["10.10.100.21/24"]);
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let env = Lab::attach_env("vm1", &path, "net1");
    let c = probing(&["10.10.100.21/24"], VM_MAC);
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    assert_eq!(lab.held_ports().len(), 1, "the target is held");
    sh(&["ip", "netns", "del", &pod]);
    let mut gc = c.clone();
    gc["cniVersion"] = "1.1.0".into();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    let out = lab.cni("GC", &gc, &[]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(lab.held_ports(), Vec::<String>::new());
    lab.assert_clean(&["br0", "legacy0"]);
}

#[test]
fn a_fresh_vm_is_never_held() {
    let mut lab = Lab::new();
    let legacy = legacy_host(&mut lab, LEGACY_MAC, &["10.10.100.21/24"]);
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let env = Lab::attach_env("vm1", &path, "net1");
    // Nobody answers for its addresses; its own pod does not either (its
    // interface comes up after the probe).
    let c = probing(&["10.10.100.99/24", "2001:db8:100::99/64"], VM_MAC);
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    assert_eq!(lab.held_ports(), Vec::<String>::new());
    let record =
        std::fs::read_to_string(lab.run_dir.join("attachments").join("vm1-net1.json")).unwrap();
    assert!(!record.contains("handover"), "{record}");
    // It talks at once: the legacy host reaches it.
    assert!(
        sh(&[
            "ip",
            "netns",
            "exec",
            &legacy,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "10.10.100.99"
        ])
        .contains("1 received"),
        "a fresh VM did not answer at once"
    );
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    // conflictProbe off: never held either, even with its MAC live elsewhere.
    let mut unprobed = probing(&["10.10.100.21/24"], LEGACY_MAC);
    unprobed["conflictProbe"] = false.into();
    assert_eq!(lab.cni("ADD", &unprobed, &env).code, 0);
    assert_eq!(lab.held_ports(), Vec::<String>::new());
    assert_eq!(lab.cni("DEL", &unprobed, &env).code, 0);
    lab.assert_clean(&["br0", "legacy0"]);
}

#[test]
fn no_answer_goes_on_and_probe_off_skips() {
    let mut lab = Lab::new();
    legacy_host(&mut lab, LEGACY_MAC, &["10.10.100.21/24"]);
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let env = Lab::attach_env("vm1", &path, "net1");
    let free = probing(&["10.10.100.99/24"], VM_MAC);
    assert_eq!(lab.cni("ADD", &free, &env).code, 0);
    assert_eq!(lab.cni("DEL", &free, &env).code, 0);
    // conflictProbe false: the taken address is not probed (the admin's call).
    let mut unprobed = probing(&["10.10.100.21/24"], VM_MAC);
    unprobed["conflictProbe"] = false.into();
    assert_eq!(lab.cni("ADD", &unprobed, &env).code, 0);
    assert_eq!(lab.cni("DEL", &unprobed, &env).code, 0);
    lab.assert_clean(&["br0", "legacy0"]);
    let _ = sh(&["true"]);
}
