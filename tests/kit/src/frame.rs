//! Builders for the frames tests send: what a VM (honest or not) or another host
//! puts on the wire. They build exactly what they are told, forged addresses
//! included; the conflict probe's own frames come from the probe module.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet frame, padded to the 60-byte minimum.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len().max(46));
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().max(60), 0);
    frame
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let high = u32::from(chunk[0]) << 8;
        sum += high | chunk.get(1).copied().map_or(0, u32::from);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (20-byte header, TTL 64, don't fragment, header checksum set).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// A UDP datagram with no checksum (zero: allowed over IPv4).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&sport.to_be_bytes());
    datagram.extend_from_slice(&dport.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// An ICMP echo request (id 1, sequence 1) carrying `payload`.
pub fn icmp_echo(payload: &[u8]) -> Vec<u8> {
    let mut message = vec![8, 0, 0, 0, 0, 1, 0, 1];
    message.extend_from_slice(payload);
    let sum = checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

/// An Ethernet/IPv4 ARP message: opcode `op`, sender `sha`/`spa`, target
/// hardware address zero, target IP `tpa`, then `trailer`.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, trailer: &[u8]) -> Vec<u8> {
    let mut message = vec![0, 1, 8, 0, 6, 4];
    message.extend_from_slice(&op.to_be_bytes());
    message.extend_from_slice(&sha);
    message.extend_from_slice(&spa.octets());
    message.extend_from_slice(&[0; 6]);
    message.extend_from_slice(&tpa.octets());
    message.extend_from_slice(trailer);
    message
}

/// An IPv6 packet, hop limit 255 (what neighbour discovery requires).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next, 255]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}

/// An ICMPv6 neighbour solicitation or advertisement (`kind`) for `target`,
/// then `trailer`. The checksum is left zero: the bridge's port-security rules
/// never look at it, and a receiving stack drops the message, which keeps the
/// peer's neighbour cache out of the test.
pub fn nd(kind: u8, target: Ipv6Addr, trailer: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&target.octets());
    message.extend_from_slice(trailer);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_the_rfc_1071_example() {
        // RFC 1071, 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2, so its checksum is 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length pads with a zero byte.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn headers_check_out_and_frames_are_padded() {
        let packet = ipv4(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
            IPPROTO_UDP,
            &udp(68, 67, b"x"),
        );
        assert_eq!(packet.len(), 20 + 8 + 1);
        assert_eq!(checksum(&packet[..20]), 0, "a valid header sums to zero");
        assert_eq!(checksum(&icmp_echo(b"ping")), 0);
        let frame = eth(BROADCAST, [2, 0, 0, 0, 0, 1], ETH_P_ARP, &[1, 2, 3]);
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[12..17], &[0x08, 0x06, 1, 2, 3]);
        let message = arp(
            ARP_REQUEST,
            [2, 0, 0, 0, 0, 1],
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
            &[],
        );
        assert_eq!(message.len(), 28);
        let v6 = ipv6(
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            IPPROTO_ICMPV6,
            &nd(ND_NEIGHBOR_SOLICIT, Ipv6Addr::LOCALHOST, &[]),
        );
        assert_eq!(v6.len(), 40 + 24);
        assert_eq!(u16::from_be_bytes([v6[4], v6[5]]), 24);
    }
}
