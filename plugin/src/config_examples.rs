//! Every config example the repository shows a reader (README and DESIGN ```json
//! blocks, the JSON schemas' `examples`, the manifests) goes through the validation
//! the binaries use, so no example can drift from what the code accepts.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cni::netconf_check;
use portgroup::nodeconfig;

/// A file of the repository, found from whichever package's directory this
/// test is compiled in.
fn repo_file(relative: &str) -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package
        .ancestors()
        .find(|dir| dir.join("manifests").is_dir())
        .unwrap_or(package)
        .join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The contents of each fenced ```json block, with its first line number.
fn json_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match current.as_mut() {
            None if fence.starts_with("```json") => current = Some((n + 2, String::new())),
            None => {}
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unterminated ```json block");
    blocks
}

/// The YAML block scalars (`key: |`) keyed `key`, dedented: how the manifests
/// carry JSON (a ConfigMap's `config.json`, a NAD's `spec.config`).
fn yaml_block_scalars(yaml: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        let Some(rest) = trimmed.strip_prefix(key).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        if !matches!(rest.trim(), "|" | "|-" | "|+") {
            continue;
        }
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .copied()
            .collect();
        let Some(first) = body.iter().find(|l| !l.trim().is_empty()) else {
            continue;
        };
        let cut = indent(first);
        out.push(
            body.iter()
                .map(|l| l.get(cut..).unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out
}

#[derive(Debug, PartialEq)]
enum Kind {
    NodeConfig,
    CniConfig,
    Other,
}

/// Node state has a `node`; a CNI config a `type` or `plugins`; a node config
/// `portgroups`. Anything else (results, records) is not a config.
fn kind_of(value: &Value) -> Kind {
    match value {
        Value::Object(o) if o.contains_key("node") => Kind::Other,
        Value::Object(o) if o.contains_key("type") || o.contains_key("plugins") => Kind::CniConfig,
        Value::Object(o) if o.contains_key("portgroups") => Kind::NodeConfig,
        _ => Kind::Other,
    }
}

/// Checks one example with the binaries' validation; returns its kind.
fn assert_valid(origin: &str, text: &str) -> Kind {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{origin}: not JSON: {e}\n{text}"));
    let kind = kind_of(&value);
    let problems = match kind {
        Kind::NodeConfig => nodeconfig::check(text.as_bytes()),
        Kind::CniConfig => netconf_check::check(text.as_bytes()),
        Kind::Other => vec![],
    };
    assert!(problems.is_empty(), "{origin}: {problems:#?}\n{text}");
    kind
}

fn count(kinds: &[Kind], kind: Kind) -> usize {
    kinds.iter().filter(|k| **k == kind).count()
}

#[test]
fn readme_and_design_examples_validate() {
    // README must show both configs, and every ```json block there is JSON.
    // DESIGN.md may sketch (a block that is not JSON is no example there).
    for (doc, at_least) in [("README.md", 1), ("docs/DESIGN.md", 0)] {
        let kinds: Vec<Kind> = json_blocks(&read(doc))
            .iter()
            .filter(|(_, text)| at_least > 0 || serde_json::from_str::<Value>(text).is_ok())
            .map(|(line, text)| assert_valid(&format!("{doc}:{line}"), text))
            .collect();
        assert!(
            count(&kinds, Kind::NodeConfig) >= at_least,
            "{doc}: {kinds:?}"
        );
        assert!(
            count(&kinds, Kind::CniConfig) >= at_least,
            "{doc}: {kinds:?}"
        );
    }
}

#[test]
fn schema_examples_validate() {
    for (schema, kind) in [
        (
            "manifests/schemas/portgroup-node-config.json",
            Kind::NodeConfig,
        ),
        (
            "manifests/schemas/portgroup-cni-config.json",
            Kind::CniConfig,
        ),
    ] {
        let doc: Value = serde_json::from_str(&read(schema)).expect(schema);
        let examples = doc["examples"].as_array().expect("examples");
        assert!(examples.len() >= 2, "{schema}");
        for (i, example) in examples.iter().enumerate() {
            let text = serde_json::to_string_pretty(example).expect("serialise");
            let origin = format!("{schema} examples[{i}]");
            assert_eq!(assert_valid(&origin, &text), kind, "{origin}");
        }
    }
}

#[test]
fn manifest_configs_validate() {
    let mut node_configs = 0;
    let mut cni_configs = 0;
    let dir = repo_file("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for path in files {
        let yaml = std::fs::read_to_string(&path).expect("read manifest");
        let origin = path.display().to_string();
        if yaml.contains("\nkind: ConfigMap") {
            for text in yaml_block_scalars(&yaml, "config.json") {
                assert_eq!(assert_valid(&origin, &text), Kind::NodeConfig);
                node_configs += 1;
            }
        }
        if yaml.contains("\nkind: NetworkAttachmentDefinition") {
            let configs = yaml_block_scalars(&yaml, "config");
            assert!(!configs.is_empty(), "{origin}: no spec.config block");
            for text in configs {
                assert_eq!(assert_valid(&origin, &text), Kind::CniConfig);
                cni_configs += 1;
            }
        }
    }
    assert!(node_configs >= 1, "no node config found under manifests/");
    assert!(
        cni_configs >= 2,
        "fewer NADs than expected under manifests/"
    );
}

/// The CNI schema documents exactly the fields the check knows.
#[test]
fn cni_schema_lists_the_known_fields() {
    let schema: Value =
        serde_json::from_str(&read("manifests/schemas/portgroup-cni-config.json")).expect("JSON");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("properties").keys().cloned().collect();
        k.sort();
        k
    };
    let sorted = |list: &[&str]| -> Vec<String> {
        let mut k: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&schema["properties"]),
        sorted(netconf_check::KNOWN_FIELDS)
    );
    assert_eq!(
        keys(&schema["properties"]["probe"]["properties"]),
        sorted(netconf_check::PROBE_FIELDS)
    );
}

#[test]
fn extraction_finds_what_it_should() {
    let md = "text\n```json\n{\"a\": 1}\n```\n```sh\nx\n```\n  ```json\n[]\n  ```\n";
    assert_eq!(
        json_blocks(md),
        vec![(3, "{\"a\": 1}\n".to_string()), (9, "[]\n".to_string())]
    );
    let yaml = "data:\n  config.json: |\n    {\n      \"a\": 1\n    }\nother: x\nspec:\n  config: |-\n    {}\n";
    assert_eq!(
        yaml_block_scalars(yaml, "config.json"),
        vec!["{\n  \"a\": 1\n}".to_string()]
    );
    assert_eq!(yaml_block_scalars(yaml, "config"), vec!["{}".to_string()]);
}
