//! Pure frame building and parsing for the conflict probe: no sockets here, so
//! every byte can be checked in unit tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portgroup::mac::MacAddr;

pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// NDP option: target link-layer address (RFC 4861, 4.6.1).
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ARPHRD_ETHER: u16 = 1;

const ETH_HLEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HLEN: usize = 40;
/// ICMPv6 type, code, checksum, reserved, target address.
const NS_LEN: usize = 24;

pub const ARP_PROBE_LEN: usize = ETH_HLEN + ARP_LEN;
pub const DAD_NS_LEN: usize = ETH_HLEN + IPV6_HLEN + NS_LEN;

/// The solicited-node multicast address of `ip` (RFC 4291, 2.7.1): ff02::1:ff00:0/104
/// with the low 24 bits of `ip`.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast address of an IPv6 multicast address (RFC 2464, 7):
/// 33:33 followed by its low 32 bits.
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The 16-bit one's-complement sum (RFC 1071) of `data`, added to `sum`, unfolded.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum (RFC 1071) of `data`.
#[cfg(test)]
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(0, data))
}

/// The ICMPv6 checksum (RFC 4443, 2.3; RFC 8200, 8.1): over the pseudo-header
/// (source, destination, upper-layer length, next header 58) and `message`,
/// whose checksum field (bytes 2..4) must be zero or is verified as it is.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum = ones_sum(0, &src.octets());
    sum = ones_sum(sum, &dst.octets());
    sum = ones_sum(sum, &(message.len() as u32).to_be_bytes());
    sum = ones_sum(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
    sum = ones_sum(sum, message);
    !fold(sum)
}

fn ethernet_header(frame: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    frame[0..6].copy_from_slice(&dst.0);
    frame[6..12].copy_from_slice(&src.0);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// An RFC 5227 ARP probe for `target`: broadcast, opcode request, sender hardware
/// address `src` (the interface the probe leaves by), sender IP 0.0.0.0, target
/// hardware address zero.
pub fn arp_probe(src: MacAddr, target: Ipv4Addr) -> [u8; ARP_PROBE_LEN] {
    let mut frame = [0u8; ARP_PROBE_LEN];
    ethernet_header(&mut frame, MacAddr([0xff; 6]), src, ETH_P_ARP);
    let arp = &mut frame[ETH_HLEN..];
    arp[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    arp[2..4].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&src.0);
    // sender IP 0.0.0.0 (bytes 14..18) and target MAC 0 (18..24) stay zero
    arp[24..28].copy_from_slice(&target.octets());
    frame
}

/// A duplicate-address-detection neighbour solicitation for `target` (RFC 4862, 5.4.2):
/// from `::` to the solicited-node group of `target`, hop limit 255, no source
/// link-layer address option (forbidden when the source is `::`).
pub fn dad_solicitation(src: MacAddr, target: Ipv6Addr) -> [u8; DAD_NS_LEN] {
    let group = solicited_node(target);
    let mut frame = [0u8; DAD_NS_LEN];
    ethernet_header(&mut frame, ipv6_multicast_mac(group), src, ETH_P_IPV6);
    let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    ip[0] = 0x60; // version 6, traffic class 0, flow label 0
    ip[4..6].copy_from_slice(&(NS_LEN as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = 255;
    // source :: (bytes 8..24) stays zero
    ip[24..40].copy_from_slice(&group.octets());
    let ns = &mut frame[ETH_HLEN + IPV6_HLEN..];
    ns[0] = ND_NEIGHBOR_SOLICIT;
    // code 0, checksum (2..4) and reserved (4..8) zero for now
    ns[8..24].copy_from_slice(&target.octets());
    let checksum = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, group, ns);
    ns[2..4].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// The probe frame for `ip`, sent with Ethernet source `src`.
pub fn probe_frame(src: MacAddr, ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => arp_probe(src, v4).to_vec(),
        IpAddr::V6(v6) => dad_solicitation(src, v6).to_vec(),
    }
}

/// What a received frame says: `mac` uses (or is trying to take) `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Reads a received Ethernet frame and returns the address it claims, if any:
/// - ARP request or reply with a sender IP: the sender IP, for the sender hardware address;
/// - ARP probe of someone else (sender IP 0.0.0.0): the target IP, for the sender hardware
///   address (RFC 5227, 2.1.1: another host probing the same address is a conflict);
/// - neighbour advertisement: the target, for its target link-layer address option, else
///   the Ethernet source;
/// - DAD neighbour solicitation (IPv6 source `::`): the target, for the Ethernet source.
///
/// Frames from `own` (our probes, or anything else the bridge itself sent) claim nothing.
/// Trailing bytes (Ethernet padding) are ignored.
pub fn parse_claim(frame: &[u8], own: MacAddr) -> Option<Claim> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    let eth_src = MacAddr::from_slice(&frame[6..12])?;
    if eth_src == own {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let payload = &frame[ETH_HLEN..];
    let claim = match ethertype {
        ETH_P_ARP => parse_arp(payload)?,
        ETH_P_IPV6 => parse_ndp(payload, eth_src)?,
        _ => return None,
    };
    (claim.mac != own).then_some(claim)
}

fn parse_arp(arp: &[u8]) -> Option<Claim> {
    if arp.len() < ARP_LEN
        || u16::from_be_bytes([arp[0], arp[1]]) != ARPHRD_ETHER
        || u16::from_be_bytes([arp[2], arp[3]]) != ETH_P_IPV4
        || arp[4] != 6
        || arp[5] != 4
    {
        return None;
    }
    let op = u16::from_be_bytes([arp[6], arp[7]]);
    if op != ARP_REQUEST && op != ARP_REPLY {
        return None;
    }
    let sha = MacAddr::from_slice(&arp[8..14])?;
    let spa = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let tpa = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    let ip = if !spa.is_unspecified() {
        spa
    } else if op == ARP_REQUEST && !tpa.is_unspecified() {
        tpa
    } else {
        return None;
    };
    Some(Claim {
        ip: IpAddr::V4(ip),
        mac: sha,
    })
}

fn parse_ndp(ip: &[u8], eth_src: MacAddr) -> Option<Claim> {
    if ip.len() < IPV6_HLEN + NS_LEN || ip[0] >> 4 != 6 || ip[6] != IPPROTO_ICMPV6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
    let icmp = ip.get(IPV6_HLEN..IPV6_HLEN + payload_len)?;
    if icmp.len() < NS_LEN || icmp[1] != 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
    match icmp[0] {
        ND_NEIGHBOR_ADVERT => Some(Claim {
            ip: IpAddr::V6(target),
            mac: target_ll_option(&icmp[NS_LEN..]).unwrap_or(eth_src),
        }),
        ND_NEIGHBOR_SOLICIT if src.is_unspecified() => Some(Claim {
            ip: IpAddr::V6(target),
            mac: eth_src,
        }),
        _ => None,
    }
}

/// The target link-layer address option among NDP `options`, if present and well formed.
fn target_ll_option(mut options: &[u8]) -> Option<MacAddr> {
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == ND_OPT_TARGET_LL_ADDR {
            return MacAddr::from_slice(&options[2..8]);
        }
        options = &options[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: MacAddr = MacAddr([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    const LEGACY: MacAddr = MacAddr([0x00, 0x50, 0x56, 0x12, 0x34, 0x56]);

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn solicited_node_addresses() {
        let cases = [
            ("2001:db8:100::21", "ff02::1:ff00:21", "33:33:ff:00:00:21"),
            (
                "fe80::250:56ff:fe12:3456",
                "ff02::1:ff12:3456",
                "33:33:ff:12:34:56",
            ),
            (
                "2001:db8::abcd:ef01:2345",
                "ff02::1:ff01:2345",
                "33:33:ff:01:23:45",
            ),
            ("::1", "ff02::1:ff00:1", "33:33:ff:00:00:01"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ff02::1:ffff:ffff",
                "33:33:ff:ff:ff:ff",
            ),
        ];
        for (ip, group, mac) in cases {
            let got = solicited_node(v6(ip));
            assert_eq!(got, v6(group), "{ip}");
            assert_eq!(ipv6_multicast_mac(got).to_string(), mac, "{ip}");
        }
    }

    #[test]
    fn internet_checksum_vectors() {
        // RFC 1071, 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, so the checksum is 220d.
        let cases: &[(&[u8], u16)] = &[
            (&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0x220d),
            (&[], 0xffff),
            (&[0xff, 0xff], 0x0000),
            (&[0x01], 0xfeff), // an odd byte is padded with a zero
            (&[0x80, 0x00, 0x80, 0x00], 0xfffe), // carry folded back in
        ];
        for (data, want) in cases {
            assert_eq!(internet_checksum(data), *want, "{data:02x?}");
        }
    }

    #[test]
    fn dad_solicitation_checksums() {
        // Expected values computed independently (Python, pseudo-header per RFC 8200 8.1).
        let cases = [
            ("2001:db8:100::21", 0x4bad_u16),
            ("2001:db8:100::99", 0x4abd),
            ("fe80::250:56ff:fe12:3456", 0xbc06),
        ];
        for (target, want) in cases {
            let frame = dad_solicitation(BRIDGE, v6(target));
            let icmp = &frame[ETH_HLEN + IPV6_HLEN..];
            let got = u16::from_be_bytes([icmp[2], icmp[3]]);
            assert_eq!(got, want, "{target}: {got:#06x}");
            // and a correct checksum verifies to zero over the whole message
            let group = solicited_node(v6(target));
            assert_eq!(icmpv6_checksum(Ipv6Addr::UNSPECIFIED, group, icmp), 0);
        }
    }

    #[test]
    fn dad_solicitation_layout() {
        let target = v6("2001:db8:100::21");
        let f = dad_solicitation(BRIDGE, target);
        assert_eq!(f.len(), 78);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0x00, 0x00, 0x21]);
        assert_eq!(&f[6..12], &BRIDGE.0);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14], 0x60);
        assert_eq!(&f[18..20], &[0, 24], "payload length");
        assert_eq!(f[20], 58, "next header");
        assert_eq!(f[21], 255, "hop limit");
        assert_eq!(&f[22..38], &[0u8; 16], "source ::");
        assert_eq!(&f[38..54], &v6("ff02::1:ff00:21").octets());
        assert_eq!(f[54], 135);
        assert_eq!(f[55], 0);
        assert_eq!(&f[58..62], &[0; 4], "reserved");
        assert_eq!(&f[62..78], &target.octets());
    }

    #[test]
    fn arp_probe_layout() {
        let f = arp_probe(BRIDGE, Ipv4Addr::new(10, 10, 100, 21));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 10, 10, 100, 21,
        ];
        assert_eq!(f, want);
    }

    /// An ARP frame from `eth_src` with the given fields, padded to 60 bytes as on a wire.
    fn arp(eth_src: MacAddr, op: u16, sha: MacAddr, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        ethernet_header(&mut f, BRIDGE, eth_src, ETH_P_ARP);
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        f[22..28].copy_from_slice(&sha.0);
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&tpa);
        f
    }

    /// An NS or NA from `eth_src`, IPv6 source `src`, with `options` appended.
    fn ndp(eth_src: MacAddr, kind: u8, src: &str, target: &str, options: &[u8]) -> Vec<u8> {
        let dst = v6("ff02::1");
        let mut icmp = vec![0u8; NS_LEN];
        icmp[0] = kind;
        icmp[8..24].copy_from_slice(&v6(target).octets());
        icmp.extend_from_slice(options);
        let sum = icmpv6_checksum(v6(src), dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = vec![0u8; ETH_HLEN + IPV6_HLEN];
        ethernet_header(&mut f, ipv6_multicast_mac(dst), eth_src, ETH_P_IPV6);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
        f[20] = 58;
        f[21] = 255;
        f[22..38].copy_from_slice(&v6(src).octets());
        f[38..54].copy_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn parses_claims() {
        let other = MacAddr([0x00, 0x50, 0x56, 0x99, 0x99, 0x99]);
        let tlla = [2, 1, 0x00, 0x50, 0x56, 0x12, 0x34, 0x56];
        let slla = [1, 1, 0x00, 0x50, 0x56, 0x99, 0x99, 0x99];
        let claim = |ip: &str, mac: MacAddr| {
            Some(Claim {
                ip: ip.parse().unwrap(),
                mac,
            })
        };
        let cases: Vec<(&str, Vec<u8>, Option<Claim>)> = vec![
            (
                "ARP reply",
                arp(LEGACY, 2, LEGACY, [10, 10, 100, 21], [0; 4]),
                claim("10.10.100.21", LEGACY),
            ),
            (
                "ARP reply, sha not the Ethernet source: sha wins",
                arp(other, 2, LEGACY, [10, 10, 100, 21], [0; 4]),
                claim("10.10.100.21", LEGACY),
            ),
            (
                "ARP request (announcement or lookup) claims its sender IP",
                arp(LEGACY, 1, LEGACY, [10, 10, 100, 21], [10, 10, 100, 1]),
                claim("10.10.100.21", LEGACY),
            ),
            (
                "another host's ARP probe claims the target",
                arp(LEGACY, 1, LEGACY, [0; 4], [10, 10, 100, 21]),
                claim("10.10.100.21", LEGACY),
            ),
            (
                "ARP reply with sender 0.0.0.0",
                arp(LEGACY, 2, LEGACY, [0; 4], [10, 10, 100, 21]),
                None,
            ),
            (
                "our own probe (Ethernet source is the bridge)",
                arp_probe(BRIDGE, Ipv4Addr::new(10, 10, 100, 21)).to_vec(),
                None,
            ),
            (
                "ARP with the bridge as sha",
                arp(other, 2, BRIDGE, [10, 10, 100, 21], [0; 4]),
                None,
            ),
            (
                "NA with target link-layer option",
                ndp(other, 136, "2001:db8:100::21", "2001:db8:100::21", &tlla),
                claim("2001:db8:100::21", LEGACY),
            ),
            (
                "NA without option: Ethernet source",
                ndp(other, 136, "fe80::1", "2001:db8:100::21", &[]),
                claim("2001:db8:100::21", other),
            ),
            (
                "NA with only a source option: Ethernet source",
                ndp(LEGACY, 136, "fe80::1", "2001:db8:100::21", &slla),
                claim("2001:db8:100::21", LEGACY),
            ),
            (
                "NA with a zero-length option",
                ndp(
                    LEGACY,
                    136,
                    "fe80::1",
                    "2001:db8:100::21",
                    &[2, 0, 0, 0, 0, 0, 0, 0],
                ),
                claim("2001:db8:100::21", LEGACY),
            ),
            (
                "someone else's DAD NS",
                ndp(LEGACY, 135, "::", "2001:db8:100::21", &[]),
                claim("2001:db8:100::21", LEGACY),
            ),
            (
                "address-resolution NS (source set) is no claim",
                ndp(LEGACY, 135, "2001:db8:100::5", "2001:db8:100::21", &slla),
                None,
            ),
            (
                "our own DAD NS",
                dad_solicitation(BRIDGE, v6("2001:db8:100::21")).to_vec(),
                None,
            ),
            ("truncated", vec![0xff; 10], None),
            (
                "truncated ARP",
                arp(LEGACY, 2, LEGACY, [10, 10, 100, 21], [0; 4])[..30].to_vec(),
                None,
            ),
        ];
        for (name, frame, want) in cases {
            let got = parse_claim(&frame, BRIDGE);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn router_solicitation_is_ignored() {
        let f = ndp(LEGACY, 133, "fe80::1", "::", &[]);
        assert_eq!(parse_claim(&f, BRIDGE), None);
    }
}
