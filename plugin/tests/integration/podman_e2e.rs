//! The plugin through a real libcni runtime: runs hack/podman-e2e.sh (podman 4.3
//! with its CNI backend, in a private network and mount namespace of its own, so
//! it runs alongside the other tests) against this build's binary.
//!
//! `#[ignore]`d, because it needs root, podman, runc, conmon, busybox, jq and
//! the CNI reference plugins (hack/install-deps.sh installs them): hack/test.sh
//! installs them and runs it. Run without them, it fails and names what is missing.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = ["podman", "runc", "conmon", "busybox", "unshare", "jq"]
        .iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|tool| tool.to_string())
        .collect();
    if !Path::new("/usr/lib/cni/host-local").exists() {
        missing.push("containernetworking-plugins".into());
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".into());
    }
    missing
}

#[test]
#[ignore = "needs podman and friends (hack/install-deps.sh): hack/test.sh runs it"]
fn podman_run_keeps_mac_and_ip_and_rm_leaves_nothing() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "missing: {} (hack/install-deps.sh installs them)",
        missing.join(", ")
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/podman-e2e.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("PORTGROUP_BIN", env!("CARGO_BIN_EXE_portgroup"))
        .output()
        .expect("running hack/podman-e2e.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "hack/podman-e2e.sh failed ({}):\n{}",
        out.status,
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
