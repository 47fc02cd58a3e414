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
use super::interest::Interest;
use super::metrics::Metrics;
use super::planner::{plan, Observed, Plan};
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
    /// The last publish failed: the next one writes every file again, whatever
    /// `previous` says, and is retried after `publish_backoff` even if nothing changes.
    publish_failed: bool,
    publish_backoff: Backoff,
    publish_retry: Option<Instant>,
    /// What the last pass read, for the event filter (taken by the main loop).
    pub interest: Option<Interest>,
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
    /// The published state differs from the one before (it is `previous` now).
    pub state_changed: bool,
}

impl<L: Links> Reconciler<L> {
    /// Lets every held operation be tried on the next reconcile (a new config may
    /// be the fix).
    pub fn release_held(&mut self) {
        self.held.clear();
    }

    /// When the next held operation, or a failed publish, may be retried.
    pub fn next_retry(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|h| h.until)
            .chain(self.publish_retry)
            .min()
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
            publish_failed: false,
            publish_backoff: Backoff::new(HOLD_MIN, HOLD_MAX),
            publish_retry: None,
            interest: None,
        }
    }

    /// Without a valid config nothing is reconciled; the state keeps the last
    /// published portgroups (the plugin goes on working) and says why.
    pub fn publish_config_errors(&mut self, source: &ConfigSource) -> bool {
        let portgroups = self
            .previous
            .as_ref()
            .map(|s| s.portgroups.clone())
            .unwrap_or_default();
        let allowed_bridges = self
            .previous
            .as_ref()
            .and_then(|s| s.allowed_bridges.clone());
        self.publish(portgroups, source.errors.clone(), allowed_bridges, false)
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
            let state_changed = self.publish_config_errors(source);
            return Ok(Outcome {
                state_changed,
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
        let mut failures = Vec::new();
        let now = Instant::now();
        let planned: HashSet<String> = first.steps.iter().map(|s| s.op.to_string()).collect();
        self.held.retain(|op, _| planned.contains(op));
        let verified = if first.steps.is_empty() {
            first
        } else {
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
            drop(first);
            observed = self.links.dump().await?;
            observed.native_guard_failure = native_guard_failure;
            plan(config, &self.node, self.previous.as_ref(), &observed)
        };
        self.interest = Some(Interest::of(config, &self.node, &observed, &verified));
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
            self.gc_due = collect_garbage(&observed, &self.run_dir, &self.metrics)
                .map(|d| Instant::now() + d);
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
        // A full pass (resync, lost events) also checks that every file is there.
        outcome.state_changed = self.publish(
            portgroups,
            source.errors.clone(),
            config.allowed_bridges.clone(),
            collect,
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

    /// Publishes the node state; whether it differs from the last one. A state
    /// that would not change a byte is not written, and keeps its generation and
    /// time, unless `verify` asks for the files to be checked (written only where
    /// missing) or the last publish failed.
    fn publish(
        &mut self,
        portgroups: Vec<PortgroupState>,
        config_errors: Vec<String>,
        allowed_bridges: Option<Vec<String>>,
        verify: bool,
    ) -> bool {
        let same = self.previous.as_ref().filter(|p| {
            p.node == self.node
                && p.portgroups == portgroups
                && p.config_errors == config_errors
                && p.allowed_bridges == allowed_bridges
        });
        if same.is_some() && !verify && !self.publish_failed {
            return false;
        }
        let changed = same.is_none();
        let (generation, reconciled_at) = match same {
            Some(p) => (p.generation, p.reconciled_at.clone()),
            None => (
                self.previous.as_ref().map_or(0, |s| s.generation) + 1,
                rfc3339(SystemTime::now()),
            ),
        };
        let state = NodeState {
            node: self.node.clone(),
            generation,
            reconciled_at,
            config_errors,
            portgroups,
            allowed_bridges,
        };
        let basis = self.previous.as_ref().filter(|_| !self.publish_failed);
        match state.write(&self.run_dir, basis) {
            Ok(written) => {
                self.metrics.state_files_written.fetch_add(written, Relaxed);
                self.metrics.state_write_failing.store(false, Relaxed);
                self.publish_failed = false;
                self.publish_backoff.succeeded();
                self.publish_retry = None;
            }
            Err(e) => {
                tracing::error!("writing node state under {}: {e}", self.run_dir.0.display());
                self.metrics.errors.fetch_add(1, Relaxed);
                self.metrics.state_write_failing.store(true, Relaxed);
                self.publish_failed = true;
                self.publish_retry = Some(Instant::now() + self.publish_backoff.failed());
            }
        }
        self.previous = Some(state);
        changed
    }
}

/// One garbage collection over `observed`, logged and counted; when to collect
/// again for a young record that looks dead.
pub fn collect_garbage(
    observed: &Observed,
    run_dir: &RunDir,
    metrics: &Metrics,
) -> Option<Duration> {
    let report = gc::collect(
        observed,
        &run_dir.attachments_dir(),
        SystemTime::now(),
        gc::MIN_AGE,
    );
    for e in &report.errors {
        tracing::warn!("garbage collection: {e}");
    }
    metrics
        .errors
        .fetch_add(report.errors.len() as u64, Relaxed);
    metrics.gc_removed.fetch_add(report.removed, Relaxed);
    metrics.attachments.store(report.remaining as u64, Relaxed);
    report.next_due
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
        let written = metrics.state_files_written.load(Relaxed);
        let out = block_on(r.reconcile(&source, false)).expect("reconcile");
        assert_eq!(out.failures, 0, "nothing tried");
        assert!(!out.state_changed);
        assert_eq!(
            metrics.state_files_written.load(Relaxed),
            written,
            "a state that would not change a byte is not written"
        );
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
        assert_eq!(
            state.generation, 2,
            "the unchanged state kept its generation"
        );
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
        assert_eq!(again.previous.map(|s| s.generation), Some(3));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_failed_publish_is_reported_and_retried_until_it_succeeds() {
        let dir = std::env::temp_dir().join(format!("pg-reconcile-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // A file where the portgroups directory goes: no write gets through, even as root.
        std::fs::write(dir.join("portgroups"), b"").expect("blocker");
        let metrics = Arc::new(Metrics::default());
        let mut r = Reconciler::new(
            uplink_without_8021q(),
            "worker-3".into(),
            RunDir(dir.clone()),
            metrics.clone(),
        );
        let mut source = ConfigSource::new(dir.join("config.json"));
        source.offer(
            br#"{"uplink": "eth1", "portgroups": [{"name": "net", "untagged": true}]}"#.to_vec(),
        );
        block_on(r.reconcile(&source, false)).expect("reconcile");
        assert!(metrics.state_write_failing.load(Relaxed));
        assert!(r.next_retry().is_some(), "a failed publish is retried");
        assert!(!dir.join("state.json").exists());

        // Nothing changed, but the last publish failed: this one writes everything.
        std::fs::remove_file(dir.join("portgroups")).expect("unblock");
        block_on(r.reconcile(&source, false)).expect("reconcile");
        assert!(!metrics.state_write_failing.load(Relaxed));
        assert_eq!(r.next_retry(), None);
        let state = NodeState::read(&dir.join("state.json")).expect("state");
        assert_eq!(state.generation, 1);
        assert!(dir.join("portgroups/net.json").exists());
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
