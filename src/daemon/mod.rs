//! The node daemon `portgroupd`: planner, applier, reconcile loop, garbage
//! collector, HTTP endpoints, kubelet device plugin. Library modules so that each part is unit-tested;
//! `src/main.rs` only parses the command line.

pub mod applier;
pub mod backoff;
pub mod config;
pub mod deviceplugin;
pub mod dump;
pub mod gc;
pub mod heal;
pub mod http;
pub mod interest;
pub mod metrics;
pub mod planner;
pub mod reconcile;
pub mod rtlinks;
pub mod run;
pub mod sockfilter;
pub mod uninstall;

#[cfg(test)]
pub mod fake;
