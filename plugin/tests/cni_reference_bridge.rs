//! Drop-in check against Debian's reference bridge plugin: the same ADD/DEL through
//! both, and our result must have every key the reference's has, in the same places,
//! so runtimes and meta-plugins that read bridge results read ours.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{conf, Lab};
use serde_json::{json, Value};

const REFERENCE: &str = "/usr/lib/cni/bridge";

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The interface entry a result's first IP points at (the container side in both).
fn container_interface(result: &Value) -> Value {
    let index = result["ips"][0]["interface"]
        .as_u64()
        .expect("ips[0].interface") as usize;
    result["interfaces"][index].clone()
}

#[test]
fn result_shape_matches_the_reference_bridge_plugin() {
    assert!(
        Path::new(REFERENCE).exists(),
        "{REFERENCE} is missing: hack/test.sh installs containernetworking-plugins"
    );
    let mut lab = Lab::new();
    lab.add_bridge("brref");
    let (ref_pod, our_pod) = (lab.pod(), lab.pod());
    let (ref_path, path) = (Lab::netns_path(&ref_pod), Lab::netns_path(&our_pod));
    let ipam = json!({"type": "static", "addresses": [{"address": "10.3.0.5/24", "gateway": "10.3.0.1"}], "routes": [{"dst": "10.9.0.0/16"}]});
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let reference_conf = json!({"cniVersion": version, "name": "ref", "type": "bridge", "bridge": "brref", "ipam": ipam});
        let env_ref = Lab::attach_env("refctr", &ref_path, "net1");
        let reference = run_reference(&lab, "ADD", &reference_conf, &env_ref);
        assert_eq!(
            reference["cniVersion"], version,
            "reference ADD: {reference}"
        );

        let ours_conf = conf(version, json!({"ipam": ipam}));
        let env_ours = Lab::attach_env("ourctr", &path, "net1");
        let ours = lab.cni("ADD", &ours_conf, &env_ours);
        assert_eq!(ours.code, 0, "{}", ours.stdout);
        let ours = ours.json;

        let missing: Vec<_> = keys(&reference).difference(&keys(&ours)).cloned().collect();
        assert!(missing.is_empty(), "{version}: top-level keys missing from ours: {missing:?}\nref {reference}\nours {ours}");
        let (ref_if, our_if) = (container_interface(&reference), container_interface(&ours));
        let missing: Vec<_> = keys(&ref_if).difference(&keys(&our_if)).cloned().collect();
        assert!(
            missing.is_empty(),
            "{version}: container interface keys missing: {missing:?}"
        );
        assert_eq!(our_if["sandbox"], path.as_str());
        assert_eq!(ref_if["sandbox"], ref_path.as_str());
        assert_eq!(
            keys(&reference["ips"][0]),
            keys(&ours["ips"][0]),
            "{version}: ips[0] keys differ"
        );
        assert_eq!(reference["ips"][0]["address"], ours["ips"][0]["address"]);
        assert_eq!(reference["ips"][0]["gateway"], ours["ips"][0]["gateway"]);
        assert_eq!(reference["routes"], ours["routes"], "{version}: routes");
        // Every interface entry of the reference has a name and a mac; so must ours.
        for entry in ours["interfaces"].as_array().unwrap() {
            assert!(
                entry["name"].is_string() && entry["mac"].is_string(),
                "{entry}"
            );
        }

        let del_ref = run_reference_status(&lab, "DEL", &reference_conf, &env_ref);
        assert!(del_ref, "reference DEL failed");
        assert_eq!(lab.cni("DEL", &ours_conf, &env_ours).code, 0);
    }
}

fn reference_command(
    lab: &Lab,
    command: &str,
    conf: &Value,
    env: &[(&str, &str)],
) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.node, REFERENCE])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn run_reference(lab: &Lab, command: &str, conf: &Value, env: &[(&str, &str)]) -> Value {
    let out = reference_command(lab, command, conf, env);
    assert!(
        out.status.success(),
        "reference {command}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_reference_status(lab: &Lab, command: &str, conf: &Value, env: &[(&str, &str)]) -> bool {
    reference_command(lab, command, conf, env).status.success()
}
