//! One reconcile: dump, plan, apply, dump again to see what really is, collect
//! stale attachments, publish the node state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::applier::{apply_holding, LinkError, Links};
use super::backoff::Backoff;
use super::config::ConfigSource;
use super::gc;
use super::heal;
use super::metrics::Metrics;
use super::planner::{plan, Plan};
use crate::paths::{rfc3339, RunDir};
use crate::state::{NodeState, PortgroupState};

pub struct Reconciler<L> {
    pub links: L,
    pub node: String,
    pub run_dir: RunDir,
    pub metrics: Arc<Metrics>,
    /// The last state written (or found at start): its generation goes on
    /// across restarts, and draining portgroups keep their reservations from it.
    pub previous: Option<NodeState>,
    /// Operations that failed, by their text: not retried before `until`.
    held: HashMap<String, Held>,
    /// When a young attachment record that looks dead comes of age: the main
    /// loop collects again then, not at the next resync.
    pub gc_due: Option<Instant>,
    /// The FCFS IPv6 bindings as the last sweep found them. The kernel learns
    /// them from the packet path, so nothing else could give them back after
    /// the table is lost; restored when a sweep had to rebuild it.
    fcfs_snapshot: Vec<crate::portsec::FcfsBinding>,
}

#[derive(Debug, Clone)]
struct Held {
    until: Instant,
    backoff: Backoff,
    message: String,
}

/// First retry of a failed operation; doubles up to [`HOLD_MAX`].
const HOLD_MIN: Duration = Duration::from_secs(1);
const HOLD_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Outcome {
    /// Operations that succeeded.
    pub applied: usize,
    pub failures: usize,
    pub state: Option<NodeState>,
}

impl<L: Links> Reconciler<L> {
    /// Lets every held operation be tried on the next reconcile (a new config may
    /// be the fix).
    pub fn release_held(&mut self) {
        self.held.clear();
    }

    /// When the next held operation may be retried.
    pub fn next_retry(&self) -> Option<Instant> {
        self.held.values().map(|h| h.until).min()
    }

    pub fn new(links: L, node: String, run_dir: RunDir, metrics: Arc<Metrics>) -> Self {
        let previous = NodeState::read(&run_dir.state_file()).ok();
        Reconciler {
            links,
            node,
            run_dir,
            metrics,
            previous,
            held: HashMap::new(),
            gc_due: None,
            fcfs_snapshot: Vec::new(),
        }
    }

    /// Without a valid config nothing is reconciled; the state keeps the last
    /// published portgroups (the plugin goes on working) and says why.
    pub fn publish_config_errors(&mut self, source: &ConfigSource) -> Option<NodeState> {
        let portgroups = self
            .previous
            .as_ref()
            .map(|s| s.portgroups.clone())
            .unwrap_or_default();
        let allowed_bridges = self
            .previous
            .as_ref()
            .and_then(|s| s.allowed_bridges.clone());
        self.publish(portgroups, source.errors.clone(), allowed_bridges)
    }

    pub async fn reconcile(
        &mut self,
        source: &ConfigSource,
        collect: bool,
    ) -> Result<Outcome, LinkError> {
        let Some(config) = source.good.as_ref() else {
            // Running VMs keep their port security whatever the config says.
            if collect {
                self.heal();
            }
            let state = self.publish_config_errors(source);
            return Ok(Outcome {
                state,
                ..Default::default()
            });
        };
        let started = Instant::now();
        let result = self.reconcile_with(config, source, collect).await;
        self.metrics.observe_reconcile(started.elapsed());
        if result.is_err() {
            self.metrics.errors.fetch_add(1, Relaxed);
        }
        result
    }

    async fn reconcile_with(
        &mut self,
        config: &crate::nodeconfig::NodeConfig,
        source: &ConfigSource,
        collect: bool,
    ) -> Result<Outcome, LinkError> {
        // Trunks with a native VLAN join its bridge only behind the guard that
        // keeps tagged frames off it; put in place (or repaired) first.
        let needs_guard = config.portgroups.iter().any(|pg| {
            matches!(
                pg.segment,
                crate::nodeconfig::Segment::Trunk {
                    native: Some(_),
                    ..
                }
            )
        });
        let native_guard_failure = if needs_guard {
            match self.links.ensure_native_guard().await {
                Ok(made) => {
                    if made {
                        tracing::info!(
                            "put the native-VLAN guard of trunk portgroups in place (table bridge {})",
                            crate::portsec::GUARD_TABLE
                        );
                    }
                    None
                }
                Err(e) => {
                    tracing::warn!("guarding trunks' native VLANs: {e}");
                    self.metrics.errors.fetch_add(1, Relaxed);
                    Some(e.message)
                }
            }
        } else {
            None
        };
        let mut observed = self.links.dump().await?;
        observed.native_guard_failure = native_guard_failure.clone();
        let first = plan(config, &self.node, self.previous.as_ref(), &observed);
        let mut outcome = Outcome::default();
        let mut verified = first.clone();
        let mut failures = Vec::new();
        let now = Instant::now();
        let planned: HashSet<String> = first.steps.iter().map(|s| s.op.to_string()).collect();
        self.held.retain(|op, _| planned.contains(op));
        if !first.steps.is_empty() {
            let holding: HashMap<String, String> = self
                .held
                .iter()
                .filter(|(_, h)| h.until > now)
                .map(|(op, h)| (op.clone(), h.message.clone()))
                .collect();
            let applied = apply_holding(&self.links, &first.steps, &holding).await;
            outcome.applied = applied.done;
            let tried: Vec<_> = applied.failures.iter().filter(|f| !f.held).collect();
            outcome.failures = tried.len();
            self.metrics.errors.fetch_add(tried.len() as u64, Relaxed);
            for f in tried {
                let mut backoff = self
                    .held
                    .get(&f.op)
                    .map_or(Backoff::new(HOLD_MIN, HOLD_MAX), |h| h.backoff);
                let wait = backoff.failed();
                self.held.insert(
                    f.op.clone(),
                    Held {
                        until: now + wait,
                        backoff,
                        message: f.message.clone(),
                    },
                );
            }
            failures = applied.failures;
            // What was really made, not what the plan hoped for.
            observed = self.links.dump().await?;
            observed.native_guard_failure = native_guard_failure;
            verified = plan(config, &self.node, self.previous.as_ref(), &observed);
        }
        let dependencies = Plan {
            depends_on: verified.depends_on.clone(),
            ..Plan::default()
        };
        let mut portgroups = verified.portgroups;
        for pg in &mut portgroups {
            // A trunk's own failures, and those of the VLAN paths it rides on.
            let mine: Vec<&str> = failures
                .iter()
                .filter(|f| dependencies.concerns(&pg.name, &f.portgroup))
                .map(|f| f.message.as_str())
                .collect();
            if !mine.is_empty() {
                pg.ready = false;
                pg.reason = Some(mine.join("; "));
            }
        }
        if collect {
            let report = gc::collect(
                &observed,
                &self.run_dir.attachments_dir(),
                SystemTime::now(),
                gc::MIN_AGE,
            );
            for e in &report.errors {
                tracing::warn!("garbage collection: {e}");
            }
            self.metrics
                .errors
                .fetch_add(report.errors.len() as u64, Relaxed);
            self.metrics.gc_removed.fetch_add(report.removed, Relaxed);
            self.metrics
                .attachments
                .store(report.remaining as u64, Relaxed);
            self.gc_due = report.next_due.map(|d| Instant::now() + d);
            self.heal();
        }
        let (ready, draining) = (
            portgroups.iter().filter(|p| p.ready).count(),
            portgroups.iter().filter(|p| p.draining).count(),
        );
        self.metrics.portgroups_ready.store(ready as u64, Relaxed);
        self.metrics
            .portgroups_draining
            .store(draining as u64, Relaxed);
        self.metrics
            .portgroups_not_ready
            .store((portgroups.len() - ready - draining) as u64, Relaxed);
        for pg in portgroups.iter().filter(|p| !p.ready) {
            tracing::debug!(portgroup = %pg.name, reason = pg.reason.as_deref().unwrap_or(""), "not ready");
        }
        outcome.state = self.publish(
            portgroups,
            source.errors.clone(),
            config.allowed_bridges.clone(),
        );
        Ok(outcome)
    }

    /// Verifies port security against the attachment records and repairs it
    /// ([`heal::sweep`]); counts what it did. After the collector, on every
    /// resync, and on its own when nf_tables reports a change to our table.
    pub fn heal(&mut self) {
        let report = heal::sweep(
            &self.run_dir.attachments_dir(),
            self.previous.as_ref(),
            SystemTime::now(),
        );
        let m = &self.metrics;
        m.portsec_sweeps.fetch_add(1, Relaxed);
        match report.plan.rebuild {
            Some(crate::portsec::TableState::Missing) => {
                m.portsec_repairs_table.fetch_add(1, Relaxed);
            }
            Some(_) => {
                m.portsec_repairs_rules.fetch_add(1, Relaxed);
            }
            None => {}
        }
        m.portsec_repairs_port
            .fetch_add(report.plan.repaired_ports.len() as u64, Relaxed);
        m.portsec_orphans_removed
            .fetch_add(report.plan.orphans.len() as u64, Relaxed);
        m.records_quarantined
            .fetch_add(report.quarantined.len() as u64, Relaxed);
        let mut errors = report.errors;
        if report.plan.rebuild.is_some() && !self.fcfs_snapshot.is_empty() {
            match crate::portsec::restore_fcfs_bindings(&self.fcfs_snapshot) {
                Ok(n) => tracing::warn!(
                    "port security: restored {n} FCFS IPv6 binding(s) the rebuilt table had lost"
                ),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Not being able to list them (no table, a kernel without nf_tables for
        // bridges) only means there is nothing newer to restore.
        match crate::portsec::fcfs_bindings() {
            Ok(bindings) => self.fcfs_snapshot = bindings,
            Err(e) => tracing::debug!("port security: no FCFS snapshot this sweep: {e}"),
        }
        for e in &errors {
            tracing::error!("port security: {e}");
        }
        m.errors.fetch_add(errors.len() as u64, Relaxed);
    }

    fn publish(
        &mut self,
        portgroups: Vec<PortgroupState>,
        config_errors: Vec<String>,
        allowed_bridges: Option<Vec<String>>,
    ) -> Option<NodeState> {
        let state = NodeState {
            node: self.node.clone(),
            generation: self.previous.as_ref().map_or(0, |s| s.generation) + 1,
            reconciled_at: rfc3339(SystemTime::now()),
            config_errors,
            portgroups,
            allowed_bridges,
        };
        if let Err(e) = state.write(&self.run_dir, self.previous.as_ref()) {
            tracing::error!("writing node state under {}: {e}", self.run_dir.0.display());
            self.metrics.errors.fetch_add(1, Relaxed);
        }
        self.previous = Some(state.clone());
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::fake::{FakeKernel, FakeLinks};
    use crate::netlink::LinkSummary;
    use futures::executor::block_on;
    use std::cell::RefCell;

    /// A fake node with its uplink eth1 up, on a kernel without 802.1Q.
    fn uplink_without_8021q() -> FakeLinks {
        let fake = FakeLinks(RefCell::new(FakeKernel::with(vec![LinkSummary {
            index: 3,
            name: "eth1".into(),
            mtu: 1500,
            admin_up: true,
            lower_up: true,
            ..Default::default()
        }])));
        fake.0.borrow_mut().no_8021q = true;
        fake
    }

    #[test]
    fn publishes_state_and_reports_failures() {
        let dir = std::env::temp_dir().join(format!("pg-reconcile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fake = uplink_without_8021q();
        let metrics = Arc::new(Metrics::default());
        let mut r = Reconciler::new(
            fake,
            "worker-3".into(),
            RunDir(dir.clone()),
            metrics.clone(),
        );
        let mut source = ConfigSource::new(dir.join("config.json"));
        source
            .offer(br#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#.to_vec());

        let out = block_on(r.reconcile(&source, true)).expect("reconcile");
        assert_eq!(out.failures, 1);
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert_eq!(state.generation, 1);
        let web = &state.portgroups[0];
        assert!(!web.ready);
        assert!(
            web.reason
                .as_deref()
                .unwrap_or_default()
                .contains("Operation not supported"),
            "{web:?}"
        );

        // Right after a failure the operation is held, not retried, and still reported:
        // a failed request can raise a link event, and retrying on it would spin.
        let calls = r.links.0.borrow().calls.len();
        let out = block_on(r.reconcile(&source, false)).expect("reconcile");
        assert_eq!(out.failures, 0, "nothing tried");
        assert_eq!(r.links.0.borrow().calls.len(), calls, "no link calls");
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert!(state.portgroups[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("Operation not supported"));
        assert!(r.next_retry().is_some());

        r.links.0.borrow_mut().no_8021q = false;
        r.release_held();
        block_on(r.reconcile(&source, false)).expect("reconcile");
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert_eq!(state.generation, 3);
        assert!(state.portgroups[0].ready, "{state:?}");
        assert_eq!(r.next_retry(), None);
        assert_eq!(metrics.portgroups_ready.load(Relaxed), 1);

        // A refused config keeps the last good one in force and says why.
        source.offer(br#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 0}]}"#.to_vec());
        block_on(r.reconcile(&source, false)).expect("reconcile");
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert!(state.portgroups[0].ready);
        assert!(state.config_errors[0].contains("portgroups[0].vlan"));
        assert_eq!(metrics.reconciles.load(Relaxed), 4);

        // A restart goes on counting generations.
        let again = Reconciler::new(
            FakeLinks::default(),
            "worker-3".into(),
            RunDir(dir.clone()),
            metrics,
        );
        assert_eq!(again.previous.map(|s| s.generation), Some(4));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_trunk_reports_the_failures_of_the_vlan_paths_it_rides_on() {
        let dir = std::env::temp_dir().join(format!("pg-reconcile-trunk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fake = uplink_without_8021q();
        let mut r = Reconciler::new(
            fake,
            "worker-3".into(),
            RunDir(dir.clone()),
            Arc::new(Metrics::default()),
        );
        let mut source = ConfigSource::new(dir.join("config.json"));
        source.offer(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "web", "vlan": 100}, {"name": "fw", "trunk": "100"}]}"#
                .to_vec(),
        );
        block_on(r.reconcile(&source, false)).expect("reconcile");
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        let fw = &state.portgroups[1];
        assert!(!fw.ready);
        // VLAN 100's path is filed under web, its access portgroup; its failure
        // is the trunk's reason too.
        let path = crate::naming::vlan_interface_name("eth1", 100);
        let reason = fw.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(&format!("create VLAN interface {path}")),
            "{reason}"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// The guard is asked for only when a trunk has a native VLAN; when it
    /// cannot be put in place, that trunk says why and nothing else is concerned.
    #[test]
    fn a_native_vlan_needs_the_guard() {
        let dir = std::env::temp_dir().join(format!("pg-reconcile-guard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fake = uplink_without_8021q();
        fake.0.borrow_mut().no_8021q = false;
        fake.0.borrow_mut().no_nft_bridge = true;
        let mut r = Reconciler::new(
            fake,
            "worker-3".into(),
            RunDir(dir.clone()),
            Arc::new(Metrics::default()),
        );
        let mut source = ConfigSource::new(dir.join("config.json"));
        source.offer(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "web", "vlan": 100}, {"name": "fw", "trunk": "100"}]}"#
                .to_vec(),
        );
        block_on(r.reconcile(&source, false)).expect("reconcile");
        let asked = |r: &Reconciler<FakeLinks>| {
            r.links
                .0
                .borrow()
                .calls
                .iter()
                .filter(|c| *c == "ensure_native_guard")
                .count()
        };
        assert_eq!(asked(&r), 0, "no native VLAN, no guard");
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert!(state.portgroups.iter().all(|p| p.ready), "{state:?}");

        source.offer(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "web", "vlan": 100}, {"name": "fw", "trunk": "100", "nativeVlan": 300}]}"#
                .to_vec(),
        );
        block_on(r.reconcile(&source, false)).expect("reconcile");
        assert_eq!(asked(&r), 1);
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert!(
            state.portgroups[0].ready,
            "the access portgroup is not concerned"
        );
        let fw = &state.portgroups[1];
        assert!(!fw.ready);
        let reason = fw.reason.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("nativeVlan 300: untagged frames are not carried")
                && reason.contains("Operation not supported"),
            "{reason}"
        );
        let feed = crate::naming::trunk_feed_name("eth1", "fw");
        assert_eq!(
            r.links.0.borrow().get(&feed).and_then(|l| l.controller),
            None,
            "the feed stays off VLAN 300's bridge"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
