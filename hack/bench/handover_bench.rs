//! The migration handover's latency, 100 handovers, on a plain bridge in
//! private network namespaces (the bridge learns MACs as the VLAN's switch does;
//! no 802.1Q needed). Needs root.
//!
//!   cargo bench -p portgroupd --bench handover_bench   (or hack/bench.sh --handover)
//!
//! Topology: bridge br0 with three ports: `psrc`, where the VM's MAC was last
//! learned (the source node's side), `pv1`, the target's port, and `pp1`, a
//! neighbour. Each handover: the source's frame teaches br0 the MAC on `psrc`;
//! `pv1` is held; the target's guest sends QEMU's RARP; timed from just before
//! that send to
//!   - `announced`: the neighbour hears the RARP (the port opened, the
//!     announcement itself was forwarded);
//!   - `forwarded`: a unicast frame the neighbour sends to the VM's MAC the moment
//!     it hears the RARP reaches the target (br0 moved the MAC to `pv1`; before
//!     the RARP it would have gone to `psrc`).
//!
//! The same on a port that is not held, for the floor: the difference is what
//! the hold costs. Times include the user-space sends and busy polls of this
//! one process, so they are upper bounds on the kernel's part.

// A benchmark fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use portgroup::mac::MacAddr;
use portgroup::portsec::{self, HandoverState, Hold};
use portgroup_testkit::frame::{arp, eth};
use portgroup_testkit::{Netns, PacketSocket};

const VM_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x03];
const BCAST: [u8; 6] = [0xff; 6];
const HANDOVERS: usize = 100;

fn rarp(id: u16) -> Vec<u8> {
    let mut m = arp(
        3,
        VM_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[b'P', b'G', b'H', (id >> 8) as u8, id as u8],
    );
    m[18..24].copy_from_slice(&VM_MAC);
    eth(BCAST, VM_MAC, 0x8035, &m)
}

fn has_marker(frame: &[u8], tag: u8, id: u16) -> bool {
    frame
        .windows(5)
        .any(|w| w == [b'P', b'G', tag, (id >> 8) as u8, id as u8])
}

/// Busy-polls `socket` until a frame with the marker arrives; when it did.
fn wait_for(socket: &PacketSocket, tag: u8, id: u16) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if socket.drain().iter().any(|f| has_marker(f, tag, id)) {
            return Some(Instant::now());
        }
    }
    None
}

struct Lab {
    node: Netns,
    _netns: Vec<Netns>,
    src: PacketSocket,
    vm: PacketSocket,
    peer: PacketSocket,
}

fn lab() -> Lab {
    let node = Netns::new("node");
    node.ip_line("link add br0 type bridge");
    node.ip_line("link set br0 up");
    let mut netns = Vec::new();
    for (port, mac) in [("psrc", VM_MAC), ("pv1", VM_MAC), ("pp1", PEER_MAC)] {
        let ns = Netns::new(port);
        node.ip_line(&format!(
            "link add {port} type veth peer name eth0 netns {}",
            ns.name
        ));
        node.ip_line(&format!("link set {port} master br0 up"));
        ns.ip_line(&format!("link set eth0 address {}", MacAddr(mac)));
        // No IPv6 chatter of their own: only the frames sent here.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]);
        ns.ip_line("link set eth0 up");
        node.wait_up(port);
        netns.push(ns);
    }
    let src = PacketSocket::open(&netns[0], "eth0");
    let vm = PacketSocket::open(&netns[1], "eth0");
    let peer = PacketSocket::open(&netns[2], "eth0");
    Lab {
        node,
        _netns: netns,
        src,
        vm,
        peer,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run(lab: &Lab, held: bool) -> (Vec<f64>, Vec<f64>) {
    let (mut announced, mut forwarded) = (Vec::new(), Vec::new());
    for i in 0..HANDOVERS as u16 {
        lab.node.run(|| portsec::remove("pv1")).unwrap();
        if held {
            lab.node
                .run(|| {
                    portsec::hold(&Hold {
                        host_veth: "pv1".into(),
                        mac: MacAddr(VM_MAC),
                        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))],
                    })
                })
                .unwrap();
        }
        // The source still has the MAC: br0 learns it on psrc.
        lab.src.send(&eth(PEER_MAC, VM_MAC, 0x88b5, b"PGS.."));
        std::thread::sleep(Duration::from_millis(5));
        let _ = (lab.vm.drain(), lab.peer.drain());

        let start = Instant::now();
        lab.vm.send(&rarp(i));
        let heard = wait_for(&lab.peer, b'H', i).expect("the RARP never reached the neighbour");
        let [hi, lo] = i.to_be_bytes();
        lab.peer
            .send(&eth(VM_MAC, PEER_MAC, 0x88b5, &[b'P', b'G', b'U', hi, lo]));
        let got = wait_for(&lab.vm, b'U', i)
            .expect("the neighbour's frame to the VM's MAC did not reach the target");
        announced.push((heard - start).as_secs_f64() * 1e3);
        forwarded.push((got - start).as_secs_f64() * 1e3);
        if held {
            let state = lab.node.run(|| portsec::handover_state("pv1")).unwrap();
            assert_eq!(state, HandoverState::Announced);
        }
    }
    (announced, forwarded)
}

fn main() {
    if !portgroup_testkit::is_root() {
        eprintln!("handover_bench needs root (network namespaces, nftables)");
        std::process::exit(1);
    }
    let lab = lab();
    println!("migration handover, {HANDOVERS} handovers each, ms from the RARP's send");
    println!(
        "{:<10} {:>15} {:>15} {:>15} {:>15}",
        "port", "announced p50", "announced p99", "forwarded p50", "forwarded p99"
    );
    for (label, held) in [
        ("not held", false),
        ("held", true),
        ("not held", false),
        ("held", true),
    ] {
        let (mut a, mut f) = run(&lab, held);
        a.sort_by(f64::total_cmp);
        f.sort_by(f64::total_cmp);
        println!(
            "{label:<10} {:>15.3} {:>15.3} {:>15.3} {:>15.3}",
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            percentile(&f, 0.5),
            percentile(&f, 0.99)
        );
    }
    lab.node.run(|| portsec::remove("pv1")).unwrap();
}
