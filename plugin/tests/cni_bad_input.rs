//! A table of bad inputs: each gets the right CNI error code, a JSON error on
//! stdout, a non-zero exit, and leaves nothing behind.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{conf, links, Lab};
use serde_json::{json, Value};

enum Input {
    Json(Value),
    Raw(&'static [u8]),
}

struct Case {
    what: &'static str,
    command: &'static str,
    input: Input,
    /// Environment overrides; ("CNI_X", "") removes the variable.
    env: Vec<(&'static str, &'static str)>,
    code: u64,
    /// Text the details must contain (the field or variable named).
    names: &'static str,
}

fn case(
    what: &'static str,
    input: Input,
    env: Vec<(&'static str, &'static str)>,
    code: u64,
    names: &'static str,
) -> Case {
    Case {
        what,
        command: "ADD",
        input,
        env,
        code,
        names,
    }
}

fn with(extra: Value) -> Input {
    Input::Json(conf("1.0.0", extra))
}

#[test]
fn bad_inputs_get_the_right_code_and_leave_nothing() {
    use Input::*;
    let cases = vec![
        case(
            "broken JSON",
            Raw(b"{\"cniVersion\": \"1.0.0\", "),
            vec![],
            6,
            "network configuration",
        ),
        case("not an object", Raw(b"[1, 2]"), vec![], 6, "JSON object"),
        case("empty stdin", Raw(b""), vec![], 6, "network configuration"),
        case(
            "unknown version",
            with(json!({"cniVersion": "0.2.0"})),
            vec![],
            1,
            "0.2.0",
        ),
        case(
            "future version",
            with(json!({"cniVersion": "2.0.0"})),
            vec![],
            1,
            "2.0.0",
        ),
        case(
            "version is a number",
            with(json!({"cniVersion": 1.0})),
            vec![],
            7,
            "cniVersion",
        ),
        case(
            "missing name",
            with(json!({"name": null})),
            vec![],
            7,
            "name",
        ),
        case(
            "bad name",
            with(json!({"name": "bad name!"})),
            vec![],
            7,
            "name",
        ),
        case(
            "both portgroup and bridge",
            with(json!({"portgroup": "prod-web"})),
            vec![],
            7,
            "portgroup/bridge",
        ),
        case(
            "neither portgroup nor bridge",
            with(json!({"bridge": null})),
            vec![],
            7,
            "portgroup/bridge",
        ),
        case(
            "portgroup not a DNS label",
            with(json!({"bridge": null, "portgroup": "Prod_Web"})),
            vec![],
            7,
            "portgroup",
        ),
        case(
            "bridge is a number",
            with(json!({"bridge": 5})),
            vec![],
            7,
            "bridge",
        ),
        case(
            "multicast MAC",
            with(json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}})),
            vec![],
            7,
            "runtimeConfig.mac",
        ),
        case(
            "broadcast MAC",
            with(json!({"runtimeConfig": {"mac": "ff:ff:ff:ff:ff:ff"}})),
            vec![],
            7,
            "runtimeConfig.mac",
        ),
        case(
            "malformed MAC",
            with(json!({"runtimeConfig": {"mac": "00:50:56:zz:00:01"}})),
            vec![],
            7,
            "runtimeConfig.mac",
        ),
        case(
            "malformed MAC in args",
            with(json!({"args": {"cni": {"mac": "0050.56aa.bb01"}}})),
            vec![],
            7,
            "args.cni.mac",
        ),
        case(
            "malformed MAC in CNI_ARGS",
            with(json!({})),
            vec![("CNI_ARGS", "MAC=00:50:56")],
            4,
            "CNI_ARGS",
        ),
        case(
            "malformed IP",
            with(json!({"runtimeConfig": {"ips": ["10.0.0.256/24"]}})),
            vec![],
            7,
            "runtimeConfig.ips[0]",
        ),
        case(
            "IP without prefix",
            with(json!({"runtimeConfig": {"ips": ["10.0.0.5"]}})),
            vec![],
            7,
            "prefix length",
        ),
        case(
            "IPs not a list",
            with(json!({"runtimeConfig": {"ips": "10.0.0.5/24"}})),
            vec![],
            7,
            "runtimeConfig.ips",
        ),
        case(
            "absurd MTU",
            with(json!({"mtu": 1_000_000})),
            vec![],
            7,
            "mtu",
        ),
        case("tiny MTU", with(json!({"mtu": 20})), vec![], 7, "mtu"),
        case(
            "MTU as a string",
            with(json!({"mtu": "1500"})),
            vec![],
            7,
            "mtu",
        ),
        case(
            "linkDown not a bool",
            with(json!({"linkDown": "true"})),
            vec![],
            7,
            "linkDown",
        ),
        case(
            "spoofCheck not a bool",
            with(json!({"spoofCheck": 1})),
            vec![],
            7,
            "spoofCheck",
        ),
        case(
            "ipam not an object",
            with(json!({"ipam": "static"})),
            vec![],
            7,
            "ipam",
        ),
        case(
            "ipam type a path",
            with(json!({"ipam": {"type": "../../bin/sh"}})),
            vec![],
            7,
            "ipam.type",
        ),
        case(
            "vlan field from the bridge plugin",
            with(json!({"vlan": 100})),
            vec![],
            2,
            "vlan",
        ),
        case("ipMasq", with(json!({"ipMasq": true})), vec![], 2, "ipMasq"),
        case(
            "bad prevResult",
            with(json!({"prevResult": {"ips": [{"address": 5}]}})),
            vec![],
            6,
            "prevResult",
        ),
        case(
            "ifname too long",
            with(json!({})),
            vec![("CNI_IFNAME", "net1234567890123")],
            4,
            "CNI_IFNAME",
        ),
        case(
            "ifname with slash",
            with(json!({})),
            vec![("CNI_IFNAME", "net/1")],
            4,
            "CNI_IFNAME",
        ),
        case(
            "ifname dot-dot",
            with(json!({})),
            vec![("CNI_IFNAME", "..")],
            4,
            "CNI_IFNAME",
        ),
        case(
            "ifname missing",
            with(json!({})),
            vec![("CNI_IFNAME", "")],
            4,
            "CNI_IFNAME",
        ),
        case(
            "container ID with space",
            with(json!({})),
            vec![("CNI_CONTAINERID", "bad id")],
            4,
            "CNI_CONTAINERID",
        ),
        case(
            "container ID starts with dash",
            with(json!({})),
            vec![("CNI_CONTAINERID", "-abc")],
            4,
            "CNI_CONTAINERID",
        ),
        case(
            "container ID missing",
            with(json!({})),
            vec![("CNI_CONTAINERID", "")],
            4,
            "CNI_CONTAINERID",
        ),
        case(
            "netns missing",
            with(json!({})),
            vec![("CNI_NETNS", "/run/netns/does-not-exist")],
            4,
            "CNI_NETNS",
        ),
        case(
            "netns not a namespace",
            with(json!({})),
            vec![("CNI_NETNS", "/etc/hostname")],
            4,
            "CNI_NETNS",
        ),
        case(
            "netns unset",
            with(json!({})),
            vec![("CNI_NETNS", "")],
            4,
            "CNI_NETNS",
        ),
        case(
            "bridge missing",
            with(json!({"bridge": "nosuchbr0"})),
            vec![],
            102,
            "nosuchbr0",
        ),
        case(
            "bridge is not a bridge",
            with(json!({"bridge": "notabridge"})),
            vec![],
            102,
            "not a bridge",
        ),
        case(
            "portgroup without node state",
            with(json!({"bridge": null, "portgroup": "prod-web"})),
            vec![],
            11,
            "state.json",
        ),
        case(
            "unknown command",
            with(json!({})),
            vec![("CNI_COMMAND", "FROB")],
            4,
            "CNI_COMMAND",
        ),
        case(
            "no command",
            with(json!({})),
            vec![("CNI_COMMAND", "")],
            4,
            "CNI_COMMAND",
        ),
    ];
    assert!(cases.len() >= 25);

    let (lab, pod, path) = Lab::with_pod();
    // An interface that is not a bridge, for the "not a bridge" case.
    lab.node_ip(&[
        "link",
        "add",
        "notabridge",
        "type",
        "veth",
        "peer",
        "name",
        "notabridge-p",
    ]);
    let baseline = {
        let mut l = lab.node_links();
        l.sort();
        l
    };

    for c in &cases {
        let stdin = match &c.input {
            Input::Json(v) => serde_json::to_vec(v).unwrap(),
            Input::Raw(b) => b.to_vec(),
        };
        let mut env: Vec<(&str, &str)> = vec![
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", &path),
            ("CNI_IFNAME", "net1"),
        ];
        let mut command = c.command;
        for (k, v) in &c.env {
            if *k == "CNI_COMMAND" {
                command = v;
                continue;
            }
            env.retain(|(key, _)| key != k);
            if !v.is_empty() {
                env.push((k, v));
            }
        }
        let out = lab.cni_raw(command, &stdin, &env);
        assert_ne!(out.code, 0, "{}: must fail", c.what);
        assert_eq!(
            out.json["code"].as_u64(),
            Some(c.code),
            "{}: {}",
            c.what,
            out.stdout
        );
        let details = out.json["details"].as_str().unwrap_or_default();
        assert!(
            details.contains(c.names),
            "{}: details should name {:?}: {details}",
            c.what,
            c.names
        );
        assert!(
            out.json["msg"].is_string() && out.json["cniVersion"].is_string(),
            "{}",
            c.what
        );
        assert!(
            !out.stderr.contains("panicked"),
            "{}: {}",
            c.what,
            out.stderr
        );

        let mut now = lab.node_links();
        now.sort();
        assert_eq!(now, baseline, "{}: links leaked on the node", c.what);
        assert_eq!(
            lab.records(),
            Vec::<String>::new(),
            "{}: record leaked",
            c.what
        );
        assert_eq!(
            links(&pod),
            Vec::<String>::new(),
            "{}: link leaked in the pod",
            c.what
        );
    }
}
