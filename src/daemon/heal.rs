//! The port-security sweep: every resync and every nf_tables change another
//! process makes to `table bridge portgroup`, portgroupd checks the table, its
//! chains and rules (by layout tag) and each live attachment's elements against
//! the attachment records, and restores what is missing; it removes the
//! elements of ports no record owns; and it moves aside records that stay
//! unreadable, so that their ports are swept rather than leaked for good.
//!
//! Which attachments are restored: those whose record says what its rules
//! were (`portSecurity`, written when the ADD finished), or, for records of an
//! older release, what the node state says of its portgroup; whose host veth
//! exists (a dead attachment is the collector's); and whose record no DEL
//! holds. `bridge:` mode attachments are recorded alike and covered alike.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::attachment::{self, Record, TryLock};
use crate::portsec::{self, PortRules};
use crate::state::NodeState;

/// A record that cannot be read for this long is not one being written: it is
/// moved aside. The same age as the collector's, for the same reason.
pub const UNREADABLE_MIN_AGE: Duration = super::gc::MIN_AGE;

/// Where unreadable records go, under the attachments directory. Not a record
/// file name, so nothing reads it as one; kept for an operator to look at.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What one sweep decided from the records, before it looks at the kernel.
#[derive(Debug, Default)]
pub struct Survey {
    /// Ports to hold exactly their recorded rules.
    pub want: Vec<PortRules>,
    /// Every port a record names (readable, or unreadable and young).
    pub keep: HashSet<String>,
    /// Unreadable records past the minimum age: (path, why).
    pub quarantine: Vec<(PathBuf, String)>,
    /// An unreadable young record whose port cannot be told from its file
    /// name: no port is swept as an orphan this time.
    pub hold_orphans: bool,
}

fn age(path: &Path, now: SystemTime) -> Duration {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default()
}

/// The rules a record of an older release (no `portSecurity`) stands for,
/// as its ADD computed them: its addresses and its portgroup's reservation
/// and opt-ins in the node state; a trunk port is MAC-only.
fn legacy_rules(record: &Record, state: Option<&NodeState>) -> PortRules {
    let portgroup = record
        .portgroup
        .as_deref()
        .and_then(|name| state?.portgroups.iter().find(|pg| pg.name == name));
    let trunk = portgroup.is_some_and(|pg| pg.tagged());
    let mut ips: Vec<std::net::IpAddr> = Vec::new();
    if !trunk {
        let reserved = portgroup
            .and_then(|pg| pg.reservation_for(record.mac))
            .map(|r| r.ips.as_slice())
            .unwrap_or_default();
        for ip in record.ips.iter().chain(reserved) {
            if !ips.contains(&ip.ip()) {
                ips.push(ip.ip());
            }
        }
    }
    PortRules {
        host_veth: record.host_veth.clone(),
        mac: record.mac,
        ips,
        allow_router_advertisements: portgroup.is_some_and(|pg| pg.allow_router_advertisements),
        allow_dhcp_server: portgroup.is_some_and(|pg| pg.allow_dhcp_server),
        trunk,
    }
}

/// Reads the records and decides which ports to restore, keep and quarantine.
/// `exists` tells whether an interface exists; `busy` whether a DEL holds a record.
pub fn survey(
    dir: &Path,
    state: Option<&NodeState>,
    now: SystemTime,
    min_age: Duration,
    exists: &dyn Fn(&str) -> bool,
    busy: &dyn Fn(&Record) -> bool,
) -> Survey {
    let mut s = Survey::default();
    let (records, broken) = attachment::list(dir);
    for (path, why) in broken {
        if age(&path, now) >= min_age {
            s.quarantine.push((path, why));
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match attachment::named_by(&name) {
            Some(named) => {
                s.keep.insert(named.host_veth);
            }
            None => s.hold_orphans = true,
        }
    }
    for record in records {
        s.keep.insert(record.host_veth.clone());
        if !record.spoof_check || !exists(&record.host_veth) {
            continue;
        }
        let rules = match record.port_rules() {
            Some(rules) => rules,
            // An ADD still running writes it when it is done.
            None if age(&record.path(dir), now) < min_age => continue,
            None => legacy_rules(&record, state),
        };
        if busy(&record) {
            continue;
        }
        s.want.push(rules);
    }
    s
}

/// Whether a DEL holds the record now (the lock is taken and let go at once).
pub fn held_by_a_del(dir: &Path, record: &Record) -> bool {
    matches!(
        attachment::try_lock(dir, &record.container_id, &record.ifname),
        Ok(TryLock::Busy | TryLock::Gone)
    )
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub plan: portsec::HealPlan,
    /// Unreadable records moved aside: (from, to).
    pub quarantined: Vec<(PathBuf, PathBuf)>,
    pub errors: Vec<String>,
}

/// Moves an unreadable record aside, under [`QUARANTINE_DIR`].
fn move_aside(dir: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let aside = dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&aside)?;
    let name = path.file_name().unwrap_or_default();
    let to = aside.join(name);
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// One sweep: quarantine, then verify and repair the table against the records.
pub fn sweep(dir: &Path, state: Option<&NodeState>, now: SystemTime) -> SweepReport {
    let exists = |name: &str| nix::net::if_::if_nametoindex(name).is_ok();
    let busy = |record: &Record| held_by_a_del(dir, record);
    let mut survey = survey(dir, state, now, UNREADABLE_MIN_AGE, &exists, &busy);
    let mut report = SweepReport::default();
    for (path, why) in std::mem::take(&mut survey.quarantine) {
        match move_aside(dir, &path) {
            Ok(to) => {
                tracing::warn!(
                    record = %path.display(),
                    moved_to = %to.display(),
                    "moved aside an attachment record unreadable for over {} s ({why}); its port's rules are swept",
                    UNREADABLE_MIN_AGE.as_secs()
                );
                report.quarantined.push((path, to));
            }
            Err(e) => {
                report.errors.push(format!(
                    "moving aside unreadable attachment record {}: {e}",
                    path.display()
                ));
                // Its port cannot be told: sweep no orphans while it stays.
                survey.hold_orphans = true;
            }
        }
    }
    // An ADD writes its record before its elements, so a port whose elements
    // appeared after the survey read the records has a record by now: the
    // directory is read again, after the kernel's elements, before any is
    // called an orphan (once per attempt of the repair, not per candidate).
    // Again at each attempt: one that lost to a concurrent commit (an ADD of
    // an orphan's name among them) must see the record that ADD wrote.
    let never_orphan = |name: &str| survey.hold_orphans || exists(name);
    let recorded = || attachment::host_veths_named_in(dir);
    match portsec::heal(&survey.want, &survey.keep, &never_orphan, &recorded) {
        Ok(plan) => {
            match plan.rebuild {
                Some(portsec::TableState::Missing) => tracing::warn!(
                    "port security: table bridge {} was missing; recreated it",
                    portsec::TABLE
                ),
                Some(_) => tracing::warn!(
                    "port security: the chains of table bridge {} were missing or not this version's; rebuilt them",
                    portsec::TABLE
                ),
                None => {}
            }
            if !plan.repaired_ports.is_empty() {
                tracing::warn!(
                    "port security: restored the rules of {} port(s): {}",
                    plan.repaired_ports.len(),
                    plan.repaired_ports.join(", ")
                );
            }
            if !plan.orphans.is_empty() {
                tracing::info!(
                    "port security: removed the rules of {} port(s) no attachment record owns: {}",
                    plan.orphans.len(),
                    plan.orphans.join(", ")
                );
            }
            report.plan = plan;
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::RecordedPortSecurity;

    fn record(cid: &str, installed: Option<RecordedPortSecurity>) -> Record {
        Record {
            device_id: None,
            handover: None,
            container_id: cid.into(),
            ifname: "net1".into(),
            network: "lab".into(),
            netns: "/var/run/netns/x".into(),
            host_veth: crate::naming::host_veth_name(cid, "net1"),
            bridge: "br0".into(),
            portgroup: None,
            vlan: None,
            mac: "02:00:00:00:00:01".parse().expect("mac"),
            ips: vec!["10.0.0.5/24".parse().expect("ip")],
            spoof_check: true,
            ipam: None,
            cni_version: "1.1.0".into(),
            created_at: "2026-11-23T10:00:00Z".into(),
            namespace: None,
            port_security: installed,
        }
    }

    fn set_age(path: &Path, secs: u64) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .expect("mtime");
    }

    #[test]
    fn records_of_older_releases_are_restored_from_the_node_state() {
        let state: NodeState = serde_json::from_value(serde_json::json!({
            "node": "n", "generation": 1, "reconciledAt": "",
            "portgroups": [
                {"name": "web", "vlan": 100, "uplink": "eth1", "bridge": "b", "vlanInterface": "v",
                 "mtu": null, "ready": true, "reason": null, "allowDhcpServer": true,
                 "reservations": [{"mac": "02:00:00:00:00:01", "ips": ["10.0.0.9/24", "10.0.0.5/24"]}]},
                {"name": "fw", "mode": "trunk", "trunk": "100", "uplink": "eth1", "bridge": "t",
                 "vlanInterface": "", "mtu": null, "ready": true, "reason": null,
                 "allowRouterAdvertisements": true}
            ]
        }))
        .expect("state");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let mut r = record("old", None);
        // (portgroup, state known, allowed IPs, RA, DHCP server, trunk)
        let cases = [
            (None, true, vec![ip("10.0.0.5")], false, false, false),
            (
                Some("web"),
                true,
                vec![ip("10.0.0.5"), ip("10.0.0.9")],
                false,
                true,
                false,
            ),
            (
                Some("web"),
                false,
                vec![ip("10.0.0.5")],
                false,
                false,
                false,
            ),
            (Some("fw"), true, vec![], true, false, true),
            (
                Some("gone"),
                true,
                vec![ip("10.0.0.5")],
                false,
                false,
                false,
            ),
        ];
        for (portgroup, known, ips, ra, dhcp, trunk) in cases {
            r.portgroup = portgroup.map(str::to_string);
            let rules = legacy_rules(&r, known.then_some(&state));
            let what = format!("{portgroup:?} known={known}");
            assert_eq!(rules.ips, ips, "{what}");
            assert_eq!(rules.allow_router_advertisements, ra, "{what}");
            assert_eq!(rules.allow_dhcp_server, dhcp, "{what}");
            assert_eq!(rules.trunk, trunk, "{what}");
        }
    }

    #[test]
    fn decides_which_ports_to_restore_keep_and_quarantine() {
        let dir = std::env::temp_dir().join(format!("pg-heal-survey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let recorded = Some(RecordedPortSecurity {
            ips: vec![
                "10.0.0.5".parse().expect("ip"),
                "10.0.0.9".parse().expect("ip"),
            ],
            allow_router_advertisements: false,
            allow_dhcp_server: true,
            trunk: false,
        });
        // (container, recorded rules, spoof check, age s, veth exists, held by a DEL, restored)
        let cases = [
            ("live", recorded.clone(), true, 120, true, false, true),
            ("live-young", recorded.clone(), true, 0, true, false, true),
            ("no-spoof-check", None, false, 120, true, false, false),
            (
                "veth-gone",
                recorded.clone(),
                true,
                120,
                false,
                false,
                false,
            ),
            ("adding", None, true, 5, true, false, false),
            ("legacy", None, true, 120, true, false, true),
            ("deleting", recorded.clone(), true, 120, true, true, false),
        ];
        for (cid, installed, spoof, age, _, _, _) in &cases {
            let mut r = record(cid, installed.clone());
            r.spoof_check = *spoof;
            r.write(&dir).expect("write");
            set_age(&r.path(&dir), *age);
        }
        std::fs::write(dir.join("young-net1.json"), b"{").expect("write");
        std::fs::write(dir.join("old-net1.json"), b"{\"containerId\"").expect("write");
        set_age(&dir.join("old-net1.json"), 120);

        let exists = |name: &str| {
            cases
                .iter()
                .any(|c| c.4 && crate::naming::host_veth_name(c.0, "net1") == name)
        };
        let busy = |r: &Record| cases.iter().any(|c| c.5 && c.0 == r.container_id);
        let s = survey(
            &dir,
            None,
            SystemTime::now(),
            UNREADABLE_MIN_AGE,
            &exists,
            &busy,
        );

        for (cid, _, _, _, _, _, restored) in &cases {
            let veth = crate::naming::host_veth_name(cid, "net1");
            assert!(s.keep.contains(&veth), "{cid} is kept");
            assert_eq!(
                s.want.iter().any(|r| r.host_veth == veth),
                *restored,
                "{cid} restored"
            );
        }
        assert!(s
            .keep
            .contains(&crate::naming::host_veth_name("young", "net1")));
        assert!(!s
            .keep
            .contains(&crate::naming::host_veth_name("old", "net1")));
        assert_eq!(s.quarantine.len(), 1);
        assert!(s.quarantine[0].0.ends_with("old-net1.json"));
        assert!(!s.hold_orphans);
        // Recorded rules are restored as recorded; a legacy record's from its addresses.
        let live = s
            .want
            .iter()
            .find(|r| r.host_veth == crate::naming::host_veth_name("live", "net1"))
            .expect("live");
        assert_eq!(live.ips.len(), 2);
        assert!(live.allow_dhcp_server);
        let legacy = s
            .want
            .iter()
            .find(|r| r.host_veth == crate::naming::host_veth_name("legacy", "net1"))
            .expect("legacy");
        assert_eq!(
            legacy.ips,
            vec!["10.0.0.5".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert!(!legacy.allow_dhcp_server);

        // A young unreadable record with a long ID's hashed name keeps the port
        // its name tells; a name no ADD makes holds the whole orphan sweep.
        let hashed = crate::attachment::record_file_name(&"c".repeat(300), "net1");
        std::fs::write(dir.join(&hashed), b"{").expect("write");
        let s = survey(
            &dir,
            None,
            SystemTime::now(),
            UNREADABLE_MIN_AGE,
            &exists,
            &busy,
        );
        assert!(!s.hold_orphans);
        assert!(s
            .keep
            .contains(&crate::naming::host_veth_name(&"c".repeat(300), "net1")));
        std::fs::write(dir.join("abc~0123:net1.json"), b"{").expect("write");
        let s = survey(
            &dir,
            None,
            SystemTime::now(),
            UNREADABLE_MIN_AGE,
            &exists,
            &busy,
        );
        assert!(s.hold_orphans);

        // Moved aside, it is no record any more.
        let to = move_aside(&dir, &dir.join("old-net1.json")).expect("move");
        assert!(to.starts_with(dir.join(QUARANTINE_DIR)));
        let (_, broken) = attachment::list(&dir);
        assert!(broken.iter().all(|(p, _)| !p.ends_with("old-net1.json")));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
