//! Bad input: one clear line naming the file (and sheet, column, row), a
//! non-zero exit, and nothing written to the output directory.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::estate::{Cell, Estate};
use common::{read_tree, realistic, run, Scratch};

/// Runs `plan` expecting failure; returns the one stderr line.
fn refused(input_flag: &str, input: &Path, out: &Path) -> String {
    let o = run(&[
        "plan",
        input_flag,
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success(),
        "plan accepted bad input {}",
        input.display()
    );
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("portgroupctl: "), "{stderr}");
    assert!(!out.exists(), "{} was created", out.display());
    // No staging directory left next to it either.
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("portgroupctl-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    stderr.trim_end().to_string()
}

fn without_sheet(sheet: &str) -> Estate {
    let mut e = realistic();
    e.tables.retain(|t| t.sheet != sheet);
    e
}

fn without_column(sheet: &str, column: &str) -> Estate {
    let mut e = realistic();
    let t = e.table_mut(sheet);
    let i = t.headers.iter().position(|h| h == column).unwrap();
    t.headers.remove(i);
    for row in &mut t.rows {
        row.remove(i);
    }
    e
}

#[test]
fn missing_sheet_xlsx_and_csv() {
    let s = Scratch::new("missing-sheet");
    let xlsx = s.path("no-dvport.xlsx");
    without_sheet("dvPort").write_xlsx(&xlsx);
    let msg = refused("--rvtools", &xlsx, &s.path("out"));
    assert!(
        msg.contains(&format!(
            "{}: sheet dvPort: missing sheet dvPort",
            xlsx.display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("the workbook has: vInfo, vNetwork, vPort"),
        "{msg}"
    );

    let dir = s.path("csv");
    without_sheet("vNetwork").write_csv_dir(&dir, ',');
    let msg = refused("--rvtools", &dir, &s.path("out"));
    assert!(
        msg.contains(&format!(
            "{}: sheet vNetwork: missing sheet vNetwork",
            dir.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("RVTools_tabvNetwork.csv"), "{msg}");
}

#[test]
fn missing_column_names_file_sheet_and_column() {
    let s = Scratch::new("missing-column");
    let xlsx = s.path("no-mac.xlsx");
    without_column("vNetwork", "Mac Address").write_xlsx(&xlsx);
    let msg = refused("--rvtools", &xlsx, &s.path("out"));
    assert_eq!(
        msg,
        format!(
            "portgroupctl: {}: sheet vNetwork, column \"Mac Address\": missing column; this sheet has no \"Mac Address\" (nor MAC)",
            xlsx.display()
        )
    );
    let dir = s.path("csv");
    without_column("vPort", "VLAN").write_csv_dir(&dir, ';');
    let msg = refused("--rvtools", &dir, &s.path("out"));
    assert!(
        msg.contains(&format!(
            "{}: sheet vPort, column \"VLAN\": missing column",
            dir.join("RVTools_tabvPort.csv").display()
        )),
        "{msg}"
    );
}

#[test]
fn bad_cell_names_the_row() {
    let s = Scratch::new("bad-cell");
    let mut e = realistic();
    let t = e.table_mut("vNetwork");
    let col = t.headers.iter().position(|h| h == "Mac Address").unwrap();
    t.rows[4][col] = Cell::from("00:50:56:zz:00:01");
    let ip = t.headers.iter().position(|h| h == "IPv4 Address").unwrap();
    let xlsx = s.path("bad.xlsx");
    e.write_xlsx(&xlsx);
    let msg = refused("--rvtools", &xlsx, &s.path("out"));
    assert!(
        msg.contains("sheet vNetwork, column \"Mac Address\", row 6: \"00:50:56:zz:00:01\" is not a 48-bit MAC address"),
        "{msg}"
    );
    let mut e = realistic();
    e.table_mut("vNetwork").rows[0][ip] = Cell::from("10.0.0.1, 10.0.0");
    let dir = s.path("csv");
    e.write_csv_dir(&dir, ',');
    let msg = refused("--rvtools", &dir, &s.path("out"));
    assert!(
        msg.contains(
            "sheet vNetwork, column \"IPv4 Address\", row 2: \"10.0.0\" is not an IP address"
        ),
        "{msg}"
    );
}

#[test]
fn corrupt_and_unreadable_files() {
    let s = Scratch::new("corrupt");
    let corrupt = s.path("RVTools_export_all.xlsx");
    std::fs::write(&corrupt, b"PK\x03\x04 this is not really a zip archive").unwrap();
    let msg = refused("--rvtools", &corrupt, &s.path("out"));
    assert!(
        msg.contains(&format!(
            "{}: not a readable xlsx workbook",
            corrupt.display()
        )),
        "{msg}"
    );

    // An xlsx that is a CSV in disguise.
    let disguised = s.path("disguised.xlsx");
    std::fs::write(&disguised, "VM,Network\nweb01,Prod\n").unwrap();
    let msg = refused("--rvtools", &disguised, &s.path("out"));
    assert!(msg.contains("not a readable xlsx workbook"), "{msg}");

    let missing = s.path("nowhere.xlsx");
    let msg = refused("--rvtools", &missing, &s.path("out"));
    assert!(
        msg.contains(&format!("{}: cannot read", missing.display())),
        "{msg}"
    );

    let govc = s.path("vms.json");
    std::fs::write(&govc, "{\"virtualMachines\": [").unwrap();
    let msg = refused("--govc", &govc, &s.path("out"));
    assert!(
        msg.contains(&format!("{}: not JSON", govc.display())),
        "{msg}"
    );
    std::fs::write(&govc, "{\"datastores\": []}").unwrap();
    let msg = refused("--govc", &govc, &s.path("out"));
    assert!(
        msg.contains("not govc vm.info, host.portgroup.info or dvs.portgroup.info JSON"),
        "{msg}"
    );

    let single = s.path("RVTools_tabvNetwork.csv");
    std::fs::write(&single, "VM\n").unwrap();
    let msg = refused("--rvtools", &single, &s.path("out"));
    assert!(msg.contains("pass the directory"), "{msg}");
}

#[test]
fn csv_of_something_else() {
    let s = Scratch::new("other-csv");
    let dir = s.path("export");
    std::fs::create_dir_all(&dir).unwrap();
    for sheet in ["vNetwork", "vPort", "dvPort"] {
        std::fs::write(
            dir.join(format!("RVTools_tab{sheet}.csv")),
            "Name,Price,Stock\napple,1.20,5\npear,0.90,3\n",
        )
        .unwrap();
    }
    let msg = refused("--rvtools", &dir, &s.path("out"));
    assert!(
        msg.contains(&format!(
            "{}: sheet vNetwork, column \"VM\": missing column",
            dir.join("RVTools_tabvNetwork.csv").display()
        )),
        "{msg}"
    );
    // Binary noise with the right name.
    std::fs::write(
        dir.join("RVTools_tabvNetwork.csv"),
        [0u8, 159, 146, 150, 10, 1, 2],
    )
    .unwrap();
    let msg = refused("--rvtools", &dir, &s.path("out"));
    assert!(msg.contains("sheet vNetwork"), "{msg}");
}

#[test]
fn a_failed_plan_leaves_the_previous_plan_and_other_directories_alone() {
    let s = Scratch::new("previous");
    let xlsx = s.path("good.xlsx");
    realistic().write_xlsx(&xlsx);
    let out = s.path("plan");
    let ok = run(&[
        "plan",
        "--rvtools",
        xlsx.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok.status.success());
    let before = read_tree(&out);
    let bad = s.path("bad.xlsx");
    without_column("vPort", "Forged Transmits").write_xlsx(&bad);
    let o = run(&[
        "plan",
        "--rvtools",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(read_tree(&out) == before, "the previous plan changed");

    let other = s.path("home");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let o = run(&[
        "plan",
        "--rvtools",
        xlsx.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("is not empty and holds no previous plan"),
        "{stderr}"
    );
    assert_eq!(read_tree(&other).len(), 1);
}

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let s = Scratch::new("check-config");
    let bad = s.path("node-config.json");
    std::fs::write(
        &bad,
        r#"{"uplink": "eth1", "portgroups": [{"name": "Prod_Web", "vlan": 0, "reservations": [{"mac": "01:00:5e:00:00:01"}]}]}"#,
    )
    .unwrap();
    let o = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8(o.stdout).unwrap();
    for want in [
        "portgroups[0].name",
        "portgroups[0].vlan",
        "reservations[0].mac",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{}: ", bad.display())) && l.contains(want)),
            "{want}: {stdout}"
        );
    }
}
