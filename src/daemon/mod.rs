//! The node daemon `portgroupd`: planner, applier, reconcile loop, garbage
//! collector, HTTP endpoints. Library modules so that each part is unit-tested;
//! `src/main.rs` only parses the command line.

pub mod applier;
pub mod planner;

#[cfg(test)]
pub mod fake;
