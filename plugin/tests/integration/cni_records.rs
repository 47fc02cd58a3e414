//! Attachment records and what only their owner may do: of concurrent ADDs of
//! one attachment exactly one wins and the others touch nothing of its; GC
//! without the list of valid attachments removes nothing. A port's
//! port-security elements exist before its veth does. Root only; everything
//! lives in namespaces the test makes.

use crate::common::{conf, links, Lab};
use serde_json::{json, Value};

/// Every element of every set in `table bridge portgroup` that names `port`
/// (as `set: element`): a port's whole footprint, not only its `ports` entry.
pub fn elements_of(lab: &Lab, port: &str) -> Vec<String> {
    let out = crate::common::sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "sh",
        "-c",
        "nft -j list table bridge portgroup 2>/dev/null || echo '{\"nftables\":[]}'",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut found = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(set) = item.get("set") else { continue };
        for elem in set["elem"].as_array().cloned().unwrap_or_default() {
            let shown = elem.to_string();
            if shown.contains(port) {
                found.push(format!("{}: {shown}", set["name"].as_str().unwrap_or("?")));
            }
        }
    }
    found
}

#[test]
fn gc_without_the_valid_attachments_list_is_refused_and_removes_nothing() {
    let (lab, pod, path) = Lab::with_pod();
    let c = conf("1.1.0", json!({"runtimeConfig": {"ips": ["10.0.0.2/24"]}}));
    for (id, ifname) in [("keep", "net1"), ("stale", "net2")] {
        let add = lab.cni("ADD", &c, &Lab::attach_env(id, &path, ifname));
        assert_eq!(add.code, 0, "{}", add.stdout);
    }
    let footprint = || {
        let mut records = lab.records();
        records.sort();
        let mut node = lab.node_links();
        node.sort();
        let mut pod_links = links(&pod);
        pod_links.sort();
        let mut ports = lab.secured_ports();
        ports.sort();
        let elements: Vec<Vec<String>> = ports.iter().map(|port| elements_of(&lab, port)).collect();
        (records, node, pod_links, ports, elements)
    };
    let before = footprint();
    assert_eq!(before.0.len(), 2);
    assert_eq!(before.3.len(), 2, "both ports secured");

    // No list at all: refused with code 7, naming the key, and nothing touched.
    let gc = lab.cni("GC", &c, &[]);
    assert_eq!(gc.cni_code(), 7, "{} {}", gc.stdout, gc.stderr);
    assert!(
        gc.json["details"]
            .as_str()
            .unwrap()
            .contains("cni.dev/valid-attachments"),
        "{}",
        gc.stdout
    );
    assert_eq!(footprint(), before, "a refused GC removed something");

    // The older key is a list too: what it names is kept, the rest collected.
    let mut older = c.clone();
    older["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "net1"}]);
    let gc = lab.cni("GC", &older, &[]);
    assert_eq!(gc.code, 0, "{} {}", gc.stdout, gc.stderr);
    assert_eq!(lab.records(), vec!["keep-net1.json"]);
    assert_eq!(links(&pod), vec!["net1"]);

    // An empty list is a list: everything of the network goes.
    let mut empty = c.clone();
    empty["cni.dev/valid-attachments"] = json!([]);
    let gc = lab.cni("GC", &empty, &[]);
    assert_eq!(gc.code, 0, "{} {}", gc.stdout, gc.stderr);
    lab.assert_clean(&["br0"]);
    assert_eq!(links(&pod), Vec::<String>::new());
}

const VM_MAC: &str = "00:50:56:aa:bb:01";

/// A neighbour on br0 at 10.0.0.1, for the winner's port to reach.
fn neighbour(lab: &mut Lab) -> String {
    let peer = lab.pod();
    lab.node_ip(&[
        "link", "add", "peer0", "type", "veth", "peer", "name", "eth0", "netns", &peer,
    ]);
    lab.node_ip(&["link", "set", "peer0", "master", "br0", "up"]);
    lab.pod_ip(&peer, &["link", "set", "eth0", "up"]);
    lab.pod_ip(&peer, &["addr", "add", "10.0.0.1/24", "dev", "eth0"]);
    peer
}

/// Runs `n` ADDs of the same attachment, released together: each waits at the
/// plugin's start gate (a FIFO) until all `n` are there.
fn race(lab: &Lab, c: &Value, env: &[(&str, &str)], n: usize) -> Vec<crate::common::Output> {
    let gate = lab.run_dir.join(format!("gate-{}", rand::random::<u32>()));
    crate::common::sh(&["mkfifo", gate.to_str().unwrap()]);
    let mut env = env.to_vec();
    env.push(("PORTGROUP_TEST_GATE", gate.to_str().unwrap()));
    let outputs = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| lab.cni("ADD", c, &env)))
            .collect();
        let marker = format!("PORTGROUP_TEST_GATE={}", gate.display());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while waiting_at(&marker) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} ADDs reached the gate",
                waiting_at(&marker)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Opening the FIFO for writing releases every reader blocked on it.
        drop(std::fs::OpenOptions::new().write(true).open(&gate).unwrap());
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    std::fs::remove_file(gate).unwrap();
    outputs
}

/// Processes with `marker` in their environment blocked opening the gate.
fn waiting_at(marker: &str) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| {
            let dir = p.path();
            let blocked = std::fs::read_to_string(dir.join("wchan"))
                .is_ok_and(|w| w.trim() == "wait_for_partner");
            blocked
                && std::fs::read(dir.join("environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .count()
}

fn pings(pod: &str, to: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", pod, "ping", "-c", "1", "-W", "2", to])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn concurrent_adds_of_one_attachment_have_one_winner_and_leave_it_intact() {
    let mut lab = Lab::new();
    let _peer = neighbour(&mut lab);
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let env = Lab::attach_env("vm", &path, "net1");
    let c = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.0.0.2/24"]}}),
    );
    let host = portgroup::naming::host_veth_name("vm", "net1");
    for round in 0..10 {
        let outputs = race(&lab, &c, &env, 25);
        let (winners, losers): (Vec<_>, Vec<_>) = outputs.iter().partition(|o| o.code == 0);
        assert_eq!(winners.len(), 1, "round {round}: one winner");
        for loser in &losers {
            assert_eq!(loser.cni_code(), 101, "round {round}: {}", loser.stdout);
            assert!(
                loser.stdout.contains("already exists"),
                "round {round}: {}",
                loser.stdout
            );
        }
        let winner = &winners[0].json;
        assert_eq!(winner["interfaces"][0]["name"], host.as_str());

        // The winner's record is there, whole, and says what the winner made.
        assert_eq!(lab.records(), vec!["vm-net1.json"], "round {round}");
        let record: Value = serde_json::from_slice(
            &std::fs::read(lab.run_dir.join("attachments/vm-net1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(record["hostVeth"], host.as_str(), "round {round}");
        assert_eq!(record["mac"], VM_MAC, "round {round}");
        assert_eq!(record["ips"], json!(["10.0.0.2/24"]), "round {round}");
        // CHECK compares veth, bridge, addresses and port-security elements
        // with the record: nothing of the winner's was touched.
        let mut checked = c.clone();
        checked["prevResult"] = winner.clone();
        let check = lab.cni("CHECK", &checked, &env);
        assert_eq!(check.code, 0, "round {round}: {}", check.stdout);
        assert_eq!(lab.secured_ports(), vec![host.clone()], "round {round}");
        assert!(
            elements_of(&lab, &host).iter().any(|e| e.contains(VM_MAC)),
            "round {round}: {:?}",
            elements_of(&lab, &host)
        );
        assert!(pings(&pod, "10.0.0.1"), "round {round}: the port works");
        assert_eq!(links(&pod), vec!["net1"], "round {round}");

        let del = lab.cni("DEL", &c, &env);
        assert_eq!(del.code, 0, "round {round}: {}", del.stdout);
        lab.assert_clean(&["br0", "peer0"]);
        assert_eq!(
            elements_of(&lab, &host),
            Vec::<String>::new(),
            "round {round}: orphaned elements"
        );
        assert_eq!(links(&pod), Vec::<String>::new(), "round {round}");
    }
}

/// The ADD killed right after a step (as SIGKILL would: no rollback).
fn killed_at(lab: &Lab, c: &Value, env: &[(&str, &str)], stage: &str) {
    let mut env = env.to_vec();
    env.push(("PORTGROUP_TEST_EXIT_AT", stage));
    let add = lab.cni("ADD", c, &env);
    assert_eq!(add.code, 137, "{stage}: the ADD should have died there");
}

#[test]
fn the_port_has_its_elements_before_its_veth_appears() {
    let mut lab = Lab::new();
    let _peer = neighbour(&mut lab);
    let pod = lab.pod();
    let path = Lab::netns_path(&pod);
    let env = Lab::attach_env("vm", &path, "net1");
    let host = portgroup::naming::host_veth_name("vm", "net1");
    let declared = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.0.0.2/24"]}}),
    );
    let has = |what: &str| elements_of(&lab, &host).iter().any(|e| e.contains(what));

    // Right after the elements: every one of them, and no interface yet.
    killed_at(&lab, &declared, &env, "port-security-installed");
    assert_eq!(lab.secured_ports(), vec![host.clone()]);
    assert!(
        has(VM_MAC) && has("10.0.0.2"),
        "{:?}",
        elements_of(&lab, &host)
    );
    assert!(!lab.node_links().contains(&host), "the veth came first");
    assert_eq!(lab.cni("DEL", &declared, &env).code, 0);
    lab.assert_clean(&["br0", "peer0"]);

    // The moment the veth exists (nothing else done after it), so do its
    // elements, and they hold: put on the bridge and brought up by hand (ADD
    // does that last), the port reaches the neighbour from its own address only.
    killed_at(&lab, &declared, &env, "veth-created");
    assert!(lab.node_links().contains(&host));
    assert!(
        has(VM_MAC) && has("10.0.0.2"),
        "{:?}",
        elements_of(&lab, &host)
    );
    lab.node_ip(&["link", "set", &host, "master", "br0", "up"]);
    lab.pod_ip(&pod, &["link", "set", "net1", "up"]);
    lab.pod_ip(&pod, &["addr", "add", "10.0.0.50/24", "dev", "net1"]);
    assert!(!pings(&pod, "10.0.0.1"), "a foreign source passed");
    lab.pod_ip(&pod, &["addr", "flush", "dev", "net1"]);
    lab.pod_ip(&pod, &["addr", "add", "10.0.0.2/24", "dev", "net1"]);
    assert!(pings(&pod, "10.0.0.1"), "its own address must pass");
    assert_eq!(lab.cni("DEL", &declared, &env).code, 0);
    lab.assert_clean(&["br0", "peer0"]);
    assert_eq!(elements_of(&lab, &host), Vec::<String>::new());

    // IPAM's address is added to the rules before the pod end is up.
    let data_dir = lab.run_dir.join("ipam");
    let with_ipam = conf(
        "1.0.0",
        json!({"runtimeConfig": {"mac": VM_MAC}, "ipam": {"type": "host-local",
            "ranges": [[{"subnet": "10.9.0.0/24"}]], "dataDir": data_dir}}),
    );
    killed_at(&lab, &with_ipam, &env, "veth-created");
    assert!(!has("10.9.0."), "IPAM has not answered yet");
    assert!(has(VM_MAC));
    assert_eq!(lab.cni("DEL", &with_ipam, &env).code, 0);
    killed_at(&lab, &with_ipam, &env, "addresses-added");
    assert!(has("10.9.0."), "{:?}", elements_of(&lab, &host));
    let pod_end = crate::common::pod_link(&pod, "net1");
    assert!(
        !pod_end["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "the pod end is still down: {pod_end}"
    );
    assert_eq!(lab.cni("DEL", &with_ipam, &env).code, 0);
    lab.assert_clean(&["br0", "peer0"]);
    assert_eq!(elements_of(&lab, &host), Vec::<String>::new());
}

#[test]
fn a_failed_veth_takes_its_elements_and_record_along() {
    let (lab, pod, path) = Lab::with_pod();
    let host = portgroup::naming::host_veth_name("vm", "net1");
    // The pod already has the interface name: the veth cannot be made, after
    // the record and the elements were.
    lab.pod_ip(
        &pod,
        &["link", "add", "net1", "type", "veth", "peer", "name", "x"],
    );
    let c = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.0.0.2/24"]}}),
    );
    let add = lab.cni("ADD", &c, &Lab::attach_env("vm", &path, "net1"));
    assert_eq!(add.cni_code(), 101, "{}", add.stdout);
    lab.assert_clean(&["br0"]);
    assert_eq!(elements_of(&lab, &host), Vec::<String>::new());
}

#[test]
fn an_interface_with_the_port_name_keeps_its_elements() {
    let (lab, _pod, path) = Lab::with_pod();
    let env = Lab::attach_env("vm", &path, "net1");
    let host = portgroup::naming::host_veth_name("vm", "net1");
    let c = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.0.0.2/24"]}}),
    );
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    let before = elements_of(&lab, &host);
    // Its record gone (moved aside, say): the live port is not a new ADD's to
    // re-key, nor to strip when its own veth then cannot be made.
    std::fs::remove_file(lab.run_dir.join("attachments/vm-net1.json")).unwrap();
    let other = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": "00:50:56:aa:bb:99", "ips": ["10.0.0.99/24"]}}),
    );
    let add = lab.cni("ADD", &other, &env);
    assert_eq!(add.cni_code(), 101, "{}", add.stdout);
    assert!(add.stdout.contains(&host), "{}", add.stdout);
    assert_eq!(elements_of(&lab, &host), before);
    assert!(lab.node_links().contains(&host));
    assert!(
        lab.records().is_empty(),
        "the failed ADD removed its own record"
    );
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
    assert_eq!(elements_of(&lab, &host), Vec::<String>::new());
}

fn corrupt(lab: &Lab, file: &str) {
    std::fs::write(
        lab.run_dir.join("attachments").join(file),
        b"{\"containerId\": ",
    )
    .unwrap();
}

#[test]
fn an_unreadable_record_blocks_a_new_add_but_not_del() {
    let (lab, pod, path) = Lab::with_pod();
    let env = Lab::attach_env("vm", &path, "net1");
    let host = portgroup::naming::host_veth_name("vm", "net1");
    let c = conf(
        "1.1.0",
        json!({"runtimeConfig": {"mac": VM_MAC, "ips": ["10.0.0.2/24"]}}),
    );
    let add = lab.cni("ADD", &c, &env);
    assert_eq!(add.code, 0, "{}", add.stdout);
    corrupt(&lab, "vm-net1.json");
    let before = elements_of(&lab, &host);

    // ADD: the attachment exists, its record unreadable; nothing is touched.
    let again = lab.cni("ADD", &c, &env);
    assert_eq!(again.cni_code(), 101, "{}", again.stdout);
    assert!(again.stdout.contains("unreadable"), "{}", again.stdout);
    assert_eq!(elements_of(&lab, &host), before);
    assert!(lab.node_links().contains(&host));

    // CHECK cannot vouch for it.
    let mut checked = c.clone();
    checked["prevResult"] = add.json.clone();
    assert_ne!(lab.cni("CHECK", &checked, &env).code, 0);

    // DEL takes it all down by name, the unreadable record too; and again.
    for _ in 0..2 {
        let del = lab.cni("DEL", &c, &env);
        assert_eq!(del.code, 0, "{} {}", del.stdout, del.stderr);
        lab.assert_clean(&["br0"]);
        assert_eq!(elements_of(&lab, &host), Vec::<String>::new());
        assert_eq!(links(&pod), Vec::<String>::new());
    }
}

#[test]
fn gc_keeps_valid_and_live_unreadable_records_and_collects_dead_ones() {
    let (lab, _pod, path) = Lab::with_pod();
    let long_id = "d".repeat(300);
    let attachments = [
        ("valid", "net1"),
        ("live", "net2"),
        ("dead", "net3"),
        (long_id.as_str(), "net4"),
    ];
    let c = conf("1.1.0", json!({}));
    for (i, (id, ifname)) in attachments.iter().enumerate() {
        let mut c = c.clone();
        c["runtimeConfig"] = json!({"ips": [format!("10.0.0.{}/24", i + 2)]});
        let add = lab.cni("ADD", &c, &Lab::attach_env(id, &path, ifname));
        assert_eq!(add.code, 0, "{}", add.stdout);
    }
    let mut files = lab.records();
    files.sort();
    for file in &files {
        corrupt(&lab, file);
    }
    let host = |i: usize| portgroup::naming::host_veth_name(attachments[i].0, attachments[i].1);
    // Two attachments die without a DEL: their veths go (the pod end with them).
    for i in [2, 3] {
        lab.node_ip(&["link", "del", &host(i)]);
        assert!(
            !elements_of(&lab, &host(i)).is_empty(),
            "elements outlive the veth"
        );
    }

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "valid", "ifname": "net1"}]);
    let out = lab.cni("GC", &gc, &[]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    // The valid one and the live one are kept whole; the live one is named in the log.
    let mut left = lab.records();
    left.sort();
    assert_eq!(left, vec!["live-net2.json", "valid-net1.json"]);
    for i in [0, 1] {
        assert!(lab.node_links().contains(&host(i)));
        assert!(!elements_of(&lab, &host(i)).is_empty());
    }
    assert!(out.stderr.contains("live-net2.json"), "{}", out.stderr);
    // The dead ones are gone with their elements, the long-ID one included.
    for i in [2, 3] {
        assert_eq!(elements_of(&lab, &host(i)), Vec::<String>::new(), "{i}");
    }

    // A second GC changes nothing and does not fail.
    let again = lab.cni("GC", &gc, &[]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    for (id, ifname) in &attachments[..2] {
        let del = lab.cni("DEL", &c, &Lab::attach_env(id, &path, ifname));
        assert_eq!(del.code, 0, "{}", del.stdout);
    }
    lab.assert_clean(&["br0"]);
}
