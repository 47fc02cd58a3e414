//! portgroupd as a kubelet device plugin, against a fake kubelet speaking the
//! real protocol over unix sockets in a temp dir: registration per portgroup,
//! 1000 devices, Unhealthy while the portgroup is not ready, Allocate, kubelet
//! restart, portgroupd restart, portgroups added and removed by a config change.
//! VLAN portgroups need 802.1Q to become ready (their Healthy flips are tested
//! in daemon_vlan.rs, run in the VM); an untagged portgroup is ready on any
//! kernel, and flips here with its uplink's carrier. Root only; links live in
//! namespaces the tests make and delete.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{Daemon, DaemonLab};
use crate::kubelet::{FakeKubelet, Seen};
use nix::sys::signal::Signal;
use portgroup::naming::bridge_name;

const WAIT: Duration = Duration::from_secs(60);
const WEB: &str = "portgroup.io/prod-web";
const DB: &str = "portgroup.io/db";

const TWO_PGS: &str = r#"{"uplink": "eth1", "portgroups": [
    {"name": "prod-web", "vlan": 100}, {"name": "db", "vlan": 200}]}"#;

fn plugin_dir(lab: &DaemonLab) -> PathBuf {
    lab.dir.0.join("device-plugins")
}

fn start(lab: &DaemonLab, port: u16, extra: &[&str]) -> Daemon {
    let dir = plugin_dir(lab);
    let dir = dir.to_str().expect("utf-8 path");
    let port = format!("127.0.0.1:{port}");
    let mut args = vec!["--device-plugin-dir", dir, "--listen", &port];
    args.extend_from_slice(extra);
    lab.start(&args)
}

/// The resource's newest device list has `n` devices, all with `health`.
fn offers(seen: &Seen, resource: &str, n: usize, health: &str) -> bool {
    seen.latest(resource)
        .is_some_and(|l| l.devices.len() == n && l.all(health))
}

fn metrics(lab: &DaemonLab, port: u16) -> String {
    let start = Instant::now();
    loop {
        if let Some((200, body)) = crate::common::http_get(&lab.node, port, "/metrics") {
            return body;
        }
        assert!(start.elapsed() < WAIT, "no /metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registers_every_portgroup_with_1000_unhealthy_devices_while_the_uplink_is_missing() {
    let lab = DaemonLab::bare();
    lab.write_config(TWO_PGS);
    let kubelet = FakeKubelet::start(&plugin_dir(&lab));
    let daemon = start(&lab, 9770, &[]);

    let seen = kubelet.wait(WAIT, "both resources, 1000 Unhealthy devices each", |s| {
        offers(s, WEB, 1000, "Unhealthy") && offers(s, DB, 1000, "Unhealthy")
    });
    for (resource, endpoint) in [(WEB, "pg-prod-web.sock"), (DB, "pg-db.sock")] {
        let r = seen
            .registrations
            .iter()
            .find(|r| r.resource == resource)
            .expect("registered");
        assert_eq!(r.version, "v1beta1");
        assert_eq!(r.endpoint, endpoint);
        assert!(plugin_dir(&lab).join(endpoint).exists(), "{endpoint}");
        let options = r.options.expect("options in RegisterRequest");
        assert!(!options.pre_start_required && !options.get_preferred_allocation_available);
        assert_eq!(r.dialed_options, options);
        let list = seen.latest(resource).expect("list");
        let ids: std::collections::HashSet<_> = list.devices.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 1000, "unique device IDs");
    }
    assert_eq!(seen.registrations.len(), 2, "{:?}", seen.registrations);
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    assert_eq!(
        seen.latest(WEB).map(|l| l.devices[0].0.as_str()),
        Some("prod-web-0")
    );

    let state = lab.state().expect("state");
    assert_eq!(
        state.portgroups[0].reason.as_deref(),
        Some("uplink eth1 not found on node worker-3")
    );

    // Allocate answers for advertised devices, with one response per container.
    assert_eq!(
        kubelet
            .allocate(WEB, &["prod-web-0", "prod-web-999"])
            .expect("allocate"),
        1
    );
    let refused = kubelet
        .allocate(WEB, &["prod-web-1000"])
        .expect_err("not advertised");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("prod-web-1000"), "{refused:?}");

    let text = metrics(&lab, 9770);
    for want in [
        "portgroup_ready{portgroup=\"prod-web\"} 0",
        "portgroup_ready{portgroup=\"db\"} 0",
        "portgroupd_device_plugin_registered{portgroup=\"prod-web\"} 1",
        "portgroupd_device_plugin_registered{portgroup=\"db\"} 1",
        "portgroupd_device_plugin_registrations_total 2",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }

    // A reconcile with nothing new sends nothing: the kubelet hears of changes only.
    let lists = seen.lists.get(WEB).map_or(0, Vec::len);
    lab.add_uplink();
    lab.wait_state(WAIT, "the uplink seen", |s| {
        s.portgroups[0].reason.as_deref() != Some("uplink eth1 not found on node worker-3")
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = kubelet.seen();
    assert!(
        offers(&after, WEB, 1000, "Unhealthy"),
        "no 802.1Q here: still not ready"
    );
    assert_eq!(
        after.lists.get(WEB).map_or(0, Vec::len),
        lists,
        "unchanged health is not re-sent"
    );
    drop(daemon);
}

#[test]
fn a_kubelet_that_starts_late_or_restarts_gets_every_resource_again() {
    let lab = DaemonLab::bare();
    lab.write_config(TWO_PGS);
    std::fs::create_dir_all(plugin_dir(&lab)).expect("dir");
    let _daemon = start(&lab, 9771, &[]);
    lab.wait_state(WAIT, "first reconcile", |s| s.generation >= 1);

    // The kubelet socket appears after the daemon is up.
    let mut kubelet = FakeKubelet::start(&plugin_dir(&lab));
    kubelet.wait(WAIT, "registration after the kubelet came", |s| {
        s.registrations_of(WEB) == 1 && s.registrations_of(DB) == 1
    });

    // Restart: every socket in the directory removed, kubelet.sock made anew.
    let restarted = Instant::now();
    kubelet.restart();
    let seen = kubelet.wait(WAIT, "registration after a kubelet restart", |s| {
        s.registrations_of(WEB) == 2
            && s.registrations_of(DB) == 2
            && [WEB, DB]
                .iter()
                .all(|r| s.latest(r).is_some_and(|l| l.at > restarted))
    });
    assert!(offers(&seen, WEB, 1000, "Unhealthy"));
    for socket in ["pg-prod-web.sock", "pg-db.sock"] {
        assert!(
            plugin_dir(&lab).join(socket).exists(),
            "{socket} served again"
        );
    }
    assert!(kubelet.allocate(DB, &["db-7"]).is_ok());

    // Kubelet down (its socket gone, ours left), then up again: registered again.
    kubelet.stop();
    std::thread::sleep(Duration::from_millis(300));
    kubelet.start_again();
    kubelet.wait(WAIT, "registration after the kubelet came back", |s| {
        s.registrations_of(WEB) == 3 && s.registrations_of(DB) == 3
    });

    // Several restarts in a row lose nothing. A restart that removes the
    // plugin's fresh socket while its Register is in flight makes the kubelet
    // refuse that one (it cannot dial back), as a real kubelet would; the
    // plugin sees its socket gone and registers again.
    for round in 0..5 {
        kubelet.restart();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let last = kubelet.instance;
    let registered_since = |s: &Seen, resource: &str| {
        s.registrations
            .iter()
            .any(|r| r.resource == resource && r.instance == last)
    };
    let seen = kubelet.wait(WAIT, "registration after five quick restarts", |s| {
        registered_since(s, WEB) && registered_since(s, DB)
    });
    assert!(
        seen.refused.iter().all(|r| r.starts_with("dialing ")),
        "only call-backs to a removed socket fail: {:?}",
        seen.refused
    );
    // The last registration of each is live: Allocate reaches the plugin (once
    // the daemon has seen the last of the directory events).
    std::thread::sleep(Duration::from_millis(300));
    assert!(kubelet.allocate(WEB, &["prod-web-1"]).is_ok());
    assert!(kubelet.allocate(DB, &["db-1"]).is_ok());
}

#[test]
fn portgroupd_restart_registers_again_and_sigterm_removes_its_sockets() {
    let lab = DaemonLab::bare();
    lab.write_config(TWO_PGS);
    let kubelet = FakeKubelet::start(&plugin_dir(&lab));
    let mut daemon = start(&lab, 9772, &[]);
    // Registered, and the first list read (the resources register on their own
    // tasks, so the stop below may otherwise come between the two).
    kubelet.wait(WAIT, "first registration and list", |s| {
        s.registrations_of(WEB) == 1
            && s.registrations_of(DB) == 1
            && offers(s, WEB, 1000, "Unhealthy")
            && offers(s, DB, 1000, "Unhealthy")
    });
    // Registered is not yet listed: the stop below must come after the offers.
    kubelet.wait(WAIT, "first offers", |s| offers(s, WEB, 1000, "Unhealthy"));

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(WAIT).expect("stops on SIGTERM");
    assert!(status.success(), "{}", daemon.log());
    kubelet.wait(WAIT, "streams ended", |s| {
        s.ended.get(WEB) == Some(&1) && s.ended.get(DB) == Some(&1)
    });
    assert!(!plugin_dir(&lab).join("pg-prod-web.sock").exists());
    // No withdrawal on a daemon stop: the kubelet keeps the capacity (allocatable
    // drops with the stream) until the daemon is back.
    assert!(offers(&kubelet.seen(), WEB, 1000, "Unhealthy"));

    let mut daemon = start(&lab, 9772, &[]);
    kubelet.wait(WAIT, "registration after a daemon restart", |s| {
        s.registrations_of(WEB) == 2 && s.registrations_of(DB) == 2
    });

    // Killed: its sockets stay behind, stale; the next daemon replaces them.
    daemon.signal(Signal::SIGKILL);
    daemon.wait(WAIT).expect("killed");
    assert!(
        plugin_dir(&lab).join("pg-prod-web.sock").exists(),
        "stale socket"
    );
    let _daemon = start(&lab, 9772, &[]);
    let seen = kubelet.wait(WAIT, "registration after a SIGKILL", |s| {
        s.registrations_of(WEB) == 3 && s.registrations_of(DB) == 3
    });
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    assert!(kubelet.allocate(WEB, &["prod-web-0"]).is_ok());
}

#[test]
fn portgroups_added_and_removed_by_a_config_change() {
    let lab = DaemonLab::new();
    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "prod-web", "vlan": 100}]}"#);
    let kubelet = FakeKubelet::start(&plugin_dir(&lab));
    let _daemon = start(&lab, 9773, &[]);
    kubelet.wait(WAIT, "prod-web registered", |s| {
        offers(s, WEB, 1000, "Unhealthy")
    });

    // Added: registered without a restart.
    lab.write_config(TWO_PGS);
    kubelet.wait(WAIT, "db registered after the config change", |s| {
        offers(s, DB, 1000, "Unhealthy")
    });
    assert_eq!(
        kubelet.seen().registrations_of(WEB),
        1,
        "prod-web untouched"
    );

    // A VM port on prod-web's bridge (the bridge needs no 802.1Q), then prod-web
    // leaves the config: it drains, still offered (Unhealthy), not withdrawn.
    let bridge = bridge_name("eth1", 100);
    lab.node.ip(&[
        "link", "add", "vmport0", "type", "veth", "peer", "name", "vmpeer0",
    ]);
    lab.node
        .ip(&["link", "set", "vmport0", "master", &bridge, "up"]);
    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "db", "vlan": 200}]}"#);
    lab.wait_state(WAIT, "prod-web draining", |s| {
        s.portgroups
            .iter()
            .any(|p| p.name == "prod-web" && p.draining)
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = kubelet.seen();
    assert!(
        offers(&seen, WEB, 1000, "Unhealthy"),
        "draining keeps its capacity"
    );
    assert_eq!(seen.ended.get(WEB), None, "still served while draining");
    assert!(plugin_dir(&lab).join("pg-prod-web.sock").exists());

    // The last VM port leaves: withdrawn (an empty list, the stream ends, the socket goes).
    lab.node.ip(&["link", "del", "vmport0"]);
    let seen = kubelet.wait(WAIT, "prod-web withdrawn", |s| {
        s.latest(WEB).is_some_and(|l| l.devices.is_empty()) && s.ended.get(WEB) == Some(&1)
    });
    assert!(offers(&seen, DB, 1000, "Unhealthy"), "db untouched");
    let start = Instant::now();
    while plugin_dir(&lab).join("pg-prod-web.sock").exists() {
        assert!(
            start.elapsed() < WAIT,
            "socket of a withdrawn resource left behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = metrics(&lab, 9773);
    assert!(!text.contains("portgroup=\"prod-web\""), "{text}");
    assert!(
        text.contains("portgroup_ready{portgroup=\"db\"} 0"),
        "{text}"
    );

    // Back in the config: a new resource, registered again.
    lab.write_config(TWO_PGS);
    kubelet.wait(WAIT, "prod-web registered again", |s| {
        s.registrations_of(WEB) == 2 && offers(s, WEB, 1000, "Unhealthy")
    });
}

#[test]
fn device_count_flag_and_a_directory_that_appears_later() {
    let lab = DaemonLab::bare();
    lab.write_config(TWO_PGS);
    let dir = plugin_dir(&lab);
    let _daemon = start(&lab, 9774, &["--device-plugin-devices", "5"]);
    lab.wait_state(WAIT, "first reconcile", |s| s.generation >= 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !dir.exists(),
        "the kubelet's directory is never made by portgroupd"
    );

    // The kubelet comes (and makes its directory): looked for again, registered.
    let kubelet = FakeKubelet::start(&dir);
    let seen = kubelet.wait(WAIT, "5 devices each", |s| {
        offers(s, WEB, 5, "Unhealthy") && offers(s, DB, 5, "Unhealthy")
    });
    let ids: Vec<&str> = seen
        .latest(DB)
        .map(|l| l.devices.iter().map(|(id, _)| id.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["db-0", "db-1", "db-2", "db-3", "db-4"]);
}

#[test]
fn device_plugin_off_with_an_empty_directory() {
    let lab = DaemonLab::bare();
    lab.write_config(TWO_PGS);
    let daemon = lab.start(&["--device-plugin-dir", "", "--listen", "127.0.0.1:9775"]);
    lab.wait_state(WAIT, "first reconcile", |s| s.generation >= 1);
    let text = metrics(&lab, 9775);
    assert!(
        text.contains("portgroup_ready{portgroup=\"db\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("portgroupd_device_plugin_registered{"),
        "no resource served:\n{text}"
    );
    assert!(!daemon.log().contains("device plugin"), "{}", daemon.log());
}

/// Each resource registers on its own: a kubelet that never answers one
/// resource's Register (here `app`'s) holds up neither another resource's
/// registration nor its health flips. An untagged portgroup (`vm-network`)
/// becomes ready without 802.1Q, so its uplink's carrier flips its health.
/// Ordering, not timing: a plugin that registered one resource after the other
/// could not even register `vm-network` before it gave up on `app`'s call
/// (10 s), so every `vm-network` list below would come after that.
#[test]
fn a_register_hung_for_one_resource_holds_up_no_other() {
    const APP: &str = "portgroup.io/app";
    const VM_NETWORK: &str = "portgroup.io/vm-network";
    let lab = DaemonLab::new();
    lab.write_config(
        r#"{"uplink": "eth1", "portgroups": [
            {"name": "app", "vlan": 100}, {"name": "vm-network", "untagged": true}]}"#,
    );
    let kubelet = FakeKubelet::start(&plugin_dir(&lab));
    kubelet.hang_register(APP);
    let daemon = start(&lab, 9776, &[]);

    kubelet.wait(WAIT, "vm-network registered and Healthy", |s| {
        s.registrations_of(VM_NETWORK) == 1 && offers(s, VM_NETWORK, 1000, "Healthy")
    });
    // The uplink loses its carrier, then gets it back.
    lab.switch.ip(&["link", "set", "sw0", "down"]);
    kubelet.wait(WAIT, "vm-network Unhealthy", |s| {
        offers(s, VM_NETWORK, 1000, "Unhealthy")
    });
    lab.switch.ip(&["link", "set", "sw0", "up"]);
    let seen = kubelet.wait(WAIT, "vm-network Healthy again", |s| {
        offers(s, VM_NETWORK, 1000, "Healthy") && s.lists.get(VM_NETWORK).map_or(0, Vec::len) >= 3
    });
    let app_calls: Vec<_> = seen
        .register_calls
        .iter()
        .filter(|(r, _)| r == APP)
        .collect();
    assert!(!app_calls.is_empty(), "app's Register was called");
    assert_eq!(seen.registrations_of(APP), 0, "app's Register hangs");
    let first_app_call = app_calls[0].1;
    let app_given_up = seen
        .abandoned
        .iter()
        .find(|(r, _)| r == APP)
        .map(|(_, at)| *at);
    let vm_lists = &seen.lists[VM_NETWORK];
    let last_flip = vm_lists.last().map(|l| l.at).expect("lists");
    if let Some(given_up) = app_given_up {
        assert!(
            last_flip < given_up,
            "vm-network's updates waited for app's hung Register: last flip {:?} after app's call began, the call abandoned {:?} after",
            last_flip - first_app_call,
            given_up - first_app_call
        );
    }

    // The kubelet answers again: app registers too, Unhealthy (no 802.1Q here
    // for VLAN 100, or 802.1Q and no carrier issue: either way it comes).
    kubelet.release_register(APP);
    let seen = kubelet.wait(WAIT, "app registered once released", |s| {
        s.registrations_of(APP) >= 1 && s.latest(APP).is_some_and(|l| l.devices.len() == 1000)
    });
    assert_eq!(
        seen.registrations_of(VM_NETWORK),
        1,
        "vm-network registered once"
    );
    let body = metrics(&lab, 9776);
    assert!(
        body.contains("portgroupd_device_plugin_registered{portgroup=\"app\"} 1"),
        "{body}"
    );
    drop(daemon);
}
