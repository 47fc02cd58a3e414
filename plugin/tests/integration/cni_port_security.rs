//! Port security through real ADDs: rules follow the attachment's life, CHECK sees
//! them, and a reservation lets its MAC through with only its IPs.

use crate::common::{conf, Lab};
use serde_json::json;

const VM_MAC: &str = "00:50:56:aa:bb:01";

#[test]
fn rules_follow_add_check_del_and_gc() {
    let (lab, pod, path) = Lab::with_pod();
    let env = Lab::attach_env("vm1", &path, "net1");
    let c = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.0.0.2/24"]}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let host = add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lab.secured_ports(), vec![host.clone()]);
    let mut checked = c.clone();
    checked["prevResult"] = add.json.clone();
    assert_eq!(lab.cni("CHECK", &checked, &env).code, 0);

    // Someone removes the port's MAC element: CHECK notices.
    let element = format!("{{ \"{host}\" . {VM_MAC} }}");
    crate::common::sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "nft",
        "delete",
        "element",
        "bridge",
        "portgroup",
        "port_mac",
        &element,
    ]);
    let check = lab.cni("CHECK", &checked, &env);
    assert_eq!(check.cni_code(), 106, "{}", check.stdout);

    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);

    // spoofCheck false installs nothing.
    let open = conf("1.1.0", json!({"spoofCheck": false}));
    assert_eq!(lab.cni("ADD", &open, &env).code, 0);
    assert_eq!(lab.secured_ports(), Vec::<String>::new());
    assert_eq!(lab.cni("DEL", &open, &env).code, 0);

    // GC of an attachment whose pod is gone removes its rules too.
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    crate::common::sh(&["ip", "netns", "del", &pod]);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(lab.cni("GC", &gc, &[]).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn reservation_lets_its_mac_through_with_only_its_ips() {
    let mut lab = Lab::new();
    // A neighbour on the bridge.
    let peer = lab.pod();
    lab.node_ip(&[
        "link", "add", "peer0", "type", "veth", "peer", "name", "eth0", "netns", &peer,
    ]);
    lab.node_ip(&["link", "set", "peer0", "master", "br0", "up"]);
    lab.pod_ip(&peer, &["link", "set", "eth0", "up"]);
    lab.pod_ip(&peer, &["addr", "add", "10.10.100.1/24", "dev", "eth0"]);
    lab.write_state(&json!({
        "node": "n1", "generation": 1, "reconciledAt": "2026-11-23T10:00:00Z",
        "portgroups": [{"name": "prod-web", "vlan": 100, "uplink": "eth1", "bridge": "br0",
            "vlanInterface": "x", "mtu": 1500, "ready": true, "reason": null, "strict": true,
            "reservations": [{"mac": VM_MAC, "ips": ["10.10.100.21/24"]}]}]
    }));
    let vm = lab.pod();
    let path = Lab::netns_path(&vm);
    let env = Lab::attach_env("vm1", &path, "net1");
    // Plain L2: the guest configures its own address, as on vSphere.
    let c = conf(
        "1.0.0",
        json!({"bridge": null, "portgroup": "prod-web", "runtimeConfig": {"mac": VM_MAC}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert!(add.json.get("ips").is_none());

    let ping = |vm: &str| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                vm,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "10.10.100.1",
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    lab.pod_ip(&vm, &["addr", "add", "10.10.100.21/24", "dev", "net1"]);
    assert!(ping(&vm), "the reserved IP must pass");
    lab.pod_ip(&vm, &["addr", "flush", "dev", "net1"]);
    lab.pod_ip(&vm, &["addr", "add", "10.10.100.50/24", "dev", "net1"]);
    assert!(!ping(&vm), "an IP outside the reservation must be dropped");
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    // Without port security, the same address gets through: the test can fail.
    let mut open = c.clone();
    open["spoofCheck"] = false.into();
    assert_eq!(lab.cni("ADD", &open, &env).code, 0);
    lab.pod_ip(&vm, &["addr", "add", "10.10.100.50/24", "dev", "net1"]);
    assert!(ping(&vm));
    assert_eq!(lab.cni("DEL", &open, &env).code, 0);
    lab.assert_clean(&["br0", "peer0"]);
}

#[test]
fn portgroup_opt_ins_reach_the_port_from_the_node_config() {
    let mut lab = Lab::new();
    let state = |allow_ra: bool| {
        json!({
            "node": "n1", "generation": 1, "reconciledAt": "2026-11-23T10:00:00Z",
            "portgroups": [{"name": "edge", "vlan": 300, "uplink": "eth1", "bridge": "br0",
                "vlanInterface": "x", "mtu": 1500, "ready": true, "reason": null,
                "allowRouterAdvertisements": allow_ra, "allowDhcpServer": false}]
        })
    };
    lab.write_state(&state(true));
    let vm = lab.pod();
    let path = Lab::netns_path(&vm);
    let env = Lab::attach_env("vm1", &path, "net1");
    let c = conf(
        "1.1.0",
        json!({"bridge": null, "portgroup": "edge", "runtimeConfig": {"mac": VM_MAC}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let host = add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let set = |name: &str| {
        let out = crate::common::sh(&[
            "ip",
            "netns",
            "exec",
            &lab.node,
            "nft",
            "list",
            "set",
            "bridge",
            "portgroup",
            name,
        ]);
        out.contains(&format!("\"{host}\""))
    };
    assert!(set("ra_allowed_ports"), "the router portgroup's port");
    assert!(!set("dhcp_server_ports"), "DHCP servers were not allowed");
    let mut checked = c.clone();
    checked["prevResult"] = add.json.clone();
    assert_eq!(lab.cni("CHECK", &checked, &env).code, 0);

    // The admin withdraws the opt-in: CHECK reports the port as it was made.
    lab.write_state(&state(false));
    let check = lab.cni("CHECK", &checked, &env);
    assert_eq!(check.cni_code(), 106, "{}", check.stdout);
    assert!(
        check.stdout.contains("router advertisements"),
        "{}",
        check.stdout
    );
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    assert!(!set("ra_allowed_ports"));
    lab.assert_clean(&["br0"]);
}

/// On a trunk portgroup's port the VM's source MAC is locked and its source
/// IPs are not: they live on its VLANs, inside tagged frames, and are unknown
/// here (locking them would also drop every tagged frame). No conflict probe
/// either: the bridge carries no one VLAN to probe on.
#[test]
fn trunk_port_locks_the_mac_only() {
    let mut lab = Lab::new();
    let peer = lab.pod();
    lab.node_ip(&[
        "link", "add", "peer0", "type", "veth", "peer", "name", "eth0", "netns", &peer,
    ]);
    lab.node_ip(&["link", "set", "peer0", "master", "br0", "up"]);
    lab.pod_ip(&peer, &["link", "set", "eth0", "up"]);
    lab.pod_ip(&peer, &["addr", "add", "10.10.100.1/24", "dev", "eth0"]);
    lab.write_state(&json!({
        "node": "n1", "generation": 1, "reconciledAt": "2026-11-23T10:00:00Z",
        "portgroups": [{"name": "fw", "mode": "trunk", "vlan": null, "trunk": "100,200",
            "uplink": "eth1", "bridge": "br0", "vlanInterface": "", "mtu": 1500,
            "ready": true, "reason": null, "strict": true,
            "reservations": [{"mac": VM_MAC, "ips": []}]}]
    }));
    let vm = lab.pod();
    let path = Lab::netns_path(&vm);
    let env = Lab::attach_env("fw1", &path, "net1");
    let c = conf(
        "1.0.0",
        json!({"bridge": null, "portgroup": "fw", "conflictProbe": true,
               "runtimeConfig": {"mac": VM_MAC, "ips": ["10.10.100.21/24"]}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let host = portgroup::naming::host_veth_name("fw1", "net1");
    assert_eq!(lab.secured_ports(), vec![host.clone()]);
    let locked = std::process::Command::new("ip")
        .args([
            "netns", "exec", &lab.node, "nft", "-j", "list", "set", "bridge",
        ])
        .args(["portgroup", "ip_locked_ports"])
        .output()
        .expect("nft");
    assert!(locked.status.success());
    assert!(
        !String::from_utf8_lossy(&locked.stdout).contains(&host),
        "a trunk port's IPs are not locked"
    );
    let ping = |vm: &str| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                vm,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "10.10.100.1",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    // Any address passes with the VM's MAC, not only the declared one (here
    // untagged, as this kernel has no 802.1Q)...
    lab.pod_ip(&vm, &["addr", "flush", "dev", "net1"]);
    lab.pod_ip(&vm, &["addr", "add", "10.10.100.77/24", "dev", "net1"]);
    assert!(ping(&vm), "any source IP from the VM's MAC");
    // ...another MAC does not.
    lab.pod_ip(
        &vm,
        &["link", "set", "net1", "address", "00:50:56:00:00:99"],
    );
    assert!(!ping(&vm), "a foreign source MAC is dropped");
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0", "peer0"]);
}

/// DEL takes the port down before removing its rules (so the removal's grace
/// period overlaps the veth's deletion): killed between the two, the port has
/// no rules and still exists, and must not pass a frame its rules would drop.
#[test]
fn a_port_whose_rules_are_gone_sends_nothing_before_its_veth_goes() {
    let mut lab = Lab::new();
    let peer = lab.pod();
    lab.node_ip(&[
        "link", "add", "peer0", "type", "veth", "peer", "name", "eth0", "netns", &peer,
    ]);
    lab.node_ip(&["link", "set", "peer0", "master", "br0", "up"]);
    lab.pod_ip(&peer, &["link", "set", "eth0", "up"]);
    lab.pod_ip(&peer, &["addr", "add", "10.10.7.1/24", "dev", "eth0"]);
    let vm = lab.pod();
    let path = Lab::netns_path(&vm);
    let env = Lab::attach_env("vm1", &path, "net1");
    let c = conf(
        "1.0.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.10.7.21/24"]}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let host = add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let ping = |vm: &str| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                vm,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "10.10.7.1",
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(ping(&vm), "the port's own address passes");
    // The guest takes an address that is not its own: the rules drop it.
    lab.pod_ip(&vm, &["addr", "flush", "dev", "net1"]);
    lab.pod_ip(&vm, &["addr", "add", "10.10.7.50/24", "dev", "net1"]);
    assert!(!ping(&vm), "a foreign source address is dropped");

    let mut killed = env.clone();
    killed.push(("PORTGROUP_TEST_EXIT_AT", "del-port-down-rules-removed"));
    assert_eq!(lab.cni("DEL", &c, &killed).code, 137);
    assert_eq!(lab.secured_ports(), Vec::<String>::new(), "rules removed");
    assert!(lab.node_links().contains(&host), "the veth is still there");
    assert!(
        !ping(&vm),
        "a port without rules must not send while it exists"
    );
    // Up again, the same port passes the same frames: the test can fail. (A few
    // tries: the port comes up and the neighbour is resolved again first.)
    lab.node_ip(&["link", "set", &host, "up"]);
    assert!(
        (0..5).any(|_| ping(&vm)),
        "up and without rules, the foreign address passes"
    );

    // The runtime's retry finishes the DEL.
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0", "peer0"]);
}

/// A DEL that left its port's elements to a portgroupd that then went away for
/// good: CNI GC collects the elements of ports no record names and whose
/// interface is gone, whatever the network, and never a live attachment's.
#[test]
fn gc_collects_the_elements_a_del_left_to_a_portgroupd_gone_since() {
    let (mut lab, _pod, path) = Lab::with_pod();
    let live = conf(
        "1.1.0",
        json!({"spoofCheck": true, "runtimeConfig": {"mac": "02:00:00:00:20:01"}}),
    );
    let live_env = Lab::attach_env("live", &path, "net1");
    assert_eq!(lab.cni("ADD", &live, &live_env).code, 0);
    let other = Lab::netns_path(&lab.pod());
    let mut gone = live.clone();
    gone["runtimeConfig"]["mac"] = json!("02:00:00:00:20:02");
    let gone_env = Lab::attach_env("gone", &other, "net1");
    assert_eq!(lab.cni("ADD", &gone, &gone_env).code, 0);

    let sweeper = lab.hold_sweeper_lock();
    assert_eq!(lab.cni("DEL", &gone, &gone_env).code, 0);
    let gone_veth = portgroup::naming::host_veth_name("gone", "net1");
    assert!(
        lab.secured_ports().contains(&gone_veth),
        "left to the sweep"
    );
    drop(sweeper);

    let mut gc = live.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "net1"}]);
    let out = lab.cni("GC", &gc, &[]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(
        lab.secured_ports(),
        vec![portgroup::naming::host_veth_name("live", "net1")]
    );
    assert_eq!(lab.cni("DEL", &live, &live_env).code, 0);
    lab.assert_clean(&["br0"]);
}
