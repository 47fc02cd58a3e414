//! `portgroup install <dir>` as the init container runs it: the binary copies
//! itself, a rerun is a no-op, and a CNI call (CNI_COMMAND set) is never taken
//! for an install whatever the arguments. Needs no root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portgroup");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-install-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn install(dir: &PathBuf) -> std::process::Output {
    Command::new(BIN)
        .arg("install")
        .arg(dir)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run portgroup install")
}

#[test]
fn installs_itself_and_a_rerun_changes_nothing() {
    let dir = scratch("self");
    let out = install(&dir);
    assert!(out.status.success(), "{out:?}");
    let target = dir.join("portgroup");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("installed {}", target.display())
    );
    assert_eq!(
        std::fs::read(&target).expect("installed"),
        std::fs::read(BIN).expect("the binary"),
        "a byte-exact copy of the running binary"
    );
    let meta = std::fs::metadata(&target).expect("meta");
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);

    let again = install(&dir);
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("unchanged"),
        "{again:?}"
    );
    assert_eq!(std::fs::metadata(&target).expect("meta").ino(), meta.ino());

    // The installed copy is a working plugin.
    let version = Command::new(&target)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("run installed plugin");
    assert!(version.status.success(), "{version:?}");
    assert!(String::from_utf8_lossy(&version.stdout).contains("supportedVersions"));

    // An older plugin is replaced.
    std::fs::write(&target, b"#!/bin/sh\nexit 1\n").expect("old plugin");
    let out = install(&dir);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replaced"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(&target).expect("new"),
        std::fs::read(BIN).expect("bin")
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("list").count(),
        1,
        "no temp files"
    );
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn bad_usage_and_missing_directory_fail_clearly() {
    let out = Command::new(BIN)
        .arg("install")
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: portgroup install"));

    let dir = scratch("missing").join("no/such/dir");
    let out = install(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no/such/dir"),
        "{out:?}"
    );
}

#[test]
fn a_cni_call_with_install_arguments_is_still_a_cni_call() {
    let dir = scratch("cni");
    let out = Command::new(BIN)
        .arg("install")
        .arg(&dir)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("supportedVersions"));
    assert_eq!(
        std::fs::read_dir(&dir).expect("list").count(),
        0,
        "nothing installed"
    );
    std::fs::remove_dir_all(dir).expect("cleanup");
}
