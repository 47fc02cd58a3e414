//! Crash points for the "ADD killed at any point, then DEL" tests: with
//! PORTGROUP_TEST_EXIT_AT=<stage> the process exits there at once, running no
//! rollback, as SIGKILL would. One environment lookup per stage when unset.

pub const STAGES: &[&str] = &[
    "record-written",
    "veth-created",
    "addresses-added",
    "port-security-installed",
    "held",
    "probed",
];

pub fn point(stage: &'static str) {
    debug_assert!(STAGES.contains(&stage));
    if std::env::var_os("PORTGROUP_TEST_EXIT_AT").is_some_and(|v| v == stage) {
        std::process::exit(137);
    }
}
