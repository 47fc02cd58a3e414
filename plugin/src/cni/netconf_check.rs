//! Checking a network configuration as it is written down (a
//! NetworkAttachmentDefinition's `spec.config`, a file in /etc/cni/net.d) before
//! any runtime hands it to the plugin: `portgroup --check-config` and the manifest
//! validation use it.
//!
//! The plugin's own refusal ([`NetConf::parse`]) is the core of it, word for word.
//! On top come what a written config can get wrong that the plugin never sees
//! wrong at run time: a `type` other than `portgroup` (the runtime would run
//! another plugin) and fields the plugin does not know (it ignores them, so a
//! misspelt `spoofchek: false` would silently change nothing).

use serde_json::{Map, Value};

use super::netconf::NetConf;

/// Every top-level field the plugin reads, the CNI conventions define, or the
/// plugin refuses by name (fields of the reference bridge plugin that would not do
/// here what they say). `manifests/schemas/portgroup-cni-config.json` lists the same.
pub const KNOWN_FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "portgroup",
    "bridge",
    "mtu",
    "linkDown",
    "spoofCheck",
    "conflictProbe",
    "probe",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "logFile",
    "logLevel",
    "vlan",
    "ipMasq",
    "isGateway",
    "isDefaultGateway",
    "vlanTrunk",
    "allowRouterAdvertisements",
    "allowDhcpServer",
];

/// The fields of `probe`.
pub const PROBE_FIELDS: &[&str] = &["count", "intervalMs", "waitMs"];

/// The plugin's type name, as `type` must say.
pub const PLUGIN_TYPE: &str = "portgroup";

/// Every problem of a written network configuration, one a line, each naming its
/// field; empty when the plugin would take it. A configuration list
/// (`"plugins": [...]`) is checked entry by entry for the entries of type
/// `portgroup`, each completed with the list's `cniVersion` and `name` as the
/// runtime completes it; their problems start with `plugins[i]: `.
pub fn check(bytes: &[u8]) -> Vec<String> {
    let root = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(root)) => root,
        // NetConf's own words for what is not a JSON object.
        _ => {
            return NetConf::parse(bytes)
                .err()
                .map(|e| vec![e.to_string()])
                .unwrap_or_default()
        }
    };
    match root.get("plugins") {
        None => check_one(&root),
        Some(Value::Array(plugins)) => check_list(&root, plugins),
        Some(_) => vec!["plugins: must be an array of plugin configurations".into()],
    }
}

fn check_list(root: &Map<String, Value>, plugins: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["cniVersion", "name"] {
        if !root.get(key).is_some_and(Value::is_string) {
            problems.push(format!("{key}: required, a string"));
        }
    }
    let mut ours = 0;
    for (i, plugin) in plugins.iter().enumerate() {
        let Some(entry) = plugin.as_object() else {
            problems.push(format!("plugins[{i}]: must be an object"));
            continue;
        };
        if entry.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE) {
            continue;
        }
        ours += 1;
        let mut conf = entry.clone();
        for key in ["cniVersion", "name"] {
            if let Some(value) = root.get(key) {
                conf.insert(key.to_string(), value.clone());
            }
        }
        problems.extend(
            check_one(&conf)
                .into_iter()
                .map(|p| format!("plugins[{i}]: {p}")),
        );
    }
    if ours == 0 {
        problems.push(format!("plugins: no plugin of type {PLUGIN_TYPE:?}"));
    }
    problems
}

fn check_one(conf: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    match conf.get("type") {
        Some(Value::String(t)) if t == PLUGIN_TYPE => {}
        Some(other) => problems.push(format!("type: must be {PLUGIN_TYPE:?}, got {other}")),
        None => problems.push(format!("type: required, {PLUGIN_TYPE:?}")),
    }
    for key in conf.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            problems.push(format!("{key}: unknown field (the plugin would ignore it)"));
        }
    }
    // Conventions the runtime, not the plugin, reads: libcni decodes them strictly.
    match conf.get("capabilities") {
        None | Some(Value::Null) => {}
        Some(Value::Object(caps)) => {
            for (name, value) in caps {
                if !value.is_boolean() {
                    problems.push(format!(
                        "capabilities.{name}: must be true or false, got {value}"
                    ));
                }
            }
        }
        Some(other) => problems.push(format!(
            "capabilities: must be an object of capability name to true or false, got {other}"
        )),
    }
    if let Some(other) = conf.get("dns").filter(|v| !(v.is_object() || v.is_null())) {
        problems.push(format!("dns: must be an object, got {other}"));
    }
    if let Some(Value::Object(probe)) = conf.get("probe") {
        for key in probe.keys() {
            if !PROBE_FIELDS.contains(&key.as_str()) {
                problems.push(format!(
                    "probe.{key}: unknown field (the plugin would ignore it)"
                ));
            }
        }
    }
    // Round trip: the plugin parses bytes, and serde_json keeps key order stable.
    let bytes = serde_json::to_vec(conf).unwrap_or_default();
    if let Err(err) = NetConf::parse(&bytes) {
        problems.push(err.to_string());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(json: &str) -> Vec<String> {
        check(json.as_bytes())
    }

    const NAD: &str = r#"{"cniVersion": "1.0.0", "name": "prod-web", "type": "portgroup",
        "portgroup": "prod-web", "capabilities": {"mac": true, "ips": true}, "mtu": 1500,
        "linkDown": false, "spoofCheck": true, "conflictProbe": true,
        "probe": {"count": 2, "intervalMs": 50, "waitMs": 150}}"#;

    #[test]
    fn a_good_config_has_no_problems() {
        assert_eq!(problems(NAD), Vec::<String>::new());
        assert_eq!(
            problems(
                r#"{"cniVersion": "1.0.0", "name": "lab", "type": "portgroup", "bridge": "br0",
                    "ipam": {"type": "static", "addresses": [{"address": "10.0.0.2/24"}]}}"#
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn problems_are_the_plugins_words_plus_what_only_a_written_config_gets_wrong() {
        let cases: &[(&str, &[&str])] = &[
            ("{", &["decoding network configuration: "]),
            ("[]", &["decoding network configuration: must be a JSON object"]),
            (
                r#"{"cniVersion": "1.0.0", "name": "a", "type": "portgroup", "portgroup": "a", "mtu": 10}"#,
                &["mtu: must be from 68 to 65535, got 10"],
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "a", "type": "bridge", "portgroup": "a"}"#,
                &["type: must be \"portgroup\", got \"bridge\""],
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "a", "portgroup": "a"}"#,
                &["type: required, \"portgroup\""],
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "a", "type": "portgroup", "portgroup": "a",
                    "spoofchek": false, "probe": {"count": 2, "retries": 3}}"#,
                &[
                    "spoofchek: unknown field (the plugin would ignore it)",
                    "probe.retries: unknown field (the plugin would ignore it)",
                ],
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "a", "type": "portgroup", "portgroup": "a",
                    "capabilities": {"mac": "yes"}, "dns": []}"#,
                &[
                    "capabilities.mac: must be true or false, got \"yes\"",
                    "dns: must be an object, got []",
                ],
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "a", "type": "portgroup", "portgroup": "a", "vlan": 100}"#,
                &["field vlan = 100 is not supported: the portgroup carries the VLAN; name it with \"portgroup\""],
            ),
            (
                r#"{"cniVersion": "0.2.0", "name": "a", "type": "portgroup", "portgroup": "a"}"#,
                &["cniVersion \"0.2.0\" is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)"],
            ),
        ];
        for (input, want) in cases {
            let got = problems(input);
            if want[0].ends_with(": ") {
                assert!(
                    got.len() == 1 && got[0].starts_with(want[0]),
                    "{input}: {got:?}"
                );
            } else {
                assert_eq!(got, want.to_vec(), "{input}");
            }
        }
    }

    #[test]
    fn the_plugins_refusal_is_word_for_word() {
        let bad =
            br#"{"cniVersion": "1.0.0", "name": "a", "type": "portgroup", "portgroup": "A_b"}"#;
        let err = NetConf::parse(bad).expect_err("refused");
        assert_eq!(check(bad), vec![err.to_string()]);
    }

    #[test]
    fn conflists_are_checked_entry_by_entry() {
        let ok = r#"{"cniVersion": "1.0.0", "name": "web", "plugins": [
            {"type": "portgroup", "portgroup": "prod-web"},
            {"type": "tuning", "sysctl": {}}]}"#;
        assert_eq!(problems(ok), Vec::<String>::new());
        let bad = r#"{"cniVersion": "1.0.0", "name": "web", "plugins": [
            {"type": "tuning"}, {"type": "portgroup", "portgroup": "prod-web", "mtu": 5}]}"#;
        assert_eq!(
            problems(bad),
            vec!["plugins[1]: mtu: must be from 68 to 65535, got 5".to_string()]
        );
        assert_eq!(
            problems(r#"{"cniVersion": "1.0.0", "name": "web", "plugins": [{"type": "tuning"}]}"#),
            vec!["plugins: no plugin of type \"portgroup\"".to_string()]
        );
        assert_eq!(
            problems(r#"{"plugins": [{"type": "portgroup", "portgroup": "a"}]}"#),
            vec![
                "cniVersion: required, a string".to_string(),
                "name: required, a string".to_string(),
                "plugins[0]: cniVersion: required".to_string(),
            ]
        );
    }
}
