//! The plugin's integration tests, in one test binary (linking one binary
//! instead of one per file is most of the suite's build time on a small
//! machine). They run the plugin binary exactly as a runtime does, in private
//! network namespaces, and need root.

// A test fails by panicking: unwrap and expect are allowed in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod cni_bad_input;
mod cni_conflict_probe;
mod cni_del_lock;
mod cni_hostile_nad;
mod cni_lifecycle;
mod cni_port_security;
mod cni_records;
mod cni_reference_bridge;
mod cni_tenancy;
mod cni_work_budget;
mod install_cli;
mod podman_e2e;
mod probe_netns;
