//! Garbage collection of attachments. Multus never sends CNI GC to a secondary
//! network's plugin, and a DEL can be lost (node crash, kubelet restart), so the
//! daemon removes what is left of attachments whose pod is gone.
//!
//! An attachment is dead exactly when its host veth is gone: the pod end lives
//! in the pod's network namespace, and the kernel deletes the pair when that
//! namespace goes. So the daemon needs no view of the pods' netns paths (no
//! /var/run/netns mount, no hostPID); the record's netns path is not judged.
//!
//! Two things look like a dead attachment and are not collected:
//! - an ADD writes its record before it creates the veth, so a record younger
//!   than [`MIN_AGE`] is left alone; the collector is woken again when it comes
//!   of age ([`GcReport::next_due`]);
//! - an ADD (for its whole run) and a DEL (which deletes the veth first and the
//!   record last) hold the record's lock ([`attachment::lock`]); such a record
//!   is in a plugin's hands and left to it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::planner::Observed;
use crate::attachment::{self, TryLock};

/// An ADD writes its record before it creates the veth: a record younger than
/// this may belong to an ADD still running, and is left alone.
pub const MIN_AGE: Duration = Duration::from_secs(30);

/// Slack added to a young record's due time, so that when the collector wakes the
/// record is past [`MIN_AGE`] by its own clock and mtime granularity.
const DUE_SLACK: Duration = Duration::from_millis(200);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: u64,
    /// Records kept (live attachments, and ones too young to judge).
    pub remaining: usize,
    /// Dead-looking records left to the DEL that holds them.
    pub being_deleted: usize,
    /// How long until the youngest dead-looking record comes of age: collect
    /// again then, not at the next resync.
    pub next_due: Option<Duration>,
    pub errors: Vec<String>,
}

/// Collects dead attachments. Synchronous: no link is deleted here (a dead
/// attachment's veth is already gone), only rules and records.
pub fn collect(observed: &Observed, dir: &Path, now: SystemTime, min_age: Duration) -> GcReport {
    let mut report = GcReport::default();
    let (records, broken) = attachment::list(dir);
    for (path, why) in broken {
        report.errors.push(format!(
            "unreadable attachment record {}: {why}",
            path.display()
        ));
    }
    for record in records {
        let id = format!("{}/{}", record.container_id, record.ifname);
        let veth = observed.links.iter().find(|l| l.name == record.host_veth);
        match veth {
            Some(veth) if veth.is_kind("veth") => {
                report.remaining += 1;
                continue;
            }
            Some(veth) => tracing::warn!(
                attachment = %id,
                "{} is not a veth; the attachment is dead, the interface is left alone",
                veth.name
            ),
            None => {}
        }
        let age = std::fs::metadata(record.path(dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < min_age {
            report.remaining += 1;
            let due = min_age - age + DUE_SLACK;
            report.next_due = Some(report.next_due.map_or(due, |d| d.min(due)));
            continue;
        }
        let _lock = match attachment::try_lock(dir, &record.container_id, &record.ifname) {
            Ok(TryLock::Locked(lock)) => lock,
            Ok(TryLock::Busy) => {
                tracing::info!(
                    attachment = %id,
                    host_veth = %record.host_veth,
                    "attachment in a running ADD or DEL (it holds the record); not collecting it"
                );
                report.being_deleted += 1;
                continue;
            }
            Ok(TryLock::Gone) => {
                tracing::debug!(attachment = %id, "record removed meanwhile: deleted by its DEL");
                continue;
            }
            Err(e) => {
                report
                    .errors
                    .push(format!("attachment {id}: locking its record: {e}"));
                report.remaining += 1;
                continue;
            }
        };
        // The host veth is gone (or never was a veth), so there is no link to
        // delete: the pod end went with it. Rules and record remain.
        if let Err(e) = crate::portsec::remove(&record.host_veth) {
            report.errors.push(format!(
                "attachment {id}: removing port-security rules of {}: {e}",
                record.host_veth
            ));
        }
        if let Err(e) = attachment::remove(dir, &record.container_id, &record.ifname) {
            report
                .errors
                .push(format!("attachment {id}: removing its record: {e}"));
            report.remaining += 1;
            continue;
        }
        tracing::info!(
            attachment = %id,
            host_veth = %record.host_veth,
            "collected stale attachment: host veth {} is gone and no DEL is running",
            record.host_veth
        );
        report.removed += 1;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::Record;
    use crate::netlink::LinkSummary;

    fn record(cid: &str) -> Record {
        Record {
            container_id: cid.into(),
            ifname: "net1".into(),
            network: "prod-web".into(),
            netns: "/var/run/netns/whatever".into(),
            host_veth: crate::naming::host_veth_name(cid, "net1"),
            bridge: "br0".into(),
            portgroup: Some("prod-web".into()),
            vlan: Some(100),
            mac: "00:50:56:aa:bb:01".parse().expect("mac"),
            ips: vec![],
            spoof_check: true,
            ipam: None,
            cni_version: "1.1.0".into(),
            created_at: "2026-11-23T10:00:00Z".into(),
            namespace: None,
            port_security: None,
            handover: None,
            device_id: None,
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pg-gc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn collects_only_what_is_dead_old_and_not_being_deleted() {
        let dir = scratch("table");
        // (container, veth kind if present, age in seconds, held by a DEL, collected)
        let cases = [
            ("live", Some("veth"), 120, false, false),
            ("live-young", Some("veth"), 0, false, false),
            ("veth-gone", None, 120, false, true),
            ("young", None, 20, false, false),
            ("younger", None, 5, false, false),
            ("not-a-veth", Some("bridge"), 120, false, true),
            ("deleting", None, 120, true, false),
        ];
        let mut links = vec![];
        let mut held = vec![];
        for (i, (cid, kind, age, deleting, _)) in cases.iter().enumerate() {
            let r = record(cid);
            r.write(&dir).expect("write record");
            let f = std::fs::File::options()
                .write(true)
                .open(r.path(&dir))
                .expect("open");
            f.set_modified(SystemTime::now() - Duration::from_secs(*age))
                .expect("mtime");
            if let Some(kind) = kind {
                links.push(LinkSummary {
                    index: 10 + i as u32,
                    name: r.host_veth.clone(),
                    kind: Some((*kind).into()),
                    ..Default::default()
                });
            }
            if *deleting {
                held.push(
                    attachment::lock(&dir, cid, "net1")
                        .expect("lock")
                        .expect("record exists"),
                );
            }
        }
        let observed = Observed {
            links,
            ..Default::default()
        };
        let report = collect(&observed, &dir, SystemTime::now(), MIN_AGE);
        assert_eq!(report.removed, 2, "{report:?}");
        assert_eq!(report.remaining, 4, "{report:?}");
        assert_eq!(report.being_deleted, 1, "{report:?}");
        assert!(report.errors.is_empty(), "{report:?}");
        // "young" (20 s) comes of age first: in about 10 s, not at the next resync.
        let due = report.next_due.expect("a wake-up is due");
        assert!(
            due > Duration::from_secs(8) && due <= Duration::from_secs(11),
            "{due:?}"
        );
        for (cid, _, _, _, collected) in cases {
            let present = Record::find(&dir, cid, "net1").expect("read").is_some();
            assert_eq!(present, !collected, "{cid}");
        }

        // Once the DEL is done (lock released, record removed) nothing is left to do.
        drop(held);
        attachment::remove(&dir, "deleting", "net1").expect("DEL removes its record");
        let later = SystemTime::now() + Duration::from_secs(60);
        let observed = Observed::default();
        let report = collect(&observed, &dir, later, MIN_AGE);
        assert_eq!(
            report.removed, 4,
            "live, live-young, young, younger: veths gone now"
        );
        assert_eq!(report.next_due, None);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
