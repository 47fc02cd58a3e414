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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::libc;
use portgroup::mac::MacAddr;
use portgroup::netns;
use portgroup::portsec::{self, DropCounters, PortRules};

// ---------------------------------------------------------------- namespaces

struct Ns {
    name: String,
    fd: OwnedFd,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("pgt-{tag}-{:08x}", rand::random::<u32>());
        sh(&["ip", "netns", "add", &name]);
        let fd = netns::open(&Path::new("/var/run/netns").join(&name)).expect("open netns");
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns { name, fd }
    }

    fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        sh(&v);
    }

    /// Runs `f` in this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        netns::run_in(&self.fd, move || Ok(f())).expect("run in netns")
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

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

struct Lab {
    node: Ns,
    vm: Ns,
    peer: Ns,
}

fn mac_str(m: &[u8; 6]) -> String {
    MacAddr(*m).to_string()
}

fn lab() -> Lab {
    let (node, vm, peer) = (Ns::new("node"), Ns::new("vm"), Ns::new("peer"));
    node.ip("link add br0 type bridge");
    node.ip("link set br0 up");
    for (port, ns, mac, v4, v6) in [
        ("pv1", &vm, VM_MAC, "10.0.0.2/24", "2001:db8::2/64"),
        ("pp1", &peer, PEER_MAC, "10.0.0.3/24", "2001:db8::3/64"),
    ] {
        node.ip(&format!(
            "link add {port} type veth peer name eth0 netns {}",
            ns.name
        ));
        node.ip(&format!("link set {port} master br0 up"));
        ns.ip(&format!("link set eth0 address {}", mac_str(&mac)));
        ns.ip(&format!("addr add {v4} dev eth0"));
        ns.ip(&format!("addr add {v6} dev eth0 nodad"));
        ns.ip("link set eth0 up");
    }
    Lab { node, vm, peer }
}

fn vm_rules() -> PortRules {
    PortRules {
        host_veth: "pv1".into(),
        mac: MacAddr(VM_MAC),
        ips: vec![IpAddr::V4(VM_IP), IpAddr::V6(vm_ip6())],
    }
}

fn in_ns<T: Send + 'static>(
    ns: &Ns,
    f: impl FnOnce() -> Result<T, portgroup::Error> + Send + 'static,
) -> Result<T, portgroup::Error> {
    ns.run(f)
}

// ---------------------------------------------------------------- frames

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn icmp_echo(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0, 0, 1, 0, 1];
    m.extend_from_slice(payload);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    a.extend_from_slice(marker);
    a
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 255]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// ICMPv6 neighbour solicitation (135) or advertisement (136) for `target`.
fn nd(kind: u8, target: Ipv6Addr, marker: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(marker);
    m
}

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

fn packet_socket(ns: &Ns, ifname: &'static str) -> OwnedFd {
    ns.run(move || {
        // SAFETY: plain socket calls with valid arguments; the fd is owned at once.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(ifname).unwrap();
            let index = libc::if_nametoindex(name.as_ptr());
            assert!(index > 0, "no {ifname}");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            fd
        }
    })
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: sending a valid buffer on a bound packet socket.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
        )
    };
    assert_eq!(
        n as usize,
        frame.len(),
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// Marker ids seen on `fd` until `quiet` passes with nothing new.
fn seen(fd: &OwnedFd, wait: Duration) -> HashSet<u8> {
    let mut ids = HashSet::new();
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n <= 0 {
            continue;
        }
        let frame = &buf[..n as usize];
        if let Some(pos) = frame.windows(4).position(|w| w == b"PGT!") {
            if let Some(id) = frame.get(pos + 4) {
                ids.insert(*id);
            }
        }
    }
    ids
}

/// Sends every probe from the VM and returns the ids the peer received.
fn run_probes(lab: &Lab) -> HashSet<u8> {
    let rx = packet_socket(&lab.peer, "eth0");
    let tx = packet_socket(&lab.vm, "eth0");
    // Drain whatever was queued before.
    let _ = seen(&rx, Duration::from_millis(100));
    for (_, _, frame, _) in probes() {
        send(&tx, &frame);
    }
    seen(&rx, Duration::from_millis(600))
}

fn counters(lab: &Lab) -> DropCounters {
    in_ns(&lab.node, portsec::counters).expect("counters")
}

fn ping(ns: &Ns, args: &[&str]) -> bool {
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
    lab.vm.ip("addr add 10.0.0.50/32 dev eth0");
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
    let node = Ns::new("node");
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
    let node = Ns::new("node");
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

fn port(i: u32) -> PortRules {
    PortRules {
        host_veth: format!("pgs{i}"),
        mac: MacAddr([2, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]),
        ips: vec![
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            )),
        ],
    }
}

#[test]
fn concurrent_installs_all_land() {
    let node = Ns::new("node");
    // Twenty threads, each with its own netlink socket, racing on an empty
    // namespace: the table is created concurrently too.
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let fd = node.fd.try_clone().unwrap();
            std::thread::spawn(move || {
                netns::run_in(&fd, move || Ok(portsec::install(&port(i)))).unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("concurrent install");
    }
    // Plus twenty processes: the plugin's real situation.
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (20..40)
        .map(|i| {
            Command::new("ip")
                .args(["netns", "exec", &node.name])
                .arg(&exe)
                .args(["--exact", "install_one_port_from_env", "--nocapture"])
                .env("PGT_INSTALL_PORT", i.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
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

/// Helper for `concurrent_installs_all_land`: run as a child process inside the node netns.
#[test]
fn install_one_port_from_env() {
    if let Ok(i) = std::env::var("PGT_INSTALL_PORT") {
        portsec::install(&port(i.parse().unwrap())).expect("install from a child process");
    }
}

#[test]
fn foreign_table_layout_is_a_clear_error() {
    let node = Ns::new("node");
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
