//! Deterministic interface names, at most 15 bytes (IFNAMSIZ - 1) for any input.
//!
//! Host-side veths are named from (container ID, ifname) so that DEL finds the
//! veth with no state at all. VLAN sub-interfaces and bridges are named from
//! (uplink, vlan) so that the same portgroup gets the same names after a restart,
//! whatever the uplink is called (`enp129s0f0np0` is 13 bytes on its own).

/// Linux rejects interface names of 16 bytes or more.
pub const IFNAME_MAX: usize = 15;

/// The mark every host interface that portgroup owns carries in IFLA_IFALIAS.
pub const OWNER_MARK: &str = "portgroup:";

/// FNV-1a, 64 bit, then the splitmix64 finaliser so that the high bits we keep
/// depend on every input byte. Stable across releases and platforms, unlike std's hasher.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator that cannot occur in either part keeps ("ab","c") apart from ("a","bc").
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// `pg` + 12 hex digits (48 bits): 14 bytes.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let hash = stable_hash(&[container_id.as_bytes(), ifname.as_bytes()]);
    format!("pg{:012x}", hash >> 16)
}

/// Whether `name` is one [`host_veth_name`] gives.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("pg")
        && name[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 16 hex digits (64 bits) naming one (container ID, ifname) pair, for file names
/// that must stay short whatever the container ID's length.
pub fn attachment_tag(container_id: &str, ifname: &str) -> String {
    format!(
        "{:016x}",
        stable_hash(&[container_id.as_bytes(), ifname.as_bytes()])
    )
}

/// The MAC a portgroup bridge is pinned to: locally administered, unicast, and
/// the same for the same bridge on the same node across restarts and reboots.
/// Pinned, a bridge never takes another MAC as ports come and go (a Linux
/// bridge otherwise follows its lowest port's MAC); the node name keeps two
/// nodes' bridges on one VLAN apart (the conflict probe sends from this MAC).
pub fn bridge_mac(node: &str, bridge: &str) -> crate::mac::MacAddr {
    let h = stable_hash(&[b"portgroup bridge", node.as_bytes(), bridge.as_bytes()]).to_be_bytes();
    crate::mac::MacAddr([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
}

fn uplink_tag(uplink: &str) -> String {
    format!("{:04x}", stable_hash(&[uplink.as_bytes()]) >> 48)
}

/// `pgv<tag>.<vid>`: at most 3 + 4 + 1 + 4 = 12 bytes.
pub fn vlan_interface_name(uplink: &str, vlan: u16) -> String {
    format!("pgv{}.{}", uplink_tag(uplink), vlan)
}

/// `pgbr<tag>.<vid>`: at most 4 + 4 + 1 + 4 = 13 bytes.
pub fn bridge_name(uplink: &str, vlan: u16) -> String {
    format!("pgbr{}.{}", uplink_tag(uplink), vlan)
}

/// The untagged portgroup's bridge on `uplink`: `pgbr<tag>.0` (VLAN 0 is
/// vSphere's and 802.1Q's "no VLAN").
pub fn untagged_bridge_name(uplink: &str) -> String {
    bridge_name(uplink, 0)
}

/// 7 hex digits (28 bits) naming one trunk portgroup on one uplink. From the
/// portgroup's name, not its VLAN list: adding a VLAN to a trunk must not move
/// its bridge (and with it every VM port) to another name.
fn trunk_tag(uplink: &str, portgroup: &str) -> String {
    format!(
        "{:07x}",
        stable_hash(&[b"trunk", uplink.as_bytes(), portgroup.as_bytes()]) >> 36
    )
}

/// `pgtb<7 hex>` (11 bytes): the trunk portgroup's bridge, where its VM ports are.
pub fn trunk_bridge_name(uplink: &str, portgroup: &str) -> String {
    format!("pgtb{}", trunk_tag(uplink, portgroup))
}

/// `pgtp<7 hex>` (11 bytes): the end of the trunk's veth pair on its bridge.
pub fn trunk_port_name(uplink: &str, portgroup: &str) -> String {
    format!("pgtp{}", trunk_tag(uplink, portgroup))
}

/// What every trunk feed's name starts with: the native-VLAN guard
/// (`portsec::ensure_native_guard`) matches feeds by it.
pub const TRUNK_FEED_PREFIX: &str = "pgtq";

/// `pgtq<7 hex>` (11 bytes): the other end, parent of one VLAN sub-interface per
/// VID of the trunk.
pub fn trunk_feed_name(uplink: &str, portgroup: &str) -> String {
    format!("{TRUNK_FEED_PREFIX}{}", trunk_tag(uplink, portgroup))
}

/// `pgq<7 hex>.<vid>` (at most 3 + 7 + 1 + 4 = 15 bytes): the trunk's sub-interface
/// for one VID, a port of that VID's bridge.
pub fn trunk_vlan_name(uplink: &str, portgroup: &str, vid: u16) -> String {
    format!("pgq{}.{vid}", trunk_tag(uplink, portgroup))
}

/// The alias marks ownership and tells a person what the interface is for.
pub fn owner_alias(role: &str, portgroup: &str, uplink: &str, vlan: u16) -> String {
    format!("{OWNER_MARK}{role} {portgroup} uplink={uplink} vlan={vlan}")
}

/// What the ownership mark says of a link, parsed back from the alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub role: String,
    pub portgroup: String,
    pub uplink: String,
    pub vlan: u16,
}

/// Parses an alias made by [`owner_alias`]; None if it is not one.
pub fn parse_mark(alias: &str) -> Option<Mark> {
    let rest = alias.strip_prefix(OWNER_MARK)?;
    let mut words = rest.split_whitespace();
    let role = words.next()?.to_string();
    let portgroup = words.next()?.to_string();
    let mut uplink = None;
    let mut vlan = None;
    for word in words {
        if let Some(v) = word.strip_prefix("uplink=") {
            uplink = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("vlan=") {
            vlan = v.parse().ok();
        }
    }
    Some(Mark {
        role,
        portgroup,
        uplink: uplink?,
        vlan: vlan?,
    })
}

/// Whether the alias starts like a mark. Loose on purpose, for refusing: the
/// plugin's `bridge:` mode stays off anything that even looks like portgroupd's.
/// Never a reason to change or delete a link: that takes [`is_exact_mark`].
pub fn is_owned(alias: Option<&str>) -> bool {
    alias.is_some_and(|a| a.starts_with(OWNER_MARK))
}

/// Whether the alias is exactly a mark [`owner_alias`] writes: parsed and
/// rendered again to the same bytes. An admin's `portgroup: reserved` is not.
pub fn is_exact_mark(alias: &str) -> bool {
    parse_mark(alias)
        .is_some_and(|m| owner_alias(&m.role, &m.portgroup, &m.uplink, m.vlan) == alias)
}

/// CNI_IFNAME rules as libcni applies them (ValidateInterfaceName).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!("{name:?} is longer than {IFNAME_MAX} bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} contains {c:?}"));
    }
    Ok(())
}

/// CNI_CONTAINERID rules from the spec: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("{id:?} must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!(
            "{id:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_fit_for_any_uplink() {
        for uplink in ["eth1", "bond0", "enp129s0f0np0", "a-very-long-name-x"] {
            for vlan in [1, 100, 4094] {
                let v = vlan_interface_name(uplink, vlan);
                let b = bridge_name(uplink, vlan);
                assert!(v.len() <= IFNAME_MAX, "{v}");
                assert!(b.len() <= IFNAME_MAX, "{b}");
                assert_ne!(v, b);
                assert!(validate_ifname(&v).is_ok() && validate_ifname(&b).is_ok());
            }
        }
    }

    #[test]
    fn trunk_names_fit_and_differ() {
        let long = "x".repeat(63);
        for uplink in ["eth1", "enp129s0f0np0"] {
            for pg in ["fw", long.as_str()] {
                let names = [
                    trunk_bridge_name(uplink, pg),
                    trunk_port_name(uplink, pg),
                    trunk_feed_name(uplink, pg),
                    trunk_vlan_name(uplink, pg, 4094),
                    untagged_bridge_name(uplink),
                ];
                for n in &names {
                    assert!(validate_ifname(n).is_ok(), "{n}");
                }
                let distinct: HashSet<_> = names.iter().collect();
                assert_eq!(distinct.len(), names.len(), "{names:?}");
            }
        }
        // The same portgroup on another uplink, or another portgroup: other names.
        assert_ne!(
            trunk_bridge_name("eth1", "fw"),
            trunk_bridge_name("eth2", "fw")
        );
        assert_ne!(
            trunk_bridge_name("eth1", "fw"),
            trunk_bridge_name("eth1", "fw2")
        );
        // Never one of the per-VLAN or veth names.
        assert!(!trunk_vlan_name("eth1", "fw", 100).starts_with("pgv"));
    }

    #[test]
    fn names_are_stable_and_distinct() {
        assert_eq!(bridge_name("eth1", 100), bridge_name("eth1", 100));
        let all: HashSet<_> = (1..=4094).map(|v| bridge_name("eth1", v)).collect();
        assert_eq!(all.len(), 4094);
        assert_ne!(bridge_name("eth1", 100), bridge_name("eth2", 100));
        // Pinned to literal values: a release that changed these would orphan every
        // running bridge, VLAN interface and veth (docs/DESIGN.md, "Names").
        assert_eq!(host_veth_name("abc", "net1"), "pgd6f14846f97a");
        assert_eq!(host_veth_name("abc123", "net1"), "pg885d85f7df1d");
        assert_eq!(bridge_name("eth1", 100), "pgbr43a1.100");
        assert_eq!(vlan_interface_name("eth1", 100), "pgv43a1.100");
        assert_eq!(bridge_name("enp129s0f0np0", 4094), "pgbra4cd.4094");
        assert_eq!(untagged_bridge_name("eth2"), "pgbr7b06.0");
        assert_eq!(trunk_bridge_name("eth1", "fw"), "pgtbc431e06");
        assert_eq!(trunk_port_name("eth1", "fw"), "pgtpc431e06");
        assert_eq!(trunk_feed_name("eth1", "fw"), "pgtqc431e06");
        assert_eq!(trunk_vlan_name("eth1", "fw", 4094), "pgqc431e06.4094");
        assert_ne!(host_veth_name("abc", "net1"), host_veth_name("ab", "cnet1"));
        assert_ne!(host_veth_name("abc", "net1"), host_veth_name("abc", "net2"));
    }

    #[test]
    fn host_veth_names_rarely_collide() {
        let names: HashSet<_> = (0..20_000)
            .map(|i| host_veth_name(&format!("container{i}"), "net1"))
            .collect();
        assert_eq!(names.len(), 20_000);
        assert!(names.iter().all(|n| n.len() <= IFNAME_MAX));
    }

    #[test]
    fn ifname_rules() {
        let cases = [
            ("net1", true),
            ("eth0", true),
            ("123456789012345", true),
            ("1234567890123456", false),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a:b", false),
            ("a b", false),
            ("a\tb", false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_ifname(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn container_id_rules() {
        let cases = [
            ("abc123", true),
            ("a_b.c-d", true),
            ("9", true),
            ("", false),
            ("-abc", false),
            ("_abc", false),
            ("abc/def", false),
            ("abc def", false),
            ("abc;rm", false),
        ];
        for (id, ok) in cases {
            assert_eq!(validate_container_id(id).is_ok(), ok, "{id:?}");
        }
    }

    #[test]
    fn ownership() {
        assert!(is_owned(Some(&owner_alias("bridge", "web", "eth1", 100))));
        assert!(!is_owned(Some("something else")));
        assert!(!is_owned(None));
    }

    #[test]
    fn marks_round_trip() {
        let alias = owner_alias("bridge", "prod-web", "enp129s0f0np0", 4094);
        assert_eq!(
            parse_mark(&alias),
            Some(Mark {
                role: "bridge".into(),
                portgroup: "prod-web".into(),
                uplink: "enp129s0f0np0".into(),
                vlan: 4094
            })
        );
        assert_eq!(parse_mark("portgroup:port x"), None);
        assert_eq!(parse_mark("nope"), None);
    }
}
