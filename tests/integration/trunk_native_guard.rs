//! The native-VLAN guard of trunk portgroups with real frames, on a plain
//! bridge (no 802.1Q needed). A trunk's feed is a port of its native VLAN's
//! bridge; a frame tagged with a VID the trunk does not list reaches that bridge
//! through the feed (no sub-interface takes it), and a tagged frame on the
//! native VLAN would reach the trunk's VMs the same way back. The stand-in: a
//! bridge with a feed port (`pgtq…`, its veth peer where the trunk's bridge
//! would be) and two other ports (the native VLAN's sub-interface on the uplink,
//! an access VM). A plain bridge passes tagged frames through the feed: the
//! guard must stop them both ways, and only them.

use std::time::Duration;

use portgroup::portsec;
use portgroup_testkit::frame::eth;
use portgroup_testkit::{Netns, PacketSocket};

const SRC: [u8; 6] = [0x02, 0x50, 0x56, 0, 0, 0x41];
const BCAST: [u8; 6] = [0xff; 6];
/// IEEE's local experimental ethertype: no stack in the namespace answers it.
const EXPERIMENTAL: u16 = 0x88b5;
const FEED: &str = "pgtq0e2e0f1";
const TRUNK_SIDE: &str = "pgtp0e2e0f1";

fn marker(id: u8) -> Vec<u8> {
    vec![b'P', b'G', b'N', b'!', id]
}

fn untagged(id: u8) -> Vec<u8> {
    eth(BCAST, SRC, EXPERIMENTAL, &marker(id))
}

/// A frame with one tag (`tpid`, `vid`) around the experimental ethertype.
fn tagged(tpid: u16, vid: u16, id: u8) -> Vec<u8> {
    let mut inner = vid.to_be_bytes().to_vec();
    inner.extend(EXPERIMENTAL.to_be_bytes());
    inner.extend(marker(id));
    eth(BCAST, SRC, tpid, &inner)
}

/// Whether a frame sent on `from` is heard on `to`.
fn crosses(from: &PacketSocket, to: &PacketSocket, frame: &[u8], id: u8) -> bool {
    to.drain();
    from.send(frame);
    let mark = marker(id);
    to.listen(Duration::from_millis(300))
        .iter()
        .any(|f| f.windows(mark.len()).any(|w| w == mark.as_slice()))
}

struct GuardLab {
    node: Netns,
    /// Where the trunk's bridge would be: sends into the feed, hears what leaves it.
    trunk: PacketSocket,
    /// The native VLAN's sub-interface on the uplink (its far side).
    native: PacketSocket,
    /// An access VM on the native VLAN (its far side).
    access: PacketSocket,
}

fn lab() -> GuardLab {
    let node = Netns::new("guard");
    node.ip_line("link add pgbrtest.5 type bridge");
    node.ip_line(&format!("link add {FEED} type veth peer name {TRUNK_SIDE}"));
    node.ip_line("link add nat1 type veth peer name nat1peer");
    node.ip_line("link add acc1 type veth peer name acc1peer");
    for port in [FEED, "nat1", "acc1"] {
        node.ip_line(&format!("link set {port} master pgbrtest.5 up"));
    }
    for link in ["pgbrtest.5", TRUNK_SIDE, "nat1peer", "acc1peer"] {
        node.ip_line(&format!("link set {link} up"));
    }
    GuardLab {
        trunk: PacketSocket::open(&node, TRUNK_SIDE),
        native: PacketSocket::open(&node, "nat1peer"),
        access: PacketSocket::open(&node, "acc1peer"),
        node,
    }
}

/// Frames of every kind, each way, and whether it crossed.
fn what_crosses(lab: &GuardLab, first_id: u8) -> Vec<(String, bool)> {
    type Make = fn(u8) -> Vec<u8>;
    let frames: Vec<(&str, Make)> = vec![
        ("untagged", untagged),
        ("802.1Q VID 300", |id| tagged(0x8100, 300, id)),
        ("802.1Q VID 0 (priority tag)", |id| tagged(0x8100, 0, id)),
        ("802.1ad", |id| tagged(0x88a8, 300, id)),
        ("0x9100", |id| tagged(0x9100, 300, id)),
    ];
    let mut out = Vec::new();
    let mut id = first_id;
    for (what, frame) in frames {
        for (way, from, to) in [
            ("trunk -> native", &lab.trunk, &lab.native),
            ("native -> trunk", &lab.native, &lab.trunk),
        ] {
            id = id.wrapping_add(1);
            out.push((format!("{what}, {way}"), crosses(from, to, &frame(id), id)));
        }
    }
    out
}

#[test]
fn tagged_frames_never_cross_a_trunk_feed() {
    let lab = lab();
    // Without the guard a plain bridge forwards tagged frames through the feed:
    // the double tagging the guard exists for (and proof this test can fail).
    let before = what_crosses(&lab, 0);
    assert!(
        before.iter().all(|(_, crossed)| *crossed),
        "a plain bridge passes everything: {before:?}"
    );

    let made = lab
        .node
        .run(portsec::ensure_native_guard)
        .expect("the guard");
    assert!(made, "a new guard is made");
    let after = what_crosses(&lab, 40);
    for (what, crossed) in &after {
        assert_eq!(
            *crossed,
            what.starts_with("untagged"),
            "{what}: crossed={crossed}"
        );
    }
    let drops = lab.node.run(portsec::native_guard_drops).expect("counter");
    assert!(drops >= 8, "every tagged frame dropped is counted: {drops}");
    // Ports that are not feeds are not concerned: the native VLAN's bridge
    // passes a tagged frame between two of them (port security, where on, is
    // what refuses tags from an access VM).
    assert!(crosses(
        &lab.native,
        &lab.access,
        &tagged(0x8100, 300, 99),
        99
    ));
    // Idempotent: in place, nothing to do.
    assert!(!lab.node.run(portsec::ensure_native_guard).expect("again"));

    // Drift: the table deleted by hand is put back by the next ensure.
    assert!(lab.node.run(portsec::delete_native_guard).expect("delete"));
    assert!(crosses(
        &lab.trunk,
        &lab.native,
        &tagged(0x8100, 300, 100),
        100
    ));
    assert!(lab.node.run(portsec::ensure_native_guard).expect("again"));
    assert!(!crosses(
        &lab.trunk,
        &lab.native,
        &tagged(0x8100, 300, 101),
        101
    ));
    assert!(lab.node.run(portsec::delete_native_guard).expect("cleanup"));
}
