//! Attachment records (`/run/portgroup/attachments/<containerid>-<ifname>.json`):
//! what one ADD made, so that DEL, CHECK, GC and the daemon's collector can undo it.
//! The record is written before the veth exists, so no veth is ever without one.

use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    /// The CNI network name (`name` in the config): GC only touches its own network.
    pub network: String,
    pub netns: String,
    pub host_veth: String,
    pub bridge: String,
    #[serde(default)]
    pub portgroup: Option<String>,
    #[serde(default)]
    pub vlan: Option<u16>,
    pub mac: MacAddr,
    #[serde(default)]
    pub ips: Vec<IpNetwork>,
    #[serde(default)]
    pub spoof_check: bool,
    /// The delegated IPAM section, so GC can release addresses without the config.
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    pub cni_version: String,
    pub created_at: String,
    /// The pod's namespace (K8S_POD_NAMESPACE), when the runtime sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The device the kubelet allocated to the pod for the NAD's resourceName
    /// (portgroupd's `portgroup.io/<portgroup>`), as Multus passes it: which
    /// of the portgroup's devices this attachment holds.
    #[serde(rename = "deviceID", default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// Longest file name Linux accepts (NAME_MAX).
const FILE_NAME_MAX: usize = 255;
/// How much of a long container ID a record's file name keeps, for people.
const LONG_ID_PREFIX: usize = 100;

/// The record's file name, one per (container ID, ifname) and never two pairs the
/// same. Container IDs hold only `[A-Za-z0-9_.-]` and ifnames never ':', so:
/// - `<id>-<ifname>.json`, the usual form, when ifname has no '-' (the pair splits
///   at the last '-') and the name fits in NAME_MAX;
/// - `<id>:<ifname>.json` when ifname has a '-' (splits at the only ':');
/// - `<id prefix>~<tag>:<ifname>.json` for IDs too long for either: '~' occurs in
///   no other form, and the tag hashes the whole pair.
pub fn record_file_name(container_id: &str, ifname: &str) -> String {
    let separator = if ifname.contains('-') { ':' } else { '-' };
    let name = format!("{container_id}{separator}{ifname}.json");
    if name.len() <= FILE_NAME_MAX {
        return name;
    }
    let prefix: String = container_id.chars().take(LONG_ID_PREFIX).collect();
    format!(
        "{prefix}~{}:{ifname}.json",
        crate::naming::attachment_tag(container_id, ifname)
    )
}

pub fn record_path(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(record_file_name(container_id, ifname))
}

/// Where releases before the current naming kept this pair's record, when that
/// differs from [`record_path`]; read only if its content names this same pair.
fn legacy_record_path(dir: &Path, container_id: &str, ifname: &str) -> Option<PathBuf> {
    let name = format!("{container_id}-{ifname}.json");
    (name.len() <= FILE_NAME_MAX && name != record_file_name(container_id, ifname))
        .then(|| dir.join(name))
}

fn read_legacy(dir: &Path, container_id: &str, ifname: &str) -> Option<(PathBuf, Record)> {
    let path = legacy_record_path(dir, container_id, ifname)?;
    let record = Record::read(&path).ok()?;
    (record.container_id == container_id && record.ifname == ifname).then_some((path, record))
}

impl Record {
    pub fn path(&self, dir: &Path) -> PathBuf {
        record_path(dir, &self.container_id, &self.ifname)
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::paths::write_atomic(&self.path(dir), &bytes)
    }

    pub fn read(path: &Path) -> std::io::Result<Record> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Reads the record of one attachment; Ok(None) when there is none.
    pub fn find(dir: &Path, container_id: &str, ifname: &str) -> std::io::Result<Option<Record>> {
        let path = record_path(dir, container_id, ifname);
        match Record::read(&path) {
            Ok(record) if record.container_id == container_id && record.ifname == ifname => {
                Ok(Some(record))
            }
            // Only an older release's "<id>-<ifname>" for an ifname with a '-' can land here.
            Ok(record) => Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} holds the record of {}/{}, written by an older release; DEL that attachment first",
                    path.display(),
                    record.container_id,
                    record.ifname
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(read_legacy(dir, container_id, ifname).map(|(_, record)| record))
            }
            Err(e) => Err(e),
        }
    }
}

/// Removes a record; a missing one is fine (DEL is idempotent).
pub fn remove(dir: &Path, container_id: &str, ifname: &str) -> std::io::Result<()> {
    if let Some((path, _)) = read_legacy(dir, container_id, ifname) {
        let _ = std::fs::remove_file(path);
    }
    let path = record_path(dir, container_id, ifname);
    if let Ok(record) = Record::read(&path) {
        if record.container_id != container_id || record.ifname != ifname {
            return Ok(()); // another attachment's, under an older release's name
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An exclusive lock on one attachment's record (flock on the record file),
/// released on drop or when the process exits, however it exits. A teardown
/// holds it from before it deletes the veth until after it removes the record,
/// so the daemon's collector, which only try-locks, never takes a DEL in flight
/// for a leak.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub enum TryLock {
    Locked(Lock),
    /// Someone (a DEL) holds it.
    Busy,
    /// The record is gone, or was replaced while we locked it.
    Gone,
}

fn open_record(
    dir: &Path,
    container_id: &str,
    ifname: &str,
) -> std::io::Result<Option<std::fs::File>> {
    match std::fs::File::open(record_path(dir, container_id, ifname)) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Locks a record, waiting for a holder; Ok(None) when there is no record.
pub fn lock(dir: &Path, container_id: &str, ifname: &str) -> std::io::Result<Option<Lock>> {
    let Some(file) = open_record(dir, container_id, ifname)? else {
        return Ok(None);
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(|f| Some(Lock(f)))
        .map_err(|(_, e)| std::io::Error::from(e))
}

/// Locks a record if nobody holds it. The lock is only granted on the record
/// still at its path: one removed (or replaced by a new ADD) meanwhile is Gone.
pub fn try_lock(dir: &Path, container_id: &str, ifname: &str) -> std::io::Result<TryLock> {
    use std::os::unix::fs::MetadataExt;
    let Some(file) = open_record(dir, container_id, ifname)? else {
        return Ok(TryLock::Gone);
    };
    let locked = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(TryLock::Busy),
        Err((_, e)) => return Err(e.into()),
    };
    let ours = locked.metadata()?;
    match std::fs::metadata(record_path(dir, container_id, ifname)) {
        Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
            Ok(TryLock::Locked(Lock(locked)))
        }
        Ok(_) => Ok(TryLock::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TryLock::Gone),
        Err(e) => Err(e),
    }
}

/// Every readable record, plus the paths of unreadable ones (reported, not fatal).
pub fn list(dir: &Path) -> (Vec<Record>, Vec<(PathBuf, String)>) {
    let mut records = Vec::new();
    let mut broken = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (records, broken);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_record = path.extension().is_some_and(|e| e == "json")
            && !entry.file_name().to_string_lossy().starts_with('.');
        if !is_record {
            continue;
        }
        match Record::read(&path) {
            Ok(record) => records.push(record),
            Err(e) => broken.push((path, e.to_string())),
        }
    }
    records.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    (records, broken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn record_names_are_injective_and_fit() {
        let long = "a".repeat(300);
        let long2 = format!("{}b", "a".repeat(299));
        let pairs: Vec<(&str, &str)> = vec![
            ("a-b", "c"),
            ("a", "b-c"),
            ("a", "b"),
            ("a-b", "c-d"),
            ("a", "b-c-d"),
            ("a-b-c", "d"),
            ("c1", "net1"),
            ("c1", "net-1"),
            ("c1-net", "1"),
            (&long, "net1"),
            (&long2, "net1"),
            (&long, "net2"),
            (&long, "net-1"),
        ];
        let mut seen = HashMap::new();
        for (id, ifname) in &pairs {
            let name = record_file_name(id, ifname);
            assert!(name.len() <= FILE_NAME_MAX, "{name}");
            assert!(!name.contains('/'));
            if let Some(other) = seen.insert(name.clone(), (id, ifname)) {
                panic!("{name} for both {other:?} and {:?}", (id, ifname));
            }
        }
        // The usual form is unchanged, so existing records stay where they are.
        assert_eq!(record_file_name("abc", "net1"), "abc-net1.json");
        assert_eq!(
            record_file_name(&"f".repeat(64), "eth0"),
            format!("{}-eth0.json", "f".repeat(64))
        );
    }

    #[test]
    fn legacy_names_are_found_and_removed() {
        let dir = std::env::temp_dir().join(format!("pg-records-legacy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut record = sample("c1", "net-1");
        // A record an older release wrote under "<id>-<ifname>.json".
        std::fs::write(
            dir.join("c1-net-1.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        assert_eq!(
            Record::find(&dir, "c1", "net-1").unwrap(),
            Some(record.clone())
        );
        // The same file name read for another pair is not that pair's record, and
        // that pair's DEL leaves it alone.
        assert!(Record::find(&dir, "c1-net", "1").is_err());
        remove(&dir, "c1-net", "1").unwrap();
        assert!(dir.join("c1-net-1.json").exists());
        remove(&dir, "c1", "net-1").unwrap();
        assert_eq!(Record::find(&dir, "c1", "net-1").unwrap(), None);
        record.container_id = "x".repeat(300);
        record.write(&dir).unwrap();
        assert_eq!(
            Record::find(&dir, &record.container_id, "net-1").unwrap(),
            Some(record.clone())
        );
        remove(&dir, &record.container_id, "net-1").unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn sample(container_id: &str, ifname: &str) -> Record {
        Record {
            container_id: container_id.into(),
            ifname: ifname.into(),
            network: "prod-web".into(),
            netns: "/var/run/netns/x".into(),
            host_veth: crate::naming::host_veth_name(container_id, ifname),
            bridge: "br0".into(),
            portgroup: None,
            vlan: None,
            mac: "00:50:56:aa:bb:01".parse().unwrap(),
            ips: vec![],
            spoof_check: true,
            ipam: None,
            cni_version: "1.1.0".into(),
            created_at: "2026-11-23T10:00:00Z".into(),
            namespace: None,
            device_id: None,
        }
    }

    #[test]
    fn write_find_list_remove() {
        let dir = std::env::temp_dir().join(format!("pg-records-{}", std::process::id()));
        let record = Record {
            container_id: "abc".into(),
            ifname: "net1".into(),
            network: "prod-web".into(),
            netns: "/var/run/netns/x".into(),
            host_veth: crate::naming::host_veth_name("abc", "net1"),
            bridge: "br0".into(),
            portgroup: None,
            vlan: None,
            mac: "00:50:56:aa:bb:01".parse().unwrap(),
            ips: vec!["10.0.0.5/24".parse().unwrap()],
            spoof_check: true,
            ipam: None,
            cni_version: "1.1.0".into(),
            created_at: "2026-11-23T10:00:00Z".into(),
            namespace: None,
            device_id: None,
        };
        record.write(&dir).unwrap();
        assert_eq!(
            Record::find(&dir, "abc", "net1").unwrap(),
            Some(record.clone())
        );
        // The device Multus passed is kept under the key it came with; a
        // record written before it was kept reads as no device.
        let with_device = Record {
            ifname: "net2".into(),
            device_id: Some("prod-web-17".into()),
            ..record.clone()
        };
        let text = serde_json::to_value(&with_device).unwrap();
        assert_eq!(text["deviceID"], "prod-web-17");
        assert!(serde_json::to_value(&record)
            .unwrap()
            .get("deviceID")
            .is_none());
        let mut older = text.clone();
        older.as_object_mut().unwrap().remove("deviceID");
        let older: Record = serde_json::from_value(older).unwrap();
        assert_eq!(older.device_id, None);
        with_device.write(&dir).unwrap();
        assert_eq!(
            Record::find(&dir, "abc", "net2").unwrap(),
            Some(with_device)
        );
        remove(&dir, "abc", "net2").unwrap();
        std::fs::write(dir.join("broken-net1.json"), b"{").unwrap();
        let (records, broken) = list(&dir);
        assert_eq!(records, vec![record]);
        assert_eq!(broken.len(), 1);
        remove(&dir, "abc", "net1").unwrap();
        remove(&dir, "abc", "net1").unwrap();
        assert_eq!(Record::find(&dir, "abc", "net1").unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
