//! A plan as file contents: relative path -> bytes. Deterministic: the same
//! plan gives byte-identical files (everything is sorted by the plan; nothing
//! here reads a clock or a hash map's order).
//!
//! YAML is written by hand: every scalar is a JSON string (a valid YAML
//! double-quoted scalar), so no YAML library is needed for output and no
//! value can change meaning (`no`, `1e3`, `on`).

mod html;
mod report;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use portgroup::nodeconfig::Segment;

use crate::plan::{MapSource, Plan, PlannedPortgroup, PlannedVm};

/// Which reports to write; the manifests are always written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportFormats {
    pub markdown: bool,
    pub html: bool,
    pub json: bool,
}

impl Default for ReportFormats {
    fn default() -> Self {
        ReportFormats {
            markdown: true,
            html: true,
            json: true,
        }
    }
}

impl ReportFormats {
    /// `md,html,json` (any subset, any order); `all`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut f = ReportFormats {
            markdown: false,
            html: false,
            json: false,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "md" | "markdown" => f.markdown = true,
                "html" => f.html = true,
                "json" => f.json = true,
                "all" => f = ReportFormats::default(),
                other => {
                    return Err(format!(
                        "unknown report format {other:?} (md, html, json, all)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

pub type Files = BTreeMap<String, Vec<u8>>;

pub fn render(plan: &Plan, formats: ReportFormats) -> Files {
    let mut files = Files::new();
    let config = node_config(plan);
    files.insert(
        "configmap.yaml".into(),
        configmap(plan, &config).into_bytes(),
    );
    files.insert("node-config.json".into(), config.into_bytes());
    for pg in &plan.portgroups {
        files.insert(format!("nads/{}.yaml", pg.name), nad(plan, pg).into_bytes());
    }
    for vm in &plan.planned_vms {
        files.insert(
            format!("vms/{}.yaml", vm.name),
            vm_stanza(plan, vm).into_bytes(),
        );
    }
    files.insert("networkmap.yaml".into(), network_map(plan).into_bytes());
    if formats.json {
        files.insert("report.json".into(), report::json(plan).into_bytes());
    }
    if formats.markdown {
        files.insert("report.md".into(), report::markdown(plan).into_bytes());
    }
    if formats.html {
        files.insert("report.html".into(), html::html(plan).into_bytes());
    }
    files
}

/// A JSON string literal, which is also a YAML double-quoted scalar.
pub(crate) fn q(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// The node network config, one reservation per line so that a diff between
/// two plans reads NIC by NIC.
pub fn node_config(plan: &Plan) -> String {
    let mut out = String::new();
    out.push_str("{\n");
    let _ = writeln!(out, "  \"uplink\": {},", q(&plan.options.uplink));
    out.push_str("  \"portgroups\": [");
    for (i, pg) in plan.portgroups.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(out, "    {{\n      \"name\": {},\n      ", q(&pg.name));
        // The segment in the validator's own words: `vlan`, `trunk` (the
        // VidSet's canonical spec) or `untagged`.
        match &pg.segment {
            Segment::Access(vid) => {
                let _ = write!(out, "\"vlan\": {vid}");
            }
            Segment::Trunk { vids, native } => {
                let _ = write!(out, "\"trunk\": {}", q(&vids.to_string()));
                if let Some(native) = native {
                    let _ = write!(out, ",\n      \"nativeVlan\": {native}");
                }
            }
            Segment::Untagged => out.push_str("\"untagged\": true"),
        }
        if let Some(uplink) = &pg.uplink {
            let _ = write!(out, ",\n      \"uplink\": {}", q(uplink));
        }
        let trunk = matches!(pg.segment, Segment::Trunk { .. });
        if !pg.reservations.is_empty() {
            out.push_str(",\n      \"reservations\": [");
            for (j, r) in pg.reservations.iter().enumerate() {
                out.push_str(if j == 0 { "\n" } else { ",\n" });
                let ips = r
                    .addrs
                    .iter()
                    .map(|a| q(&a.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                // A trunk portgroup reserves MACs only.
                if trunk {
                    let _ = write!(out, "        {{ \"mac\": {} }}", q(&r.mac.to_string()));
                } else {
                    let _ = write!(
                        out,
                        "        {{ \"mac\": {}, \"ips\": [{ips}] }}",
                        q(&r.mac.to_string())
                    );
                }
            }
            out.push_str("\n      ]");
        }
        out.push_str("\n    }");
    }
    if !plan.portgroups.is_empty() {
        out.push_str("\n  ");
    }
    out.push_str("]\n}\n");
    out
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

fn configmap(plan: &Plan, config: &str) -> String {
    let mut out = String::new();
    out.push_str(
        "# portgroup's node network config, planned by portgroupctl from the vSphere inventory.\n",
    );
    out.push_str("# Replaces manifests/configmap.yaml: kubectl apply -f configmap.yaml\n");
    let _ = writeln!(
        out,
        "# {} portgroup(s), {} reservation(s). Check it with: portgroupctl check-config node-config.json",
        plan.portgroups.len(),
        plan.portgroups.iter().map(|p| p.reservations.len()).sum::<usize>()
    );
    out.push_str("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: portgroup-config\n");
    let _ = writeln!(out, "  namespace: {}", q(&plan.options.config_namespace));
    out.push_str("  labels:\n    app.kubernetes.io/name: portgroup\n    app.kubernetes.io/component: config\n    app.kubernetes.io/part-of: portgroup\n");
    out.push_str("data:\n  config.json: |\n");
    out.push_str(&indent(config, "    "));
    out
}

fn nad(plan: &Plan, pg: &PlannedPortgroup) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# vSphere port group(s) {}, {}: {} NIC(s) planned.",
        pg.vsphere.join(", "),
        pg.describe(),
        pg.nics
    );
    if let Segment::Trunk { vids, .. } = &pg.segment {
        let _ = writeln!(
            out,
            "# A trunk: the VM's interface carries 802.1Q-tagged frames of VLANs {vids}; the guest configures its own VLAN interfaces."
        );
    }
    if !pg.spoof_check {
        out.push_str("# spoofCheck is off: vSphere accepted forged transmits or MAC changes on this port group.\n");
    }
    out.push_str("apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", q(&pg.name));
    let _ = writeln!(out, "  namespace: {}", q(&plan.options.namespace));
    if plan.options.resource_name_annotation {
        let _ = writeln!(
            out,
            "  annotations:\n    k8s.v1.cni.cncf.io/resourceName: {}",
            q(&format!("portgroup.io/{}", pg.name))
        );
    }
    out.push_str("  labels:\n    app.kubernetes.io/part-of: portgroup\n");
    out.push_str("spec:\n  config: |\n");
    // A trunk port has no addresses of its own on the node's side: the guest's
    // are on its VLANs.
    let capabilities = match pg.segment {
        Segment::Trunk { .. } => "{ \"mac\": true }",
        _ => "{ \"mac\": true, \"ips\": true }",
    };
    let config = format!(
        "{{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": {},\n  \"type\": \"portgroup\",\n  \"portgroup\": {},\n  \"capabilities\": {capabilities},\n  \"spoofCheck\": {}\n}}\n",
        q(&pg.name),
        q(&pg.name),
        pg.spoof_check
    );
    out.push_str(&indent(&config, "    "));
    out
}

fn vm_stanza(plan: &Plan, vm: &PlannedVm) -> String {
    let ns = &plan.options.namespace;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Network stanza for vSphere VM {} (cluster {}).",
        q(&vm.vsphere),
        q(&vm.cluster)
    );
    out.push_str(
        "# Merge it into the VirtualMachine that Forklift creates, before its first start:\n",
    );
    let _ = writeln!(
        out,
        "#   kubectl patch vm {} -n {ns} --type merge --patch-file vms/{}.yaml",
        vm.name, vm.name
    );
    for s in &vm.skipped {
        let _ = writeln!(out, "# Left out: {s}");
    }
    out.push_str("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n");
    let _ = writeln!(out, "  name: {}\n  namespace: {}", q(&vm.name), q(ns));
    out.push_str(
        "spec:\n  template:\n    spec:\n      domain:\n        devices:\n          interfaces:\n",
    );
    for i in &vm.interfaces {
        let _ = writeln!(out, "            - name: {}  # {}", q(&i.name), i.label);
        out.push_str("              bridge: {}\n");
        let _ = writeln!(out, "              macAddress: {}", q(&i.mac.to_string()));
        if i.down {
            out.push_str("              state: down\n");
        }
    }
    out.push_str("      networks:\n");
    for i in &vm.interfaces {
        let _ = writeln!(out, "        - name: {}", q(&i.name));
        let _ = writeln!(
            out,
            "          multus:\n            networkName: {}",
            q(&format!("{ns}/{}", i.portgroup))
        );
    }
    out
}

fn network_map(plan: &Plan) -> String {
    let o = &plan.options;
    let mut out = String::new();
    out.push_str(
        "# Forklift NetworkMap: each vSphere network a planned VM uses -> its portgroup NAD.\n",
    );
    out.push_str("# Apply the NADs (nads/) first: Forklift checks that they exist.\n");
    for u in &plan.unmapped {
        let _ = writeln!(out, "# Not mapped (not planned, see report.md): {u}");
    }
    out.push_str("apiVersion: forklift.konveyor.io/v1beta1\nkind: NetworkMap\nmetadata:\n");
    let _ = writeln!(
        out,
        "  name: portgroup\n  namespace: {}",
        q(&o.forklift_namespace)
    );
    out.push_str("spec:\n  provider:\n");
    let _ = writeln!(
        out,
        "    source:\n      name: {}\n      namespace: {}",
        q(&o.source_provider),
        q(&o.forklift_namespace)
    );
    let _ = writeln!(
        out,
        "    destination:\n      name: {}\n      namespace: {}",
        q(&o.destination_provider),
        q(&o.forklift_namespace)
    );
    if plan.network_map.is_empty() {
        out.push_str("  map: []\n");
        return out;
    }
    out.push_str("  map:\n");
    for pair in &plan.network_map {
        let _ = writeln!(out, "    # {}", pair.vsphere);
        match &pair.source {
            MapSource::Id(id) => {
                let _ = writeln!(out, "    - source:\n        id: {}", q(id));
            }
            MapSource::Name(name) => {
                let _ = writeln!(out, "    - source:\n        name: {}", q(name));
            }
        }
        let _ = writeln!(
            out,
            "      destination:\n        type: multus\n        namespace: {}\n        name: {}",
            q(&o.namespace),
            q(&pair.portgroup)
        );
    }
    out
}
