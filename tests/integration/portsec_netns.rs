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

use std::collections::{BTreeMap, HashSet};
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
        no_router_solicitations(ns);
        ns.ip_line("link set eth0 up");
    }
    PortLab { node, vm, peer }
}

/// A namespace's kernel solicits routers from its own link-local about 2, 6
/// and 14 s after eth0 comes up. Port security drops those of an address its
/// port never claimed, and the drop would land in whichever window of a test
/// was counting drops then: the tests' own frames are what is counted.
fn no_router_solicitations(ns: &Netns) {
    let set = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"]);
    assert!(set.status.success(), "{set:?}");
}

fn vm_rules() -> PortRules {
    PortRules {
        host_veth: "pv1".into(),
        mac: MacAddr(VM_MAC),
        ips: vec![IpAddr::V4(VM_IP), IpAddr::V6(vm_ip6())],
        allow_router_advertisements: false,
        allow_dhcp_server: false,
        trunk: false,
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

fn all_nodes() -> Ipv6Addr {
    "ff02::1".parse().unwrap()
}
/// The VM's own link-local address: the modified EUI-64 of VM_MAC.
fn vm_ll() -> Ipv6Addr {
    "fe80::50:56ff:fe00:2".parse().unwrap()
}
/// The router's link-local address a hostile VM would claim.
fn router_ll() -> Ipv6Addr {
    "fe80::1".parse().unwrap()
}
/// A SLAAC address the VM formed itself from a router's /64 (not declared).
fn slaac_ip6() -> Ipv6Addr {
    "2001:db8::50:56ff:fe00:2".parse().unwrap()
}

/// An ICMPv6 message: type, code 0, checksum left zero (see `nd`), `body`, marker.
fn icmpv6(kind: u8, body: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(body);
    m.extend_from_slice(trailer);
    m
}

/// A router advertisement: hop limit 64, router lifetime 1800 s.
fn router_advert(id: u8) -> Vec<u8> {
    icmpv6(
        134,
        &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0],
        &marker(id),
    )
}

/// A redirect of traffic for the peer's address to `target`.
fn redirect(target: Ipv6Addr, id: u8) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&"2001:db8::3".parse::<Ipv6Addr>().unwrap().octets());
    icmpv6(137, &body, &marker(id))
}

/// An 802.1Q-style tag (`tpid`, VID `vid`) in front of `ethertype` and `payload`.
fn tagged(tpid: u16, vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tpid.to_be_bytes());
    v.extend_from_slice(&vid.to_be_bytes());
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An 802.3 frame: a length where the ethertype would be, then `llc`.
fn ieee8023(dst: [u8; 6], llc: &[u8]) -> Vec<u8> {
    eth(dst, VM_MAC, llc.len() as u16, llc)
}

/// One frame of the table: sent from the VM, expected at the peer or dropped
/// with `drop`'s counter (a reason of `DropCounters::by_reason`).
#[derive(Clone)]
struct Case {
    id: u8,
    what: &'static str,
    frame: Vec<u8>,
    drop: Option<&'static str>,
}

fn case(id: u8, what: &'static str, frame: Vec<u8>, drop: Option<&'static str>) -> Case {
    Case {
        id,
        what,
        frame,
        drop,
    }
}

/// Frames every access port drops, whatever it knows of the VM's addresses.
fn every_port_drops() -> Vec<Case> {
    let m = marker;
    vec![
        case(
            1,
            "forged source MAC",
            eth(
                BCAST,
                OTHER_MAC,
                0x0800,
                &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&m(1))),
            ),
            Some("mac"),
        ),
        case(
            4,
            "ARP with forged sender MAC",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(2, OTHER_MAC, VM_IP, PEER_IP, &m(4)),
            ),
            Some("arp"),
        ),
        case(
            7,
            "802.1Q-tagged IPv4 (VID 100)",
            eth(BCAST, VM_MAC, 0x8100, &{
                tagged_inner(100, 0x0800, &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&m(7))))
            }),
            Some("vlan"),
        ),
        case(
            40,
            "802.1ad + 802.1Q double-tagged IPv4",
            eth(
                BCAST,
                VM_MAC,
                0x88a8,
                &tagged_inner(
                    200,
                    0x8100,
                    &tagged_inner(100, 0x0800, &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&m(40)))),
                ),
            ),
            Some("vlan"),
        ),
        case(
            41,
            "0x9100-tagged IPv4 with a forged source",
            eth(
                BCAST,
                VM_MAC,
                0x9100,
                &tagged_inner(
                    100,
                    0x0800,
                    &ipv4(FORGED_IP, PEER_IP, 1, &icmp_echo(&m(41))),
                ),
            ),
            Some("vlan"),
        ),
        case(
            42,
            "VID-0 priority-tagged ARP with a forged sender MAC",
            eth(
                BCAST,
                VM_MAC,
                0x8100,
                &tagged_inner(0x6000, 0x0806, &arp(2, OTHER_MAC, PEER_IP, PEER_IP, &m(42))),
            ),
            Some("vlan"),
        ),
        case(
            43,
            "STP BPDU to 01:80:c2:00:00:00",
            ieee8023([0x01, 0x80, 0xc2, 0, 0, 0], &{
                // LLC 42 42 03, then a configuration BPDU's first bytes.
                let mut v = vec![0x42, 0x42, 0x03, 0, 0, 0, 0, 0x80, 0];
                v.extend(m(43));
                v
            }),
            Some("bpdu"),
        ),
        case(
            44,
            "router advertisement",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 58, &router_advert(44)),
            ),
            Some("ra"),
        ),
        case(
            49,
            "router advertisement behind a hop-by-hop options header",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 0, &{
                    // Next header ICMPv6, length 0 (8 bytes), PadN of 4.
                    let mut v = vec![58, 0, 1, 4, 0, 0, 0, 0];
                    v.extend(router_advert(49));
                    v
                }),
            ),
            Some("ra"),
        ),
        case(
            45,
            "ICMPv6 redirect",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 58, &redirect(vm_ll(), 45)),
            ),
            Some("redirect"),
        ),
        case(
            46,
            "neighbour advertisement for the router's link-local fe80::1",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 58, &nd(136, router_ll(), &m(46))),
            ),
            Some("nd"),
        ),
        case(
            47,
            "DHCPv4 server reply (UDP 67 -> 68) from the VM's own IP",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(VM_IP, Ipv4Addr::BROADCAST, 17, &udp(67, 68, &m(47))),
            ),
            Some("dhcp_server"),
        ),
        case(
            48,
            "DHCPv6 server reply (UDP 547 -> 546) from the VM's link-local",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 17, &udp(547, 546, &m(48))),
            ),
            Some("dhcp_server"),
        ),
    ]
}

fn tagged_inner(tci: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    // `tagged` minus the TPID: what follows an ethertype field that says "tag".
    tagged(0, tci, ethertype, payload)[2..].to_vec()
}

/// Frames an IP-locked port drops besides those of every port.
fn locked_port_drops() -> Vec<Case> {
    let m = marker;
    let forged_ip4 = |id: u8| ipv4(FORGED_IP, PEER_IP, 1, &icmp_echo(&m(id)));
    vec![
        case(
            2,
            "forged source IPv4",
            eth(BCAST, VM_MAC, 0x0800, &forged_ip4(2)),
            Some("ip4"),
        ),
        case(
            3,
            "ARP reply with forged sender IP",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(2, VM_MAC, FORGED_IP, PEER_IP, &m(3)),
            ),
            Some("arp"),
        ),
        case(
            8,
            "UDP 68->53 from 0.0.0.0 (not DHCP) is still checked",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    17,
                    &udp(68, 53, &m(8)),
                ),
            ),
            Some("ip4"),
        ),
        case(
            50,
            "MPLS (0x8847) carrying a forged IPv4",
            eth(BCAST, VM_MAC, 0x8847, &{
                let mut v = vec![0x00, 0x01, 0x01, 0x40]; // label 16, bottom of stack
                v.extend(forged_ip4(50));
                v
            }),
            Some("ethertype"),
        ),
        case(
            51,
            "802.3 LLC/SNAP carrying a forged IPv4",
            ieee8023(BCAST, &{
                let mut v = vec![0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00];
                v.extend(forged_ip4(51));
                v
            }),
            Some("ethertype"),
        ),
        case(
            52,
            "PPPoE discovery (0x8863)",
            eth(BCAST, VM_MAC, 0x8863, &{
                let mut v = vec![0x11, 0x09, 0, 0, 0, 0];
                v.extend(m(52));
                v
            }),
            Some("ethertype"),
        ),
        case(
            53,
            "PPPoE session (0x8864) carrying a forged IPv4",
            eth(BCAST, VM_MAC, 0x8864, &{
                let ip = forged_ip4(53);
                let mut v = vec![0x11, 0, 0, 1];
                v.extend(((ip.len() + 2) as u16).to_be_bytes());
                v.extend([0x00, 0x21]); // PPP protocol: IPv4
                v.extend(ip);
                v
            }),
            Some("ethertype"),
        ),
        case(
            54,
            "RARP with a forged sender MAC",
            eth(BCAST, VM_MAC, 0x8035, &{
                let mut v = arp(
                    3,
                    OTHER_MAC,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    &m(54),
                );
                v[18..24].copy_from_slice(&OTHER_MAC);
                v
            }),
            Some("arp"),
        ),
    ]
}

/// Frames of an honest VM that pass on every port.
fn every_port_passes() -> Vec<Case> {
    let m = marker;
    let solicited: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
    vec![
        case(
            20,
            "own IPv4",
            eth(
                BCAST,
                VM_MAC,
                0x0800,
                &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&m(20))),
            ),
            None,
        ),
        case(
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
                    &udp(68, 67, &m(21)),
                ),
            ),
            None,
        ),
        case(
            22,
            "ARP probe (sender 0.0.0.0)",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(1, VM_MAC, Ipv4Addr::UNSPECIFIED, VM_IP, &m(22)),
            ),
            None,
        ),
        case(
            23,
            "own ARP reply",
            eth(
                BCAST,
                VM_MAC,
                0x0806,
                &arp(2, VM_MAC, VM_IP, PEER_IP, &m(23)),
            ),
            None,
        ),
        case(
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
                    &nd(135, vm_ll(), &m(24)),
                ),
            ),
            None,
        ),
        case(
            25,
            "IPv6 from its link-local",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 59, &m(25)),
            ),
            None,
        ),
        case(
            28,
            "neighbour advertisement for its own link-local",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 58, &nd(136, vm_ll(), &m(28))),
            ),
            None,
        ),
        case(
            29,
            "RARP announcement from its own MAC (QEMU after a live migration)",
            eth(BCAST, VM_MAC, 0x8035, &{
                let mut v = arp(
                    3,
                    VM_MAC,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    &m(29),
                );
                v[18..24].copy_from_slice(&VM_MAC);
                v
            }),
            None,
        ),
        case(
            30,
            "router solicitation from its link-local",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(
                    vm_ll(),
                    "ff02::2".parse().unwrap(),
                    58,
                    &icmpv6(133, &[0; 4], &m(30)),
                ),
            ),
            None,
        ),
        case(
            31,
            "DHCPv6 solicit (UDP 546 -> 547) from its link-local",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(
                    vm_ll(),
                    "ff02::1:2".parse().unwrap(),
                    17,
                    &udp(546, 547, &m(31)),
                ),
            ),
            None,
        ),
    ]
}

/// The VM's declared IPv6 address in use.
fn own_ip6_passes() -> Vec<Case> {
    let m = marker;
    vec![
        case(
            26,
            "own IPv6",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ip6(), all_nodes(), 59, &m(26)),
            ),
            None,
        ),
        case(
            27,
            "neighbour advertisement for its own address",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ip6(), all_nodes(), 58, &nd(136, vm_ip6(), &m(27))),
            ),
            None,
        ),
    ]
}

/// IPv6 sources and targets a port whose IPv6 is locked drops.
fn locked_ip6_drops() -> Vec<Case> {
    let m = marker;
    vec![
        case(
            5,
            "forged source IPv6",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(forged_ip6(), all_nodes(), 59, &m(5)),
            ),
            Some("ip6"),
        ),
        case(
            6,
            "neighbour advertisement for a foreign global address",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(vm_ll(), all_nodes(), 58, &nd(136, forged_ip6(), &m(6))),
            ),
            Some("nd"),
        ),
    ]
}

/// A SLAAC address of the VM's own making, and its neighbour advertisement.
fn slaac_cases(drop: bool) -> Vec<Case> {
    let m = marker;
    vec![
        case(
            60,
            "SLAAC global IPv6 (not declared)",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(slaac_ip6(), all_nodes(), 59, &m(60)),
            ),
            drop.then_some("ip6"),
        ),
        case(
            61,
            "neighbour advertisement for its SLAAC address",
            eth(
                BCAST,
                VM_MAC,
                0x86dd,
                &ipv6(slaac_ip6(), all_nodes(), 58, &nd(136, slaac_ip6(), &m(61))),
            ),
            drop.then_some("nd"),
        ),
    ]
}

const VM2_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x04];
const VM2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

/// The VM's stable-privacy link-local (RFC 7217; NetworkManager's default):
/// not the EUI-64 of its MAC, so only its DAD makes it the port's.
fn stable_ll() -> Ipv6Addr {
    "fe80::a1b2:c3d4:e5f6:1".parse().unwrap()
}
/// The second VM's stable-privacy link-local.
fn vm2_stable_ll() -> Ipv6Addr {
    "fe80::a1b2:c3d4:e5f6:2".parse().unwrap()
}
/// The second VM's EUI-64 link-local (of VM2_MAC).
fn vm2_ll() -> Ipv6Addr {
    "fe80::50:56ff:fe00:4".parse().unwrap()
}

/// Duplicate-address detection for `target` from `mac`: a neighbour
/// solicitation from :: to the target's solicited-node group.
fn dad(mac: [u8; 6], target: Ipv6Addr, id: u8) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ]);
    eth(
        [0x33, 0x33, 0xff, t[13], t[14], t[15]],
        mac,
        0x86dd,
        &ipv6(
            Ipv6Addr::UNSPECIFIED,
            group,
            58,
            &nd(135, target, &marker(id)),
        ),
    )
}

/// An IPv6 packet from `src` (no next header), sent by `mac`.
fn ip6_from(mac: [u8; 6], src: Ipv6Addr, id: u8) -> Vec<u8> {
    eth(BCAST, mac, 0x86dd, &ipv6(src, all_nodes(), 59, &marker(id)))
}

/// A neighbour advertisement for `target`, from `src`, sent by `mac`.
fn na(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr, id: u8) -> Vec<u8> {
    eth(
        BCAST,
        mac,
        0x86dd,
        &ipv6(src, all_nodes(), 58, &nd(136, target, &marker(id))),
    )
}

/// DAD for the SLAAC address, then its use and its neighbour advertisement.
fn slaac_after_dad() -> Vec<Case> {
    let mut cases = vec![case(
        62,
        "DAD for its SLAAC address",
        dad(VM_MAC, slaac_ip6(), 62),
        None,
    )];
    cases.extend(slaac_cases(false));
    cases
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

/// Sends every case's frame from the VM and returns the ids the peer received.
fn send_cases(lab: &PortLab, cases: &[Case]) -> HashSet<u8> {
    send_from(lab, &lab.vm, cases)
}

/// Sends every case's frame from `vm`'s eth0 and returns the ids the peer received.
fn send_from(lab: &PortLab, vm: &Netns, cases: &[Case]) -> HashSet<u8> {
    let rx = PacketSocket::open(&lab.peer, "eth0");
    let tx = PacketSocket::open(vm, "eth0");
    // Drain whatever was queued before.
    let _ = seen(&rx, Duration::from_millis(100));
    for c in cases {
        tx.send(&c.frame);
    }
    seen(&rx, Duration::from_millis(600))
}

fn counters(lab: &PortLab) -> DropCounters {
    in_ns(&lab.node, portsec::counters).expect("counters")
}

/// Runs a frame table against `rules`: every frame arrives before the rules
/// are installed (so the table can fail), then each is dropped with its counter
/// moving by exactly one, or passes.
fn frame_table(lab: &PortLab, rules: &PortRules, cases: &[Case]) {
    phased_frame_table(
        lab,
        std::slice::from_ref(rules),
        &[(&lab.vm, cases.to_vec())],
    );
}

/// A frame table in phases, each sent from one VM in order after the previous
/// (what a phase claims through DAD, the next finds claimed): every frame of
/// every phase arrives before `rules` are installed, then each is dropped with
/// its counter or passes, and the counters move by exactly the drops.
fn phased_frame_table(lab: &PortLab, rules: &[PortRules], phases: &[(&Netns, Vec<Case>)]) {
    let ids: Vec<u8> = phases
        .iter()
        .flat_map(|(_, cases)| cases.iter().map(|c| c.id))
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "case ids are unique"
    );
    for (vm, cases) in phases {
        let before = send_from(lab, vm, cases);
        for c in cases {
            assert!(
                before.contains(&c.id),
                "without port security, {} (case {}) must arrive",
                c.what,
                c.id
            );
        }
    }

    for r in rules {
        let r = r.clone();
        in_ns(&lab.node, move || portsec::install(&r)).expect("install");
    }
    for r in rules {
        let r = r.clone();
        in_ns(&lab.node, move || portsec::verify(&r)).expect("verify after install");
    }

    let c0 = counters(lab);
    let mut expected: BTreeMap<&str, u64> = c0.by_reason().iter().map(|(r, _)| (*r, 0)).collect();
    for (vm, cases) in phases {
        let got = send_from(lab, vm, cases);
        for c in cases {
            match c.drop {
                Some(reason) => {
                    assert!(
                        !got.contains(&c.id),
                        "{} (case {}) went through",
                        c.what,
                        c.id
                    );
                    *expected.get_mut(reason).expect("a known reason") += 1;
                }
                None => assert!(
                    got.contains(&c.id),
                    "{} (case {}) was dropped",
                    c.what,
                    c.id
                ),
            }
        }
    }
    let c1 = counters(lab);
    println!("drop counters after the frames: {c1:?}");
    // The VMs' own stacks only use what they may (their addresses, their
    // link-locals), so they add no drops of their own.
    let delta: BTreeMap<&str, u64> = c0
        .by_reason()
        .iter()
        .zip(c1.by_reason())
        .map(|((reason, a), (_, b))| (*reason, b - a))
        .collect();
    assert_eq!(delta, expected, "drop counters by reason");
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
    let rules = vm_rules();
    let cases: Vec<Case> = [
        every_port_drops(),
        locked_port_drops(),
        locked_ip6_drops(),
        slaac_cases(true),
        every_port_passes(),
        own_ip6_passes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    frame_table(&lab, &rules, &cases);
    let listed = lab
        .node
        .exec(&["nft", "list", "table", "bridge", "portgroup"]);
    println!("{}", String::from_utf8_lossy(&listed.stdout));

    // Real traffic of the VM with its own addresses works both ways.
    assert!(
        ping(&lab.vm, &["10.0.0.3"]),
        "ping over IPv4 with its own IP"
    );
    assert!(
        ping(&lab.vm, &["2001:db8::3"]),
        "ping over IPv6 with its own IP"
    );
    assert!(
        ping(&lab.vm, &["-I", "eth0", "fe80::50:56ff:fe00:3"]),
        "ping over its link-local (neighbour discovery both ways)"
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
    let after = send_cases(&lab, &cases);
    assert_eq!(
        after,
        cases.iter().map(|c| c.id).collect(),
        "after remove every frame must arrive again"
    );
    let r = rules.clone();
    assert!(in_ns(&lab.node, move || portsec::verify(&r)).is_err());
}

#[test]
fn port_with_only_ipv4_known_keeps_slaac_and_link_local() {
    let lab = lab();
    let rules = PortRules {
        ips: vec![IpAddr::V4(VM_IP)],
        ..vm_rules()
    };
    // IPv4 is locked, IPv6 is not dropped wholesale but governed by FCFS: its
    // SLAAC address passes once claimed through DAD, its MAC's link-local
    // passes; an address it never claimed does not; the router and DHCP guards
    // and NA targets hold.
    let never_claimed = own_ip6_passes().into_iter().map(|c| {
        let reason = if c.id == 26 { "ip6" } else { "nd" };
        Case {
            what: "IPv6 address neither declared nor claimed through DAD",
            drop: Some(reason),
            ..c
        }
    });
    let cases: Vec<Case> = [
        every_port_drops(),
        locked_port_drops(),
        slaac_after_dad(),
        every_port_passes(),
        never_claimed.collect(),
    ]
    .into_iter()
    .flatten()
    .collect();
    frame_table(&lab, &rules, &cases);
    assert!(ping(&lab.vm, &["10.0.0.3"]), "ping over IPv4");

    // The guest's own DAD claims an address it configures: real traffic from
    // it works; from its address configured without DAD it does not.
    lab.vm.ip_line("addr add 2001:db8::77/64 dev eth0");
    wait_for_dad(&lab.vm);
    assert!(
        ping(&lab.vm, &["-I", "2001:db8::77", "2001:db8::3"]),
        "ping from an address the guest claimed through DAD"
    );
    assert!(
        !ping(&lab.vm, &["-I", "2001:db8::2", "2001:db8::3"]),
        "an address configured without DAD is not the port's"
    );
    let listed = lab
        .node
        .exec(&["nft", "list", "set", "bridge", "portgroup", "fcfs_bindings"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("\"pv1\" . 2001:db8::77 timeout 7d expires"),
        "{listed}"
    );
}

/// Waits until no address of `ns`'s eth0 is tentative (its DAD is done).
fn wait_for_dad(ns: &Netns) {
    for _ in 0..100 {
        let out = ns.exec(&["ip", "-6", "addr", "show", "dev", "eth0", "tentative"]);
        if out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("DAD did not finish within 10 s");
}

#[test]
fn port_with_only_ipv6_known_keeps_ipv4() {
    let lab = lab();
    let rules = PortRules {
        ips: vec![IpAddr::V6(vm_ip6())],
        ..vm_rules()
    };
    let m = marker;
    let mut cases: Vec<Case> = [
        every_port_drops(),
        locked_ip6_drops(),
        slaac_cases(true),
        every_port_passes(),
        own_ip6_passes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Not in the ethertype allowlist: still dropped, the port is IP-locked.
    cases.extend(
        locked_port_drops()
            .into_iter()
            .filter(|c| c.drop == Some("ethertype")),
    );
    cases.push(case(
        2,
        "IPv4 from an address not known (IPv4 is not locked)",
        eth(
            BCAST,
            VM_MAC,
            0x0800,
            &ipv4(FORGED_IP, PEER_IP, 1, &icmp_echo(&m(2))),
        ),
        None,
    ));
    frame_table(&lab, &rules, &cases);
}

#[test]
fn port_without_ips_is_mac_locked_and_untagged() {
    let lab = lab();
    let rules = PortRules {
        ips: vec![],
        ..vm_rules()
    };
    let mut cases: Vec<Case> = [every_port_drops(), every_port_passes(), own_ip6_passes()]
        .into_iter()
        .flatten()
        .collect();
    // Source IPs and ethertypes are not restricted without IPs.
    for c in locked_port_drops() {
        cases.push(Case { drop: None, ..c });
    }
    cases.extend(slaac_cases(false));
    frame_table(&lab, &rules, &cases);
}

/// A trunk port: the VM tags its own VLANs, so a frame with one 802.1Q tag and
/// the VM's MAC passes, whatever address it carries inside (the addresses are
/// the VLAN's). The MAC lock and the BPDU filter hold, tagged or not; 802.1ad,
/// 0x9100, 802.1Q inside 802.1Q (QinQ) and VID-0 priority tags are dropped.
#[test]
fn trunk_port_passes_its_tags_but_not_foreign_macs_bpdus_or_qinq() {
    let lab = lab();
    let rules = PortRules {
        ips: vec![],
        trunk: true,
        ..vm_rules()
    };
    let m = marker;
    let ping = |src: Ipv4Addr, id: u8| ipv4(src, PEER_IP, 1, &icmp_echo(&m(id)));
    // Forged source MAC, 802.1ad + 802.1Q, 0x9100, VID-0 ARP, BPDU.
    let still_dropped = [1, 40, 41, 42, 43];
    let mut cases: Vec<Case> = every_port_drops()
        .into_iter()
        .filter(|c| still_dropped.contains(&c.id) || c.id == 7)
        .map(|c| match c.id {
            7 => Case { drop: None, ..c },
            _ => c,
        })
        .collect();
    cases.extend([
        case(
            90,
            "802.1Q-tagged IPv4 (VID 200) from an address the node does not know",
            eth(
                BCAST,
                VM_MAC,
                0x8100,
                &tagged_inner(200, 0x0800, &ping(FORGED_IP, 90)),
            ),
            None,
        ),
        case(
            91,
            "802.1Q-tagged IPv4 from a foreign source MAC",
            eth(
                BCAST,
                OTHER_MAC,
                0x8100,
                &tagged_inner(100, 0x0800, &ping(VM_IP, 91)),
            ),
            Some("mac"),
        ),
        case(
            92,
            "802.1Q inside 802.1Q (QinQ)",
            eth(
                BCAST,
                VM_MAC,
                0x8100,
                &tagged_inner(100, 0x8100, &tagged_inner(300, 0x0800, &ping(VM_IP, 92))),
            ),
            Some("vlan"),
        ),
        case(
            93,
            "802.1Q-tagged STP BPDU",
            eth([0x01, 0x80, 0xc2, 0, 0, 0], VM_MAC, 0x8100, &{
                let mut llc = vec![0x42, 0x42, 0x03, 0, 0, 0, 0, 0x80, 0];
                llc.extend(m(93));
                tagged_inner(100, llc.len() as u16, &llc)
            }),
            Some("bpdu"),
        ),
    ]);
    cases.extend(every_port_passes());
    frame_table(&lab, &rules, &cases);

    // The same port as an access port: its tagged frames are dropped, and
    // CHECK sees the difference.
    let access = PortRules {
        trunk: false,
        ..rules.clone()
    };
    let e = in_ns(&lab.node, {
        let r = access.clone();
        move || portsec::verify(&r)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("802.1Q-tagged frames dropped wanted"), "{e}");
    in_ns(&lab.node, move || portsec::install(&access)).expect("re-install");
    let tagged_ok: Vec<Case> = every_port_drops()
        .into_iter()
        .filter(|c| c.id == 7)
        .collect();
    assert!(
        send_cases(&lab, &tagged_ok).is_empty(),
        "an access port drops tags"
    );
}

#[test]
fn portgroup_opt_ins_let_routers_and_dhcp_servers_through() {
    let lab = lab();
    let rules = PortRules {
        allow_router_advertisements: true,
        allow_dhcp_server: true,
        trunk: false,
        ..vm_rules()
    };
    let allowed = [44, 45, 46, 47, 48, 49];
    let cases: Vec<Case> = every_port_drops()
        .into_iter()
        .map(|c| {
            if allowed.contains(&c.id) {
                Case { drop: None, ..c }
            } else {
                c
            }
        })
        .chain(locked_ip6_drops())
        .chain(every_port_passes())
        .collect();
    frame_table(&lab, &rules, &cases);

    // Each opt-in on its own: RA without DHCP server.
    let ra_only = PortRules {
        allow_dhcp_server: false,
        ..rules.clone()
    };
    let e = in_ns(&lab.node, {
        let r = ra_only.clone();
        move || portsec::verify(&r)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("DHCP server"), "{e}");
    let r = ra_only.clone();
    in_ns(&lab.node, move || portsec::install(&r)).expect("re-install");
    let got = send_cases(
        &lab,
        &every_port_drops()
            .into_iter()
            .filter(|c| [44, 47, 48].contains(&c.id))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        got,
        HashSet::from([44]),
        "RA passes, DHCP server replies do not"
    );
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
                allow_router_advertisements: false,
                allow_dhcp_server: false,
                trunk: false,
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
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
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

#[test]
fn layout_upgrade_backfills_derived_elements_of_running_ports() {
    let node = Netns::new("node");
    let v4_only = || PortRules {
        host_veth: "old1".into(),
        ips: vec![IpAddr::V4(VM_IP)],
        ..vm_rules()
    };
    in_ns(&node, move || portsec::install(&v4_only())).expect("install");
    // What a table of the previous layout holds for a running port: no
    // per-family or link-local elements, and chains that differ.
    let nft = |cmd: &str| {
        let out = node.exec(&["nft", cmd]);
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("flush set bridge portgroup ip6_open_ports");
    nft("flush set bridge portgroup port_ll");
    nft("flush chain bridge portgroup port_in");
    let e = in_ns(&node, move || portsec::verify(&v4_only()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chains"), "{e}");

    // The next install on the node rebuilds the chains and gives the running
    // port back what follows from its MAC and addresses.
    in_ns(&node, || portsec::install(&port(1))).expect("install another port");
    in_ns(&node, move || portsec::verify(&v4_only())).expect("the running port is whole again");
    let listed = node.exec(&["nft", "list", "set", "bridge", "portgroup", "port_ll"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("fe80::50:56ff:fe00:2"));
}

#[test]
fn a_declared_link_local_may_be_advertised_without_locking_ipv6() {
    let lab = lab();
    // A guest with a stable-privacy link-local: its reservation lists it.
    let declared: Ipv6Addr = "fe80::a1b2:c3d4:e5f6:1".parse().unwrap();
    let rules = PortRules {
        ips: vec![IpAddr::V4(VM_IP), IpAddr::V6(declared)],
        ..vm_rules()
    };
    let m = marker;
    let cases: Vec<Case> = [
        vec![
            case(
                70,
                "neighbour advertisement for its declared link-local",
                eth(
                    BCAST,
                    VM_MAC,
                    0x86dd,
                    &ipv6(declared, all_nodes(), 58, &nd(136, declared, &m(70))),
                ),
                None,
            ),
            case(
                71,
                "neighbour advertisement for another link-local",
                eth(
                    BCAST,
                    VM_MAC,
                    0x86dd,
                    &ipv6(
                        declared,
                        all_nodes(),
                        58,
                        &nd(136, "fe80::a1b2:c3d4:e5f6:2".parse().unwrap(), &m(71)),
                    ),
                ),
                Some("nd"),
            ),
        ],
        slaac_after_dad(),
        every_port_drops(),
        every_port_passes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    frame_table(&lab, &rules, &cases);
}

/// Two IPv4-only ports (IPv6 governed by FCFS): the first VM claims a
/// stable-privacy link-local and a SLAAC global through DAD and uses them; the
/// second VM's DAD for either, its use of them as source and its neighbour
/// advertisements for them are dropped; sources nobody claimed are dropped.
/// The bindings go with the first port's removal and survive a chain rebuild.
#[test]
fn fcfs_a_port_uses_what_it_claimed_through_dad_and_nobody_else_does() {
    let lab = lab();
    let vm2 = second_vm(&lab);

    let port1 = PortRules {
        ips: vec![IpAddr::V4(VM_IP)],
        ..vm_rules()
    };
    let port2 = PortRules {
        host_veth: "pv2".into(),
        mac: MacAddr(VM2_MAC),
        ips: vec![IpAddr::V4(VM2_IP)],
        ..vm_rules()
    };
    let unclaimed: Ipv6Addr = "fe80::dead:beef:1".parse().unwrap();
    let first: Vec<Case> = [
        vec![
            case(
                100,
                "DAD for its stable-privacy link-local",
                dad(VM_MAC, stable_ll(), 100),
                None,
            ),
            case(
                101,
                "DAD for its SLAAC global",
                dad(VM_MAC, slaac_ip6(), 101),
                None,
            ),
            case(
                102,
                "IPv6 from its link-local after DAD",
                ip6_from(VM_MAC, stable_ll(), 102),
                None,
            ),
            case(
                103,
                "neighbour advertisement for its link-local after DAD",
                na(VM_MAC, stable_ll(), stable_ll(), 103),
                None,
            ),
            case(
                104,
                "DHCPv6 solicit from its link-local after DAD",
                eth(
                    BCAST,
                    VM_MAC,
                    0x86dd,
                    &ipv6(
                        stable_ll(),
                        "ff02::1:2".parse().unwrap(),
                        17,
                        &udp(546, 547, &marker(104)),
                    ),
                ),
                None,
            ),
            case(
                105,
                "DAD again for its link-local (refresh)",
                dad(VM_MAC, stable_ll(), 105),
                None,
            ),
            case(
                106,
                "IPv6 from a link-local nobody claimed",
                ip6_from(VM_MAC, unclaimed, 106),
                Some("ip6"),
            ),
            case(
                107,
                "router solicitation from ::",
                eth(
                    BCAST,
                    VM_MAC,
                    0x86dd,
                    &ipv6(
                        Ipv6Addr::UNSPECIFIED,
                        "ff02::2".parse().unwrap(),
                        58,
                        &icmpv6(133, &[0; 4], &marker(107)),
                    ),
                ),
                None,
            ),
        ],
        // SLAAC global after DAD on a port with IPv4 only reserved.
        slaac_cases(false),
        every_port_passes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let second = vec![
        case(
            110,
            "second port's DAD for the first's link-local",
            dad(VM2_MAC, stable_ll(), 110),
            Some("dad"),
        ),
        case(
            111,
            "second port's IPv6 from the first's link-local",
            ip6_from(VM2_MAC, stable_ll(), 111),
            Some("ip6"),
        ),
        case(
            112,
            "second port's neighbour advertisement for the first's link-local",
            na(VM2_MAC, vm2_ll(), stable_ll(), 112),
            Some("nd"),
        ),
        case(
            113,
            "second port's DAD for the first's SLAAC global",
            dad(VM2_MAC, slaac_ip6(), 113),
            Some("dad"),
        ),
        case(
            114,
            "second port's IPv6 from the first's SLAAC global",
            ip6_from(VM2_MAC, slaac_ip6(), 114),
            Some("ip6"),
        ),
        case(
            115,
            "second port's neighbour advertisement for the first's SLAAC global",
            na(VM2_MAC, vm2_ll(), slaac_ip6(), 115),
            Some("nd"),
        ),
        case(
            116,
            "second port's DAD for the link-local of the first's MAC",
            dad(VM2_MAC, vm_ll(), 116),
            Some("dad"),
        ),
        case(
            117,
            "second port's DAD for its own link-local",
            dad(VM2_MAC, vm2_stable_ll(), 117),
            None,
        ),
        case(
            118,
            "second port's IPv6 from its own link-local after DAD",
            ip6_from(VM2_MAC, vm2_stable_ll(), 118),
            None,
        ),
        case(
            119,
            "second port's IPv6 from its MAC's link-local",
            ip6_from(VM2_MAC, vm2_ll(), 119),
            None,
        ),
    ];
    phased_frame_table(
        &lab,
        &[port1.clone(), port2.clone()],
        &[(&lab.vm, first), (&vm2, second)],
    );

    let bindings = || {
        let out = lab
            .node
            .exec(&["nft", "list", "set", "bridge", "portgroup", "fcfs_bindings"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = bindings();
    println!("{listed}");
    for (port, addr) in [
        ("pv1", stable_ll()),
        ("pv1", slaac_ip6()),
        ("pv2", vm2_stable_ll()),
    ] {
        assert!(
            listed.contains(&format!("\"{port}\" . {addr} timeout 7d expires")),
            "{port} . {addr} is bound and lapses: {listed}"
        );
    }
    assert!(
        !listed.contains(&format!("\"pv2\" . {}", stable_ll())),
        "{listed}"
    );

    // Two real guests configure one address: the first one's DAD claims it;
    // the second one's DAD is dropped (it is not told), and so is its use.
    lab.vm.ip_line("addr add 2001:db8::88/64 dev eth0");
    wait_for_dad(&lab.vm);
    let before = counters(&lab);
    vm2.ip_line("addr add 2001:db8::88/64 dev eth0");
    wait_for_dad(&vm2);
    assert!(
        ping(&lab.vm, &["-I", "2001:db8::88", "2001:db8::3"]),
        "the first guest uses what it claimed"
    );
    assert!(
        !ping(&vm2, &["-I", "2001:db8::88", "2001:db8::3"]),
        "the second guest's use of it is dropped"
    );
    let after = counters(&lab);
    assert!(after.dad > before.dad, "{before:?} -> {after:?}");
    assert!(after.ip6 > before.ip6, "{before:?} -> {after:?}");
    let listed = bindings();

    // A damaged table is rebuilt by the next install; the bindings stay.
    let out = lab
        .node
        .exec(&["nft", "flush", "chain", "bridge", "portgroup", "fcfs_dad"]);
    assert!(out.status.success());
    let r = port2.clone();
    in_ns(&lab.node, move || portsec::install(&r)).expect("install repairs");
    let r = port1.clone();
    in_ns(&lab.node, move || portsec::verify(&r)).expect("verify after repair");
    assert_eq!(
        bound_pairs(&bindings()),
        bound_pairs(&listed),
        "bindings survive a chain rebuild"
    );

    // The first port's removal takes its bindings and claims: its addresses
    // are free for the next DAD.
    in_ns(&lab.node, || portsec::remove("pv1")).expect("remove");
    let after = bindings();
    assert!(!after.contains("\"pv1\""), "{after}");
    let claimed = lab
        .node
        .exec(&["nft", "list", "set", "bridge", "portgroup", "fcfs_claimed"]);
    let claimed = String::from_utf8_lossy(&claimed.stdout);
    for addr in [stable_ll(), slaac_ip6(), vm_ll()] {
        assert!(!claimed.contains(&addr.to_string()), "{addr}: {claimed}");
    }
    let c0 = counters(&lab);
    let got = send_from(
        &lab,
        &vm2,
        &[
            case(
                120,
                "DAD for a removed port's link-local",
                dad(VM2_MAC, stable_ll(), 120),
                None,
            ),
            case(
                121,
                "IPv6 from it after DAD",
                ip6_from(VM2_MAC, stable_ll(), 121),
                None,
            ),
        ],
    );
    assert_eq!(got, HashSet::from([120, 121]));
    assert_eq!(counters(&lab), c0);
    assert!(bound_pairs(&bindings()).contains(&format!("\"pv2\" . {}", stable_ll())));

    // The collector releases them too.
    let removed = in_ns(&lab.node, || portsec::remove_all_not_in(&[])).expect("gc");
    assert_eq!(removed, Vec::<String>::new(), "pv2 still exists");
    lab.node.ip_line("link del pv2");
    let removed = in_ns(&lab.node, || portsec::remove_all_not_in(&[])).expect("gc");
    assert_eq!(removed, ["pv2"]);
    let claimed = lab
        .node
        .exec(&["nft", "list", "set", "bridge", "portgroup", "fcfs_claimed"]);
    let claimed = String::from_utf8_lossy(&claimed.stdout);
    assert!(!claimed.contains("fe80"), "{claimed}");
    assert!(!bindings().contains("pv2"));
}

/// A second VM on the lab's bridge: port `pv2`, VM2_MAC, 10.0.0.4/24.
fn second_vm(lab: &PortLab) -> Netns {
    let vm2 = Netns::new("vm2");
    lab.node.ip_line(&format!(
        "link add pv2 type veth peer name eth0 netns {}",
        vm2.name
    ));
    lab.node.ip_line("link set pv2 master br0 up");
    vm2.ip_line(&format!("link set eth0 address {}", mac_str(&VM2_MAC)));
    vm2.ip_line("addr add 10.0.0.4/24 dev eth0");
    no_router_solicitations(&vm2);
    vm2.ip_line("link set eth0 up");
    vm2
}

/// A MAC-only port (no IP known) is not source-checked, but it learns and
/// respects claims: its DAD for another port's address and its neighbour
/// advertisements for it are dropped, its own DAD binds.
#[test]
fn fcfs_a_mac_only_port_cannot_take_a_claimed_address() {
    let lab = lab();
    let vm2 = second_vm(&lab);
    let port1 = PortRules {
        ips: vec![IpAddr::V4(VM_IP)],
        ..vm_rules()
    };
    let mac_only = PortRules {
        host_veth: "pv2".into(),
        mac: MacAddr(VM2_MAC),
        ips: vec![],
        ..vm_rules()
    };
    let first = vec![
        case(
            160,
            "DAD for its link-local",
            dad(VM_MAC, stable_ll(), 160),
            None,
        ),
        case(
            161,
            "DAD for its SLAAC global",
            dad(VM_MAC, slaac_ip6(), 161),
            None,
        ),
    ];
    let second = vec![
        case(
            162,
            "MAC-only port's DAD for another port's link-local",
            dad(VM2_MAC, stable_ll(), 162),
            Some("dad"),
        ),
        case(
            163,
            "MAC-only port's neighbour advertisement for another port's SLAAC global",
            na(VM2_MAC, vm2_ll(), slaac_ip6(), 163),
            Some("nd"),
        ),
        case(
            164,
            "MAC-only port's neighbour advertisement for a global nobody holds",
            na(VM2_MAC, vm2_ll(), forged_ip6(), 164),
            None,
        ),
        case(
            165,
            "MAC-only port's IPv6 from any source (not source-checked)",
            ip6_from(VM2_MAC, forged_ip6(), 165),
            None,
        ),
        case(
            166,
            "MAC-only port's DAD for its own link-local",
            dad(VM2_MAC, vm2_stable_ll(), 166),
            None,
        ),
    ];
    phased_frame_table(
        &lab,
        &[port1, mac_only],
        &[(&lab.vm, first), (&vm2, second)],
    );
    let out = lab
        .node
        .exec(&["nft", "list", "set", "bridge", "portgroup", "fcfs_bindings"]);
    let pairs = bound_pairs(&String::from_utf8_lossy(&out.stdout));
    assert!(
        pairs.contains(&format!("\"pv2\" . {}", vm2_stable_ll())),
        "{pairs:?}"
    );
}

/// The `"port" . address` pairs of an `nft list set` of fcfs_bindings.
fn bound_pairs(listing: &str) -> std::collections::BTreeSet<String> {
    let Some((_, elements)) = listing.split_once("elements = {") else {
        return Default::default();
    };
    let elements = elements.split('}').next().unwrap_or_default();
    elements
        .split(',')
        .filter_map(|e| e.split(" timeout").next())
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// A reservation outranks a DAD claim made before it was known: installing the
/// port that declares the address takes it from the port that claimed it.
#[test]
fn fcfs_a_declared_address_is_taken_from_an_earlier_dad_claim() {
    let node = Netns::new("node");
    in_ns(&node, || portsec::install(&port(1))).expect("install");
    let taken = "2001:db8::5";
    let nft = |cmd: &str| {
        let out = node.exec(&["nft", cmd]);
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // What the packet path leaves after pgs1's DAD for the address.
    nft(&format!(
        "add element bridge portgroup fcfs_claimed {{ {taken} timeout 1h }}"
    ));
    nft(&format!(
        "add element bridge portgroup fcfs_bindings {{ \"pgs1\" . {taken} timeout 1h }}"
    ));
    let reserved = PortRules {
        ips: vec![IpAddr::V6(taken.parse().unwrap())],
        ..port(2)
    };
    let r = reserved.clone();
    in_ns(&node, move || portsec::install(&r)).expect("install the reservation");
    let list = |set: &str| {
        let out = node.exec(&["nft", "list", "set", "bridge", "portgroup", set]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let claimed = list("fcfs_claimed");
    assert!(claimed.contains(taken), "{claimed}");
    assert!(
        !claimed.contains(&format!("{taken} timeout")),
        "the claim is for good now: {claimed}"
    );
    assert!(!list("fcfs_bindings").contains(taken));
    in_ns(&node, move || portsec::verify(&reserved)).expect("verify");

    // Verify notices a declared address that lost its claim, or whose claim
    // is a DAD claim that lapses; install repairs both.
    let reserved = move || PortRules {
        ips: vec![IpAddr::V6(taken.parse().unwrap())],
        ..port(2)
    };
    for lapsing in [false, true] {
        nft(&format!(
            "delete element bridge portgroup fcfs_claimed {{ {taken} }}"
        ));
        if lapsing {
            nft(&format!(
                "add element bridge portgroup fcfs_claimed {{ {taken} timeout 1h }}"
            ));
        }
        let e = in_ns(&node, move || portsec::verify(&reserved()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fcfs_claimed"), "{e}");
        in_ns(&node, move || portsec::install(&reserved())).expect("install repairs");
        in_ns(&node, move || portsec::verify(&reserved())).expect("verify");
    }
}

/// The bindings a flush of the ruleset loses can be listed beforehand and
/// restored once the table is back: with the lifetime they had left, for
/// ports still secured, and not over an address someone holds by then.
#[test]
fn fcfs_bindings_are_listed_and_restored_after_a_flush() {
    let node = Netns::new("node");
    for i in 1..=3 {
        in_ns(&node, move || portsec::install(&port(i))).expect("install");
    }
    let nft = |cmd: &str| {
        let out = node.exec(&["nft", cmd]);
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // What the packet path leaves after DAD on pgs1, pgs2 and pgs3.
    for (port, addr) in [
        ("pgs1", "fe80::1:1"),
        ("pgs1", "fe80::1:2"),
        ("pgs2", "fe80::2:1"),
        ("pgs3", "fe80::3:1"),
    ] {
        nft(&format!(
            "add element bridge portgroup fcfs_claimed {{ {addr} timeout 1h }}"
        ));
        nft(&format!(
            "add element bridge portgroup fcfs_bindings {{ \"{port}\" . {addr} timeout 1h }}"
        ));
    }
    let snapshot = in_ns(&node, portsec::fcfs_bindings).expect("list");
    let pairs: Vec<(String, String)> = snapshot
        .iter()
        .map(|b| (b.port.clone(), b.address.to_string()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("pgs1".to_string(), "fe80::1:1".to_string()),
            ("pgs1".into(), "fe80::1:2".into()),
            ("pgs2".into(), "fe80::2:1".into()),
            ("pgs3".into(), "fe80::3:1".into())
        ]
    );
    assert!(snapshot
        .iter()
        .all(|b| b.expires > Duration::from_secs(3500) && b.expires <= Duration::from_secs(3600)));

    nft("flush ruleset");
    // Back: pgs1 as it was, pgs2 now declaring one of pgs1's old addresses,
    // pgs3 gone.
    in_ns(&node, || portsec::install(&port(1))).expect("reinstall");
    in_ns(&node, || {
        portsec::install(&PortRules {
            ips: vec![IpAddr::V6("fe80::1:2".parse().unwrap())],
            ..port(2)
        })
    })
    .expect("reinstall");
    let restored =
        in_ns(&node, move || portsec::restore_fcfs_bindings(&snapshot)).expect("restore");
    assert_eq!(restored, 2, "pgs1's first and pgs2's");
    let now = in_ns(&node, portsec::fcfs_bindings).expect("list");
    let pairs: Vec<(String, String)> = now
        .iter()
        .map(|b| (b.port.clone(), b.address.to_string()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("pgs1".to_string(), "fe80::1:1".to_string()),
            ("pgs2".into(), "fe80::2:1".into())
        ]
    );
    assert!(now.iter().all(|b| b.expires <= Duration::from_secs(3600)));
    let claimed = node.exec(&["nft", "list", "set", "bridge", "portgroup", "fcfs_claimed"]);
    let claimed = String::from_utf8_lossy(&claimed.stdout);
    assert!(claimed.contains("fe80::1:1 timeout"), "{claimed}");
    // Restoring again changes nothing.
    assert_eq!(
        in_ns(&node, move || portsec::restore_fcfs_bindings(&now)).expect("restore"),
        0
    );
}

/// A VM probing for many addresses (to fill the FCFS sets and keep other
/// ports from claiming theirs) is held to the per-port claim rate: 16 new
/// claims at once, the rest dropped as DAD; refreshing a claim is free.
#[test]
fn fcfs_new_claims_are_metered_per_port() {
    let lab = lab();
    let rules = PortRules {
        ips: vec![IpAddr::V4(VM_IP)],
        ..vm_rules()
    };
    let probed = |i: u8| -> Ipv6Addr { format!("fe80::100:{i:x}").parse().unwrap() };
    let mut cases: Vec<Case> = (0..20u8)
        .map(|i| {
            case(
                130 + i,
                if i < 16 {
                    "a new DAD claim within the port's rate"
                } else {
                    "a new DAD claim over the port's rate"
                },
                dad(VM_MAC, probed(i), 130 + i),
                (i >= 16).then_some("dad"),
            )
        })
        .collect();
    cases.extend([
        case(
            150,
            "DAD again for a claimed address (a refresh, not metered)",
            dad(VM_MAC, probed(0), 150),
            None,
        ),
        case(
            151,
            "IPv6 from a claimed address",
            ip6_from(VM_MAC, probed(15), 151),
            None,
        ),
        case(
            152,
            "IPv6 from an address whose claim was over the rate",
            ip6_from(VM_MAC, probed(16), 152),
            Some("ip6"),
        ),
    ]);
    frame_table(&lab, &rules, &cases);
    let meter = || {
        let out = lab.node.exec(&[
            "nft",
            "list",
            "set",
            "bridge",
            "portgroup",
            "fcfs_claim_rate",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = meter();
    assert!(listed.contains("\"pv1\""), "{listed}");
    in_ns(&lab.node, || portsec::remove("pv1")).expect("remove");
    let listed = meter();
    assert!(
        !listed.contains("\"pv1\""),
        "the meter goes with the port: {listed}"
    );
}

/// The sweep decides orphans from what it read, then deletes them: an ADD of
/// an orphan's name that wrote its record and installed its elements in
/// between (a DEL left that name's elements to the sweep; the same container
/// and interface came back) must not lose them. The concurrent ADD is made
/// from inside the sweep's own decision (its read of the records, made only
/// for an orphan candidate), the narrowest window there is; its commits move
/// the nf_tables generation on, so the sweep's deletion on the generation it
/// read fails and its retry sees the record.
#[test]
fn a_sweep_never_strips_a_port_made_again_while_it_decided() {
    let node = Netns::new("node");
    let result = in_ns(&node, || {
        let rules = PortRules {
            host_veth: "pgagain0".into(),
            mac: MacAddr(VM_MAC),
            ips: vec![IpAddr::V4(VM_IP)],
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        };
        // What a DEL left: the deleted port's elements, no record, no interface.
        portsec::install(&rules)?;
        let recorded = std::cell::Cell::new(false);
        let no_interface = |_: &str| false;
        let records = || {
            if !recorded.get() {
                // The ADD, just after the sweep read the records: its record
                // (from here on the sweep's answer is "owned"), then its
                // elements, as a new interface's.
                recorded.set(true);
                portsec::install_new(&rules).expect("the ADD's install");
                return HashSet::new();
            }
            HashSet::from(["pgagain0".to_string()])
        };
        let plan = portsec::heal(&[], &HashSet::new(), &no_interface, &records)?;
        Ok((plan.orphans, portsec::ports()?, recorded.get()))
    });
    let (orphans, ports, asked) = result.expect("sweep");
    assert!(
        asked,
        "the sweep never considered the port an orphan candidate"
    );
    assert_eq!(
        ports,
        vec!["pgagain0".to_string()],
        "the new port was stripped"
    );
    assert!(orphans.is_empty(), "reported as swept: {orphans:?}");
}

/// A sweep reads the records once per attempt whatever the number of orphan
/// candidates (a burst of DELs leaves many), and not at all when there is none.
#[test]
fn a_sweep_reads_the_records_once_for_many_orphans_and_never_for_none() {
    let node = Netns::new("node");
    let result = in_ns(&node, || {
        for i in 0..5u8 {
            portsec::install(&PortRules {
                host_veth: format!("pggone{i}"),
                mac: MacAddr([2, 0, 0, 0, 1, i]),
                ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + i))],
                allow_router_advertisements: false,
                allow_dhcp_server: false,
                trunk: false,
            })?;
        }
        let reads = std::cell::Cell::new(0);
        let no_interface = |_: &str| false;
        // pggone0 got a record back; the rest are orphans.
        let records = || {
            reads.set(reads.get() + 1);
            HashSet::from(["pggone0".to_string()])
        };
        let first = portsec::heal(&[], &HashSet::new(), &no_interface, &records)?;
        let reads_first = reads.replace(0);
        let keep = HashSet::from(["pggone0".to_string()]);
        let second = portsec::heal(&[], &keep, &no_interface, &records)?;
        Ok((first.orphans, reads_first, second.orphans, reads.get()))
    });
    let (orphans, reads_first, orphans_again, reads_again) = result.expect("sweeps");
    assert_eq!(
        orphans,
        ["pggone1", "pggone2", "pggone3", "pggone4"],
        "the recorded port is kept, the rest swept"
    );
    assert_eq!(reads_first, 1, "records read once for four candidates");
    assert!(orphans_again.is_empty(), "{orphans_again:?}");
    assert_eq!(reads_again, 0, "no candidate, no read");
}
