//! Conflict probe with real packets, in private network namespaces (needs root).
//!
//! Lab: a "node" namespace with bridge br0 (MAC set explicitly) and a veth port to a
//! "legacy host" namespace whose eth0 holds 10.10.100.21/24 and 2001:db8:100::21/64
//! (nodad) with MAC 00:50:56:12:34:56, like the source VM still running on vSphere.
//! Each test builds its own lab; namespaces are deleted by a Drop guard.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portgroup::error::Error;
use portgroup::mac::MacAddr;
use portgroup_plugin::probe::{probe, probe_frame, ProbeAnswer, ProbeConfig};
use portgroup_testkit::{Netns, PacketSocket};

const LEGACY_MAC: &str = "00:50:56:12:34:56";
const VM_MAC: &str = "00:50:56:aa:bb:01";
const BRIDGE_MAC: &str = "02:00:5e:10:0b:01";

fn mac(text: &str) -> MacAddr {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

struct ProbeLab {
    node: Netns,
    legacy: Netns,
}

impl ProbeLab {
    /// The lab with the legacy host holding its addresses under `legacy_mac`.
    fn new(legacy_mac: &str) -> ProbeLab {
        let node = Netns::new("node");
        let legacy = Netns::new("legacy");
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
        legacy.ip(&["link", "set", "eth0", "address", legacy_mac, "up"]);
        legacy.ip(&["addr", "add", "10.10.100.21/24", "dev", "eth0"]);
        legacy.ip(&["addr", "add", "2001:db8:100::21/64", "dev", "eth0", "nodad"]);
        node.wait_up("br0");
        node.wait_up("vleg");
        legacy.wait_up("eth0");
        ProbeLab { node, legacy }
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

fn sorted(mut answers: Vec<ProbeAnswer>) -> Vec<ProbeAnswer> {
    answers.sort_by_key(|a| (a.ip, a.mac));
    answers
}

#[test]
fn ipv4_in_use_is_answered_by_the_legacy_mac() {
    let lab = ProbeLab::new(LEGACY_MAC);
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
    let lab = ProbeLab::new(LEGACY_MAC);
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
    let lab = ProbeLab::new(LEGACY_MAC);
    let answers = lab.probe(
        VM_MAC,
        &["10.10.100.99", "2001:db8:100::99"],
        ProbeConfig::default(),
    );
    assert_eq!(answers, vec![]);
}

#[test]
fn an_answer_from_the_vm_mac_is_reported_as_such() {
    // The source of a live migration: the same MAC still holds the addresses.
    let lab = ProbeLab::new(VM_MAC);
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
    let lab = ProbeLab::new(LEGACY_MAC);
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
fn the_window_is_the_same_for_one_address_or_eight() {
    // Probes for every address go out in the same rounds, and listening always
    // lasts the whole window, so late answers are heard whatever the count.
    let lab = ProbeLab::new(LEGACY_MAC);
    let config = ProbeConfig::default();
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
        let started = Instant::now();
        let answers = lab.probe(VM_MAC, ips, config.clone());
        let took = started.elapsed();
        assert!(
            took >= config.duration(),
            "{} address(es): returned after {took:?}, before the {:?} window closed",
            ips.len(),
            config.duration()
        );
        let held: Vec<ProbeAnswer> = ["10.10.100.21", "2001:db8:100::21"]
            .into_iter()
            .filter(|held| ips.contains(held))
            .map(|held| ProbeAnswer {
                ip: ip(held),
                mac: mac(LEGACY_MAC),
            })
            .collect();
        assert_eq!(sorted(answers), held, "{ips:?}");
    }
}

/// A packet socket on the legacy host's eth0: hears every frame there from now on, and sends.
fn legacy_socket(lab: &ProbeLab) -> PacketSocket {
    PacketSocket::open(&lab.legacy, "eth0")
}

#[test]
fn probes_are_sent_from_the_bridge_mac_never_the_vm_mac() {
    let lab = ProbeLab::new(LEGACY_MAC);
    let capture = legacy_socket(&lab);
    lab.probe(
        VM_MAC,
        &["10.10.100.99", "2001:db8:100::99"],
        ProbeConfig::default(),
    );
    let frames = capture.drain();
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
    let lab = ProbeLab::new(LEGACY_MAC);
    let err = lab
        .try_probe("nope0", VM_MAC, &["10.10.100.21"], ProbeConfig::default())
        .unwrap_err();
    assert!(matches!(err, Error::System { .. }), "{err:?}");
    assert!(err.to_string().contains("nope0"), "{err}");
}

#[test]
fn a_down_bridge_is_a_system_error() {
    let lab = ProbeLab::new(LEGACY_MAC);
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

/// Sends `frames` on `socket`, `delay` after being called, from a thread.
fn send_later(
    socket: PacketSocket,
    frames: Vec<Vec<u8>>,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        for frame in frames {
            socket.send(&frame);
        }
    })
}

#[test]
fn another_host_probing_the_same_address_is_an_answer() {
    // Another host (say, a second copy of the VM booting elsewhere) probes the same
    // addresses while we do: RFC 5227 2.1.1 and RFC 4862 5.4.3 call that a conflict.
    let lab = ProbeLab::new(LEGACY_MAC);
    let other = mac("00:50:56:77:77:77");
    // Their probes are byte for byte what ours would be from their MAC.
    let sender = send_later(
        legacy_socket(&lab),
        vec![
            probe_frame(other, ip("10.10.100.50")),
            probe_frame(other, ip("2001:db8:100::50")),
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
