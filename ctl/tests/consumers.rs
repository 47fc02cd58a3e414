//! Planned outputs read by real consumers: the manifest validation (schemas
//! for NADs, KubeVirt VMs and Forklift's NetworkMap, plus cross references)
//! and a real browser for report.html.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{realistic, run, Scratch};

fn planned(scratch: &Scratch) -> PathBuf {
    let xlsx = scratch.path("export.xlsx");
    realistic().write_xlsx(&xlsx);
    let out = scratch.path("plan");
    let o = run(&[
        "plan",
        "--rvtools",
        xlsx.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        "vms",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn validate(plan: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate_plan.py");
    let o = Command::new("python3")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&script)
        .arg(plan)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.code() == Some(2)
        || String::from_utf8_lossy(&o.stderr).contains("ModuleNotFoundError")
    {
        panic!(
            "the manifest validation could not run (hack/install-deps.sh installs its Python packages; the workspace must be built): {}{}",
            stdout,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (o.status.success(), stdout)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{}: no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn planned_manifests_pass_the_manifest_validation() {
    let scratch = Scratch::new("validate");
    let plan = planned(&scratch);
    let (ok, out) = validate(&plan);
    assert!(ok, "{out}");
    let oks = |what: &str| {
        out.lines()
            .filter(|l| l.starts_with("ok   ") && l.contains(what))
            .count()
    };
    assert_eq!(
        oks("(NetworkMap: schemas/networkmap-forklift.konveyor.io-v1beta1.json)"),
        1,
        "{out}"
    );
    assert_eq!(oks("(NetworkAttachmentDefinition: schemas/"), 11, "{out}");
    assert_eq!(oks("(VirtualMachine: schemas/"), 51, "{out}");
    assert_eq!(oks("configmap.yaml (ConfigMap"), 1, "{out}");

    // The validation can fail: each broken copy is refused, naming the file.
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "vms/disc01.yaml",
            "macAddress:",
            "macAdress:",
            "vms/disc01.yaml",
        ),
        (
            "vms/web01.yaml",
            "vms/prod-web-v100",
            "vms/no-such-nad",
            "vms/web01.yaml",
        ),
        (
            "networkmap.yaml",
            "type: multus",
            "type: multis",
            "networkmap.yaml",
        ),
        (
            "networkmap.yaml",
            "name: \"dv-app\"",
            "name: \"dv-gone\"",
            "networkmap.yaml",
        ),
        (
            "networkmap.yaml",
            "    destination:\n      name: \"host\"",
            "    target:\n      name: \"host\"",
            "networkmap.yaml",
        ),
        (
            "nads/dv-db.yaml",
            "\"portgroup\": \"dv-db\"",
            "\"portgroup\": \"dv-dbx\"",
            "nads/dv-db.yaml",
        ),
    ];
    for (i, (file, from, to, failing)) in cases.iter().enumerate() {
        let copy = scratch.path(&format!("broken-{i}"));
        let o = Command::new("cp")
            .arg("-r")
            .arg(&plan)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(o.success());
        edit(&copy.join(file), from, to);
        let (ok, out) = validate(&copy);
        assert!(!ok, "{file}: {from} -> {to} passed:\n{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL") && l.contains(failing)),
            "{file}: {from} -> {to}: no FAIL line for {failing}:\n{out}"
        );
    }
}

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
];

fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(o) = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {candidate}"))
            .output()
        {
            if o.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            }
        }
    }
    panic!("NOT TESTED: chromium is missing, so report.html cannot be rendered; run hack/install-deps.sh (it installs chromium)");
}

#[test]
fn report_html_renders_in_a_real_browser() {
    let browser = chromium();
    let scratch = Scratch::new("browser");
    let plan = planned(&scratch);
    let html = plan.join("report.html");
    let text = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing fetched from anywhere.
    for external in ["src=\"http", "href=\"http", "@import", "url(", "<link "] {
        assert!(
            !text.contains(external),
            "report.html refers to an external asset ({external})"
        );
    }
    let profile = scratch.path("chromium-profile");
    let o = Command::new(&browser)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dom = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        dom.contains("<table class=\"matrix\" id=\"vlan-matrix\">"),
        "no VLAN x cluster matrix in the DOM"
    );
    let matrix = &dom[dom.find("id=\"vlan-matrix\"").unwrap()..];
    let matrix = &matrix[..matrix.find("</table>").unwrap()];
    for cluster in ["DMZ-Cluster", "Prod-Cluster"] {
        assert!(
            matrix.contains(&format!("<th>{cluster}</th>")),
            "matrix lacks column {cluster}"
        );
    }
    for vlan in [100, 101, 120, 200, 210, 220, 300, 301] {
        assert!(
            matrix.contains(&format!("<th class=\"vlan\">{vlan}</th>")),
            "matrix lacks VLAN {vlan}"
        );
    }
    // VLAN 100 is Prod only: 14 access NICs and the two trunk NICs (trunk01,
    // vgt01) there, an empty DMZ cell; the trunks are listed with its portgroup.
    assert!(matrix.contains("<th class=\"vlan\">100</th><td class=\"mono\">dv-trunk, guest-trunk, prod-web-v100</td><td></td><td class=\"on\">16</td>"), "{matrix}");

    // One table per finding kind, one row per finding (as report.json counts them).
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plan.join("report.json")).unwrap()).unwrap();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for f in report["findings"].as_array().unwrap() {
        *kinds
            .entry(f["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(kinds.len(), 12);
    for (kind, count) in &kinds {
        let start = dom
            .find(&format!("data-kind=\"{kind}\""))
            .unwrap_or_else(|| panic!("no findings table for {kind}"));
        let table = &dom[start..];
        let table = &table[..table.find("</table>").unwrap()];
        let rows = table.matches("<tr>").count() - 1;
        assert_eq!(
            rows, *count,
            "{kind}: {rows} rows in the DOM, {count} in report.json"
        );
    }
    // The script ran: it marks every header of a sortable table.
    assert!(
        dom.contains("<th class=\"sortable\">VM</th>"),
        "sorting script did not run"
    );

    // A screenshot for people to look at (kept under the scratch dir with KEEP_SCRATCH=1).
    let shot = scratch.path("report.png");
    let o = Command::new(&browser)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,1000")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium screenshot failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot"
    );
    // And the print layout: a PDF renders.
    let pdf = scratch.path("report.pdf");
    let o = Command::new(&browser)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg("--no-pdf-header-footer")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium print failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        std::fs::read(&pdf)
            .map(|b| b.starts_with(b"%PDF"))
            .unwrap_or(false),
        "no PDF"
    );
}
