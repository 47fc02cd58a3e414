//! The live-migration handover with real frames, in private network namespaces
//! (needs root; a plain bridge learns MACs exactly as a VLAN's bridge does).
//!
//! Topology: a "node" namespace with bridge br0, a "vm" namespace whose eth0 is
//! a veth to port `pv1`, a "peer" namespace on port `pp1`. A held port must pass
//! nothing to the peer and teach br0 nothing until the VM announces itself;
//! frames towards it are delivered all along.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use portgroup::mac::MacAddr;
use portgroup::portsec::{self, HandoverState, Hold, PortRules};
use portgroup_testkit::frame::{arp, eth, icmp_echo, ipv4, ipv6, nd};
use portgroup_testkit::{Netns, PacketSocket};

const VM_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x03];
const OTHER_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x99];
const BCAST: [u8; 6] = [0xff; 6];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

fn vm_ip6() -> Ipv6Addr {
    "2001:db8::2".parse().unwrap()
}
fn vm_ll() -> Ipv6Addr {
    "fe80::50:56ff:fe00:2".parse().unwrap()
}
fn all_nodes() -> Ipv6Addr {
    "ff02::1".parse().unwrap()
}

struct Lab {
    node: Netns,
    vm: Netns,
    peer: Netns,
}

/// The lab with the VM's interface still down: nothing it sends can reach the
/// bridge before the test has decided whether its port is held.
fn lab() -> Lab {
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
        ns.ip_line(&format!("link set eth0 address {}", MacAddr(mac)));
        ns.ip_line(&format!("addr add {v4} dev eth0"));
        ns.ip_line(&format!("addr add {v6} dev eth0 nodad"));
    }
    peer.ip_line("link set eth0 up");
    Lab { node, vm, peer }
}

fn hold() -> Hold {
    Hold {
        host_veth: "pv1".into(),
        mac: MacAddr(VM_MAC),
        ips: vec![IpAddr::V4(VM_IP), IpAddr::V6(vm_ip6())],
    }
}

fn secured() -> PortRules {
    PortRules {
        host_veth: "pv1".into(),
        mac: MacAddr(VM_MAC),
        ips: vec![IpAddr::V4(VM_IP), IpAddr::V6(vm_ip6())],
        allow_router_advertisements: false,
        allow_dhcp_server: false,
        trunk: false,
    }
}

fn marker(id: u8) -> Vec<u8> {
    vec![b'P', b'G', b'T', b'!', id]
}

/// Marker ids heard on `socket` during `window`, but for frames from `own`
/// (the socket hears what its side sends, too).
fn seen(socket: &PacketSocket, own: [u8; 6], window: Duration) -> HashSet<u8> {
    socket
        .listen(window)
        .iter()
        .filter(|frame| frame.get(6..12) != Some(&own[..]))
        .filter_map(|frame| {
            let pos = frame.windows(4).position(|w| w == b"PGT!")?;
            frame.get(pos + 4).copied()
        })
        .collect()
}

/// Sends `frames` from the VM; the marker ids the peer heard.
fn from_vm(lab: &Lab, frames: &[Vec<u8>]) -> HashSet<u8> {
    let rx = PacketSocket::open(&lab.peer, "eth0");
    let tx = PacketSocket::open(&lab.vm, "eth0");
    let _ = rx.drain();
    for f in frames {
        tx.send(f);
    }
    seen(&rx, PEER_MAC, Duration::from_millis(400))
}

/// Whether br0 has learned the VM's MAC on any port.
fn learned(lab: &Lab) -> Vec<String> {
    let mac = MacAddr(VM_MAC).to_string();
    lab.node
        .exec(&["bridge", "fdb", "show", "br", "br0"])
        .stdout
        .split(|b| *b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .filter(|l| l.starts_with(&mac))
        .collect()
}

fn state(lab: &Lab) -> HandoverState {
    lab.node
        .run(|| portsec::handover_state("pv1"))
        .expect("handover state")
}

/// What a migration target's pod says while the source still runs: an ARP
/// request, duplicate-address detection, a ping; and frames that look like an
/// announcement but are not (an ARP for another address, a solicited
/// advertisement, a RARP from another MAC).
fn chatter() -> Vec<Vec<u8>> {
    let mut solicited = nd(136, vm_ip6(), &marker(6));
    solicited[4] = 0x60; // solicited + override
    let mut foreign_rarp = arp(
        3,
        OTHER_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &marker(7),
    );
    foreign_rarp[18..24].copy_from_slice(&OTHER_MAC);
    vec![
        eth(
            BCAST,
            VM_MAC,
            0x0806,
            &arp(1, VM_MAC, VM_IP, PEER_IP, &marker(1)),
        ),
        eth(
            [0x33, 0x33, 0xff, 0, 0, 2],
            VM_MAC,
            0x86dd,
            &ipv6(
                Ipv6Addr::UNSPECIFIED,
                "ff02::1:ff00:2".parse().unwrap(),
                58,
                &nd(135, vm_ip6(), &marker(2)),
            ),
        ),
        eth(
            PEER_MAC,
            VM_MAC,
            0x0800,
            &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&marker(3))),
        ),
        // A gratuitous ARP for an address the VM does not have.
        eth(
            BCAST,
            VM_MAC,
            0x0806,
            &arp(1, VM_MAC, PEER_IP, PEER_IP, &marker(4)),
        ),
        eth(
            PEER_MAC,
            VM_MAC,
            0x0800,
            &ipv4(VM_IP, PEER_IP, 1, &icmp_echo(&marker(5))),
        ),
        eth(
            ALL_NODES_MAC,
            VM_MAC,
            0x86dd,
            &ipv6(vm_ip6(), all_nodes(), 58, &solicited),
        ),
        eth(BCAST, OTHER_MAC, 0x8035, &foreign_rarp),
    ]
}

fn rarp(id: u8) -> Vec<u8> {
    let mut m = arp(
        3,
        VM_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &marker(id),
    );
    m[18..24].copy_from_slice(&VM_MAC);
    eth(BCAST, VM_MAC, 0x8035, &m)
}
fn garp(id: u8) -> Vec<u8> {
    eth(
        BCAST,
        VM_MAC,
        0x0806,
        &arp(1, VM_MAC, VM_IP, VM_IP, &marker(id)),
    )
}
fn unsolicited_na(id: u8) -> Vec<u8> {
    eth(
        ALL_NODES_MAC,
        VM_MAC,
        0x86dd,
        &ipv6(vm_ll(), all_nodes(), 58, &nd(136, vm_ip6(), &marker(id))),
    )
}

/// One handover: held, chatter dropped and unlearned, frames towards the VM
/// delivered, then `announcement` opens the port and goes out itself.
fn handover(announcement: Vec<u8>, with_port_security: bool) {
    let lab = lab();
    if with_port_security {
        lab.node
            .run(|| portsec::install(&secured()))
            .expect("install");
    }
    lab.node.run(|| portsec::hold(&hold())).expect("hold");
    lab.vm.ip_line("link set eth0 up");
    lab.node.wait_up("pv1");
    assert_eq!(state(&lab), HandoverState::Waiting);
    assert_eq!(
        lab.node.run(portsec::awaiting_handover).unwrap(),
        ["pv1".to_string()]
    );
    let held_before = lab.node.run(portsec::held_frames).unwrap();

    let got = from_vm(&lab, &chatter());
    assert!(got.is_empty(), "a held port let through {got:?}");
    assert_eq!(
        learned(&lab),
        Vec::<String>::new(),
        "br0 learned the VM's MAC"
    );
    let held_after = lab.node.run(portsec::held_frames).unwrap();
    assert!(
        held_after >= held_before + chatter().len() as u64,
        "held frames counted: {held_before} -> {held_after}"
    );
    assert_eq!(state(&lab), HandoverState::Waiting);

    // Towards the VM: delivered while held (flooded: br0 knows no VM).
    let to_vm = PacketSocket::open(&lab.vm, "eth0");
    let _ = to_vm.drain();
    PacketSocket::open(&lab.peer, "eth0").send(&eth(
        VM_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(PEER_IP, VM_IP, 1, &icmp_echo(&marker(20))),
    ));
    assert!(
        seen(&to_vm, VM_MAC, Duration::from_millis(300)).contains(&20),
        "a frame towards the held port was not delivered"
    );

    // The announcement goes out and opens the port.
    let got = from_vm(&lab, &[announcement]);
    assert!(got.contains(&30), "the announcement itself was dropped");
    assert_eq!(state(&lab), HandoverState::Announced);
    assert_eq!(
        lab.node.run(portsec::awaiting_handover).unwrap(),
        Vec::<String>::new()
    );
    let fdb = learned(&lab);
    assert!(
        fdb.len() == 1 && fdb[0].contains("dev pv1"),
        "br0 learned the VM on pv1 once: {fdb:?}"
    );
    // Now the VM talks.
    // (The VM's echo reply to marker 20, queued behind its ARP while held, may
    // come too.)
    let got = from_vm(&lab, &chatter()[..3]);
    assert!(
        got.is_superset(&HashSet::from([1, 2, 3])),
        "the opened port still drops: {got:?}"
    );

    // DEL: the hold goes with the port.
    lab.node.run(|| portsec::remove("pv1")).expect("remove");
    assert_eq!(state(&lab), HandoverState::NotHeld);
    let left = lab
        .node
        .exec(&["nft", "list", "table", "bridge", "portgroup"])
        .stdout;
    let left = String::from_utf8_lossy(&left);
    assert!(!left.contains("\"pv1\""), "elements of pv1 left:\n{left}");
}

#[test]
fn rarp_opens_a_held_secured_port() {
    handover(rarp(30), true);
}

#[test]
fn gratuitous_arp_opens_a_held_unsecured_port() {
    handover(garp(30), false);
}

#[test]
fn unsolicited_neighbour_advertisement_opens_a_held_port() {
    handover(unsolicited_na(30), true);
}

#[test]
fn rarp_opens_a_held_unsecured_port() {
    handover(rarp(30), false);
}

#[test]
fn a_port_not_held_talks_at_once() {
    let lab = lab();
    lab.node
        .run(|| portsec::install(&secured()))
        .expect("install");
    lab.vm.ip_line("link set eth0 up");
    lab.node.wait_up("pv1");
    assert_eq!(state(&lab), HandoverState::NotHeld);
    let got = from_vm(&lab, &chatter()[..3]);
    assert_eq!(got, HashSet::from([1, 2, 3]));
    assert_eq!(learned(&lab).len(), 1);
}

#[test]
fn removing_a_held_port_clears_the_hold() {
    let lab = lab();
    lab.node.run(|| portsec::hold(&hold())).expect("hold");
    assert_eq!(state(&lab), HandoverState::Waiting);
    // Holding again (an ADD retried under the same port name) replaces it.
    lab.node.run(|| portsec::hold(&hold())).expect("hold again");
    lab.node.run(|| portsec::remove("pv1")).expect("remove");
    assert_eq!(state(&lab), HandoverState::NotHeld);
    assert_eq!(
        lab.node.run(portsec::awaiting_handover).unwrap(),
        Vec::<String>::new()
    );
    let left = lab
        .node
        .exec(&["nft", "list", "table", "bridge", "portgroup"])
        .stdout;
    assert!(
        !String::from_utf8_lossy(&left).contains("\"pv1\""),
        "elements of pv1 left"
    );
}

#[test]
fn the_collector_removes_the_hold_of_a_gone_port() {
    let lab = lab();
    lab.node.run(|| portsec::hold(&hold())).expect("hold");
    let gone = Hold {
        host_veth: "pvgone".into(),
        ..hold()
    };
    lab.node.run(move || portsec::hold(&gone)).expect("hold");
    let removed = lab
        .node
        .run(|| portsec::remove_all_not_in(&[]))
        .expect("collect");
    // pv1 still exists: never collected; pvgone has no interface.
    assert_eq!(removed, ["pvgone".to_string()]);
    assert_eq!(
        lab.node.run(portsec::awaiting_handover).unwrap(),
        ["pv1".to_string()]
    );
}
