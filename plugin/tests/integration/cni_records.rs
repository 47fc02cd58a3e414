//! Attachment records and what only their owner may do: GC without the list of
//! valid attachments removes nothing. Root only; everything lives in namespaces
//! the test makes.

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
