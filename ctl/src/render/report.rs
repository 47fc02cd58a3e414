//! report.json (for automation) and report.md (for people).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::plan::{Finding, FindingKind, Plan};

/// What to do about each kind of finding, in one sentence.
pub(crate) fn advice(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::DuplicateMac => "Give all but one NIC a new MAC on vSphere, then export and plan again. Until then none of them is reserved.",
        FindingKind::DuplicateIp => "Find out which VM owns the address; add it to that VM's reservation by hand. It is left out of every reservation until then.",
        FindingKind::NoIp => "Static addresses: add them to the VM's reservation in node-config.json by hand, or export while the VM runs with VMware Tools. DHCP: nothing to do.",
        FindingKind::HostGeneratedMac => "Usually fine: the MAC is kept and checked for duplicates across the whole inventory. Re-MAC only if a duplicate is found (Windows sees a new NIC).",
        FindingKind::NonVmwareMac => "Check with the network team that nothing else on the VLAN uses the MAC.",
        FindingKind::DisconnectedNic => "The interface gets state: down, as on vSphere. Remove that line from the VM stanza if it should come up.",
        FindingKind::NicWithoutNetwork => "Attach the NIC to a port group on vSphere or add it to the VM by hand; it is left out of the plan.",
        FindingKind::Template => "Templates are not migrated as VMs. Convert to a VM first if it must move.",
        FindingKind::UnsupportedPortgroup => "These NICs are left out of the plan: move them to an access port group on vSphere, or attach them by hand.",
        FindingKind::InsecurePortgroup => "Confirm that the relaxed policy is still needed (VRRP, nested hypervisors); spoofCheck is off on the NAD when MAC changes or forged transmits were accepted.",
        FindingKind::InconsistentVlan => "Fix the port group on vSphere, or apply the VM stanzas (vms/) which carry each VM's own VLAN.",
        FindingKind::TrunkVlans => "Have the network team confirm the VLANs the guests tag (and that the nodes' uplink trunks them); edit the portgroup's trunk list in node-config.json before applying it.",
    }
}

pub(crate) fn findings_by_kind(plan: &Plan) -> BTreeMap<FindingKind, Vec<&Finding>> {
    let mut by: BTreeMap<FindingKind, Vec<&Finding>> = BTreeMap::new();
    for f in &plan.findings {
        by.entry(f.kind).or_default().push(f);
    }
    by
}

/// Clusters' VLANs and the union across clusters.
pub(crate) fn all_vlans(plan: &Plan) -> BTreeSet<u16> {
    plan.clusters
        .values()
        .flat_map(|v| v.keys().copied())
        .collect()
}

pub(crate) fn vlan_list(vlans: impl IntoIterator<Item = u16>) -> String {
    // Ranges where consecutive: what a switch configuration takes.
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u16, u16)> = None;
    for v in vlans {
        run = match run {
            Some((a, b)) if v == b + 1 => Some((a, v)),
            Some((a, b)) => {
                out.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((v, v))
            }
            None => Some((v, v)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

pub fn json(plan: &Plan) -> String {
    let portgroups: Vec<Value> = plan
        .vsphere
        .iter()
        .map(|p| {
            json!({
                "vsphere": p.vsphere,
                "name": p.planned,
                "kind": p.kind,
                "vlan": p.vlan,
                "vlans": p.vlans,
                "nics": p.nics,
            })
        })
        .collect();
    let findings: Vec<Value> = plan
        .findings
        .iter()
        .map(|f| {
            json!({
                "kind": f.kind.as_str(),
                "vm": f.vm,
                "nic": f.nic,
                "mac": f.mac,
                "ip": f.ip,
                "portgroup": f.portgroup,
                "message": f.message,
            })
        })
        .collect();
    let root = json!({
        "vms": plan.vms,
        "nics": plan.nics,
        "portgroups": portgroups,
        "findings": findings,
    });
    let mut text = serde_json::to_string_pretty(&root).unwrap_or_default();
    text.push('\n');
    text
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let planned_nics: usize = plan.portgroups.iter().map(|p| p.nics).sum();
    let reserved: usize = plan.portgroups.iter().map(|p| p.reservations.len()).sum();
    let by_kind = findings_by_kind(plan);
    out.push_str("# Network scoping report\n\n");
    let _ = writeln!(
        out,
        "In scope: **{} VMs**, **{} NICs**, **{} vSphere port groups** used. Planned: **{} portgroups** (VLANs), **{} NICs** ({} reserved), **{} VM stanzas**. Findings: **{}**.\n",
        plan.vms,
        plan.nics,
        plan.vsphere.iter().filter(|p| p.nics > 0).count(),
        plan.portgroups.len(),
        planned_nics,
        reserved,
        plan.planned_vms.len(),
        plan.findings.len()
    );
    if !plan.findings.is_empty() {
        out.push_str("| Finding | Count |\n|---|---:|\n");
        for (kind, list) in &by_kind {
            let _ = writeln!(
                out,
                "| {} (`{}`) | {} |",
                kind.title(),
                kind.as_str(),
                list.len()
            );
        }
        out.push('\n');
    }

    out.push_str("## VLANs the nodes' uplinks must trunk\n\n");
    let _ = writeln!(
        out,
        "The Kubernetes nodes that run each cluster's VMs need these VLANs tagged on their uplink (`{}`). All clusters together: **{}**.\n",
        plan.options.uplink,
        vlan_list(all_vlans(plan))
    );
    out.push_str("| vSphere cluster | VLANs | NICs |\n|---|---|---:|\n");
    for (cluster, vlans) in &plan.clusters {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            cell(cluster),
            vlan_list(vlans.keys().copied()),
            plan.cluster_nics.get(cluster).copied().unwrap_or(0)
        );
    }
    out.push('\n');

    out.push_str("## Planned portgroups\n\n");
    out.push_str("| Portgroup (NAD) | VLAN | vSphere port groups | NICs | Reservations | spoofCheck |\n|---|---:|---|---:|---:|---|\n");
    for pg in &plan.portgroups {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            pg.name,
            cell(&pg.vlan_cell()),
            cell(&pg.vsphere.join(", ")),
            pg.nics,
            pg.reservations.len(),
            if pg.spoof_check { "on" } else { "**off**" }
        );
    }
    out.push('\n');

    out.push_str("## vSphere port groups\n\n");
    out.push_str("| vSphere port group | Switch type | Kind | VLAN | NICs in scope | What becomes of it |\n|---|---|---|---|---:|---|\n");
    for p in &plan.vsphere {
        let vlan = match (&p.vlan, &p.vlans) {
            (_, Some(spec)) => spec.clone(),
            (Some(v), None) => v.to_string(),
            (None, None) => "?".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&p.vsphere),
            if p.distributed {
                "distributed"
            } else {
                "standard"
            },
            p.kind.unwrap_or("unknown"),
            vlan,
            p.nics,
            cell(&p.fate)
        );
    }
    out.push('\n');

    out.push_str("## Findings\n\n");
    if plan.findings.is_empty() {
        out.push_str("None.\n\n");
    }
    for (kind, list) in &by_kind {
        let _ = writeln!(
            out,
            "### {} (`{}`): {}\n",
            kind.title(),
            kind.as_str(),
            list.len()
        );
        let _ = writeln!(out, "What to do: {}\n", advice(*kind));
        let fields = kind.fields();
        let header: Vec<&str> = fields
            .iter()
            .map(|f| f.title())
            .chain(["Details"])
            .collect();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for f in list {
            let cells: Vec<String> = fields
                .iter()
                .map(|field| cell(f.field(*field)))
                .chain([cell(&f.message)])
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }

    out.push_str("## Sources and scope\n\n");
    if plan.govc_guest_overrides.is_empty() {
        out.push_str("- Guest addresses: from RVTools (no prefix lengths; reservations hold bare addresses).\n");
    } else {
        let _ = writeln!(
            out,
            "- Guest addresses from govc (with prefix lengths) replace RVTools' for {} VM(s): {}.",
            plan.govc_guest_overrides.len(),
            cell(&plan.govc_guest_overrides.join(", "))
        );
    }
    if !plan.srm_placeholders.is_empty() {
        let _ = writeln!(
            out,
            "- SRM placeholders left out (their protected VMs are planned at the protected site): {}.",
            cell(&plan.srm_placeholders.join(", "))
        );
    }
    if !plan.unmapped.is_empty() {
        let _ = writeln!(
            out,
            "- Networks in use that networkmap.yaml leaves out (not planned): {}. Forklift refuses a Plan whose VMs use an unmapped network: map them by hand (or to `ignored`).",
            cell(&plan.unmapped.join(", "))
        );
    }
    let _ = writeln!(
        out,
        "- NADs and VMs in namespace `{}`; NetworkMap in `{}` (providers `{}` -> `{}`).",
        plan.options.namespace,
        plan.options.forklift_namespace,
        plan.options.source_provider,
        plan.options.destination_provider
    );
    out
}
