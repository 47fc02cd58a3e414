//! Test hooks, inert unless their variable is set. Crash points for the "ADD
//! killed at any point, then DEL" tests (and the DEL killed between its rules
//! and its veth): with PORTGROUP_TEST_EXIT_AT=<stage> the process exits there
//! at once, running no rollback, as SIGKILL would. One environment lookup per
//! stage when unset.

pub const STAGES: &[&str] = &[
    "record-written",
    "port-security-installed",
    "veth-created",
    "addresses-added",
    "held",
    "probed",
    "del-port-down-rules-removed",
];

pub fn point(stage: &'static str) {
    debug_assert!(STAGES.contains(&stage));
    if std::env::var_os("PORTGROUP_TEST_EXIT_AT").is_some_and(|v| v == stage) {
        std::process::exit(137);
    }
}

/// A start line for the race tests: with PORTGROUP_TEST_GATE=<fifo>, ADD waits
/// here until the test opens the FIFO for writing, which releases every waiting
/// process at once. One environment lookup when unset.
pub fn gate() {
    if let Some(path) = std::env::var_os("PORTGROUP_TEST_GATE") {
        // Opening a FIFO for reading blocks until a writer opens it.
        let _ = std::fs::File::open(path);
    }
}
