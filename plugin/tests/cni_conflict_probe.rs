//! The conflict probe through a real ADD: a legacy host on the segment still holds
//! the VM's IP (the source VM is still running on vSphere) → ADD fails naming the
//! IP and the MAC that answered, and leaves nothing behind; the VM's own MAC
//! answering (a live migration) lets ADD go on.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{conf, links, sh, Lab};
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
fn own_mac_answering_is_a_live_migration() {
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
    c["linkDown"] = true.into();
    c["logLevel"] = "info".into();
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    assert!(add.stderr.contains("live migration"), "{}", add.stderr);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
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
