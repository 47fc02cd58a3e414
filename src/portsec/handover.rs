//! The live-migration handover: a migration target's port stays silent until
//! the guest announces itself from it.
//!
//! A migration target is an attachment whose VM MAC the conflict probe heard
//! answering elsewhere on the VLAN: the source VM still runs there. Anything the
//! target's port sent now (the pod's own ARP requests, IPv6 duplicate-address
//! detection, a ping) would teach the bridge and every switch on the VLAN that
//! the MAC lives here, and the source VM's traffic would flap between the two.
//! So [`hold`] puts the port in `handover_held`: the first rule of the table's
//! prerouting chain (the bridge family's prerouting hook runs before the bridge
//! learns a frame's source) sends its frames to the `handover` chain, which drops
//! them, except the guest's announcement from the VM's MAC:
//!
//! - a RARP as QEMU sends after a migration (request reverse, sender = the MAC);
//! - a gratuitous ARP: sender IP = target IP = one of the port's IPv4 addresses;
//! - an unsolicited neighbour advertisement: to ff02::1, solicited flag clear,
//!   for one of the port's IPv6 addresses or the link-local of its MAC.
//!
//! The announcement adds the port to `handover_announced` from the packet path
//! (no user-space round trip) and goes on through port security and out, so the
//! VLAN learns the MAC here exactly once. Frames towards the port are never
//! held. The hold does not depend on port security: a port without it is held
//! and opened alike. A port may wait for as long as the migration takes; DEL (a
//! finished or failed migration's target pod going) removes the hold with the port.

use std::net::IpAddr;

use crate::error::Error;
use crate::mac::MacAddr;

use super::nfnl::{Batch, Nfnl, NlError};
use super::ruleset::{
    bootstrap, HANDOVER_COUNTER, IFNAMSIZ, SET_HANDOVER_ANNOUNCED, SET_HANDOVER_GARP,
    SET_HANDOVER_HELD, SET_HANDOVER_MAC, SET_HANDOVER_NA,
};
use super::{
    backfill_derived, base_ok, counter_packets, dump_set, eui64_link_local, has_elem, ifname_key,
    msg, name_of, open, port_key, push_elems, with_retries,
};

/// What holds one migration target's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The host-side veth: the bridge port the VM's frames enter by.
    pub host_veth: String,
    /// The VM's MAC: the only source an announcement may come from.
    pub mac: MacAddr,
    /// The VM's addresses: what a gratuitous ARP or an unsolicited neighbour
    /// advertisement must announce (the link-local of `mac` is added).
    pub ips: Vec<IpAddr>,
}

/// Where one port stands in the handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverState {
    /// Not a migration target (or its hold is gone).
    NotHeld,
    /// Held: waiting for the guest to announce itself.
    Waiting,
    /// The guest announced itself: the port is open.
    Announced,
}

fn keys(hold: &Hold, ifkey: &[u8; IFNAMSIZ]) -> Vec<(&'static str, Vec<u8>)> {
    let cat = |parts: &[&[u8]]| {
        let mut k = ifkey.to_vec();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    };
    let mut out = vec![(SET_HANDOVER_HELD, ifkey.to_vec())];
    out.push((SET_HANDOVER_MAC, cat(&[&hold.mac.0, &[0, 0]])));
    let mut na = vec![eui64_link_local(&hold.mac).octets()];
    for ip in &hold.ips {
        match ip {
            IpAddr::V4(v4) => {
                let key = cat(&[&v4.octets(), &v4.octets()]);
                if !out.contains(&(SET_HANDOVER_GARP, key.clone())) {
                    out.push((SET_HANDOVER_GARP, key));
                }
            }
            IpAddr::V6(v6) => {
                if !na.contains(&v6.octets()) {
                    na.push(v6.octets());
                }
            }
        }
    }
    out.extend(na.into_iter().map(|ip| (SET_HANDOVER_NA, cat(&[&ip]))));
    out
}

/// Holds a migration target's port until the guest announces itself. Made
/// before the pod's interface comes up, so not one frame escapes. Replaces
/// whatever hold an earlier attachment under the same port name left.
pub fn hold(hold: &Hold) -> Result<(), Error> {
    let ifkey = port_key(&hold.host_veth, hold.mac)?;
    let context = format!("holding {} for the migration handover", hold.host_veth);
    let want = keys(hold, &ifkey);
    with_retries(&context, |nl| {
        if !base_ok(nl)? {
            let mut batch = Batch::new();
            bootstrap(&mut batch);
            nl.commit(batch)?;
            backfill_derived(nl)?;
        }
        let stale = port_keys(nl, &ifkey)?;
        let mut batch = Batch::new();
        push_elems(&mut batch, msg::DELSETELEM, &stale, "deleting an old hold");
        push_elems(&mut batch, msg::NEWSETELEM, &want, "holding the port");
        nl.commit(batch)
    })
}

/// The handover elements of one port, for removal: two GETs when it has none.
pub(super) fn port_keys(
    nl: &mut Nfnl,
    ifkey: &[u8; IFNAMSIZ],
) -> Result<Vec<(&'static str, Vec<u8>)>, NlError> {
    let mut out = Vec::new();
    for set in [SET_HANDOVER_HELD, SET_HANDOVER_ANNOUNCED] {
        if has_elem(nl, set, ifkey)? {
            out.push((set, ifkey.to_vec()));
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    for set in [SET_HANDOVER_MAC, SET_HANDOVER_GARP, SET_HANDOVER_NA] {
        out.extend(
            dump_set(nl, set)?
                .into_iter()
                .filter(|k| k.len() > IFNAMSIZ && k[..IFNAMSIZ] == ifkey[..])
                .map(|k| (set, k)),
        );
    }
    Ok(out)
}

/// Where one port stands in the handover (CHECK).
pub fn handover_state(host_veth: &str) -> Result<HandoverState, Error> {
    let ifkey = ifname_key(host_veth)?;
    let context = format!("reading the handover state of {host_veth}");
    let mut nl = open(&context)?;
    let read = |nl: &mut Nfnl| -> Result<HandoverState, NlError> {
        if !has_elem(nl, SET_HANDOVER_HELD, &ifkey)? {
            return Ok(HandoverState::NotHeld);
        }
        Ok(if has_elem(nl, SET_HANDOVER_ANNOUNCED, &ifkey)? {
            HandoverState::Announced
        } else {
            HandoverState::Waiting
        })
    };
    read(&mut nl).map_err(|e| super::err(&context, e))
}

/// The ports still waiting for their guest's announcement, sorted.
pub fn awaiting_handover() -> Result<Vec<String>, Error> {
    let context = "listing ports awaiting the migration handover";
    let mut nl = open(context)?;
    let mut list = |set| dump_set(&mut nl, set).map_err(|e| super::err(context, e));
    let held = list(SET_HANDOVER_HELD)?;
    let announced = list(SET_HANDOVER_ANNOUNCED)?;
    let mut waiting: Vec<String> = held
        .iter()
        .filter(|k| !announced.contains(k))
        .map(|k| name_of(k))
        .collect();
    waiting.sort();
    Ok(waiting)
}

/// Frames held ports sent before their announcement (dropped), all ports together.
pub fn held_frames() -> Result<u64, Error> {
    Ok(counter_packets("reading the handover counter")?
        .into_iter()
        .find(|(name, _)| name == HANDOVER_COUNTER)
        .map_or(0, |(_, packets)| packets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_keys() {
        let ifkey = ifname_key("pg1").unwrap();
        let hold = Hold {
            host_veth: "pg1".into(),
            mac: MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            ips: vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                "fe80::5054:ff:fe12:3456".parse().unwrap(),
            ],
        };
        let keys = keys(&hold, &ifkey);
        let sets: Vec<&str> = keys.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sets,
            [
                SET_HANDOVER_HELD,
                SET_HANDOVER_MAC,
                SET_HANDOVER_GARP,
                SET_HANDOVER_NA,
                SET_HANDOVER_NA
            ]
        );
        for (set, key) in &keys {
            let (_, _, len) = super::super::ruleset::HANDOVER_SETS
                .iter()
                .find(|(s, _, _)| s == set)
                .unwrap();
            assert_eq!(key.len() as u32, *len, "{set}");
        }
        // The gratuitous ARP key: the address twice.
        let garp = &keys[2].1[IFNAMSIZ..];
        assert_eq!(garp, [10, 0, 0, 2, 10, 0, 0, 2]);
    }
}
