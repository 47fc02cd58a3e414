//! Conflict probe: RFC 5227 ARP probes and IPv6 duplicate-address
//! detection on the portgroup's VLAN before ADD succeeds.
//!
//! # How
//!
//! One AF_PACKET raw socket is bound to `via`, the portgroup's bridge in the caller's
//! (the node's host) network namespace. A kernel BPF filter lets only ARP and ICMPv6
//! neighbour solicitations/advertisements through. Every round sends one probe per
//! address, all addresses interleaved, so the time taken does not depend on how many
//! addresses are probed: rounds go out at `0, interval, 2*interval, ...` (`count`
//! rounds), and listening stops `wait` after the last round, i.e. after
//! `(count - 1) * interval + wait` (200 ms with the defaults), never more than
//! `count * interval + wait`.
//!
//! - IPv4: ARP probes (RFC 5227, 2.1.1): broadcast, opcode request, sender IP
//!   0.0.0.0, target hardware address zero, target IP the probed address.
//! - IPv6: DAD neighbour solicitations (RFC 4862, 5.4.2): source `::`, destination
//!   the solicited-node group (Ethernet 33:33:ff:xx:xx:xx), hop limit 255, no
//!   source link-layer address option.
//!
//! An answer is any of: an ARP reply or request whose sender IP is a probed address;
//! another host's ARP probe for a probed address; a neighbour advertisement for a
//! probed address; another host's DAD solicitation for one. Its MAC is the ARP sender
//! hardware address, the advertisement's target link-layer address option (else the
//! Ethernet source), or the solicitation's Ethernet source.
//!
//! # Why the probes do not carry the VM's MAC
//!
//! The probes' Ethernet source, and the ARP sender hardware address, are the bridge
//! device's own MAC (which portgroupd pins, so it never changes as ports come and
//! go), never `vm_mac`. During a live migration the source VM, with
//! that very MAC, is still running on another node; a frame sent from here with its
//! MAC as source would make the physical switches (and every bridge on the way)
//! learn the MAC on this node's port, and the running VM's traffic would be
//! black-holed to us until it sends again. RFC 5227 wants the sender hardware
//! address to be the probing interface's; here that interface is the bridge. Since
//! the bridge's MAC is local to the bridge, the unicast ARP replies and the
//! all-nodes multicast neighbour advertisements that answer us are delivered to the
//! bridge device itself, where the socket hears them. The VM's MAC is only used by
//! the caller to interpret answers: an answer from `vm_mac` means the source of a
//! live migration is still running (go on); any other MAC is a conflict.
//!
//! Our own probes looping back (PACKET_OUTGOING) and anything whose Ethernet source
//! or ARP sender is the bridge's MAC are ignored. A consequence: two ADDs on the same
//! node probing the same address at the same moment do not see each other.

mod frame;
mod packet;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portgroup::error::Error;
use portgroup::mac::MacAddr;

/// The exact frame a probe for an address is, from a given MAC: tests play
/// another host probing with it.
pub use frame::probe_frame;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Probes sent per address. Zero sends nothing and reports nothing.
    pub count: u32,
    /// Gap between probes.
    pub interval: Duration,
    /// How long to keep listening after the last probe.
    pub wait: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            count: 2,
            interval: Duration::from_millis(50),
            wait: Duration::from_millis(150),
        }
    }
}

impl ProbeConfig {
    /// How long `probe` listens in all, whatever the number of addresses.
    pub fn duration(&self) -> Duration {
        match self.count {
            0 => Duration::ZERO,
            n => self.interval * (n - 1) + self.wait,
        }
    }
}

/// One answer heard for one probed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Probes `ips` out of host interface `via` (the bridge, in the caller's namespace)
/// and returns every answer, including ones from `vm_mac` (the caller decides).
///
/// Each (address, MAC) pair is reported once, in the order first heard, however many
/// frames carried it. The probes are sent from the bridge's MAC, not from `vm_mac`:
/// see the module documentation for why. Unspecified and multicast addresses, which
/// nobody can hold, are skipped; duplicates are probed once.
pub fn probe(
    via: &str,
    vm_mac: MacAddr,
    ips: &[IpAddr],
    config: &ProbeConfig,
) -> Result<Vec<ProbeAnswer>, Error> {
    let mut targets: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if ip.is_unspecified() || ip.is_multicast() {
            tracing::warn!(%ip, "conflict probe: skipping an address nobody can hold");
        } else if !targets.contains(ip) {
            targets.push(*ip);
        }
    }
    if targets.is_empty() || config.count == 0 {
        return Ok(Vec::new());
    }

    let context = |what: &str| format!("conflict probe on {via}: {what}");
    let socket =
        packet::PacketSocket::open(via).map_err(|e| Error::system(context("opening"), e))?;
    let frames: Vec<Vec<u8>> = targets
        .iter()
        .map(|ip| frame::probe_frame(socket.mac, *ip))
        .collect();
    tracing::debug!(
        via,
        source = %socket.mac,
        %vm_mac,
        addresses = targets.len(),
        "conflict probe starting"
    );

    let start = Instant::now();
    let round_at = |round: u32| start + config.interval * round;
    let deadline = start + config.duration();
    let mut sent_rounds = 0u32;
    let mut answers: Vec<ProbeAnswer> = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        while sent_rounds < config.count && round_at(sent_rounds) <= now {
            for (ip, frame) in targets.iter().zip(&frames) {
                socket
                    .send(frame)
                    .map_err(|e| Error::system(context(&format!("sending a probe for {ip}")), e))?;
            }
            sent_rounds += 1;
        }

        while let Some(len) = socket
            .recv(&mut buf)
            .map_err(|e| Error::system(context("receiving"), e))?
        {
            let Some(claim) = frame::parse_claim(&buf[..len], socket.mac) else {
                continue;
            };
            if !targets.contains(&claim.ip) {
                continue;
            }
            let answer = ProbeAnswer {
                ip: claim.ip,
                mac: claim.mac,
            };
            if !answers.contains(&answer) {
                tracing::debug!(ip = %answer.ip, mac = %answer.mac, "conflict probe answer");
                answers.push(answer);
            }
        }

        let now = Instant::now();
        if sent_rounds == config.count && now >= deadline {
            break;
        }
        let wake = if sent_rounds < config.count {
            round_at(sent_rounds).min(deadline)
        } else {
            deadline
        };
        socket
            .wait(wake.saturating_duration_since(now))
            .map_err(|e| Error::system(context("waiting"), e))?;
    }
    Ok(answers)
}
