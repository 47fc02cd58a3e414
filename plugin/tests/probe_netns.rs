//! Conflict probe with real packets, in private network namespaces (needs root).
//!
//! Lab: a "node" namespace with bridge br0 (MAC set explicitly) and a veth port to a
//! "legacy host" namespace whose eth0 holds 10.10.100.21/24 and 2001:db8:100::21/64
//! (nodad) with MAC 00:50:56:12:34:56, like the source VM still running on vSphere.
//! Each test builds its own lab; namespaces are deleted by a Drop guard.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Raw sockets and libnftables through libc; each block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use portgroup::error::Error;
use portgroup::mac::MacAddr;
use portgroup::netns;
use portgroup_plugin::probe::{probe, ProbeAnswer, ProbeConfig};

const LEGACY_MAC: &str = "00:50:56:12:34:56";
const VM_MAC: &str = "00:50:56:aa:bb:01";
const BRIDGE_MAC: &str = "02:00:5e:10:0b:01";

fn mac(text: &str) -> MacAddr {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!("pgt-{role}-{:08x}", rand::random::<u32>());
        run(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }

    fn fd(&self) -> OwnedFd {
        netns::open(&PathBuf::from("/var/run/netns").join(&self.name)).unwrap()
    }

    /// Runs `work` on a thread inside this namespace.
    fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        netns::run_in(&self.fd(), move || Ok(work())).unwrap()
    }

    /// Waits until `link` is operationally up (carrier on, qdisc active).
    fn wait_up(&self, link: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new("ip")
                .args(["-n", &self.name, "-o", "link", "show", link])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("state UP") {
                return;
            }
            assert!(Instant::now() < deadline, "{link} never came up: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Lab {
    node: Netns,
    legacy: Netns,
}

impl Lab {
    /// The lab with the legacy host holding its addresses under `legacy_mac`.
    fn new(legacy_mac: &str) -> Lab {
        let node = Netns::new("node");
        let legacy = Netns::new("legacy");
        node.ip(&["link", "set", "lo", "up"]);
        node.ip(&[
            "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge",
        ]);
        node.ip(&[
            "link",
            "add",
            "vleg",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &legacy.name,
        ]);
        node.ip(&["link", "set", "vleg", "master", "br0", "up"]);
        node.ip(&["link", "set", "br0", "up"]);
        legacy.ip(&["link", "set", "lo", "up"]);
        legacy.ip(&["link", "set", "eth0", "address", legacy_mac, "up"]);
        legacy.ip(&["addr", "add", "10.10.100.21/24", "dev", "eth0"]);
        legacy.ip(&["addr", "add", "2001:db8:100::21/64", "dev", "eth0", "nodad"]);
        node.wait_up("br0");
        node.wait_up("vleg");
        legacy.wait_up("eth0");
        Lab { node, legacy }
    }

    fn probe(&self, vm_mac: &str, ips: &[&str], config: ProbeConfig) -> Vec<ProbeAnswer> {
        self.try_probe("br0", vm_mac, ips, config).unwrap()
    }

    fn try_probe(
        &self,
        via: &str,
        vm_mac: &str,
        ips: &[&str],
        config: ProbeConfig,
    ) -> Result<Vec<ProbeAnswer>, Error> {
        let via = via.to_string();
        let vm_mac = mac(vm_mac);
        let ips: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
        self.node.run(move || probe(&via, vm_mac, &ips, &config))
    }
}

macro_rules! needs_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

fn sorted(mut answers: Vec<ProbeAnswer>) -> Vec<ProbeAnswer> {
    answers.sort_by_key(|a| (a.ip, a.mac));
    answers
}

#[test]
fn ipv4_in_use_is_answered_by_the_legacy_mac() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    let answers = lab.probe(VM_MAC, &["10.10.100.21"], ProbeConfig::default());
    assert_eq!(
        answers,
        vec![ProbeAnswer {
            ip: ip("10.10.100.21"),
            mac: mac(LEGACY_MAC)
        }]
    );
}

#[test]
fn ipv6_in_use_is_answered_by_the_legacy_mac() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    let answers = lab.probe(VM_MAC, &["2001:db8:100::21"], ProbeConfig::default());
    assert_eq!(
        answers,
        vec![ProbeAnswer {
            ip: ip("2001:db8:100::21"),
            mac: mac(LEGACY_MAC)
        }]
    );
}

#[test]
fn unused_addresses_get_no_answer() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    let answers = lab.probe(
        VM_MAC,
        &["10.10.100.99", "2001:db8:100::99"],
        ProbeConfig::default(),
    );
    assert_eq!(answers, vec![]);
}

#[test]
fn an_answer_from_the_vm_mac_is_reported_as_such() {
    needs_root!();
    // The source of a live migration: the same MAC still holds the addresses.
    let lab = Lab::new(VM_MAC);
    let answers = lab.probe(
        VM_MAC,
        &["10.10.100.21", "2001:db8:100::21"],
        ProbeConfig::default(),
    );
    assert_eq!(
        sorted(answers),
        vec![
            ProbeAnswer {
                ip: ip("10.10.100.21"),
                mac: mac(VM_MAC)
            },
            ProbeAnswer {
                ip: ip("2001:db8:100::21"),
                mac: mac(VM_MAC)
            },
        ]
    );
}

#[test]
fn many_addresses_at_once_in_one_fixed_window() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    let ips = [
        "10.10.100.21",
        "10.10.100.99",
        "10.10.100.98",
        "2001:db8:100::21",
        "2001:db8:100::99",
        "2001:db8:100::98",
        "10.10.100.21", // a duplicate is probed once
    ];
    let config = ProbeConfig::default();
    let started = Instant::now();
    let answers = lab.probe(VM_MAC, &ips, config.clone());
    let took = started.elapsed();
    println!(
        "conflict probe of {} addresses with defaults ({config:?}): {took:?} \
         (listening window {:?}, includes entering the namespace)",
        ips.len(),
        config.duration()
    );
    assert_eq!(
        sorted(answers),
        vec![
            ProbeAnswer {
                ip: ip("10.10.100.21"),
                mac: mac(LEGACY_MAC)
            },
            ProbeAnswer {
                ip: ip("2001:db8:100::21"),
                mac: mac(LEGACY_MAC)
            },
        ]
    );
}

#[test]
fn probe_time_with_defaults() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    for ips in [
        &["10.10.100.21"][..],
        &["10.10.100.21", "2001:db8:100::21"][..],
        &[
            "10.10.100.21",
            "10.10.100.22",
            "10.10.100.23",
            "10.10.100.24",
            "2001:db8:100::21",
            "2001:db8:100::22",
            "2001:db8:100::23",
            "2001:db8:100::24",
        ][..],
    ] {
        let via = "br0".to_string();
        let ips: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
        let n = ips.len();
        let (took, answers) = lab.node.run(move || {
            let started = Instant::now();
            let answers = probe(&via, mac(VM_MAC), &ips, &ProbeConfig::default());
            (started.elapsed(), answers)
        });
        let answers = answers.unwrap();
        println!(
            "probe time, defaults, {n} address(es): {took:?} ({} answer(s))",
            answers.len()
        );
    }
}

/// A raw socket in the legacy namespace that hears every frame on its eth0.
fn capture_socket(ns: &Netns) -> OwnedFd {
    ns.run(|| {
        use nix::libc;
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ALL as u16).to_be() as libc::c_int,
            )
        };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: fresh descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

fn drain(fd: &OwnedFd) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: recv into a valid buffer.
        let n = unsafe {
            nix::libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                nix::libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return frames;
        }
        frames.push(buf[..n as usize].to_vec());
    }
}

#[test]
fn probes_are_sent_from_the_bridge_mac_never_the_vm_mac() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    let capture = capture_socket(&lab.legacy);
    lab.probe(
        VM_MAC,
        &["10.10.100.99", "2001:db8:100::99"],
        ProbeConfig::default(),
    );
    let frames = drain(&capture);
    let bridge = mac(BRIDGE_MAC).0;
    let vm = mac(VM_MAC).0;
    let arp_probes: Vec<_> = frames
        .iter()
        .filter(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [10, 10, 100, 99])
        .collect();
    let dad: Vec<_> = frames
        .iter()
        .filter(|f| {
            f.len() >= 78
                && f[12..14] == [0x86, 0xdd]
                && f[54] == 135
                && f[62..78] == ip_octets("2001:db8:100::99")
        })
        .collect();
    assert_eq!(arp_probes.len(), 2, "two ARP probes (count 2)");
    assert_eq!(dad.len(), 2, "two DAD solicitations (count 2)");
    for f in &arp_probes {
        assert_eq!(f[0..6], [0xff; 6], "broadcast");
        assert_eq!(f[6..12], bridge, "Ethernet source is the bridge");
        assert_eq!(f[22..28], bridge, "ARP sender hw is the bridge");
        assert_eq!(f[28..32], [0; 4], "ARP sender IP 0.0.0.0");
        assert_eq!(f[32..38], [0; 6], "ARP target hw zero");
    }
    for f in &dad {
        assert_eq!(f[0..6], [0x33, 0x33, 0xff, 0x00, 0x00, 0x99]);
        assert_eq!(f[6..12], bridge, "Ethernet source is the bridge");
        assert_eq!(f[22..38], [0; 16], "IPv6 source ::");
    }
    for f in &frames {
        assert_ne!(f[6..12], vm, "no frame may carry the VM's MAC as source");
        assert!(
            !f.windows(6).any(|w| w == vm),
            "the VM's MAC appears nowhere in what we sent"
        );
    }
}

fn ip_octets(text: &str) -> [u8; 16] {
    match ip(text) {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(_) => unreachable!(),
    }
}

#[test]
fn an_unknown_interface_is_a_system_error() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    let err = lab
        .try_probe("nope0", VM_MAC, &["10.10.100.21"], ProbeConfig::default())
        .unwrap_err();
    assert!(matches!(err, Error::System { .. }), "{err:?}");
    assert!(err.to_string().contains("nope0"), "{err}");
}

#[test]
fn a_down_bridge_is_a_system_error() {
    needs_root!();
    let lab = Lab::new(LEGACY_MAC);
    lab.node.ip(&["link", "set", "br0", "down"]);
    let err = lab
        .try_probe("br0", VM_MAC, &["10.10.100.21"], ProbeConfig::default())
        .unwrap_err();
    assert!(matches!(err, Error::System { .. }), "{err:?}");
}

#[test]
fn nothing_to_probe_returns_at_once() {
    // No namespace needed: no socket is opened when there is nothing to send.
    let none = probe("br0", mac(VM_MAC), &[], &ProbeConfig::default()).unwrap();
    assert!(none.is_empty());
    let zero = ProbeConfig {
        count: 0,
        ..ProbeConfig::default()
    };
    assert!(probe("br0", mac(VM_MAC), &[ip("10.10.100.21")], &zero)
        .unwrap()
        .is_empty());
}

/// Sends `frames` out of `ifname` in `ns`, `delay` after being called, from a thread.
fn send_later(
    ns: &Netns,
    ifname: &'static str,
    frames: Vec<Vec<u8>>,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    let fd = ns.fd();
    std::thread::spawn(move || {
        netns::run_in(&fd, move || {
            use nix::libc;
            std::thread::sleep(delay);
            let name = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: if_nametoindex with a valid C string; socket(2) checked below.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(ifindex > 0);
            // SAFETY: plain socket(2); checked below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(fd >= 0);
            // SAFETY: fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            for frame in frames {
                // SAFETY: sockaddr_ll is plain old data.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = ifindex as i32;
                addr.sll_halen = 6;
                addr.sll_addr[..6].copy_from_slice(&frame[..6]);
                // SAFETY: sendto with valid buffer and address.
                let sent = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
            }
            Ok(())
        })
        .unwrap()
    })
}

/// Another host's RFC 5227 ARP probe for `target`, from `src`.
fn foreign_arp_probe(src: MacAddr, target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0; 10]);
    f.extend_from_slice(&target);
    f
}

/// Another host's DAD neighbour solicitation for `target`, from `src`.
fn foreign_dad(src: MacAddr, target: &str) -> Vec<u8> {
    use portgroup_plugin::probe::{icmpv6_checksum, ipv6_multicast_mac, solicited_node};
    let target: std::net::Ipv6Addr = target.parse().unwrap();
    let group = solicited_node(target);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    let sum = icmpv6_checksum(std::net::Ipv6Addr::UNSPECIFIED, group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ipv6_multicast_mac(group).0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 24, 58, 255]);
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&group.octets());
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn another_host_probing_the_same_address_is_an_answer() {
    needs_root!();
    // Another host (say, a second copy of the VM booting elsewhere) probes the same
    // addresses while we do: RFC 5227 2.1.1 and RFC 4862 5.4.3 call that a conflict.
    let lab = Lab::new(LEGACY_MAC);
    let other = mac("00:50:56:77:77:77");
    let sender = send_later(
        &lab.legacy,
        "eth0",
        vec![
            foreign_arp_probe(other, [10, 10, 100, 50]),
            foreign_dad(other, "2001:db8:100::50"),
        ],
        Duration::from_millis(60),
    );
    let answers = lab.probe(
        VM_MAC,
        &["10.10.100.50", "2001:db8:100::50", "10.10.100.51"],
        ProbeConfig::default(),
    );
    sender.join().unwrap();
    assert_eq!(
        sorted(answers),
        vec![
            ProbeAnswer {
                ip: ip("10.10.100.50"),
                mac: other
            },
            ProbeAnswer {
                ip: ip("2001:db8:100::50"),
                mac: other
            },
        ]
    );
}
