//! Health-flip latency of portgroupd's device plugin: from the kernel's link
//! event (the uplink losing or regaining its carrier) to the kubelet receiving
//! the ListAndWatch update that flips every device of the portgroup.
//!
//! A portgroup is ready only with its VLAN interface, so this needs 802.1Q:
//! hack/bench.sh runs it in the test VM when this kernel lacks it. Root only;
//! every link lives in namespaces made here (tests/common) and deleted on exit.
//!
//!   deviceplugin_flip [--flaps N] [--out FILE.json]
//!
//! One flap: the switch end of the uplink veth goes down (the uplink loses its
//! carrier: Unhealthy), then up again (Healthy). The kernel event is timed where
//! a netlink listener in the node namespace receives it (RTM_NEWLINK for the
//! uplink with LOWER_UP changed), the update where the fake kubelet receives it,
//! both on this process's monotonic clock. Also given: the time from just
//! before the `ip link set` request, which includes starting `ip`.

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

/// (when received, lower_up) of every uplink event.
type Events = Arc<Mutex<Vec<(Instant, bool)>>>;

fn main() {
    let mut flaps = 100usize;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--flaps" => flaps = args.next().and_then(|n| n.parse().ok()).unwrap_or(flaps),
            "--out" => out = args.next(),
            // cargo bench passes --bench
            "--bench" => {}
            other => {
                eprintln!(
                    "unknown argument {other}; usage: deviceplugin_flip [--flaps N] [--out FILE]"
                );
                std::process::exit(2);
            }
        }
    }
    if !portgroup_testkit::has_8021q() {
        eprintln!("deviceplugin_flip: this kernel has no 802.1Q, so no portgroup can be ready; run it in the VM (hack/bench.sh does)");
        std::process::exit(3);
    }

    let lab = DaemonLab::new();
    lab.write_config(r#"{"uplink": "eth1", "portgroups": [{"name": "bench", "vlan": 100}]}"#);
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
    for _ in 0..flaps {
        for (state, want, lower_up, from_event, from_request) in [
            ("down", "Unhealthy", false, &mut down, &mut down_req),
            ("up", "Healthy", true, &mut up, &mut up_req),
        ] {
            let lists = kubelet.list_count(RESOURCE);
            let requested = Instant::now();
            lab.switch.ip(&["link", "set", "sw0", state]);
            let received = kubelet.wait_then(
                WAIT,
                want,
                |s| s.lists.get(RESOURCE).map_or(0, Vec::len) > lists && healthy(s, want),
                |s| s.latest(RESOURCE).map_or(requested, |l| l.at),
            );
            let event = events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(at, l)| *at >= requested && *l == lower_up)
                .map(|(at, _)| *at);
            let Some(event) = event else {
                panic!("no uplink event with LOWER_UP={lower_up} seen after the request");
            };
            from_event.push(ms(received.saturating_duration_since(event)));
            from_request.push(ms(received - requested));
            // Let the reconcile that flipped it finish before the next flap.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
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
        "registrations": kubelet.wait_then(WAIT, "", |_| true, |s| s.registrations_of(RESOURCE)),
    });
    println!(
        "device-plugin health flip over {flaps} uplink flaps (kernel event -> ListAndWatch update): p50 {} ms, p99 {} ms, max {} ms",
        report["event_to_update"]["all"]["p50"],
        report["event_to_update"]["all"]["p99"],
        report["event_to_update"]["all"]["max"]
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

/// Records every RTM_NEWLINK of the uplink in the node namespace, with the time
/// it was received.
fn monitor_uplink(lab: &DaemonLab, events: Events) {
    let ns = portgroup::netns::open(&lab.node.path()).unwrap_or_else(|e| panic!("netns: {e}"));
    let socket = portgroup::netns::run_in(&ns, || {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(socket)
    })
    .unwrap_or_else(|e| panic!("netlink monitor: {e}"));
    std::thread::spawn(move || loop {
        let Ok((buf, _)) = socket.recv_from_full() else {
            return;
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
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
                    msg.payload
                {
                    let link = LinkSummary::from_message(&link);
                    if link.name == "eth1" {
                        events
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((at, link.lower_up));
                    }
                }
            }
            offset += (len + 3) & !3;
        }
    });
}
