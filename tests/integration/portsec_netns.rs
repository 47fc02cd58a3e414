//! Port security with real frames, in private network namespaces (needs root).
//!
//! Topology per test: a "node" namespace with bridge br0, a "vm" namespace whose
//! eth0 is a veth to port `pv1` on br0, and a "peer" namespace on port `pp1`.
//! Frames are crafted in the VM namespace with an AF_PACKET socket and watched
//! for in the peer namespace with another; each carries a marker so background
//! traffic does not count.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Raw sockets and libnftables through libc; each block says why it is sound.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use portgroup::mac::MacAddr;
use portgroup::portsec::{self, DropCounters, PortRules};
use portgroup_testkit::frame::{arp, eth, icmp_echo, ipv4, ipv6, nd, udp};
use portgroup_testkit::{numbered_port as port, Netns, PacketSocket};

const VM_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x03];
const OTHER_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x99];
const BCAST: [u8; 6] = [0xff; 6];
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const FORGED_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

fn vm_ip6() -> Ipv6Addr {
    "2001:db8::2".parse().unwrap()
}
fn forged_ip6() -> Ipv6Addr {
    "2001:db8::99".parse().unwrap()
}

struct PortLab {
    node: Netns,
    vm: Netns,
    peer: Netns,
}

fn mac_str(m: &[u8; 6]) -> String {
    MacAddr(*m).to_string()
}

fn lab() -> PortLab {
    let (node, vm, peer) = (Netns::new("node"), Netns::new("vm"), Netns::new("peer"));
    node.ip_line("link add br0 type bridge");
    node.ip_line("link set br0 up");
    for (port, ns, mac, v4, v6) in [
        ("pv1", &vm, VM_MAC, "10.0.0.2/24", "2001:db8::2/64"),
        ("pp1", &peer, PEER_MAC, "10.0.0.3/24", "2001:db8::3/64"),
    ] {
        node.ip_line(&format!(
            "link add {port} type veth peer name eth0 netns {}",
            ns.name
        ));
        node.ip_line(&format!("link set {port} master br0 up"));
        ns.ip_line(&format!("link set eth0 address {}", mac_str(&mac)));
        ns.ip_line(&format!("addr add {v4} dev eth0"));
        ns.ip_line(&format!("addr add {v6} dev eth0 nodad"));
        ns.ip_line("link set eth0 up");
    }
    PortLab { node, vm, peer }
}

fn vm_rules() -> PortRules {
    PortRules {
        host_veth: "pv1".into(),
        mac: MacAddr(VM_MAC),
        ips: vec![IpAddr::V4(VM_IP), IpAddr::V6(vm_ip6())],
    }
}

fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T, portgroup::Error> + Send + 'static,
) -> Result<T, portgroup::Error> {
    ns.run(f)
}

// ---------------------------------------------------------------- frames

fn marker(id: u8) -> Vec<u8> {
    vec![b'P', b'G', b'T', b'!', id]
}

/// The test frames: (id, what, frame, counter expected to count its drop).
fn probes() -> Vec<(u8, &'static str, Vec<u8>, Option<&'static str>)> {
    let solicited: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let ll: Ipv6Addr = "fe80::50:56ff:fe00:2".parse().unwrap();
    vec![
        // forged: must be dropped
        (
            1,
            "forged source MAC",
            eth(
                BCAST,
                OTHER_MAC,
                0x0800,
                &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&marker(1))),
            ),
            Some("mac"),
        ),
        (
            2,
            "forged source IPv4",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(FORGED_IP, PEER_IP, 1, &icmp_echo(&marker(2))),
            ),
            Some("ip4"),
        ),
        (
            3,
            "ARP reply with forged sender IP",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(2, VM_MAC, FORGED_IP, PEER_IP, &marker(3)),
            ),
            Some("arp"),
        ),
        (
            4,
            "ARP with forged sender MAC",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(2, OTHER_MAC, VM_IP, PEER_IP, &marker(4)),
            ),
            Some("arp"),
        ),
        (
            5,
            "forged source IPv6",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(forged_ip6(), all_nodes, 59, &marker(5)),
            ),
            Some("ip6"),
        ),
        (
            6,
            "neighbour advertisement for a foreign address",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(ll, all_nodes, 58, &nd(136, forged_ip6(), &marker(6))),
            ),
            Some("nd"),
        ),
        (
            7,
            "VLAN-tagged forged IPv4",
            eth(BCAST, VM_MAC, 0x8100, &{
                let mut v = vec![0, 100, 0x08, 0x00];
                v.extend(ipv4(FORGED_IP, PEER_IP, 1, &icmp_echo(&marker(7))));
                v
            }),
            Some("vlan"),
        ),
        (
            8,
            "UDP 68->67 from 0.0.0.0 to a non-DHCP port is still checked",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    17,
                    &udp(68, 53, &marker(8)),
                ),
            ),
            Some("ip4"),
        ),
        // legitimate: must pass
        (
            20,
            "own IPv4",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&marker(20))),
            ),
            None,
        ),
        (
            21,
            "DHCP discover from 0.0.0.0",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    17,
                    &udp(68, 67, &marker(21)),
                ),
            ),
            None,
        ),
        (
            22,
            "ARP probe (sender 0.0.0.0)",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(1, VM_MAC, Ipv4Addr::UNSPECIFIED, VM_IP, &marker(22)),
            ),
            None,
        ),
        (
            23,
            "own ARP reply",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(2, VM_MAC, VM_IP, PEER_IP, &marker(23)),
            ),
            None,
        ),
        (
            24,
            "IPv6 DAD (NS from ::)",
            eth(
                [0x33, 0x33, 0xff, 0, 0, 2],
                VM_MAC,
                0x86dd,
                &ipv6(
                    Ipv6Addr::UNSPECIFIED,
                    solicited,
                    58,
                    &nd(135, vm_ip6(), &marker(24)),
                ),
            ),
            None,
        ),
        (
            25,
            "IPv6 from link-local",
            eth(BCAST, VM_MAC, 0x86dd, &ipv6(ll, all_nodes, 59, &marker(25))),
            None,
        ),
        (
            26,
            "own IPv6",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ip6(), all_nodes, 59, &marker(26)),
            ),
            None,
        ),
        (
            27,
            "neighbour advertisement for its own address",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ip6(), all_nodes, 58, &nd(136, vm_ip6(), &marker(27))),
            ),
            None,
        ),
    ]
}

// ---------------------------------------------------------------- AF_PACKET

/// Marker ids in the frames `socket` hears during `window`.
fn seen(socket: &PacketSocket, window: Duration) -> HashSet<u8> {
    socket
        .listen(window)
        .iter()
        .filter_map(|frame| {
            let pos = frame.windows(4).position(|w| w == b"PGT!")?;
            frame.get(pos + 4).copied()
        })
        .collect()
}

/// Sends every probe from the VM and returns the ids the peer received.
fn run_probes(lab: &PortLab) -> HashSet<u8> {
    let rx = PacketSocket::open(&lab.peer, "eth0");
    let tx = PacketSocket::open(&lab.vm, "eth0");
    // Drain whatever was queued before.
    let _ = seen(&rx, Duration::from_millis(100));
    for (_, _, frame, _) in probes() {
        tx.send(&frame);
    }
    seen(&rx, Duration::from_millis(600))
}

fn counters(lab: &PortLab) -> DropCounters {
    in_ns(&lab.node, portsec::counters).expect("counters")
}

fn ping(ns: &Netns, args: &[&str]) -> bool {
    let mut v = vec!["ping", "-c", "1", "-W", "2"];
    v.extend_from_slice(args);
    ns.exec(&v).status.success()
}

// ---------------------------------------------------------------- tests

#[test]
fn spoofed_frames_are_dropped_and_counted_own_traffic_passes() {
    let lab = lab();
    let all: HashSet<u8> = probes().iter().map(|p| p.0).collect();

    // Without rules everything arrives: the harness can see forged frames.
    let before = run_probes(&lab);
    assert_eq!(before, all, "without port security every probe must arrive");

    let rules = vm_rules();
    let r = rules.clone();
    in_ns(&lab.node, move || portsec::install(&r)).expect("install");
    let r = rules.clone();
    in_ns(&lab.node, move || portsec::verify(&r)).expect("verify after install");
    let listed = lab
        .node
        .exec(&["nft", "list", "table", "bridge", "portgroup"]);
    println!("{}", String::from_utf8_lossy(&listed.stdout));

    let c0 = counters(&lab);
    let got = run_probes(&lab);
    let c1 = counters(&lab);
    println!("drop counters after the probes: {c1:?}");
    let mut expected_drops = DropCounters::default();
    for (id, what, _, reason) in probes() {
        match reason {
            Some(counter) => {
                assert!(!got.contains(&id), "{what} (probe {id}) went through");
                match counter {
                    "mac" => expected_drops.mac += 1,
                    "arp" => expected_drops.arp += 1,
                    "ip4" => expected_drops.ip4 += 1,
                    "ip6" => expected_drops.ip6 += 1,
                    "nd" => expected_drops.nd += 1,
                    "vlan" => expected_drops.vlan += 1,
                    _ => unreachable!(),
                }
            }
            None => assert!(got.contains(&id), "{what} (probe {id}) was dropped"),
        }
    }
    // The VM's own stack may add drops of its own (none expected: it only uses
    // its addresses); at least every forged probe was counted, by reason.
    let delta = DropCounters {
        mac: c1.mac - c0.mac,
        arp: c1.arp - c0.arp,
        ip4: c1.ip4 - c0.ip4,
        ip6: c1.ip6 - c0.ip6,
        nd: c1.nd - c0.nd,
        vlan: c1.vlan - c0.vlan,
    };
    assert_eq!(delta, expected_drops, "drop counters by reason");

    // Real traffic of the VM with its own addresses works both ways.
    assert!(
        ping(&lab.vm, &["10.0.0.3"]),
        "ping over IPv4 with its own IP"
    );
    assert!(
        ping(&lab.vm, &["2001:db8::3"]),
        "ping over IPv6 with its own IP"
    );
    // A source address the VM really holds but was not declared is refused.
    lab.vm.ip_line("addr add 10.0.0.50/32 dev eth0");
    assert!(
        !ping(&lab.vm, &["-I", "10.0.0.50", "10.0.0.3"]),
        "undeclared source IP"
    );
    // The peer's port is not ours: anything it sends is untouched.
    assert!(ping(&lab.peer, &["10.0.0.2"]));

    // After remove, forged frames go through again.
    in_ns(&lab.node, || portsec::remove("pv1")).expect("remove");
    let after = run_probes(&lab);
    assert_eq!(after, all, "after remove every probe must arrive again");
    let r = rules.clone();
    assert!(in_ns(&lab.node, move || portsec::verify(&r)).is_err());
}

#[test]
fn port_without_ips_is_mac_locked_only() {
    let lab = lab();
    let r = PortRules {
        ips: vec![],
        ..vm_rules()
    };
    let r2 = r.clone();
    in_ns(&lab.node, move || portsec::install(&r2)).expect("install");
    in_ns(&lab.node, move || portsec::verify(&r)).expect("verify");
    let got = run_probes(&lab);
    assert!(!got.contains(&1), "forged MAC must still be dropped");
    assert!(
        !got.contains(&4),
        "forged ARP sender MAC must still be dropped"
    );
    for id in [2, 3, 5, 6, 7, 20, 21, 22, 23, 24, 25, 26, 27] {
        assert!(
            got.contains(&id),
            "probe {id} must pass on a port without IPs"
        );
    }
}

#[test]
fn verify_remove_and_reinstall() {
    let node = Netns::new("node");
    let run = |f: fn() -> Result<(), portgroup::Error>| in_ns(&node, f);
    // Nothing installed: remove is fine, verify says what is missing.
    run(|| portsec::remove("pvx")).expect("remove of an unknown port");
    let err = run(|| portsec::verify(&vm_rules()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing") || err.contains("not in set"),
        "{err}"
    );

    run(|| portsec::install(&vm_rules())).expect("install");
    run(|| portsec::verify(&vm_rules())).expect("verify");
    let other_mac = || PortRules {
        mac: MacAddr(OTHER_MAC),
        ..vm_rules()
    };
    let e = in_ns(&node, move || portsec::verify(&other_mac()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("MAC"), "{e}");
    let fewer = || PortRules {
        ips: vec![IpAddr::V4(VM_IP)],
        ..vm_rules()
    };
    let e = in_ns(&node, move || portsec::verify(&fewer()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("IPv6"), "{e}");
    let more = || {
        let mut r = vm_rules();
        r.ips.push(IpAddr::V4(FORGED_IP));
        r
    };
    let e = in_ns(&node, move || portsec::verify(&more()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("IPv4"), "{e}");
    let open = || PortRules {
        ips: vec![],
        ..vm_rules()
    };
    assert!(in_ns(&node, move || portsec::verify(&open())).is_err());

    // Re-install with other values replaces the old ones exactly.
    in_ns(&node, move || portsec::install(&more())).expect("re-install");
    in_ns(&node, move || portsec::verify(&more())).expect("verify new");
    in_ns(&node, move || portsec::install(&other_mac())).expect("re-install");
    in_ns(&node, move || portsec::verify(&other_mac())).expect("verify other MAC");
    run(|| portsec::install(&vm_rules())).expect("install again (idempotent)");
    run(|| portsec::install(&vm_rules())).expect("install again (idempotent)");
    run(|| portsec::verify(&vm_rules())).expect("verify");

    // A damaged table is noticed by verify and repaired by install.
    let out = node.exec(&["nft", "flush", "chain", "bridge", "portgroup", "port_in"]);
    assert!(out.status.success());
    let e = run(|| portsec::verify(&vm_rules()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chains"), "{e}");
    run(|| portsec::install(&vm_rules())).expect("install repairs");
    run(|| portsec::verify(&vm_rules())).expect("verify after repair");

    run(|| portsec::remove("pv1")).expect("remove");
    run(|| portsec::remove("pv1")).expect("remove twice");
    assert!(run(|| portsec::verify(&vm_rules())).is_err());
    assert_eq!(in_ns(&node, portsec::ports).unwrap(), Vec::<String>::new());
    let listed = node.exec(&[
        "nft",
        "-j",
        "list",
        "set",
        "bridge",
        "portgroup",
        "port_ip4",
    ]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("10.0.0.2"));

    // Bad input is an error, never a panic.
    for name in ["", "a-name-longer-than-15", "a/b"] {
        let e = in_ns(&node, move || {
            portsec::install(&PortRules {
                host_veth: name.into(),
                ..vm_rules()
            })
        });
        assert!(
            matches!(e, Err(portgroup::Error::PortSecurity(_))),
            "{name:?}: {e:?}"
        );
        assert!(in_ns(&node, move || portsec::remove(name)).is_err());
    }
    let e = run(|| {
        portsec::install(&PortRules {
            mac: MacAddr(BCAST),
            ..vm_rules()
        })
    });
    assert!(matches!(e, Err(portgroup::Error::PortSecurity(_))));
}

#[test]
fn garbage_collection_keeps_only_live_ports() {
    let node = Netns::new("node");
    for i in 0..5u8 {
        in_ns(&node, move || {
            portsec::install(&PortRules {
                host_veth: format!("gc{i}"),
                mac: MacAddr([2, 0, 0, 0, 1, i]),
                ips: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, i))],
            })
        })
        .expect("install");
    }
    let removed = in_ns(&node, || {
        portsec::remove_all_not_in(&["gc1".into(), "gc3".into()])
    })
    .expect("gc");
    assert_eq!(removed, ["gc0", "gc2", "gc4"]);
    assert_eq!(in_ns(&node, portsec::ports).unwrap(), ["gc1", "gc3"]);
    in_ns(&node, || {
        portsec::verify(&PortRules {
            host_veth: "gc3".into(),
            mac: MacAddr([2, 0, 0, 0, 1, 3]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3))],
        })
    })
    .expect("kept port intact");
}

#[test]
fn concurrent_installs_all_land() {
    let node = Netns::new("node");
    // Twenty threads, each with its own netlink socket, racing on an empty
    // namespace: the table is created concurrently too.
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let fd = node.fd().try_clone().unwrap();
            std::thread::spawn(move || {
                portgroup::netns::run_in(&fd, move || Ok(portsec::install(&port(i)))).unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("concurrent install");
    }
    // Plus twenty processes: the plugin's real situation.
    let children: Vec<_> = (20..40).map(|i| install_in_child(&node, i)).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let ports = in_ns(&node, portsec::ports).unwrap();
    assert_eq!(ports.len(), 40, "{ports:?}");
    for i in 0..40 {
        in_ns(&node, move || portsec::verify(&port(i))).expect("each port verified");
    }
    // Exactly one copy of the rules.
    let rules = node.exec(&[
        "nft",
        "-a",
        "list",
        "chain",
        "bridge",
        "portgroup",
        "prerouting",
    ]);
    let text = String::from_utf8_lossy(&rules.stdout);
    assert_eq!(text.matches("jump port_in").count(), 1, "{text}");
}

/// Set in a child process started by [`install_in_child`]: the port it installs.
const CHILD_PORT_ENV: &str = "PGT_INSTALL_PORT";

/// Starts this test binary again, inside `ns`, running only
/// `port_installed_by_a_child_process` as a child that installs port `i`.
fn install_in_child(ns: &Netns, i: u32) -> std::process::Child {
    // libtest names a test by its module path without the crate's name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let test = format!("{module}::port_installed_by_a_child_process");
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(std::env::current_exe().expect("current exe"))
        .args(["--exact", &test, "--nocapture"])
        .env(CHILD_PORT_ENV, i.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start a child process")
}

#[test]
fn port_installed_by_a_child_process() {
    if let Ok(i) = std::env::var(CHILD_PORT_ENV) {
        // The child's part, in the namespace it was started in.
        portsec::install(&port(i.parse().expect("port number"))).expect("install in the child");
        return;
    }
    // A port installed by another process, as the plugin does it, is there and whole.
    let node = Netns::new("node");
    let status = install_in_child(&node, 7)
        .wait()
        .expect("wait for the child");
    assert!(status.success(), "child: {status}");
    assert_eq!(in_ns(&node, portsec::ports).unwrap(), ["pgs7"]);
    in_ns(&node, || portsec::verify(&port(7))).expect("the child's port verified");
}

#[test]
fn a_thousand_ports_install_verify_and_collect() {
    let node = Netns::new("node");
    in_ns(&node, || {
        (0..1000).try_for_each(|i| portsec::install(&port(i)))
    })
    .expect("install 1000 ports");
    assert_eq!(in_ns(&node, portsec::ports).unwrap().len(), 1000);
    in_ns(&node, || portsec::verify(&port(999))).expect("verify at 1000 ports");
    in_ns(&node, || portsec::install(&port(500))).expect("re-install at 1000 ports");
    in_ns(&node, || portsec::verify(&port(500))).expect("verify the re-installed port");
    in_ns(&node, || portsec::remove("pgs500")).expect("remove at 1000 ports");
    in_ns(&node, || portsec::remove("pgs500")).expect("remove an absent port");
    assert!(in_ns(&node, || portsec::verify(&port(500))).is_err());
    let removed = in_ns(&node, || portsec::remove_all_not_in(&["pgs7".into()])).unwrap();
    assert_eq!(removed.len(), 998);
    assert_eq!(in_ns(&node, portsec::ports).unwrap(), ["pgs7"]);
    in_ns(&node, || portsec::verify(&port(7))).expect("the kept port is whole");
}

#[test]
fn foreign_table_layout_is_a_clear_error() {
    let node = Netns::new("node");
    let out = node.exec(&[
        "nft",
        "add table bridge portgroup; add set bridge portgroup ports { type ipv4_addr; }",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = in_ns(&node, || portsec::install(&vm_rules())).unwrap_err();
    assert_eq!(e.code(), portgroup::error::code::PORT_SECURITY);
    let text = e.to_string();
    println!("{text}");
    assert!(
        text.contains("set ports") && text.contains("another layout"),
        "{text}"
    );
}
