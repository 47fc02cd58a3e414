//! Counters and gauges, rendered in the Prometheus text format by hand: eight
//! series do not need a metrics crate.

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
    pub errors: AtomicU64,
    pub config_generation: AtomicU64,
    duration: Mutex<Histogram>,
    /// The loop is running (for /healthz).
    pub alive: AtomicBool,
    /// The first reconcile has finished (for /readyz).
    pub ready: AtomicBool,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3));
        m.portgroups_ready.store(2, Relaxed);
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
            "portgroupd_errors_total 0",
            "portgroupd_config_generation 0",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
