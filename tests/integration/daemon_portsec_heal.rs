//! portgroupd keeps port security in place: after `nft flush ruleset`, a deleted
//! chain or element, it restores the rules of every running VM; it sweeps the
//! elements of ports no record owns, moves aside records that stay unreadable,
//! and collects a `bridge:` mode attachment whose DEL never comes, rules and all.
//! VMs are attached by the real plugin, in `bridge:` mode, inside the lab's node
//! namespace; frames are real. Root only.

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{age_file, http_get, DaemonLab, Netns, BIN};
use portgroup::attachment::Record;
use portgroup::mac::MacAddr;
use portgroup::naming::host_veth_name;
use portgroup::portsec::{self, PortRules};
use portgroup_testkit::frame::{eth, ipv4, udp};
use portgroup_testkit::PacketSocket;

const NO_PORTGROUPS: &str = r#"{"uplink": "eth1", "portgroups": []}"#;
const PEER_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x03];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const FORGED_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

/// The plugin, built next to portgroupd (`cargo build -p portgroup`; the
/// workspace's test run builds both).
fn plugin() -> PathBuf {
    let path = Path::new(BIN).with_file_name("portgroup");
    assert!(
        path.exists(),
        "the plugin binary {} is missing: cargo build -p portgroup",
        path.display()
    );
    path
}

struct Vm {
    ns: Netns,
    id: String,
    mac: [u8; 6],
    ip: Ipv4Addr,
    host_veth: String,
}

fn conf(vm: &Vm) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "lab",
        "type": "portgroup",
        "bridge": "br0",
        "conflictProbe": false,
        "runtimeConfig": {
            "mac": MacAddr(vm.mac).to_string(),
            "ips": [format!("{}/24", vm.ip)],
        },
    })
    .to_string()
}

/// Runs the plugin in the lab's node namespace, as a runtime would.
fn cni(lab: &DaemonLab, command: &str, vm: &Vm) -> (i32, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node.name])
        .arg(plugin())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PORTGROUP_RUN_DIR", lab.run_dir())
        .env("PORTGROUP_LOG_DIR", lab.dir.0.join("log"))
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &vm.id)
        .env("CNI_NETNS", vm.ns.path_str())
        .env("CNI_IFNAME", "net1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf(vm).as_bytes())
        .expect("write the config");
    let out = child.wait_with_output().expect("plugin output");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A VM attached to br0 in `bridge:` mode by the plugin, its net1 up.
fn attach(lab: &DaemonLab, n: u8) -> Vm {
    let vm = Vm {
        ns: Netns::new("vm"),
        id: format!("vm{n}-{}", portgroup_testkit::tag()),
        mac: [0x02, 0x50, 0x56, 0, 1, n],
        ip: Ipv4Addr::new(10, 0, 0, 10 + n),
        host_veth: String::new(),
    };
    let (code, out) = cni(lab, "ADD", &vm);
    assert_eq!(code, 0, "ADD: {out}");
    let host_veth = host_veth_name(&vm.id, "net1");
    let record = Record::find(&lab.run_dir().join("attachments"), &vm.id, "net1")
        .expect("read the record")
        .expect("ADD wrote a record");
    assert!(
        record.port_security.is_some(),
        "the record has no portSecurity: {} is older than this build (cargo build -p portgroup)",
        plugin().display()
    );
    Vm { host_veth, ..vm }
}

/// The lab: br0 in the node namespace with a peer (no port security) on it,
/// the daemon running with `extra` arguments.
fn bridge_lab() -> (DaemonLab, Netns) {
    let lab = DaemonLab::new();
    lab.write_config(NO_PORTGROUPS);
    lab.node.ip_line("link add br0 type bridge");
    lab.node.ip_line("link set br0 up");
    let peer = Netns::new("peer");
    lab.node.ip_line(&format!(
        "link add pp1 type veth peer name eth0 netns {}",
        peer.name
    ));
    lab.node.ip_line("link set pp1 master br0 up");
    peer.ip_line(&format!("link set eth0 address {}", MacAddr(PEER_MAC)));
    peer.ip_line("link set eth0 up");
    (lab, peer)
}

fn nft(lab: &DaemonLab, line: &str) {
    let mut args = vec!["nft"];
    args.extend(line.split_whitespace());
    let out = lab.node.exec(&args);
    assert!(
        out.status.success(),
        "nft {line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn udp_frame(vm: &Vm, src: Ipv4Addr, marker: u8) -> Vec<u8> {
    eth(
        PEER_MAC,
        vm.mac,
        0x0800,
        &ipv4(
            src,
            PEER_IP,
            17,
            &udp(40000, 40000, &[b'P', b'G', b'H', marker]),
        ),
    )
}

/// The markers of the frames `udp_frame` made among `frames`.
fn markers<C: FromIterator<u8>>(frames: &[Vec<u8>]) -> C {
    frames
        .iter()
        .filter_map(|f| {
            let pos = f.windows(3).position(|w| w == b"PGH")?;
            f.get(pos + 3).copied()
        })
        .collect()
}

/// Sends a frame from the VM's own address and one from a forged address;
/// returns (own arrived, forged arrived) at the peer.
fn probe(vm: &Vm, peer: &Netns) -> (bool, bool) {
    let rx = PacketSocket::open(peer, "eth0");
    let tx = PacketSocket::open(&vm.ns, "net1");
    let _ = rx.drain();
    tx.send(&udp_frame(vm, vm.ip, 1));
    tx.send(&udp_frame(vm, FORGED_IP, 2));
    let seen: HashSet<u8> = markers(&rx.listen(Duration::from_millis(300)));
    (seen.contains(&1), seen.contains(&2))
}

/// Polls until the VM's forged frame is dropped again while its own passes;
/// returns how long that took (for the report, not asserted beyond `timeout`).
fn wait_until_spoof_dropped(vm: &Vm, peer: &Netns, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (own, forged) = probe(vm, peer);
        if own && !forged {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{}: forged frames still pass (own passes: {own}) after {timeout:?}",
            vm.host_veth
        );
    }
}

fn metric(lab: &DaemonLab, port: u16, series: &str) -> u64 {
    let (_, body) = http_get(&lab.node, port, "/metrics").expect("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{body}"))
}

fn wait_for(what: &str, timeout: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ports(lab: &DaemonLab) -> Vec<String> {
    lab.node.run(portsec::ports).expect("list secured ports")
}

fn started(lab: &DaemonLab, port: u16, extra: &[&str]) -> crate::common::Daemon {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let daemon = lab.start(&args);
    lab.wait_state(Duration::from_secs(30), "first reconcile", |s| {
        s.generation >= 1
    });
    wait_for("the metrics endpoint", Duration::from_secs(30), || {
        http_get(&lab.node, port, "/metrics").is_some()
    });
    daemon
}

#[test]
fn a_flushed_ruleset_is_restored_for_every_running_vm() {
    let (lab, peer) = bridge_lab();
    let vms = [attach(&lab, 1), attach(&lab, 2)];
    let daemon = started(&lab, 9771, &["--resync", "3600"]);
    for vm in &vms {
        assert_eq!(probe(vm, &peer), (true, false), "{}: secured", vm.host_veth);
    }
    let table = r#"portgroup_portsec_repairs_total{what="table"}"#;
    let port = r#"portgroup_portsec_repairs_total{what="port"}"#;
    assert_eq!(metric(&lab, 9771, table), 0);

    // What `systemctl restart nftables` does first on Debian.
    nft(&lab, "flush ruleset");
    for vm in &vms {
        let took = wait_until_spoof_dropped(vm, &peer, Duration::from_secs(10));
        println!(
            "{}: forged frames dropped again {took:?} after the flush",
            vm.host_veth
        );
    }
    let mut secured = ports(&lab);
    secured.sort();
    let mut want: Vec<String> = vms.iter().map(|v| v.host_veth.clone()).collect();
    want.sort();
    assert_eq!(secured, want);
    assert_eq!(metric(&lab, 9771, table), 1);
    assert_eq!(metric(&lab, 9771, port), 2);
    let log = daemon.log();
    assert!(
        log.contains("table bridge portgroup was missing; recreated it"),
        "{log}"
    );
    assert!(log.contains("restored the rules of 2 port(s)"), "{log}");
    // Its own repair does not wake it again: one repair, then quiet.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&lab, 9771, table), 1);
    let sweeps = metric(&lab, 9771, "portgroupd_portsec_sweeps_total");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(&lab, 9771, "portgroupd_portsec_sweeps_total"),
        sweeps,
        "no repair loop"
    );

    // The restored rules are exactly what ADD installed: CHECK agrees.
    for vm in &vms {
        let r = PortRules {
            host_veth: vm.host_veth.clone(),
            mac: MacAddr(vm.mac),
            ips: vec![vm.ip.into()],
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        };
        lab.node
            .run(move || portsec::verify(&r))
            .expect("verified after the repair");
        let (code, out) = cni(&lab, "DEL", vm);
        assert_eq!(code, 0, "DEL: {out}");
    }
    // With portgroupd running, the DELs left their elements to its sweep.
    wait_for("the deleted ports swept", Duration::from_secs(10), || {
        ports(&lab).is_empty()
    });
}

/// Whether `port` holds `addr` through DAD (an FCFS binding the kernel made).
fn bound(lab: &DaemonLab, port: &str, addr: std::net::Ipv6Addr) -> bool {
    lab.node
        .run(portsec::fcfs_bindings)
        .expect("list the FCFS bindings")
        .iter()
        .any(|b| b.port == port && b.address == addr)
}

/// The kernel learns FCFS bindings from the packet path, so a flush loses them
/// and nothing in the records could give them back: portgroupd keeps what its
/// last sweep saw and restores it with the table.
#[test]
fn dad_bindings_come_back_after_a_flush() {
    let (lab, _peer) = bridge_lab();
    let vm = attach(&lab, 1);
    let daemon = started(&lab, 9776, &["--resync", "3600"]);
    let claimed: std::net::Ipv6Addr = "fe80::1234".parse().expect("address");
    // A guest address of its own (not the MAC's): the kernel's DAD claims it.
    vm.ns.ip_line("-6 addr add fe80::1234/64 dev net1");
    wait_for("the DAD binding", Duration::from_secs(10), || {
        bound(&lab, &vm.host_veth, claimed)
    });
    // A sweep after the binding exists (a removed attachment record wakes one;
    // the plugin's own ADDs and DELs do not): it is in portgroupd's snapshot
    // from then on.
    let sweeps = metric(&lab, 9776, "portgroupd_portsec_sweeps_total");
    let other = attach(&lab, 2);
    let (code, out) = cni(&lab, "DEL", &other);
    assert_eq!(code, 0, "DEL: {out}");
    wait_for("a sweep after the binding", Duration::from_secs(10), || {
        metric(&lab, 9776, "portgroupd_portsec_sweeps_total") > sweeps
    });

    nft(&lab, "flush ruleset");
    wait_for("the binding restored", Duration::from_secs(10), || {
        bound(&lab, &vm.host_veth, claimed)
    });
    let log = daemon.log();
    assert!(
        log.contains("FCFS IPv6 binding(s) the rebuilt table had lost"),
        "{log}"
    );
    let (code, out) = cni(&lab, "DEL", &vm);
    assert_eq!(code, 0, "DEL: {out}");
    wait_for("the deleted ports swept", Duration::from_secs(10), || {
        ports(&lab).is_empty() && !bound(&lab, &vm.host_veth, claimed)
    });
}

#[test]
fn the_plugins_own_changes_wake_no_sweep_another_process_change_does() {
    let (lab, _peer) = bridge_lab();
    let _daemon = started(&lab, 9777, &["--resync", "3600"]);
    // Whatever the start-up sweeps, they are over.
    std::thread::sleep(Duration::from_secs(1));
    let sweeps = metric(&lab, 9777, "portgroupd_portsec_sweeps_total");
    let vms: Vec<Vm> = (1..=3).map(|n| attach(&lab, n)).collect();
    // Each ADD's transaction reaches the daemon within milliseconds; a sweep it
    // woke would be counted well within this.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        metric(&lab, 9777, "portgroupd_portsec_sweeps_total"),
        sweeps,
        "the plugin's ADDs woke a port-security sweep"
    );
    nft(&lab, "flush ruleset");
    wait_for("a sweep after the flush", Duration::from_secs(10), || {
        metric(&lab, 9777, "portgroupd_portsec_sweeps_total") > sweeps
    });
    wait_for("the ports restored", Duration::from_secs(10), || {
        ports(&lab).len() == vms.len()
    });
    for vm in &vms {
        let (code, out) = cni(&lab, "DEL", vm);
        assert_eq!(code, 0, "DEL: {out}");
    }
    wait_for("the deleted ports swept", Duration::from_secs(10), || {
        ports(&lab).is_empty()
    });
}

#[test]
fn a_deleted_chain_or_element_is_restored() {
    let (lab, peer) = bridge_lab();
    let vm = attach(&lab, 1);
    let daemon = started(&lab, 9772, &["--resync", "3600"]);
    assert_eq!(probe(&vm, &peer), (true, false));

    // The base chain: without it nothing is filtered.
    nft(
        &lab,
        "flush chain bridge portgroup prerouting ; delete chain bridge portgroup prerouting",
    );
    let took = wait_until_spoof_dropped(&vm, &peer, Duration::from_secs(10));
    println!("chain deleted: forged frames dropped again after {took:?}");
    nft(&lab, "list chain bridge portgroup prerouting");
    wait_for(
        "the rules repair to be counted",
        Duration::from_secs(10),
        || {
            metric(
                &lab,
                9772,
                r#"portgroup_portsec_repairs_total{what="rules"}"#,
            ) == 1
        },
    );

    // One element: the port's address.
    nft(
        &lab,
        &format!(
            "delete element bridge portgroup port_ip4 {{ \"{}\" . {} }}",
            vm.host_veth, vm.ip
        ),
    );
    wait_for(
        "the element repair to be counted",
        Duration::from_secs(10),
        || {
            metric(
                &lab,
                9772,
                r#"portgroup_portsec_repairs_total{what="port"}"#,
            ) == 1
        },
    );
    let took = wait_until_spoof_dropped(&vm, &peer, Duration::from_secs(10));
    println!("element deleted: own traffic passes again after {took:?}");
    let log = daemon.log();
    assert!(
        log.contains("were missing or not this version's; rebuilt them"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "restored the rules of 1 port(s): {}",
            vm.host_veth
        )),
        "{log}"
    );
}

/// A port's rules put in by hand, as a leak would leave them.
fn install_rules(lab: &DaemonLab, host_veth: &str, last: u8) {
    let rules = PortRules {
        host_veth: host_veth.into(),
        mac: MacAddr([2, 0, 0, 0, 9, last]),
        ips: vec![Ipv4Addr::new(10, 9, 0, last).into()],
        allow_router_advertisements: false,
        allow_dhcp_server: false,
        trunk: false,
    };
    lab.node
        .run(move || portsec::install(&rules))
        .expect("install");
}

#[test]
fn orphan_elements_are_swept_and_live_ones_kept() {
    let (lab, _peer) = bridge_lab();
    let vm = attach(&lab, 1);
    let daemon = started(&lab, 9773, &["--resync", "3600"]);
    // No record, no interface: an orphan. No record, but its interface exists
    // (a veth someone else made): kept, a live port never loses its rules.
    lab.node
        .ip_line("link add pgkeep0 type veth peer name pgkeep1");
    install_rules(&lab, "pgkeep0", 1);
    install_rules(&lab, "pgorphan0", 2);
    wait_for("the orphan to be swept", Duration::from_secs(10), || {
        !ports(&lab).contains(&"pgorphan0".to_string())
    });
    let mut left = ports(&lab);
    left.sort();
    let mut want = vec![vm.host_veth.clone(), "pgkeep0".to_string()];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        metric(&lab, 9773, "portgroup_portsec_orphans_removed_total"),
        1
    );
    assert!(
        daemon
            .log()
            .contains("removed the rules of 1 port(s) no attachment record owns: pgorphan0"),
        "{}",
        daemon.log()
    );
}

#[test]
fn an_unreadable_record_is_moved_aside_after_its_age_and_its_rules_swept() {
    let (lab, _peer) = bridge_lab();
    let attachments = lab.run_dir().join("attachments");
    std::fs::create_dir_all(&attachments).expect("dir");
    let (old, young) = (
        host_veth_name("old", "net1"),
        host_veth_name("young", "net1"),
    );
    std::fs::write(attachments.join("old-net1.json"), b"{\"containerId\": ").expect("write");
    age_file(&attachments.join("old-net1.json"), Duration::from_secs(120));
    std::fs::write(attachments.join("young-net1.json"), b"{").expect("write");
    install_rules(&lab, &old, 1);
    install_rules(&lab, &young, 2);

    let daemon = started(&lab, 9774, &["--resync", "2"]);
    let aside = attachments.join("quarantine").join("old-net1.json");
    wait_for(
        "the old record to be moved aside",
        Duration::from_secs(10),
        || aside.exists(),
    );
    wait_for("its rules to be swept", Duration::from_secs(10), || {
        !ports(&lab).contains(&old)
    });
    assert!(!attachments.join("old-net1.json").exists());
    // Perhaps being written: left alone, and so are its rules.
    assert!(attachments.join("young-net1.json").exists());
    assert_eq!(ports(&lab), vec![young.clone()]);
    assert_eq!(
        metric(&lab, 9774, "portgroupd_records_quarantined_total"),
        1
    );
    let log = daemon.log();
    assert!(
        log.contains("moved aside an attachment record unreadable"),
        "{log}"
    );

    // Once it is old enough, it goes the same way (at the next resync).
    age_file(
        &attachments.join("young-net1.json"),
        Duration::from_secs(120),
    );
    wait_for(
        "the young record to be moved aside",
        Duration::from_secs(15),
        || {
            attachments
                .join("quarantine")
                .join("young-net1.json")
                .exists()
        },
    );
    wait_for("its rules to be swept", Duration::from_secs(10), || {
        ports(&lab).is_empty()
    });
    assert_eq!(
        metric(&lab, 9774, "portgroupd_records_quarantined_total"),
        2
    );
}

#[test]
fn a_bridge_mode_attachment_whose_del_never_comes_is_collected_with_its_rules() {
    let (lab, peer) = bridge_lab();
    let (leaked, kept) = (attach(&lab, 1), attach(&lab, 2));
    let attachments = lab.run_dir().join("attachments");
    for vm in [&leaked, &kept] {
        let record = Record::find(&attachments, &vm.id, "net1")
            .expect("read")
            .expect("a record");
        assert_eq!(record.portgroup, None, "bridge: mode");
        assert!(record.port_security.is_some(), "{record:?}");
        // Past the collector's minimum age.
        age_file(&record.path(&attachments), Duration::from_secs(120));
    }
    let daemon = started(&lab, 9775, &["--resync", "3600"]);
    assert_eq!(ports(&lab).len(), 2);

    // Multus lost the pod: its netns goes, the veth with it, and no DEL comes.
    let Vm {
        ns, host_veth, id, ..
    } = leaked;
    drop(ns);
    wait_for("the leak to be collected", Duration::from_secs(30), || {
        Record::find(&attachments, &id, "net1")
            .expect("read")
            .is_none()
    });
    wait_for("its rules to go", Duration::from_secs(10), || {
        !ports(&lab).contains(&host_veth)
    });
    assert_eq!(ports(&lab), vec![kept.host_veth.clone()]);
    assert_eq!(
        probe(&kept, &peer),
        (true, false),
        "the other VM keeps its rules"
    );
    wait_for(
        "the collection to be logged",
        Duration::from_secs(10),
        || daemon.log().contains("collected stale attachment"),
    );
    assert!(daemon.log().contains(&format!("attachment={id}/net1")));
    assert_eq!(metric(&lab, 9775, "portgroupd_gc_removed_total"), 1);
}

/// Every element of a port, in any set, as `nft list table` names them.
fn any_element_of(lab: &DaemonLab, host_veth: &str) -> bool {
    let out = lab
        .node
        .exec(&["nft", "list", "table", "bridge", "portgroup"]);
    String::from_utf8_lossy(&out.stdout).contains(host_veth)
}

/// A DAD binding the kernel would have learnt for the port (and its claim).
fn bind_by_dad(lab: &DaemonLab, host_veth: &str, addr: std::net::Ipv6Addr) {
    nft(
        lab,
        &format!("add element bridge portgroup fcfs_bindings {{ \"{host_veth}\" . {addr} }}"),
    );
    nft(
        lab,
        &format!("add element bridge portgroup fcfs_claimed {{ {addr} }}"),
    );
    assert!(bound(lab, host_veth, addr));
}

fn sweeping(lab: &DaemonLab) -> bool {
    let run = portgroup::paths::RunDir(lab.run_dir());
    lab.node.run(move || portgroup::sweeper::sweeping(&run))
}

/// Where portgroupd runs, a DEL takes its port down, deletes its veth and
/// leaves the port's elements, DAD bindings included, to portgroupd, whose
/// sweep (woken by the record's removal, not by a resync) removes them all.
/// A VM sending forged frames all along gets none past the port.
#[test]
fn a_del_leaves_its_rules_to_the_sweep_and_its_port_never_sends_unchecked() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (lab, peer) = bridge_lab();
    let vm = attach(&lab, 1);
    let daemon = started(&lab, 9781, &["--resync", "3600"]);
    wait_for("portgroupd's sweeper lock", Duration::from_secs(10), || {
        sweeping(&lab)
    });
    let dad: std::net::Ipv6Addr = "2001:db8::5".parse().unwrap();
    bind_by_dad(&lab, &vm.host_veth, dad);

    let rx = PacketSocket::open(&peer, "eth0");
    let tx = PacketSocket::open(&vm.ns, "net1");
    let (own, forged) = (udp_frame(&vm, vm.ip, 1), udp_frame(&vm, FORGED_IP, 2));
    let _ = rx.drain();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                if tx.try_send(&own).is_err() || tx.try_send(&forged).is_err() {
                    break; // its interface is gone
                }
                sent += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let (code, out) = cni(&lab, "DEL", &vm);
    assert_eq!(code, 0, "DEL: {out}");
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let seen: Vec<u8> = markers(&rx.listen(Duration::from_millis(100)));
    assert!(
        sent > 0 && seen.contains(&1),
        "the VM's own frames passed before its DEL ({sent} sent)"
    );
    assert!(
        !seen.contains(&2),
        "a forged frame got past the port during its DEL"
    );
    assert!(!lab.node.link_names().contains(&vm.host_veth));

    wait_for(
        "the sweep of the deleted port's elements",
        Duration::from_secs(10),
        || !any_element_of(&lab, &vm.host_veth),
    );
    assert!(!bound(&lab, &vm.host_veth, dad));
    assert!(
        daemon.log().contains(&format!(
            "removed the rules of 1 port(s) no attachment record owns: {}",
            vm.host_veth
        )),
        "the DEL removed them itself, or the sweep did not say so: {}",
        daemon.log()
    );
}

/// A port made again under the name of one whose DEL left its elements (the
/// same container and interface, before any sweep): the new port gets exactly
/// its own, none of the old port's addresses or DAD bindings. Without a
/// portgroupd (no sweeper lock), a DEL removes its port's elements itself.
#[test]
fn a_port_made_again_under_a_left_name_inherits_nothing_and_a_del_alone_cleans_up() {
    let (lab, peer) = bridge_lab();
    let run = portgroup::paths::RunDir(lab.run_dir());
    // portgroupd's lock, held with no daemon: nothing sweeps.
    let held = lab
        .node
        .run(move || portgroup::sweeper::hold(&run))
        .expect("take the sweeper lock")
        .expect("the lock is free");
    let old = attach(&lab, 1);
    let dad: std::net::Ipv6Addr = "2001:db8::5".parse().unwrap();
    bind_by_dad(&lab, &old.host_veth, dad);
    let (code, out) = cni(&lab, "DEL", &old);
    assert_eq!(code, 0, "DEL: {out}");
    assert!(
        ports(&lab).contains(&old.host_veth) && bound(&lab, &old.host_veth, dad),
        "the DEL was meant to leave its elements to the sweep"
    );

    let again = Vm {
        ns: Netns::new("vm"),
        id: old.id.clone(),
        mac: [0x02, 0x50, 0x56, 0, 2, 1],
        ip: Ipv4Addr::new(10, 0, 0, 31),
        host_veth: old.host_veth.clone(),
    };
    let (code, out) = cni(&lab, "ADD", &again);
    assert_eq!(code, 0, "ADD again: {out}");
    assert!(
        !bound(&lab, &again.host_veth, dad),
        "the old port's DAD binding stayed"
    );
    let table = String::from_utf8_lossy(
        &lab.node
            .exec(&["nft", "list", "table", "bridge", "portgroup"])
            .stdout,
    )
    .into_owned();
    assert!(
        !table.contains(&old.ip.to_string()),
        "the old address stayed:\n{table}"
    );
    assert!(
        !table.contains(&MacAddr(old.mac).to_string()),
        "the old MAC stayed:\n{table}"
    );
    // The old port's address is a forged one for the new port.
    let rx = PacketSocket::open(&peer, "eth0");
    let tx = PacketSocket::open(&again.ns, "net1");
    let _ = rx.drain();
    tx.send(&udp_frame(&again, again.ip, 1));
    tx.send(&udp_frame(&again, old.ip, 3));
    let seen: Vec<u8> = markers(&rx.listen(Duration::from_millis(300)));
    assert!(seen.contains(&1), "the new port's own frame was dropped");
    assert!(
        !seen.contains(&3),
        "the new port sent from the old port's address"
    );

    drop(held);
    let (code, out) = cni(&lab, "DEL", &again);
    assert_eq!(code, 0, "DEL: {out}");
    assert!(
        !any_element_of(&lab, &again.host_veth),
        "without portgroupd, the DEL leaves elements behind"
    );
}
