//! The node daemon: planner, applier, collector, HTTP. (issue 3)
