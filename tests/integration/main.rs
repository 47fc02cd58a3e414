//! portgroupd's and the shared library's integration tests, in one test binary
//! (linking one binary instead of one per file is most of the suite's build time
//! on a small machine). Every test runs in private network namespaces and needs
//! root. Tests that need 802.1Q are `#[ignore]`d: `hack/test.sh` runs them in the
//! test VM with `--include-ignored`.

// A test fails by panicking: unwrap and expect are allowed in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/kubelet.rs"]
mod kubelet;

mod daemon_basic;
mod daemon_deviceplugin;
mod daemon_gc_uninstall;
mod daemon_portsec_heal;
mod daemon_untagged;
mod daemon_vlan;
mod handover_netns;
mod portsec_netns;
mod release_versions;
mod trunk_native_guard;
