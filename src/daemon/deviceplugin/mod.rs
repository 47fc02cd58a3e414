//! portgroupd as a kubelet device plugin (API v1beta1): one extended resource
//! `portgroup.io/<portgroup>` per portgroup, with a fixed number of devices that
//! are all `Healthy` while the portgroup is ready and all `Unhealthy` while it is
//! not. A VM whose NetworkAttachmentDefinition names the resource is then only
//! scheduled where its portgroup works, and no API credentials are needed: the
//! kubelet publishes the capacity.
//!
//! The decisions (what to offer, when to serve, register or withdraw) are pure
//! functions here; `manager` runs them against the directory and the kubelet,
//! `server` answers the kubelet on each resource's socket.

pub mod manager;
pub mod server;

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod v1beta1;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::state::PortgroupState;
use v1beta1::{Device, ListAndWatchResponse};

pub const API_VERSION: &str = "v1beta1";
pub const RESOURCE_DOMAIN: &str = "portgroup.io";
/// The kubelet's registration socket, in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
/// "How many VM ports may still land here": far more than a node runs, so the
/// count never limits scheduling; only health does.
pub const DEFAULT_DEVICES: u32 = 1000;
pub const MAX_DEVICES: u32 = 100_000;
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
/// The kubelet's limit for a device ID.
const DEVICE_ID_MAX: usize = 63;

/// Where and how much to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub dir: PathBuf,
    pub devices: u32,
}

/// What one resource offers the kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Every device Healthy: the portgroup is ready.
    Healthy,
    /// Every device Unhealthy: configured (capacity stays visible in
    /// `kubectl describe node`) but not usable now, so allocatable is 0.
    Unhealthy,
    /// No devices at all, then the stream ends: the portgroup is gone.
    Withdrawn,
}

/// The health mapping: a portgroup is offered Healthy only while it is ready. A
/// draining portgroup (removed from the config, VMs still on it) is never ready,
/// so it keeps its capacity but takes no new VM until it is gone.
pub fn offer_for(pg: &PortgroupState) -> Offer {
    if pg.ready && !pg.draining {
        Offer::Healthy
    } else {
        Offer::Unhealthy
    }
}

/// The offer of every portgroup in a published node state, by name.
pub fn offers(portgroups: &[PortgroupState]) -> BTreeMap<String, Offer> {
    portgroups
        .iter()
        .map(|pg| (pg.name.clone(), offer_for(pg)))
        .collect()
}

/// `portgroup.io/<portgroup>`. Portgroup names are DNS labels, which is what
/// the part after the slash of an extended resource name must be.
pub fn resource_name(portgroup: &str) -> String {
    format!("{RESOURCE_DOMAIN}/{portgroup}")
}

/// The resource's socket file name in the device-plugin directory. Short, so
/// that the default directory plus a 63-character portgroup name stays within
/// the 107 bytes of a unix socket path.
pub fn socket_name(portgroup: &str) -> String {
    format!("pg-{portgroup}.sock")
}

/// Device `i` of a portgroup: `<portgroup>-<i>`, the portgroup part shortened
/// when the whole would pass the kubelet's 63 characters. Multus hands this ID
/// to the CNI plugin as `deviceID`, so it names the portgroup where it can.
pub fn device_id(portgroup: &str, i: u32) -> String {
    let suffix = format!("-{i}");
    let room = DEVICE_ID_MAX.saturating_sub(suffix.len());
    let head = &portgroup[..portgroup.len().min(room)];
    format!("{}{suffix}", head.trim_end_matches('-'))
}

/// The full device list the kubelet is sent for `offer`.
pub fn device_list(portgroup: &str, devices: u32, offer: Offer) -> ListAndWatchResponse {
    let health = match offer {
        Offer::Healthy => HEALTHY,
        Offer::Unhealthy => UNHEALTHY,
        Offer::Withdrawn => return ListAndWatchResponse::default(),
    };
    ListAndWatchResponse {
        devices: (0..devices)
            .map(|i| Device {
                id: device_id(portgroup, i),
                health: health.to_string(),
                topology: None,
            })
            .collect(),
    }
}

/// Identity of a file: a socket removed and made again is a different one even
/// when the inode number comes back (the change time differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i128,
}

impl FileId {
    /// The identity of the socket at `path`; None when there is none (or the
    /// path is not a socket).
    pub fn of_socket(path: &std::path::Path) -> Option<FileId> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        })
    }
}

/// What the manager knows of one resource it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    /// Our server's socket is still the file we bound (the kubelet deletes every
    /// socket in the directory when it starts).
    pub socket_intact: bool,
    /// The kubelet socket we last registered with successfully.
    pub registered_with: Option<FileId>,
    /// The kubelet socket a Register call still running was made to. Each
    /// resource registers on its own task: a kubelet that hangs on one
    /// resource's Register holds up no other resource.
    pub registering_with: Option<FileId>,
    /// A failed registration waits until then.
    pub retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Bind a fresh socket (removing a stale file of ours) and serve on it.
    Serve,
    /// Call Register on the kubelet socket (on a task of its own; a call still
    /// running for this resource is dropped first).
    Register,
    /// Send an empty device list, end the streams, stop serving, remove the socket.
    Withdraw,
}

/// The re-registration decisions, level-triggered like the reconciler: from
/// what should be offered, what is served, and the kubelet socket now, the steps
/// for each resource, in order. A kubelet restart shows as a new kubelet socket
/// (re-register) and as our sockets gone (serve again, then register).
pub fn decide(
    wanted: &BTreeMap<String, Offer>,
    serving: &BTreeMap<String, Serving>,
    kubelet: Option<FileId>,
    now: Instant,
) -> Vec<(String, Step)> {
    let mut steps = Vec::new();
    for name in serving.keys().filter(|n| !wanted.contains_key(*n)) {
        steps.push((name.clone(), Step::Withdraw));
    }
    for name in wanted.keys() {
        let register_due = |s: Option<&Serving>| {
            kubelet.is_some()
                && s.is_none_or(|s| {
                    s.registered_with != kubelet
                        && s.registering_with != kubelet
                        && s.retry_at.is_none_or(|at| at <= now)
                })
        };
        match serving.get(name) {
            Some(s) if s.socket_intact => {
                if register_due(Some(s)) {
                    steps.push((name.clone(), Step::Register));
                }
            }
            // New, or our socket was removed under us: serve anew, and register
            // at once, whatever backoff the old server had.
            _ => {
                steps.push((name.clone(), Step::Serve));
                if register_due(None) {
                    steps.push((name.clone(), Step::Register));
                }
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pg(name: &str, ready: bool, draining: bool) -> PortgroupState {
        PortgroupState {
            name: name.into(),
            mode: crate::state::PortgroupMode::Access,
            vlan: Some(100),
            trunk: None,
            native_vlan: None,
            uplink: "eth1".into(),
            bridge: "br".into(),
            vlan_interface: "v".into(),
            mtu: None,
            ready,
            reason: None,
            draining,
            strict: false,
            reservations: Vec::new(),
            policy: Default::default(),
            allow_router_advertisements: false,
            allow_dhcp_server: false,
        }
    }

    #[test]
    fn health_follows_readiness() {
        for (ready, draining, want) in [
            (true, false, Offer::Healthy),
            (false, false, Offer::Unhealthy),
            (false, true, Offer::Unhealthy),
            (true, true, Offer::Unhealthy),
        ] {
            assert_eq!(
                offer_for(&pg("web", ready, draining)),
                want,
                "ready={ready} draining={draining}"
            );
        }
        let all = offers(&[pg("web", true, false), pg("db", false, false)]);
        assert_eq!(all.get("web"), Some(&Offer::Healthy));
        assert_eq!(all.get("db"), Some(&Offer::Unhealthy));
    }

    #[test]
    fn device_lists() {
        let list = device_list("web", 1000, Offer::Healthy);
        assert_eq!(list.devices.len(), 1000);
        assert!(list.devices.iter().all(|d| d.health == HEALTHY));
        assert_eq!(list.devices[0].id, "web-0");
        assert_eq!(list.devices[999].id, "web-999");
        let ids: std::collections::HashSet<_> = list.devices.iter().map(|d| &d.id).collect();
        assert_eq!(ids.len(), 1000, "unique IDs");
        let sick = device_list("web", 3, Offer::Unhealthy);
        assert!(sick.devices.iter().all(|d| d.health == UNHEALTHY));
        assert!(device_list("web", 1000, Offer::Withdrawn)
            .devices
            .is_empty());
    }

    #[test]
    fn device_ids_fit_the_kubelet_limit() {
        let long = "a".repeat(63);
        for i in [0, 9, 999, 99_999] {
            let id = device_id(&long, i);
            assert!(id.len() <= 63, "{id}");
            assert!(id.ends_with(&format!("-{i}")), "{id}");
        }
        // Shortening never leaves "--".
        let dashy = format!("{}-b", "a".repeat(58));
        assert_eq!(device_id(&dashy, 100), format!("{}-100", "a".repeat(58)));
        assert_eq!(resource_name("prod-web"), "portgroup.io/prod-web");
        // Default directory + longest name fits a unix socket path (107 bytes).
        assert!(format!("{DEFAULT_DIR}/{}", socket_name(&long)).len() <= 107);
    }

    fn wanted(names: &[&str]) -> BTreeMap<String, Offer> {
        names
            .iter()
            .map(|n| (n.to_string(), Offer::Unhealthy))
            .collect()
    }

    fn id(ino: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            ctime_ns: 5,
        }
    }

    fn serving(intact: bool, registered_with: Option<FileId>) -> Serving {
        Serving {
            socket_intact: intact,
            registered_with,
            registering_with: None,
            retry_at: None,
        }
    }

    fn registering(with: Option<FileId>) -> Serving {
        Serving {
            registering_with: with,
            ..serving(true, None)
        }
    }

    #[test]
    fn re_registration_decisions() {
        let now = Instant::now();
        let k1 = Some(id(1));
        let k2 = Some(id(2));
        let s = |pairs: &[(&str, Serving)]| -> BTreeMap<String, Serving> {
            pairs.iter().map(|(n, s)| (n.to_string(), *s)).collect()
        };
        let steps = |w: &[&str], sv: &[(&str, Serving)], k: Option<FileId>| {
            decide(&wanted(w), &s(sv), k, now)
                .into_iter()
                .map(|(n, st)| format!("{n}:{st:?}"))
                .collect::<Vec<_>>()
        };
        // Before the kubelet exists: serve, do not register.
        assert_eq!(steps(&["web"], &[], None), ["web:Serve"]);
        // The kubelet appears: register.
        assert_eq!(
            steps(&["web"], &[("web", serving(true, None))], k1),
            ["web:Register"]
        );
        // Registered with this kubelet: nothing to do.
        assert!(steps(&["web"], &[("web", serving(true, k1))], k1).is_empty());
        // The kubelet restarted and removed our socket: serve again and register.
        assert_eq!(
            steps(&["web"], &[("web", serving(false, k1))], k2),
            ["web:Serve", "web:Register"]
        );
        // The kubelet socket is new but ours survived: register again only.
        assert_eq!(
            steps(&["web"], &[("web", serving(true, k1))], k2),
            ["web:Register"]
        );
        // The kubelet is down (socket gone): keep serving, nothing else.
        assert!(steps(&["web"], &[("web", serving(true, k1))], None).is_empty());
        // Our socket removed while the kubelet is down: serve again, register later.
        assert_eq!(
            steps(&["web"], &[("web", serving(false, k1))], None),
            ["web:Serve"]
        );
        // A Register still running with this kubelet: not a second one, and
        // the other resources go on regardless.
        assert_eq!(
            steps(
                &["db", "web"],
                &[("db", serving(true, None)), ("web", registering(k1))],
                k1
            ),
            ["db:Register"]
        );
        // ... but one running with a kubelet that has since restarted is
        // replaced by a call to the new one.
        assert_eq!(
            steps(&["web"], &[("web", registering(k1))], k2),
            ["web:Register"]
        );
        // Our socket removed while a Register runs: serve and register anew.
        assert_eq!(
            steps(
                &["web"],
                &[(
                    "web",
                    Serving {
                        socket_intact: false,
                        ..registering(k1)
                    }
                )],
                k1
            ),
            ["web:Serve", "web:Register"]
        );
        // A new portgroup with the kubelet up, an old one gone.
        assert_eq!(
            steps(&["db", "web"], &[("old", serving(true, k1))], k1),
            [
                "old:Withdraw",
                "db:Serve",
                "db:Register",
                "web:Serve",
                "web:Register"
            ]
        );
    }

    #[test]
    fn failed_registration_backs_off() {
        let now = Instant::now();
        let k = Some(id(1));
        let mut sv = BTreeMap::new();
        sv.insert(
            "web".to_string(),
            Serving {
                socket_intact: true,
                registered_with: None,
                registering_with: None,
                retry_at: Some(now + Duration::from_secs(2)),
            },
        );
        assert!(decide(&wanted(&["web"]), &sv, k, now).is_empty());
        assert_eq!(
            decide(&wanted(&["web"]), &sv, k, now + Duration::from_secs(2)),
            [("web".to_string(), Step::Register)]
        );
        // A kubelet restart that removed our socket does not wait for the backoff.
        if let Some(s) = sv.get_mut("web") {
            s.socket_intact = false;
        }
        assert_eq!(
            decide(&wanted(&["web"]), &sv, k, now),
            [
                ("web".to_string(), Step::Serve),
                ("web".to_string(), Step::Register)
            ]
        );
    }
}
