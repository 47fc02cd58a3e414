//! Garbage collection of attachments. Multus never sends CNI GC to a secondary
//! network's plugin, and a DEL can be lost (node crash, kubelet restart), so the
//! daemon removes what is left of attachments whose pod is gone.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::applier::Links;
use super::planner::Observed;
use crate::attachment;

/// An ADD writes its record before it creates the veth: a record younger than
/// this may belong to an ADD still running, and is left alone.
pub const MIN_AGE: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: u64,
    /// Records kept (live attachments, and ones too young to judge).
    pub remaining: usize,
    pub errors: Vec<String>,
}

/// Whether a netns path still names a network namespace. Doubt (a permission
/// error, say) counts as alive: collecting a live VM's port is far worse than
/// keeping a dead one for another round.
///
/// A `/proc/<pid>/ns/net` path is never judged: the DaemonSet runs without
/// hostPID, so host processes are invisible and "not found" would be a lie. Such
/// attachments are collected when their host veth disappears, which the kernel
/// guarantees once the namespace is really gone.
pub fn netns_alive(path: &str) -> bool {
    if path.starts_with("/proc/") {
        return true;
    }
    match crate::netns::open(Path::new(path)) {
        Ok(_) => true,
        Err(crate::netns::NetnsError::NotFound { .. })
        | Err(crate::netns::NetnsError::NotANamespace { .. }) => false,
        Err(crate::netns::NetnsError::Io { .. }) => true,
    }
}

pub async fn collect<L: Links>(
    links: &L,
    observed: &Observed,
    dir: &Path,
    now: SystemTime,
    min_age: Duration,
    alive: impl Fn(&str) -> bool,
) -> GcReport {
    let mut report = GcReport::default();
    let (records, broken) = attachment::list(dir);
    for (path, why) in broken {
        report.errors.push(format!(
            "unreadable attachment record {}: {why}",
            path.display()
        ));
    }
    for record in records {
        let age = std::fs::metadata(record.path(dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        let veth = observed.links.iter().find(|l| l.name == record.host_veth);
        let why = if !alive(&record.netns) {
            format!("netns {} is gone", record.netns)
        } else if veth.is_none() {
            format!("host veth {} is gone", record.host_veth)
        } else {
            report.remaining += 1;
            continue;
        };
        if age < min_age {
            report.remaining += 1;
            continue;
        }
        let id = format!("{}/{}", record.container_id, record.ifname);
        if let Some(veth) = veth {
            if veth.is_kind("veth") {
                if let Err(e) = links.delete(veth.index).await {
                    if !e.is_not_found() {
                        report
                            .errors
                            .push(format!("attachment {id}: deleting {}: {e}", veth.name));
                        report.remaining += 1;
                        continue;
                    }
                }
            } else {
                tracing::warn!(
                    attachment = %id,
                    "{} is not a veth; leaving the interface alone",
                    veth.name
                );
            }
        }
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
        tracing::info!(attachment = %id, host_veth = %record.host_veth, "collected stale attachment: {why}");
        report.removed += 1;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::Record;
    use crate::daemon::fake::{FakeKernel, FakeLinks};
    use crate::netlink::LinkSummary;
    use futures::executor::block_on;
    use std::cell::RefCell;

    fn record(cid: &str, netns: &str) -> Record {
        Record {
            container_id: cid.into(),
            ifname: "net1".into(),
            network: "prod-web".into(),
            netns: netns.into(),
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
        }
    }

    #[test]
    fn proc_paths_are_never_judged_dead() {
        assert!(netns_alive("/proc/999999999/ns/net"));
        assert!(!netns_alive("/run/netns/portgroup-test-does-not-exist"));
    }

    #[test]
    fn collects_only_what_is_dead_and_old() {
        let dir = std::env::temp_dir().join(format!("pg-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // (container, netns alive, veth present, veth kind, old enough, collected)
        let cases = [
            ("live", true, true, "veth", true, false),
            ("netns-gone", false, true, "veth", true, true),
            ("veth-gone", true, false, "veth", true, true),
            ("both-gone", false, false, "veth", true, true),
            ("young", false, false, "veth", false, false),
            ("not-a-veth", false, true, "bridge", true, true),
        ];
        let mut links = vec![];
        for (i, (cid, alive, veth, kind, old, _)) in cases.iter().enumerate() {
            let r = record(
                cid,
                &format!("/run/netns/{}", if *alive { "alive" } else { "dead" }),
            );
            r.write(&dir).expect("write record");
            if *old {
                let f = std::fs::File::options()
                    .write(true)
                    .open(r.path(&dir))
                    .expect("open");
                f.set_modified(SystemTime::now() - Duration::from_secs(120))
                    .expect("mtime");
            }
            if *veth {
                links.push(LinkSummary {
                    index: 10 + i as u32,
                    name: r.host_veth.clone(),
                    kind: Some((*kind).into()),
                    ..Default::default()
                });
            }
        }
        let fake = FakeLinks(RefCell::new(FakeKernel::with(links)));
        let observed = fake.0.borrow().observed();
        let report = block_on(collect(
            &fake,
            &observed,
            &dir,
            SystemTime::now(),
            MIN_AGE,
            |ns| ns.ends_with("alive"),
        ));
        assert_eq!(report.removed, 4, "{report:?}");
        assert_eq!(report.remaining, 2);
        assert!(report.errors.is_empty(), "{report:?}");
        for (cid, _, _, kind, _, collected) in cases {
            let r = record(cid, "");
            let present = Record::find(&dir, cid, "net1").expect("read").is_some();
            assert_eq!(present, !collected, "{cid}");
            let link = fake.0.borrow().get(&r.host_veth).cloned();
            if kind == "bridge" {
                assert!(link.is_some(), "a non-veth is never deleted");
            } else if collected {
                assert!(link.is_none(), "{cid}: veth deleted");
            }
        }
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
