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
    /// The port-security rules ADD installed, written once it succeeded: what
    /// portgroupd restores after an nftables flush. Absent while the ADD runs,
    /// without port security, and in records of older releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<RecordedPortSecurity>,
    /// Set when ADD heard the VM's MAC answer elsewhere on the VLAN: this is a
    /// live migration's target, and its port was held until the guest announces
    /// itself (the kernel opens it; `portsec::handover_state` says whether it
    /// still waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
    /// The device the kubelet allocated to the pod for the NAD's resourceName
    /// (portgroupd's `portgroup.io/<portgroup>`), as Multus passes it: which
    /// of the portgroup's devices this attachment holds.
    #[serde(rename = "deviceID", default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// A migration target's hold, as ADD made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    /// When ADD held the port (RFC 3339).
    pub held_at: String,
    /// The addresses the VM's MAC answered the conflict probe for.
    pub answered: Vec<std::net::IpAddr>,
}

/// What a port's rules were installed with, besides its host veth and MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedPortSecurity {
    /// Allowed source IPs (assigned and reserved); empty: MAC only.
    #[serde(default)]
    pub ips: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub allow_router_advertisements: bool,
    #[serde(default)]
    pub allow_dhcp_server: bool,
    #[serde(default)]
    pub trunk: bool,
}

impl Record {
    /// The rules the record says its port carries; None without port security
    /// or before its ADD finished (see [`Record::port_security`]).
    pub fn port_rules(&self) -> Option<crate::portsec::PortRules> {
        let installed = self.port_security.as_ref().filter(|_| self.spoof_check)?;
        Some(crate::portsec::PortRules {
            host_veth: self.host_veth.clone(),
            mac: self.mac,
            ips: installed.ips.clone(),
            allow_router_advertisements: installed.allow_router_advertisements,
            allow_dhcp_server: installed.allow_dhcp_server,
            trunk: installed.trunk,
        })
    }
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

    /// Writes (or overwrites) the record: not exclusive, so not for ADD, which
    /// uses [`Record::create`]; for tests and tools that set up a node.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::paths::write_atomic(&self.path(dir), &bytes)
    }

    /// Creates this attachment's record, exclusively: `AlreadyExists` when the
    /// pair has a record (readable or not, under this release's name or an older
    /// one's), and then nothing was written. The content is complete before the
    /// name appears: it is written to a new temporary file (`O_EXCL`), locked,
    /// and published with link(2), which like `O_EXCL` fails when the name
    /// exists. Of any number of concurrent creations exactly one succeeds; the
    /// returned [`Owned`] is the only handle through which the record may be
    /// rolled back, and holds the record's lock until it is dropped.
    pub fn create(&self, dir: &Path) -> std::io::Result<Owned> {
        let path = self.path(dir);
        if read_legacy(dir, &self.container_id, &self.ifname).is_some() {
            return Err(exists(&path));
        }
        let (tmp, locked) = write_locked_temp(&path, self)?;
        let published = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match published {
            Ok(()) => Owned::new(path, locked),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(&path)),
            Err(e) => Err(e),
        }
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

fn exists(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("{} exists", path.display()),
    )
}

/// `.<record name>.<pid>.<n>.new` next to `path`, written with `record` and locked;
/// any leftover of a crashed process with the same pid is replaced.
fn write_locked_temp(
    path: &Path,
    record: &Record,
) -> std::io::Result<(PathBuf, nix::fcntl::Flock<std::fs::File>)> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.new", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let mut locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| std::io::Error::from(e))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    if let Err(e) = locked.write_all(&bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, locked))
}

/// A record this process created ([`Record::create`]), locked for as long as it
/// is held. Only through it may the creating ADD update or roll back the record:
/// a record another ADD created is never this one.
#[derive(Debug)]
pub struct Owned {
    path: PathBuf,
    /// Held, never read: the collector, which only try-locks, leaves the
    /// record of an ADD in flight alone; released on drop.
    #[allow(dead_code)]
    lock: nix::fcntl::Flock<std::fs::File>,
    /// (dev, inode) of the file we created: what "ours" means at `path`.
    id: (u64, u64),
}

impl Owned {
    fn new(path: PathBuf, lock: nix::fcntl::Flock<std::fs::File>) -> std::io::Result<Owned> {
        use std::os::unix::fs::MetadataExt;
        let meta = lock.metadata()?;
        Ok(Owned {
            path,
            id: (meta.dev(), meta.ino()),
            lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still names the file we created.
    fn still_ours(&self) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(now) => Ok((now.dev(), now.ino()) == self.id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces the content (a new file renamed over ours, locked before it
    /// appears), if the record is still ours.
    pub fn update(&mut self, record: &Record) -> std::io::Result<()> {
        if !self.still_ours()? {
            return Err(std::io::Error::other(format!(
                "{} is no longer the record this ADD created",
                self.path.display()
            )));
        }
        let (tmp, locked) = write_locked_temp(&self.path, record)?;
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        *self = Owned::new(self.path.clone(), locked)?;
        Ok(())
    }

    /// Removes the record if it is still ours; one that is gone or was replaced
    /// is left as it is.
    pub fn remove(self) -> std::io::Result<()> {
        if !self.still_ours()? {
            return Ok(());
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
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
    try_lock_file(&record_path(dir, container_id, ifname))
}

/// [`try_lock`] by the record's path: for records that cannot be read, whose
/// attachment only their file name tells ([`named_by`]).
pub fn try_lock_file(path: &Path) -> std::io::Result<TryLock> {
    use std::os::unix::fs::MetadataExt;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TryLock::Gone),
        Err(e) => return Err(e),
    };
    let locked = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(TryLock::Busy),
        Err((_, e)) => return Err(e.into()),
    };
    let ours = locked.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
            Ok(TryLock::Locked(Lock(locked)))
        }
        Ok(_) => Ok(TryLock::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TryLock::Gone),
        Err(e) => Err(e),
    }
}

/// What a record's file name tells of its attachment, for a record whose
/// content cannot be read: always the host veth (so its port-security elements
/// can be found), and the (container ID, ifname) pair unless the ID was too
/// long to keep whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBy {
    /// None for the `<id prefix>~<tag>:<ifname>.json` form.
    pub pair: Option<(String, String)>,
    pub host_veth: String,
}

/// Reads [`record_file_name`] backwards; None for a name it never makes. A
/// record an older release wrote as `<id>-<if-name>.json` (an ifname with a
/// '-') reads as another pair: such records are readable unless damaged.
pub fn named_by(file_name: &str) -> Option<NamedBy> {
    let stem = file_name.strip_suffix(".json")?;
    if let Some((prefix, rest)) = stem.split_once('~') {
        let (tag, ifname) = rest.split_once(':')?;
        let valid = tag.len() == 16
            && tag.bytes().all(|b| b.is_ascii_hexdigit())
            && !prefix.is_empty()
            && !ifname.is_empty();
        // host_veth_name is "pg" and the top 48 bits of the same hash as the tag.
        return valid.then(|| NamedBy {
            pair: None,
            host_veth: format!("pg{}", &tag[..12]),
        });
    }
    let (id, ifname) = stem.split_once(':').or_else(|| stem.rsplit_once('-'))?;
    if id.is_empty() || ifname.is_empty() || record_file_name(id, ifname) != file_name {
        return None;
    }
    Some(NamedBy {
        pair: Some((id.to_string(), ifname.to_string())),
        host_veth: crate::naming::host_veth_name(id, ifname),
    })
}

/// The host veths the record files in `dir` name, read from the file names
/// alone (an unreadable or half-published record counts too).
pub fn host_veths_named_in(dir: &Path) -> std::collections::HashSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| named_by(&e.file_name().to_string_lossy()))
        .map(|named| named.host_veth)
        .collect()
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
    fn file_names_tell_the_attachment_back() {
        let long = "f".repeat(300);
        for (id, ifname) in [
            ("abc", "net1"),
            ("a-b", "c"),
            ("c1", "net-1"),
            (&*long, "net1"),
        ] {
            let name = record_file_name(id, ifname);
            let named = named_by(&name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                named.host_veth,
                crate::naming::host_veth_name(id, ifname),
                "{name}"
            );
            let pair = (id.len() < 200).then(|| (id.to_string(), ifname.to_string()));
            assert_eq!(named.pair, pair, "{name}");
        }
        for name in [
            "x.json",
            "-net1.json",
            "abc-.json",
            "a~zz:net1.json",
            "abc-net1.txt",
            ".abc-net1.json.1.new",
        ] {
            assert_eq!(named_by(name), None, "{name}");
        }
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
            port_security: None,
            handover: None,
            device_id: None,
        }
    }

    #[test]
    fn create_is_exclusive_and_only_the_creator_rolls_back() {
        let dir = std::env::temp_dir().join(format!("pg-records-excl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = sample("c1", "net1");
        // Of many concurrent creations exactly one succeeds.
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16).map(|_| s.spawn(|| record.create(&dir))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (won, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
        assert_eq!(won.len(), 1);
        for e in lost {
            assert_eq!(e.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        }
        let mut owned = won.into_iter().next().unwrap().unwrap();
        assert_eq!(
            Record::find(&dir, "c1", "net1").unwrap(),
            Some(record.clone())
        );
        // Only records and nothing half-written: no temporary file is left.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // Held locked, through an update too: the collector sees an ADD in flight.
        let mut updated = record.clone();
        updated.ips = vec!["10.0.0.9/24".parse().unwrap()];
        owned.update(&updated).unwrap();
        assert_eq!(Record::find(&dir, "c1", "net1").unwrap(), Some(updated));
        assert!(matches!(
            try_lock(&dir, "c1", "net1").unwrap(),
            TryLock::Busy
        ));
        owned.remove().unwrap();
        assert_eq!(Record::find(&dir, "c1", "net1").unwrap(), None);

        // A record that was replaced (removed by a DEL, created by another ADD) is
        // not the first creator's to roll back.
        let first = record.create(&dir).unwrap();
        remove(&dir, "c1", "net1").unwrap();
        let second = record.create(&dir).unwrap();
        first.remove().unwrap();
        assert!(Record::find(&dir, "c1", "net1").unwrap().is_some());
        drop(second);
        assert!(matches!(
            try_lock(&dir, "c1", "net1").unwrap(),
            TryLock::Locked(_)
        ));

        // An unreadable record still holds the name; an older release's name too.
        remove(&dir, "c1", "net1").unwrap();
        std::fs::write(record.path(&dir), b"{").unwrap();
        assert_eq!(
            record.create(&dir).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        let dashed = sample("c1", "net-1");
        std::fs::write(
            dir.join("c1-net-1.json"),
            serde_json::to_vec(&dashed).unwrap(),
        )
        .unwrap();
        assert_eq!(
            dashed.create(&dir).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        std::fs::remove_dir_all(dir).unwrap();
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
            port_security: None,
            handover: None,
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
