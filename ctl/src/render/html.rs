//! report.html: one self-contained file (inline CSS and script, no external
//! asset) with the VLAN x cluster matrix and sortable finding tables; the
//! print stylesheet drops the controls and keeps tables whole per row.

use std::fmt::Write as _;

use super::report::{advice, all_vlans, findings_by_kind, vlan_list};
use crate::plan::Plan;

pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --fg:#1d2433; --muted:#5b6477; --line:#d9dee8; --bg:#f6f8fb; --accent:#2456a6; --bad:#b42318; --warn:#a15c00; --ok:#1a7f37; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; background: #fff; }
header { background: var(--accent); color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; opacity: .9; }
main { padding: 8px 28px 40px; max-width: 1400px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(118px, 1fr)); gap: 10px; margin: 16px 0; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.card b { display: block; font-size: 24px; }
.card span { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card.bad b { color: var(--bad); }
table { border-collapse: collapse; margin: 6px 0 12px; width: 100%; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \2195"; color: var(--muted); font-weight: normal; }
th.asc::after { content: " \2191"; } th.desc::after { content: " \2193"; }
td.num, th.num { text-align: right; }
td.nowrap { white-space: nowrap; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
table.matrix, #finding-summary { width: auto; }
#finding-summary td:first-child { min-width: 320px; }
table.matrix td { text-align: center; min-width: 90px; }
table.matrix td.mono { text-align: left; }
table.matrix td.on { background: #dbe8fb; font-weight: 600; }
table.matrix th.vlan { text-align: right; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; background: var(--bg); border: 1px solid var(--line); }
.pill.bad { color: var(--bad); border-color: #f1b5ae; background: #fef3f2; }
.pill.warn { color: var(--warn); border-color: #f5d49a; background: #fffaeb; }
.pill.ok { color: var(--ok); border-color: #abefc6; background: #ecfdf3; }
.advice { color: var(--muted); margin: 0 0 4px; }
.filter { margin: 4px 0 8px; padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px; width: 320px; }
.trunk { font-size: 15px; background: var(--bg); border-left: 4px solid var(--accent); padding: 8px 12px; }
@media print {
  header { background: none; color: #000; padding: 0 0 8px; border-bottom: 2px solid #000; }
  main { padding: 0; max-width: none; }
  .filter, th.sortable::after { display: none; }
  th.sortable { cursor: default; }
  tr, .card { page-break-inside: avoid; }
  h2, h3 { page-break-after: avoid; }
  table.matrix td.on { background: #ddd !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  body { font-size: 11px; }
}
"#;

const SCRIPT: &str = r#"
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.classList.add('sortable');
    th.addEventListener('click', function () {
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v') || a.cells[col].textContent;
        var y = b.cells[col].getAttribute('data-v') || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.querySelectorAll('input.filter').forEach(function (input) {
  input.addEventListener('input', function () {
    var needle = input.value.toLowerCase();
    var table = document.getElementById(input.getAttribute('data-table'));
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      r.style.display = r.textContent.toLowerCase().indexOf(needle) >= 0 ? '' : 'none';
    });
  });
});
"#;

pub fn html(plan: &Plan) -> String {
    let by_kind = findings_by_kind(plan);
    let planned_nics: usize = plan.portgroups.iter().map(|p| p.nics).sum();
    let reserved: usize = plan.portgroups.iter().map(|p| p.reservations.len()).sum();
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    o.push_str("<title>Network scoping report</title>\n<style>");
    o.push_str(STYLE);
    o.push_str("</style>\n</head>\n<body>\n<header><h1>Network scoping report</h1>");
    let _ = writeln!(
        o,
        "<p>{} VMs and {} NICs in scope &middot; {} portgroups planned &middot; {} findings</p></header>\n<main>",
        plan.vms,
        plan.nics,
        plan.portgroups.len(),
        plan.findings.len()
    );

    // Summary cards.
    o.push_str("<section id=\"summary\"><div class=\"cards\">");
    let blocking: usize = plan
        .findings
        .iter()
        .filter(|f| f.kind.is_blocking())
        .count();
    for (value, label, bad) in [
        (plan.vms, "VMs in scope", false),
        (plan.nics, "NICs", false),
        (
            plan.vsphere.iter().filter(|p| p.nics > 0).count(),
            "vSphere port groups used",
            false,
        ),
        (plan.portgroups.len(), "portgroups planned", false),
        (planned_nics, "NICs planned", false),
        (reserved, "reservations", false),
        (plan.planned_vms.len(), "VM stanzas", false),
        (blocking, "blocking findings", blocking > 0),
        (plan.findings.len(), "findings", false),
    ] {
        let _ = write!(
            o,
            "<div class=\"card{}\"><b>{value}</b><span>{label}</span></div>",
            if bad { " bad" } else { "" }
        );
    }
    o.push_str("</div></section>\n");

    // VLAN x cluster matrix.
    let vlans = all_vlans(plan);
    o.push_str("<section id=\"trunks\"><h2>VLANs the nodes' uplinks must trunk</h2>\n");
    let _ = writeln!(
        o,
        "<p class=\"trunk\">All clusters: <b class=\"mono\">{}</b> on uplink <code>{}</code></p>",
        esc(&vlan_list(vlans.iter().copied())),
        esc(&plan.options.uplink)
    );
    o.push_str("<p>Rows are VLANs, columns vSphere clusters; a cell counts the planned NICs of that cluster's VMs on that VLAN (a trunk NIC on each VLAN of its trunk; untagged NICs need no VLAN). The nodes that run a cluster's VMs must carry every VLAN in its column.</p>\n");
    o.push_str(
        "<table class=\"matrix\" id=\"vlan-matrix\"><thead><tr><th>VLAN</th><th>Portgroup</th>",
    );
    for cluster in plan.clusters.keys() {
        let _ = write!(o, "<th>{}</th>", esc(cluster));
    }
    o.push_str("</tr></thead><tbody>\n");
    for vlan in &vlans {
        // The access portgroup of the VLAN, and every trunk that lists it.
        let name = plan
            .portgroups
            .iter()
            .filter(|p| p.vids().contains(vlan))
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            o,
            "<tr><th class=\"vlan\">{vlan}</th><td class=\"mono\">{}</td>",
            esc(&name)
        );
        for counts in plan.clusters.values() {
            match counts.get(vlan) {
                Some(n) => {
                    let _ = write!(o, "<td class=\"on\">{n}</td>");
                }
                None => o.push_str("<td></td>"),
            }
        }
        o.push_str("</tr>\n");
    }
    o.push_str("<tr><th>VLANs</th><td></td>");
    for counts in plan.clusters.values() {
        let _ = write!(
            o,
            "<td class=\"mono\">{}</td>",
            esc(&vlan_list(counts.keys().copied()))
        );
    }
    o.push_str("</tr>\n</tbody></table></section>\n");

    // Findings.
    o.push_str("<section id=\"findings\"><h2>Findings</h2>\n");
    if plan.findings.is_empty() {
        o.push_str("<p>None.</p>\n");
    } else {
        o.push_str("<table class=\"sortable\" id=\"finding-summary\"><thead><tr><th>Finding</th><th>Kind</th><th class=\"num\">Count</th><th>Effect</th></tr></thead><tbody>\n");
        for (kind, list) in &by_kind {
            let (class, effect) = if kind.is_blocking() {
                ("bad", "blocks")
            } else {
                ("warn", "review")
            };
            let _ = writeln!(
                o,
                "<tr><td><a href=\"#f-{k}\">{}</a></td><td><code>{k}</code></td><td class=\"num\">{}</td><td><span class=\"pill {class}\">{effect}</span></td></tr>",
                esc(kind.title()),
                list.len(),
                k = kind.as_str()
            );
        }
        o.push_str("</tbody></table>\n");
    }
    for (kind, list) in &by_kind {
        let k = kind.as_str();
        let _ = writeln!(
            o,
            "<h3 id=\"f-{k}\">{} <span class=\"pill\">{}</span></h3>\n<p class=\"advice\">{}</p>",
            esc(kind.title()),
            list.len(),
            esc(advice(*kind))
        );
        if list.len() > 8 {
            let _ = writeln!(
                o,
                "<input class=\"filter\" type=\"search\" placeholder=\"Filter these {} rows\" data-table=\"t-{k}\">",
                list.len()
            );
        }
        let fields = kind.fields();
        let _ = write!(
            o,
            "<table class=\"sortable findings\" id=\"t-{k}\" data-kind=\"{k}\"><thead><tr>"
        );
        for field in fields {
            let _ = write!(o, "<th>{}</th>", field.title());
        }
        o.push_str("<th>Details</th></tr></thead><tbody>\n");
        for f in list {
            o.push_str("<tr>");
            for field in fields {
                let class = if field.is_address() {
                    " class=\"mono nowrap\""
                } else {
                    " class=\"nowrap\""
                };
                let _ = write!(o, "<td{class}>{}</td>", esc(f.field(*field)));
            }
            let _ = writeln!(o, "<td>{}</td></tr>", esc(&f.message));
        }
        o.push_str("</tbody></table>\n");
    }
    o.push_str("</section>\n");

    // Planned portgroups.
    o.push_str("<section id=\"planned\"><h2>Planned portgroups</h2>\n");
    o.push_str("<table class=\"sortable\" id=\"planned-portgroups\"><thead><tr><th>Portgroup (NAD)</th><th class=\"num\">VLAN</th><th>vSphere port groups</th><th class=\"num\">NICs</th><th class=\"num\">Reservations</th><th>spoofCheck</th></tr></thead><tbody>\n");
    for pg in &plan.portgroups {
        let _ = writeln!(
            o,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&pg.name),
            esc(&pg.vlan_cell()),
            esc(&pg.vsphere.join(", ")),
            pg.nics,
            pg.reservations.len(),
            if pg.spoof_check { "<span class=\"pill ok\">on</span>" } else { "<span class=\"pill warn\">off</span>" }
        );
    }
    o.push_str("</tbody></table></section>\n");

    // vSphere port groups.
    o.push_str("<section id=\"vsphere\"><h2>vSphere port groups</h2>\n");
    o.push_str("<table class=\"sortable\" id=\"vsphere-portgroups\"><thead><tr><th>vSphere port group</th><th>Switch</th><th>Kind</th><th>VLAN</th><th class=\"num\">NICs in scope</th><th>What becomes of it</th></tr></thead><tbody>\n");
    for p in &plan.vsphere {
        let vlan = match (&p.vlan, &p.vlans) {
            (_, Some(spec)) => spec.clone(),
            (Some(v), None) => v.to_string(),
            (None, None) => "?".into(),
        };
        let kind = p.kind.unwrap_or("unknown");
        let class = match (kind, p.nics) {
            ("access", _) | (_, 0) => "",
            _ => " bad",
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td><span class=\"pill{class}\">{kind}</span></td><td class=\"mono\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&p.vsphere),
            if p.distributed { "distributed" } else { "standard" },
            esc(&vlan),
            p.nics,
            esc(&p.fate)
        );
    }
    o.push_str("</tbody></table></section>\n");

    // Sources.
    o.push_str("<section id=\"sources\"><h2>Sources and scope</h2><ul>\n");
    if plan.govc_guest_overrides.is_empty() {
        o.push_str("<li>Guest addresses from RVTools (no prefix lengths; reservations hold bare addresses).</li>\n");
    } else {
        let _ = writeln!(
            o,
            "<li>Guest addresses from govc (with prefix lengths) replace RVTools' for {} VM(s): {}.</li>",
            plan.govc_guest_overrides.len(),
            esc(&plan.govc_guest_overrides.join(", "))
        );
    }
    if !plan.srm_placeholders.is_empty() {
        let _ = writeln!(
            o,
            "<li>SRM placeholders left out: {}.</li>",
            esc(&plan.srm_placeholders.join(", "))
        );
    }
    if !plan.unmapped.is_empty() {
        let _ = writeln!(
            o,
            "<li>Networks in use that networkmap.yaml leaves out (not planned): {}. Map them by hand before creating the Forklift Plan.</li>",
            esc(&plan.unmapped.join(", "))
        );
    }
    let _ = writeln!(
        o,
        "<li>NADs and VMs in namespace <code>{}</code>; NetworkMap in <code>{}</code>.</li>\n</ul></section>",
        esc(&plan.options.namespace),
        esc(&plan.options.forklift_namespace)
    );
    o.push_str("</main>\n<script>");
    o.push_str(SCRIPT);
    o.push_str("</script>\n</body>\n</html>\n");
    o
}
