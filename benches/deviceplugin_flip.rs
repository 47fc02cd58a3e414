//! Health-flip latency of portgroupd's device plugin: from the kernel's link
//! event on the uplink to the kubelet receiving the ListAndWatch update that
//! flips every device of the portgroup.
//!
//! Root only; every link lives in namespaces made here (tests/common) and
//! deleted on exit. The portgroup is untagged by default: a bridge on the raw
//! uplink, ready on any kernel. `--vlan` times an access portgroup (VLAN 100)
//! instead, which needs 802.1Q (hack/bench.sh runs that variant in the test VM).
//!
//!   deviceplugin_flip [--flaps N] [--kind carrier|recreate] [--vlan] [--out FILE.json]
//!
//! `--kind carrier` (default), one flap: the switch end of the uplink veth goes
//! down (the uplink loses its carrier: Unhealthy), then up again (Healthy). The
//! kernel event is the uplink's RTM_NEWLINK with LOWER_UP changed.
//!
//! `--kind recreate`, one flap: the uplink veth is deleted (Unhealthy; the
//! event is the uplink's RTM_DELLINK), then made anew, down and unenslaved as a
//! new NIC or bond comes (Healthy; the event is the new uplink's first
//! RTM_NEWLINK, so the time includes portgroupd bringing it up and making it
//! the bridge's port again).
//!
//! Each event is timed where a netlink listener in the node namespace receives
//! it, the update where the fake kubelet receives it, both on this process's
//! monotonic clock (on a loaded machine the listener thread can be scheduled
//! after the daemon has already acted: such flips count 0 ms and are reported
//! as `listener_late`). Also given: the time from just before the `ip` request,
//! which includes starting `ip`, and the daemon's own figure from its log.

// A benchmark fails by panicking, like a test: unwrap and expect are its way to fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
#[allow(unused_macros, unused_imports, dead_code)]
mod common;
#[path = "../tests/common/kubelet.rs"]
mod kubelet;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::DaemonLab;
use kubelet::{FakeKubelet, Seen};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use portgroup::netlink::LinkSummary;

const RESOURCE: &str = "portgroup.io/bench";
const RTMGRP_LINK: u32 = 1;
const WAIT: Duration = Duration::from_secs(60);

/// What the node's netlink listener saw of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UplinkEvent {
    /// RTM_NEWLINK, with its LOWER_UP.
    New { lower_up: bool },
    /// RTM_DELLINK.
    Deleted,
}

/// (when received, what) of every uplink event.
type Events = Arc<Mutex<Vec<(Instant, UplinkEvent)>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Carrier,
    Recreate,
}

fn main() {
    let mut flaps = 100usize;
    let mut out = None;
    let mut vlan = false;
    let mut kind = Kind::Carrier;
    let usage =
        "usage: deviceplugin_flip [--flaps N] [--kind carrier|recreate] [--vlan] [--out FILE]";
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--flaps" => flaps = args.next().and_then(|n| n.parse().ok()).unwrap_or(flaps),
            "--out" => out = args.next(),
            "--vlan" => vlan = true,
            "--kind" => {
                kind = match args.next().as_deref() {
                    Some("carrier") => Kind::Carrier,
                    Some("recreate") => Kind::Recreate,
                    other => {
                        eprintln!("--kind {other:?}: carrier or recreate; {usage}");
                        std::process::exit(2);
                    }
                }
            }
            // cargo bench passes --bench
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other}; {usage}");
                std::process::exit(2);
            }
        }
    }
    if vlan && !portgroup_testkit::has_8021q() {
        eprintln!("deviceplugin_flip --vlan: this kernel has no 802.1Q, so no VLAN portgroup can be ready; run it in the VM (hack/bench.sh --deviceplugin-vlan does), or drop --vlan for an untagged portgroup");
        std::process::exit(3);
    }
    let load_before = loadavg();

    let lab = DaemonLab::new();
    lab.write_config(if vlan {
        r#"{"uplink": "eth1", "portgroups": [{"name": "bench", "vlan": 100}]}"#
    } else {
        r#"{"uplink": "eth1", "portgroups": [{"name": "bench", "untagged": true}]}"#
    });
    let dir = lab.dir.0.join("device-plugins");
    let kubelet = FakeKubelet::start(&dir);
    let events: Events = Arc::new(Mutex::new(Vec::new()));
    monitor_uplink(&lab, events.clone());
    let dir_arg = dir.to_str().unwrap_or_default().to_string();
    let daemon = lab.start(&[
        "--device-plugin-dir",
        &dir_arg,
        "--listen",
        "127.0.0.1:9790",
    ]);
    let healthy = |s: &Seen, h: &str| s.latest(RESOURCE).is_some_and(|l| l.all(h));
    kubelet.wait_then(WAIT, "Healthy at start", |s| healthy(s, "Healthy"), |_| ());
    std::thread::sleep(Duration::from_millis(200));

    let mut down = Vec::new();
    let mut up = Vec::new();
    let mut down_req = Vec::new();
    let mut up_req = Vec::new();
    // Flips whose kernel event the listener received only after the update
    // (counted as 0 ms: the listener, not the daemon, was late).
    let mut listener_late = 0usize;
    let started = Instant::now();
    for _ in 0..flaps {
        for (going_down, want, from_event, from_request) in [
            (true, "Unhealthy", &mut down, &mut down_req),
            (false, "Healthy", &mut up, &mut up_req),
        ] {
            let lists = kubelet.list_count(RESOURCE);
            let requested = Instant::now();
            match (kind, going_down) {
                (Kind::Carrier, true) => {
                    lab.switch.ip(&["link", "set", "sw0", "down"]);
                }
                (Kind::Carrier, false) => {
                    lab.switch.ip(&["link", "set", "sw0", "up"]);
                }
                (Kind::Recreate, true) => {
                    lab.switch.ip(&["link", "del", "sw0"]);
                }
                (Kind::Recreate, false) => lab.add_uplink(),
            }
            let received = kubelet.wait_then(
                WAIT,
                want,
                |s| s.lists.get(RESOURCE).map_or(0, Vec::len) > lists && healthy(s, want),
                |s| s.latest(RESOURCE).map_or(requested, |l| l.at),
            );
            let wanted_event = |e: &UplinkEvent| match (kind, going_down) {
                (Kind::Carrier, _) => {
                    *e == UplinkEvent::New {
                        lower_up: !going_down,
                    }
                }
                (Kind::Recreate, true) => *e == UplinkEvent::Deleted,
                (Kind::Recreate, false) => matches!(e, UplinkEvent::New { .. }),
            };
            // The listener thread may be scheduled after the daemon and the
            // fake kubelet on a loaded machine: wait for it to report.
            let find = || {
                events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(at, e)| *at >= requested && wanted_event(e))
                    .map(|(at, _)| *at)
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut event = find();
            while event.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
                event = find();
            }
            if event.is_some_and(|at| at > received) {
                listener_late += 1;
            }
            let Some(event) = event else {
                let seen = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let recent: Vec<_> = seen
                    .iter()
                    .rev()
                    .take(6)
                    .map(|(at, e)| (at.saturating_duration_since(requested), e))
                    .collect();
                panic!("no uplink event for {want} ({kind:?}) seen after the request; the last ones (time after the request): {recent:?}");
            };
            from_event.push(ms(received.saturating_duration_since(event)));
            from_request.push(ms(received - requested));
            // Let the reconcile that flipped it finish before the next flap.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let wall = started.elapsed();
    let log = daemon.log();
    let failures = log.matches(" ERROR ").count();
    // The daemon's own figure: first link event of the batch -> the reconcile
    // that saw the flip has handed the new offer to the device plugin.
    let mut daemon_side: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("readiness changed in ").nth(1))
        .filter_map(|rest| rest.split(" ms").next()?.parse().ok())
        .collect();
    let mut all: Vec<f64> = down.iter().chain(up.iter()).copied().collect();
    let report = serde_json::json!({
        "flaps": flaps,
        "portgroup": if vlan { "access, VLAN 100 (802.1Q)" } else { "untagged (bridge on the raw uplink)" },
        "kind": match kind { Kind::Carrier => "carrier", Kind::Recreate => "recreate" },
        "unit": "ms",
        "event_to_update": {
            "all": summary(&mut all),
            "to_unhealthy": summary(&mut down.clone()),
            "to_healthy": summary(&mut up.clone()),
        },
        "request_to_update": {
            "to_unhealthy": summary(&mut down_req),
            "to_healthy": summary(&mut up_req),
        },
        "daemon_event_to_offer": summary(&mut daemon_side),
        "daemon_errors": failures,
        "listener_late": listener_late,
        "registrations": kubelet.wait_then(WAIT, "", |_| true, |s| s.registrations_of(RESOURCE)),
        "wall_s": (wall.as_secs_f64() * 10.0).round() / 10.0,
        "machine": {
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        },
    });
    println!(
        "device-plugin health flip over {flaps} uplink flaps ({}, {}; kernel event -> ListAndWatch update): p50 {} ms, p99 {} ms, max {} ms; daemon's own p50 {} ms, p99 {} ms",
        report["portgroup"].as_str().unwrap_or_default(),
        report["kind"].as_str().unwrap_or_default(),
        report["event_to_update"]["all"]["p50"],
        report["event_to_update"]["all"]["p99"],
        report["event_to_update"]["all"]["max"],
        report["daemon_event_to_offer"]["p50"],
        report["daemon_event_to_offer"]["p99"],
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if let Some(path) = out {
        if let Err(e) = std::fs::write(&path, report.to_string()) {
            eprintln!("writing {path}: {e}");
            std::process::exit(1);
        }
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Nearest-rank percentiles.
fn summary(samples: &mut [f64]) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    serde_json::json!({
        "n": samples.len(),
        "p50": pct(50.0),
        "p90": pct(90.0),
        "p99": pct(99.0),
        "max": pct(100.0),
        "min": samples.first().copied().unwrap_or_default(),
    })
}

/// Records every RTM_NEWLINK and RTM_DELLINK of the uplink in the node
/// namespace, with the time it was received.
fn monitor_uplink(lab: &DaemonLab, events: Events) {
    let ns = portgroup::netns::open(&lab.node.path()).unwrap_or_else(|e| panic!("netns: {e}"));
    let socket = portgroup::netns::run_in(&ns, || {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(socket)
    })
    .unwrap_or_else(|e| panic!("netlink monitor: {e}"));
    std::thread::spawn(move || loop {
        let buf = match socket.recv_from_full() {
            Ok((buf, _)) => buf,
            // The socket overflowed (ENOBUFS): events were lost, but the next
            // ones still count; a flap whose event was lost fails the bench.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                eprintln!("netlink monitor: {e}; events lost");
                continue;
            }
            Err(e) => panic!("netlink monitor: {e}"),
        };
        let at = Instant::now();
        let mut offset = 0;
        while offset + 4 <= buf.len() {
            let len = u32::from_ne_bytes([
                buf[offset],
                buf[offset + 1],
                buf[offset + 2],
                buf[offset + 3],
            ]) as usize;
            if len == 0 || offset + len > buf.len() {
                break;
            }
            if let Ok(msg) =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + len])
            {
                let seen = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        let link = LinkSummary::from_message(&link);
                        (link.name == "eth1").then_some(UplinkEvent::New {
                            lower_up: link.lower_up,
                        })
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        (LinkSummary::from_message(&link).name == "eth1")
                            .then_some(UplinkEvent::Deleted)
                    }
                    _ => None,
                };
                if let Some(seen) = seen {
                    events
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at, seen));
                }
            }
            offset += (len + 3) & !3;
        }
    });
}
