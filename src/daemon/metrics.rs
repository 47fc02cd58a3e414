//! Counters and gauges, rendered in the Prometheus text format by hand: a dozen
//! series do not need a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Reconciles take milliseconds; the tail shows a slow or stuck netlink.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub portgroups_ready: AtomicU64,
    pub portgroups_not_ready: AtomicU64,
    pub portgroups_draining: AtomicU64,
    pub attachments: AtomicU64,
    pub gc_removed: AtomicU64,
    /// Port-security repairs by what was missing: the table, its chains/rules, a port's elements.
    pub portsec_repairs_table: AtomicU64,
    pub portsec_repairs_rules: AtomicU64,
    pub portsec_repairs_port: AtomicU64,
    /// Ports whose elements were removed because no record owns them.
    pub portsec_orphans_removed: AtomicU64,
    /// Unreadable attachment records moved aside.
    pub records_quarantined: AtomicU64,
    /// Port-security sweeps run (resyncs and nf_tables changes).
    pub portsec_sweeps: AtomicU64,
    pub errors: AtomicU64,
    pub config_generation: AtomicU64,
    duration: Mutex<Histogram>,
    /// Readiness of every portgroup in the last published state, by name.
    portgroup_ready: Mutex<BTreeMap<String, bool>>,
    /// Device-plugin resources registered with the current kubelet, by portgroup.
    device_plugin_registered: Mutex<BTreeMap<String, bool>>,
    pub device_plugin_registrations: AtomicU64,
    /// The loop is running (for /healthz).
    pub alive: AtomicBool,
    /// The first reconcile has finished (for /readyz).
    pub ready: AtomicBool,
    /// The last node-state publish failed (/readyz says so until one succeeds).
    pub state_write_failing: AtomicBool,
    /// Node-state files written (state.json, per-portgroup and per-MAC files).
    pub state_files_written: AtomicU64,
    /// Link and address events that woke the reconciler.
    pub events_relevant: AtomicU64,
    /// Link and address events dropped at the socket: not about the daemon's
    /// links or uplinks, or changing nothing the planner reads.
    pub events_ignored: AtomicU64,
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        // A poisoned lock only means a panic elsewhere; the numbers are still good.
        let mut h = self.duration.lock().unwrap_or_else(|p| p.into_inner());
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Replaces the per-portgroup readiness with that of the last published state
    /// (portgroups no longer in it disappear from the series).
    pub fn set_portgroup_ready(&self, portgroups: &[crate::state::PortgroupState]) {
        let mut ready = self
            .portgroup_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *ready = portgroups
            .iter()
            .map(|pg| (pg.name.clone(), pg.ready))
            .collect();
    }

    pub fn set_device_plugin_registered(&self, registered: &BTreeMap<String, bool>) {
        *self
            .device_plugin_registered
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = registered.clone();
    }

    pub fn count_registration(&self) {
        self.device_plugin_registrations.fetch_add(1, Relaxed);
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            &mut out,
            "portgroupd_reconciles_total",
            "Reconciles run.",
            &self.reconciles,
        );
        {
            let h = self.duration.lock().unwrap_or_else(|p| p.into_inner());
            let name = "portgroupd_reconcile_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time one reconcile took.\n# TYPE {name} histogram"
            );
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum {}", h.sum);
            let _ = writeln!(out, "{name}_count {}", h.count);
        }
        counter(
            &mut out,
            "portgroupd_state_files_written_total",
            "Node-state files written (unchanged ones are not rewritten).",
            &self.state_files_written,
        );
        let name = "portgroupd_state_write_failing";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while the last node-state publish failed.\n# TYPE {name} gauge\n{name} {}",
            u8::from(self.state_write_failing.load(Relaxed))
        );
        let name = "portgroupd_link_events_total";
        let _ = writeln!(
            out,
            "# HELP {name} Link and address events, by whether they woke the reconciler.\n# TYPE {name} counter"
        );
        for (outcome, v) in [
            ("reconcile", &self.events_relevant),
            ("ignored", &self.events_ignored),
        ] {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", v.load(Relaxed));
        }
        counter(
            &mut out,
            "portgroupd_drift_repairs_total",
            "Reconciles that repaired a change made outside the daemon.",
            &self.drift_repairs,
        );
        let name = "portgroupd_portgroups";
        let _ = writeln!(
            out,
            "# HELP {name} Portgroups on this node by state.\n# TYPE {name} gauge"
        );
        for (state, v) in [
            ("ready", &self.portgroups_ready),
            ("not_ready", &self.portgroups_not_ready),
            ("draining", &self.portgroups_draining),
        ] {
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {}", v.load(Relaxed));
        }
        labelled(
            &mut out,
            "portgroup_ready",
            "1 while the portgroup is ready on this node (its device-plugin devices Healthy), 0 while not.",
            &self.portgroup_ready,
        );
        labelled(
            &mut out,
            "portgroupd_device_plugin_registered",
            "1 while the portgroup's device-plugin resource is registered with the running kubelet.",
            &self.device_plugin_registered,
        );
        counter(
            &mut out,
            "portgroupd_device_plugin_registrations_total",
            "Successful device-plugin registrations with the kubelet.",
            &self.device_plugin_registrations,
        );
        gauge(
            &mut out,
            "portgroupd_attachments",
            "Attachment records on this node.",
            &self.attachments,
        );
        counter(
            &mut out,
            "portgroupd_gc_removed_total",
            "Stale attachments removed by the collector.",
            &self.gc_removed,
        );
        {
            let name = "portgroup_portsec_repairs_total";
            let _ = writeln!(
                out,
                "# HELP {name} Port-security repairs by what was missing or altered: the table, its chains and rules, one port's elements.\n# TYPE {name} counter"
            );
            for (what, v) in [
                ("table", &self.portsec_repairs_table),
                ("rules", &self.portsec_repairs_rules),
                ("port", &self.portsec_repairs_port),
            ] {
                let _ = writeln!(out, "{name}{{what=\"{what}\"}} {}", v.load(Relaxed));
            }
        }
        counter(
            &mut out,
            "portgroup_portsec_orphans_removed_total",
            "Ports whose port-security elements were removed because no attachment record owns them.",
            &self.portsec_orphans_removed,
        );
        counter(
            &mut out,
            "portgroupd_portsec_sweeps_total",
            "Port-security verifications run (resyncs and nf_tables changes).",
            &self.portsec_sweeps,
        );
        counter(
            &mut out,
            "portgroupd_records_quarantined_total",
            "Unreadable attachment records moved aside.",
            &self.records_quarantined,
        );
        counter(
            &mut out,
            "portgroupd_errors_total",
            "Failed link operations, collector errors and refused configs.",
            &self.errors,
        );
        gauge(
            &mut out,
            "portgroupd_config_generation",
            "Valid configs loaded since start.",
            &self.config_generation,
        );
        out
    }
}

/// A gauge with one series per portgroup. Portgroup names are DNS labels, so
/// they need no escaping in a label value.
fn labelled(out: &mut String, name: &str, help: &str, values: &Mutex<BTreeMap<String, bool>>) {
    let values = values.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (portgroup, on) in values.iter() {
        let _ = writeln!(out, "{name}{{portgroup=\"{portgroup}\"}} {}", u8::from(*on));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portgroup_gone_from_the_state_leaves_the_series() {
        let m = Metrics::default();
        let state: crate::state::NodeState = serde_json::from_str(
            r#"{"node": "n", "generation": 1, "reconciledAt": "", "portgroups": [
                {"name": "web", "vlan": 1, "uplink": "", "bridge": "", "vlanInterface": "", "mtu": null, "ready": true, "reason": null}]}"#,
        )
        .expect("state");
        m.set_portgroup_ready(&state.portgroups);
        assert!(m.render().contains("portgroup_ready{portgroup=\"web\"} 1"));
        m.set_portgroup_ready(&[]);
        assert!(!m.render().contains("portgroup_ready{portgroup="));
    }

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3));
        m.portgroups_ready.store(2, Relaxed);
        let pg = |name: &str, ready| crate::state::PortgroupState {
            name: name.into(),
            mode: crate::state::PortgroupMode::Access,
            vlan: Some(100),
            trunk: None,
            native_vlan: None,
            uplink: "eth1".into(),
            bridge: String::new(),
            vlan_interface: String::new(),
            mtu: None,
            ready,
            reason: None,
            draining: false,
            strict: false,
            reservations: Vec::new(),
            policy: Default::default(),
            allow_router_advertisements: false,
            allow_dhcp_server: false,
        };
        m.set_portgroup_ready(&[pg("web", true), pg("db", false)]);
        m.set_device_plugin_registered(&[("web".to_string(), true)].into_iter().collect());
        let text = m.render();
        for want in [
            "portgroupd_reconciles_total 1",
            "portgroupd_reconcile_duration_seconds_bucket{le=\"0.0025\"} 0",
            "portgroupd_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "portgroupd_reconcile_duration_seconds_count 1",
            "portgroupd_drift_repairs_total 0",
            "portgroupd_portgroups{state=\"ready\"} 2",
            "portgroupd_portgroups{state=\"draining\"} 0",
            "portgroupd_attachments 0",
            "portgroupd_gc_removed_total 0",
            "portgroup_portsec_repairs_total{what=\"table\"} 0",
            "portgroup_portsec_repairs_total{what=\"port\"} 0",
            "portgroup_portsec_orphans_removed_total 0",
            "portgroupd_records_quarantined_total 0",
            "portgroupd_errors_total 0",
            "portgroupd_config_generation 0",
            "# TYPE portgroup_ready gauge",
            "portgroup_ready{portgroup=\"web\"} 1",
            "portgroup_ready{portgroup=\"db\"} 0",
            "portgroupd_device_plugin_registered{portgroup=\"web\"} 1",
            "portgroupd_device_plugin_registrations_total 0",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
