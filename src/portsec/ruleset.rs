//! The layout of `table bridge portgroup`: sets, counters, chains and the fixed
//! rules, as nf_tables netlink messages. Nothing here depends on the number of
//! ports: ports live only as set elements.

use super::nfnl::{msg, Msg, NFPROTO_BRIDGE, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

pub const TABLE: &str = "portgroup";

/// The layout tag, carried in every rule's comment so `verify` and `install`
/// notice an old or damaged layout and replace it. Derived from the encoded
/// layout itself (sets, counters, chains and rules, see [`layout_encoding`]), so
/// a changed rule can never keep the tag of the rules it replaces and stay
/// un-upgraded on nodes. The golden test in `ruleset.golden` shows every change.
pub fn layout() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| layout_tag(&layout_encoding()))
}

fn layout_tag(encoding: &[(String, Vec<u8>)]) -> String {
    let parts: Vec<&[u8]> = encoding.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    format!("pg{:08x}", crate::naming::stable_hash(&parts) >> 32)
}

/// Every message of the layout as [`bootstrap`] sends it, without the rules'
/// comments (which carry the tag made from this).
fn layout_encoding() -> Vec<(String, Vec<u8>)> {
    let mut batch = super::nfnl::Batch::new();
    add_layout(&mut batch, None);
    batch.encoded()
}

pub const SET_PORTS: &str = "ports";
pub const SET_LOCKED: &str = "ip_locked_ports";
pub const SET_MAC: &str = "port_mac";
pub const SET_IP4: &str = "port_ip4";
pub const SET_IP6: &str = "port_ip6";
/// Locked ports with no IPv4 address known: IPv4 is not restricted by source.
pub const SET_IP4_OPEN: &str = "ip4_open_ports";
/// Locked ports with no IPv6 address known: IPv6 is not restricted by source.
pub const SET_IP6_OPEN: &str = "ip6_open_ports";
/// The link-local address a port's MAC gives (modified EUI-64): a neighbour
/// advertisement may claim it.
pub const SET_LL: &str = "port_ll";
/// Ports of portgroups that allow router advertisements (VMs that are routers).
pub const SET_RA: &str = "ra_allowed_ports";
/// Ports of portgroups that allow DHCP servers.
pub const SET_DHCP: &str = "dhcp_server_ports";
/// Ports of trunk portgroups: the VM tags its own VLANs, so a single 802.1Q tag
/// passes (the trunk's sub-interfaces carry only the listed VIDs on).
pub const SET_TRUNK: &str = "trunk_ports";

pub const BASE_CHAIN: &str = "prerouting";
/// Named counters, one per reason a frame is dropped: `drop_<reason>`.
pub const COUNTERS: [&str; 11] = [
    "drop_mac",
    "drop_arp",
    "drop_ip4",
    "drop_ip6",
    "drop_nd",
    "drop_vlan",
    "drop_bpdu",
    "drop_ethertype",
    "drop_ra",
    "drop_redirect",
    "drop_dhcp_server",
];

// nft datatype ids (userspace only: how `nft list` prints keys).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_ETHERADDR: u32 = 9;
const TYPE_IFNAME: u32 = 41;
const TYPE_BITS: u32 = 6;

pub const IFNAMSIZ: usize = 16;

/// (name, nft key type, key length in bytes).
pub const SETS: [(&str, u32, u32); 11] = [
    (SET_PORTS, TYPE_IFNAME, 16),
    (SET_LOCKED, TYPE_IFNAME, 16),
    (SET_MAC, (TYPE_IFNAME << TYPE_BITS) | TYPE_ETHERADDR, 16 + 8),
    (SET_IP4, (TYPE_IFNAME << TYPE_BITS) | TYPE_IPADDR, 16 + 4),
    (SET_IP6, (TYPE_IFNAME << TYPE_BITS) | TYPE_IP6ADDR, 16 + 16),
    (SET_IP4_OPEN, TYPE_IFNAME, 16),
    (SET_IP6_OPEN, TYPE_IFNAME, 16),
    (SET_LL, (TYPE_IFNAME << TYPE_BITS) | TYPE_IP6ADDR, 16 + 16),
    (SET_RA, TYPE_IFNAME, 16),
    (SET_DHCP, TYPE_IFNAME, 16),
    (SET_TRUNK, TYPE_IFNAME, 16),
];

const CHAINS: [&str; 9] = [
    BASE_CHAIN,
    "port_in",
    "arp_sha",
    "ip4_guard",
    "ip6_guard",
    "ip4_in",
    "arp_in",
    "ip6_in",
    "nd_in",
];

// attribute numbers (linux/netfilter/nf_tables.h)
pub(super) const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
pub const NFTA_OBJ_TABLE: u16 = 1;
pub const NFTA_OBJ_NAME: u16 = 2;
pub const NFTA_OBJ_TYPE: u16 = 3;
pub const NFTA_OBJ_DATA: u16 = 4;
pub const NFTA_COUNTER_BYTES: u16 = 1;
pub const NFTA_COUNTER_PACKETS: u16 = 2;
pub const NFT_OBJECT_COUNTER: u32 = 1;

const NF_BR_PRE_ROUTING: u32 = 0;
/// NF_BR_PRI_FILTER_BRIDGED: `priority filter` in the bridge family.
const PRIORITY: i32 = -200;

// registers
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;

// expression constants
const META_IIFNAME: u32 = 6;
const META_L4PROTO: u32 = 16;
const BASE_LL: u32 = 0;
const BASE_NH: u32 = 1;
const BASE_TH: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const LOOKUP_F_INV: u32 = 1;

enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(&'static str),
}

enum Expr {
    Meta(u32, u32),
    Payload {
        base: u32,
        off: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    Lookup {
        set: &'static str,
        inv: bool,
    },
    Bitwise {
        len: u32,
        mask: Vec<u8>,
    },
    Counter(&'static str),
    Verdict(Verdict),
}

use Expr::*;

fn iifname() -> Expr {
    Meta(META_IIFNAME, REG_1)
}
fn load(base: u32, off: u32, len: u32) -> Expr {
    Payload {
        base,
        off,
        len,
        dreg: REG_1,
    }
}
/// Loads into the register after iifname: the second half of an `ifname . x` key.
fn load2(base: u32, off: u32, len: u32) -> Expr {
    Payload {
        base,
        off,
        len,
        dreg: REG_2,
    }
}
fn eq(data: &[u8]) -> Expr {
    Cmp {
        op: CMP_EQ,
        data: data.to_vec(),
    }
}
fn ne(data: &[u8]) -> Expr {
    Cmp {
        op: CMP_NEQ,
        data: data.to_vec(),
    }
}
fn in_set(set: &'static str) -> Expr {
    Lookup { set, inv: false }
}
fn not_in_set(set: &'static str) -> Expr {
    Lookup { set, inv: true }
}
fn ether_type(t: u16) -> [Expr; 2] {
    [load(BASE_LL, 12, 2), eq(&t.to_be_bytes())]
}
fn l4proto(p: u8) -> [Expr; 2] {
    [Meta(META_L4PROTO, REG_1), eq(&[p])]
}
fn drop_counted(counter: &'static str) -> [Expr; 2] {
    [Counter(counter), Verdict(Verdict::Drop)]
}

/// The link-local prefix fe80::/10 on the first two bytes of an address.
fn link_local(base: u32, off: u32) -> [Expr; 3] {
    [
        load(base, off, 2),
        Bitwise {
            len: 2,
            mask: vec![0xff, 0xc0],
        },
        eq(&[0xfe, 0x80]),
    ]
}

const ETH_IP: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_RARP: u16 = 0x8035;
const ETH_IP6: u16 = 0x86dd;
const ETH_8021Q: u16 = 0x8100;
/// Every tag protocol an access port must not carry: 802.1Q (VID 0, priority
/// tagged, included), 802.1ad and the pre-standard 0x9100 outer tag. A trunk
/// port carries single 802.1Q tags only.
const ETH_TAGS: [u16; 3] = [ETH_8021Q, 0x88a8, 0x9100];
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_ROUTER_ADVERT: u8 = 134;
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
const ICMPV6_REDIRECT: u8 = 137;
const ICMPV6_MLD2_REPORT: u8 = 143;
const DHCP4_SERVER_PORT: u16 = 67;
const DHCP6_SERVER_PORT: u16 = 547;
/// 01:80:c2:00:00:00/44: IEEE 802.1D reserved group addresses (STP BPDUs, LACP,
/// LLDP, 802.1X, pause frames). A bridge never forwards them; neither may a VM send them.
const IEEE_RESERVED: [u8; 6] = [0x01, 0x80, 0xc2, 0, 0, 0];
const IEEE_RESERVED_MASK: [u8; 6] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xf0];

fn rule(chain: &'static str, parts: Vec<Vec<Expr>>) -> (&'static str, Vec<Expr>) {
    (chain, parts.into_iter().flatten().collect())
}
fn jump(chain: &'static str) -> Vec<Expr> {
    vec![Verdict(Verdict::Jump(chain))]
}
fn accept() -> Vec<Expr> {
    vec![Verdict(Verdict::Accept)]
}
fn ret() -> Vec<Expr> {
    vec![Verdict(Verdict::Return)]
}
fn port_in(set: &'static str) -> Vec<Expr> {
    vec![iifname(), in_set(set)]
}
fn port_not_in(set: &'static str) -> Vec<Expr> {
    vec![iifname(), not_in_set(set)]
}
fn icmpv6_type(t: u8) -> Vec<Expr> {
    let mut v: Vec<Expr> = l4proto(IPPROTO_ICMPV6).into();
    v.extend([load(BASE_TH, 0, 1), eq(&[t])]);
    v
}
fn udp_sport(port: u16) -> Vec<Expr> {
    let mut v: Vec<Expr> = l4proto(IPPROTO_UDP).into();
    v.extend([load(BASE_TH, 0, 2), eq(&port.to_be_bytes())]);
    v
}

/// Every rule: (chain, expressions). Comments are derived from the position.
///
/// Order in `port_in`: what holds for every port (MAC, reserved group
/// addresses, tags, ARP sender MAC, router/DHCP-server guards), then the
/// per-family source checks of IP-locked ports, then the ethertype allowlist.
fn rules() -> Vec<(&'static str, Vec<Expr>)> {
    let mut rules = vec![
        // Only frames from our ports are looked at; the uplink and other ports pass.
        rule(BASE_CHAIN, vec![port_in(SET_PORTS), jump("port_in")]),
        // The Ethernet source must be the port's MAC.
        rule(
            "port_in",
            vec![
                vec![iifname(), load2(BASE_LL, 6, 6), not_in_set(SET_MAC)],
                drop_counted("drop_mac").into(),
            ],
        ),
        // BPDUs, LACP, LLDP, pause: a VM's BPDU trips BPDU guard upstream.
        rule(
            "port_in",
            vec![
                vec![
                    load(BASE_LL, 0, 6),
                    Bitwise {
                        len: 6,
                        mask: IEEE_RESERVED_MASK.to_vec(),
                    },
                    eq(&IEEE_RESERVED),
                ],
                drop_counted("drop_bpdu").into(),
            ],
        ),
    ];
    // A tag would hide the inner addresses from every check below; the kernel
    // shows an offloaded outer tag at offset 12 (and the ethertype after it at
    // 16) as if it were inline. Access ports carry no tag at all; trunk ports
    // one 802.1Q tag: no 802.1ad or 0x9100 outer tag, no tag inside the tag
    // (QinQ), no VID 0 (a priority tag would put the frame on the native VLAN
    // past the ARP checks below).
    for tag in ETH_TAGS {
        let access_only: Vec<Expr> = if tag == ETH_8021Q {
            port_not_in(SET_TRUNK)
        } else {
            vec![]
        };
        rules.push(rule(
            "port_in",
            vec![
                ether_type(tag).into(),
                access_only,
                drop_counted("drop_vlan").into(),
            ],
        ));
    }
    for inner in ETH_TAGS {
        rules.push(rule(
            "port_in",
            vec![
                ether_type(ETH_8021Q).into(),
                vec![load(BASE_LL, 16, 2), eq(&inner.to_be_bytes())],
                drop_counted("drop_vlan").into(),
            ],
        ));
    }
    rules.extend([
        rule(
            "port_in",
            vec![
                ether_type(ETH_8021Q).into(),
                vec![
                    load(BASE_LL, 14, 2),
                    Bitwise {
                        len: 2,
                        mask: vec![0x0f, 0xff],
                    },
                    eq(&[0, 0]),
                ],
                drop_counted("drop_vlan").into(),
            ],
        ),
        // A trunk port's tagged frame: its MAC and BPDU checks are done; its
        // addresses are the VLAN's, not known here.
        rule("port_in", vec![ether_type(ETH_8021Q).into(), accept()]),
    ]);
    rules.extend([
        // ARP: well-formed Ethernet/IPv4 only, sender MAC = the port's MAC.
        rule("port_in", vec![ether_type(ETH_ARP).into(), jump("arp_sha")]),
        rule(
            "port_in",
            vec![ether_type(ETH_IP).into(), jump("ip4_guard")],
        ),
        rule(
            "port_in",
            vec![ether_type(ETH_IP6).into(), jump("ip6_guard")],
        ),
        // Ports without IP restriction are done.
        rule("port_in", vec![port_not_in(SET_LOCKED), accept()]),
        rule("port_in", vec![ether_type(ETH_IP).into(), jump("ip4_in")]),
        rule("port_in", vec![ether_type(ETH_ARP).into(), jump("arp_in")]),
        rule("port_in", vec![ether_type(ETH_IP6).into(), jump("ip6_in")]),
        // RARP: QEMU announces a migrated VM's MAC with it; sender MAC = port MAC.
        rule(
            "port_in",
            vec![ether_type(ETH_RARP).into(), jump("arp_sha")],
        ),
        rule("port_in", vec![ether_type(ETH_RARP).into(), accept()]),
        // Everything unlisted (MPLS, PPPoE, 802.3 length + LLC/SNAP, ...).
        rule("port_in", vec![drop_counted("drop_ethertype").into()]),
        // arp_sha: hardware type 1, protocol 0x0800, lengths 6 and 4; then sender MAC.
        rule(
            "arp_sha",
            vec![
                vec![load(BASE_NH, 0, 6), ne(&[0, 1, 8, 0, 6, 4])],
                drop_counted("drop_arp").into(),
            ],
        ),
        rule(
            "arp_sha",
            vec![
                vec![iifname(), load2(BASE_NH, 8, 6), not_in_set(SET_MAC)],
                drop_counted("drop_arp").into(),
            ],
        ),
        // ip4_guard: DHCP server replies only from ports allowed to be DHCP servers.
        rule(
            "ip4_guard",
            vec![
                udp_sport(DHCP4_SERVER_PORT),
                port_not_in(SET_DHCP),
                drop_counted("drop_dhcp_server").into(),
            ],
        ),
        // ip6_guard: RA guard, no redirects, no DHCPv6 server replies, NA targets.
        rule(
            "ip6_guard",
            vec![
                icmpv6_type(ICMPV6_ROUTER_ADVERT),
                port_not_in(SET_RA),
                drop_counted("drop_ra").into(),
            ],
        ),
        rule(
            "ip6_guard",
            vec![
                icmpv6_type(ICMPV6_REDIRECT),
                port_not_in(SET_RA),
                drop_counted("drop_redirect").into(),
            ],
        ),
        rule(
            "ip6_guard",
            vec![
                udp_sport(DHCP6_SERVER_PORT),
                port_not_in(SET_DHCP),
                drop_counted("drop_dhcp_server").into(),
            ],
        ),
        rule(
            "ip6_guard",
            vec![icmpv6_type(ICMPV6_NEIGHBOR_ADVERT), jump("nd_in")],
        ),
        // ip4_in: own addresses; DHCP from 0.0.0.0; nothing else.
        rule("ip4_in", vec![port_in(SET_IP4_OPEN), accept()]),
        rule(
            "ip4_in",
            vec![
                vec![iifname(), load2(BASE_NH, 12, 4), in_set(SET_IP4)],
                accept(),
            ],
        ),
        rule(
            "ip4_in",
            vec![
                vec![load(BASE_NH, 12, 4), eq(&[0, 0, 0, 0])],
                l4proto(IPPROTO_UDP).into(),
                vec![load(BASE_TH, 0, 4), eq(&[0, 68, 0, 67])],
                accept(),
            ],
        ),
        rule("ip4_in", vec![drop_counted("drop_ip4").into()]),
        // arp_in: sender IP one of the port's, or 0.0.0.0 (RFC 5227 probe).
        rule("arp_in", vec![port_in(SET_IP4_OPEN), accept()]),
        rule(
            "arp_in",
            vec![
                vec![iifname(), load2(BASE_NH, 14, 4), in_set(SET_IP4)],
                accept(),
            ],
        ),
        rule(
            "arp_in",
            vec![vec![load(BASE_NH, 14, 4), eq(&[0, 0, 0, 0])], accept()],
        ),
        rule("arp_in", vec![drop_counted("drop_arp").into()]),
        // ip6_in: own addresses, any link-local, DAD from ::.
        rule("ip6_in", vec![port_in(SET_IP6_OPEN), accept()]),
        rule(
            "ip6_in",
            vec![
                vec![iifname(), load2(BASE_NH, 8, 16), in_set(SET_IP6)],
                accept(),
            ],
        ),
        rule("ip6_in", vec![link_local(BASE_NH, 8).into(), accept()]),
        // From :: only duplicate-address detection (NS) and its MLD report.
        rule(
            "ip6_in",
            vec![
                vec![load(BASE_NH, 8, 16), eq(&[0; 16])],
                icmpv6_type(ICMPV6_NEIGHBOR_SOLICIT),
                accept(),
            ],
        ),
        rule(
            "ip6_in",
            vec![
                vec![load(BASE_NH, 8, 16), eq(&[0; 16])],
                icmpv6_type(ICMPV6_MLD2_REPORT),
                accept(),
            ],
        ),
        rule("ip6_in", vec![drop_counted("drop_ip6").into()]),
        // nd_in: the target of a neighbour advertisement (ICMPv6 offset 8) must
        // be the port's: a declared address, or the link-local of its MAC.
        rule(
            "nd_in",
            vec![
                vec![iifname(), load2(BASE_TH, 8, 16), in_set(SET_IP6)],
                ret(),
            ],
        ),
        rule(
            "nd_in",
            vec![
                vec![iifname(), load2(BASE_TH, 8, 16), in_set(SET_LL)],
                ret(),
            ],
        ),
        // Other link-local targets (the router's fe80::1, a neighbour's) only
        // from ports allowed to be routers.
        rule(
            "nd_in",
            vec![link_local(BASE_TH, 8).into(), port_in(SET_RA), ret()],
        ),
        rule(
            "nd_in",
            vec![
                link_local(BASE_TH, 8).into(),
                drop_counted("drop_nd").into(),
            ],
        ),
        // A global target must be declared when the port's IPv6 is locked; with
        // no IPv6 known (MAC-only, or IPv4 only) it is not checked.
        rule("nd_in", vec![port_not_in(SET_LOCKED), ret()]),
        rule("nd_in", vec![port_in(SET_IP6_OPEN), ret()]),
        rule("nd_in", vec![drop_counted("drop_nd").into()]),
    ]);
    rules
}

/// The comments `verify` expects, in chain order.
pub fn expected_comments() -> Vec<(String, String)> {
    comments(layout())
}

/// The comment carried by each rule, in chain order: layout tag, chain and
/// position in the chain.
fn comments(tag: &str) -> Vec<(String, String)> {
    let mut counts = std::collections::HashMap::new();
    rules()
        .iter()
        .map(|(chain, _)| {
            let n = counts.entry(*chain).or_insert(0usize);
            *n += 1;
            (chain.to_string(), format!("{tag}:{chain}:{n}"))
        })
        .collect()
}

/// Rule userdata as nft writes a comment (NFTNL_UDATA_RULE_COMMENT), so
/// `nft list ruleset` shows it.
pub fn comment_udata(text: &str) -> Vec<u8> {
    let mut v = vec![0u8, (text.len() + 1) as u8];
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// Reads a comment back from rule userdata.
pub fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        if rest.len() < 2 + len {
            return None;
        }
        if ty == 0 {
            let v = &rest[2..2 + len];
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

fn encode_expr(m: &mut Msg, e: &Expr) {
    m.begin(NFTA_LIST_ELEM);
    match e {
        Meta(key, dreg) => {
            m.str(NFTA_EXPR_NAME, "meta").begin(NFTA_EXPR_DATA);
            m.u32(2, *key).u32(1, *dreg); // NFTA_META_KEY, NFTA_META_DREG
        }
        Payload {
            base,
            off,
            len,
            dreg,
        } => {
            m.str(NFTA_EXPR_NAME, "payload").begin(NFTA_EXPR_DATA);
            m.u32(1, *dreg).u32(2, *base).u32(3, *off).u32(4, *len);
        }
        Cmp { op, data } => {
            m.str(NFTA_EXPR_NAME, "cmp").begin(NFTA_EXPR_DATA);
            m.u32(1, REG_1).u32(2, *op);
            m.begin(3).bytes(NFTA_DATA_VALUE, data).end();
        }
        Lookup { set, inv } => {
            m.str(NFTA_EXPR_NAME, "lookup").begin(NFTA_EXPR_DATA);
            m.str(1, set).u32(2, REG_1);
            if *inv {
                m.u32(5, LOOKUP_F_INV);
            }
        }
        Bitwise { len, mask } => {
            m.str(NFTA_EXPR_NAME, "bitwise").begin(NFTA_EXPR_DATA);
            m.u32(1, REG_1).u32(2, REG_1).u32(3, *len);
            m.begin(4).bytes(NFTA_DATA_VALUE, mask).end();
            m.begin(5)
                .bytes(NFTA_DATA_VALUE, &vec![0u8; mask.len()])
                .end();
        }
        Counter(name) => {
            m.str(NFTA_EXPR_NAME, "objref").begin(NFTA_EXPR_DATA);
            m.u32(1, NFT_OBJECT_COUNTER).str(2, name);
        }
        Verdict(v) => {
            m.str(NFTA_EXPR_NAME, "immediate").begin(NFTA_EXPR_DATA);
            m.u32(1, REG_VERDICT).begin(2).begin(NFTA_DATA_VERDICT);
            let code: i32 = match v {
                Verdict::Accept => 1,
                Verdict::Drop => 0,
                Verdict::Return => -5,
                Verdict::Jump(_) => -3,
            };
            m.u32(NFTA_VERDICT_CODE, code as u32);
            if let Verdict::Jump(chain) = v {
                m.str(NFTA_VERDICT_CHAIN, chain);
            }
            m.end().end();
        }
    }
    m.end(); // NFTA_EXPR_DATA
    m.end(); // NFTA_LIST_ELEM
}

/// Adds to `batch` everything that makes up the table, idempotently: the table,
/// sets and counters are created if missing (existing elements and counts are
/// kept), every chain is flushed and its rules added again. One transaction, so
/// concurrent callers each leave exactly one copy of the rules.
pub fn bootstrap(batch: &mut super::nfnl::Batch) {
    add_layout(batch, Some(layout()));
}

/// The messages of [`bootstrap`]; the rules carry their comments when `tag` is given.
fn add_layout(batch: &mut super::nfnl::Batch, tag: Option<&str>) {
    let create = NLM_F_REQUEST | NLM_F_CREATE;
    let mut m = Msg::new(msg::NEWTABLE, create, NFPROTO_BRIDGE);
    m.str(NFTA_TABLE_NAME, TABLE);
    batch.push(m, format!("creating table bridge {TABLE}"));

    for (i, (name, key_type, key_len)) in SETS.iter().enumerate() {
        let mut m = Msg::new(msg::NEWSET, create, NFPROTO_BRIDGE);
        m.str(NFTA_SET_TABLE, TABLE)
            .str(NFTA_SET_NAME, name)
            .u32(NFTA_SET_FLAGS, 0)
            .u32(NFTA_SET_KEY_TYPE, *key_type)
            .u32(NFTA_SET_KEY_LEN, *key_len)
            .u32(NFTA_SET_ID, i as u32 + 1);
        // NFTNL_UDATA_SET_KEYBYTEORDER: host order for ifname keys (so nft prints strings).
        if *key_type == TYPE_IFNAME {
            m.bytes(NFTA_SET_USERDATA, &[0, 4, 1, 0, 0, 0]);
        }
        batch.push(m, format!("creating set {name}"));
    }
    for name in COUNTERS {
        let mut m = Msg::new(msg::NEWOBJ, create, NFPROTO_BRIDGE);
        m.str(NFTA_OBJ_TABLE, TABLE)
            .str(NFTA_OBJ_NAME, name)
            .u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER)
            .begin(NFTA_OBJ_DATA)
            .bytes(NFTA_COUNTER_BYTES, &0u64.to_be_bytes())
            .bytes(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes())
            .end();
        batch.push(m, format!("creating counter {name}"));
    }
    for chain in CHAINS.iter() {
        let mut m = Msg::new(msg::NEWCHAIN, create, NFPROTO_BRIDGE);
        m.str(NFTA_CHAIN_TABLE, TABLE).str(NFTA_CHAIN_NAME, chain);
        if *chain == BASE_CHAIN {
            m.begin(NFTA_CHAIN_HOOK)
                .u32(NFTA_HOOK_HOOKNUM, NF_BR_PRE_ROUTING)
                .u32(NFTA_HOOK_PRIORITY, PRIORITY as u32)
                .end()
                .u32(NFTA_CHAIN_POLICY, 1)
                .str(NFTA_CHAIN_TYPE, "filter");
        }
        batch.push(m, format!("creating chain {chain}"));
        let mut m = Msg::new(msg::DELRULE, NLM_F_REQUEST, NFPROTO_BRIDGE);
        m.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, chain);
        batch.push(m, format!("flushing chain {chain}"));
    }
    let comments = tag.map(comments);
    for (i, (chain, exprs)) in rules().iter().enumerate() {
        let mut m = Msg::new(msg::NEWRULE, create | NLM_F_APPEND, NFPROTO_BRIDGE);
        m.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, chain);
        m.begin(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            encode_expr(&mut m, e);
        }
        m.end();
        match comments.as_ref().and_then(|c| c.get(i)) {
            Some((_, text)) => {
                m.bytes(NFTA_RULE_USERDATA, &comment_udata(text));
                batch.push(m, format!("adding rule {text}"));
            }
            None => batch.push(m, format!("adding rule {} of {chain}", i + 1)),
        }
    }
}

/// The native-VLAN guard of trunk portgroups: its own table, owned by
/// portgroupd (not by port security, which a network config can turn off).
/// A trunk's feed (`pgtq…`) is a port of its native VLAN's bridge so that
/// untagged frames reach that VLAN; a tagged frame whose VID the trunk does not
/// list has no sub-interface on the feed to take it, so it would reach the
/// bridge too, and leave the uplink's native sub-interface double-tagged. The
/// guard drops, on the bridge's forward hook, every tagged frame (802.1Q,
/// 802.1ad, 0x9100) that enters a bridge from a feed or would leave a bridge
/// into one: the native VLAN carries untagged frames of the trunk only, and a
/// tagged frame on the native VLAN (from the wire, or an access VM) never
/// reaches the trunk's VMs as if it were a listed VLAN.
pub const GUARD_TABLE: &str = "portgroup_trunks";
pub const GUARD_CHAIN: &str = "forward";
pub const GUARD_COUNTER: &str = "drop_native_tagged";
const NF_BR_FORWARD: u32 = 2;
const META_OIFNAME: u32 = 7;

fn guard_rules() -> Vec<Vec<Expr>> {
    let prefix = crate::naming::TRUNK_FEED_PREFIX.as_bytes();
    let mut rules = Vec::new();
    for port in [META_IIFNAME, META_OIFNAME] {
        for tag in ETH_TAGS {
            // `iifname "pgtq*"`: the name's first bytes only.
            let mut rule = vec![Meta(port, REG_1), eq(prefix)];
            rule.extend(ether_type(tag));
            rule.extend(drop_counted(GUARD_COUNTER));
            rules.push(rule);
        }
    }
    rules
}

/// The guard's messages: table, counter and chain created if missing, the
/// chain flushed and its rules added again (one transaction, idempotent).
/// With `tag`, each rule carries the comment `<tag>:native:<n>`.
fn add_guard(batch: &mut super::nfnl::Batch, tag: Option<&str>) {
    let create = NLM_F_REQUEST | NLM_F_CREATE;
    let mut m = Msg::new(msg::NEWTABLE, create, NFPROTO_BRIDGE);
    m.str(NFTA_TABLE_NAME, GUARD_TABLE);
    batch.push(m, format!("creating table bridge {GUARD_TABLE}"));
    let mut m = Msg::new(msg::NEWOBJ, create, NFPROTO_BRIDGE);
    m.str(NFTA_OBJ_TABLE, GUARD_TABLE)
        .str(NFTA_OBJ_NAME, GUARD_COUNTER)
        .u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER)
        .begin(NFTA_OBJ_DATA)
        .bytes(NFTA_COUNTER_BYTES, &0u64.to_be_bytes())
        .bytes(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes())
        .end();
    batch.push(m, format!("creating counter {GUARD_COUNTER}"));
    let mut m = Msg::new(msg::NEWCHAIN, create, NFPROTO_BRIDGE);
    m.str(NFTA_CHAIN_TABLE, GUARD_TABLE)
        .str(NFTA_CHAIN_NAME, GUARD_CHAIN)
        .begin(NFTA_CHAIN_HOOK)
        .u32(NFTA_HOOK_HOOKNUM, NF_BR_FORWARD)
        .u32(NFTA_HOOK_PRIORITY, PRIORITY as u32)
        .end()
        .u32(NFTA_CHAIN_POLICY, 1)
        .str(NFTA_CHAIN_TYPE, "filter");
    batch.push(m, format!("creating chain {GUARD_CHAIN}"));
    let mut m = Msg::new(msg::DELRULE, NLM_F_REQUEST, NFPROTO_BRIDGE);
    m.str(NFTA_RULE_TABLE, GUARD_TABLE)
        .str(NFTA_RULE_CHAIN, GUARD_CHAIN);
    batch.push(m, format!("flushing chain {GUARD_CHAIN}"));
    for (i, exprs) in guard_rules().iter().enumerate() {
        let mut m = Msg::new(msg::NEWRULE, create | NLM_F_APPEND, NFPROTO_BRIDGE);
        m.str(NFTA_RULE_TABLE, GUARD_TABLE)
            .str(NFTA_RULE_CHAIN, GUARD_CHAIN);
        m.begin(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            encode_expr(&mut m, e);
        }
        m.end();
        if let Some(tag) = tag {
            m.bytes(
                NFTA_RULE_USERDATA,
                &comment_udata(&format!("{tag}:native:{}", i + 1)),
            );
        }
        batch.push(m, format!("adding guard rule {}", i + 1));
    }
}

/// The guard's layout tag: a hash of its messages, as [`layout`] is for port security.
fn guard_layout() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let mut batch = super::nfnl::Batch::new();
        add_guard(&mut batch, None);
        layout_tag(&batch.encoded())
    })
}

/// The messages that install the guard.
pub fn guard_bootstrap(batch: &mut super::nfnl::Batch) {
    add_guard(batch, Some(guard_layout()));
}

/// The comments the guard's rules carry, in order.
pub fn guard_comments() -> Vec<String> {
    (1..=guard_rules().len())
        .map(|n| format!("{}:native:{n}", guard_layout()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = "src/portsec/ruleset.golden";

    /// The layout as text: its tag, then each message's name and bytes in hex.
    fn golden_text() -> String {
        let encoding = layout_encoding();
        let mut text = format!("layout {}\n", layout_tag(&encoding));
        for (what, bytes) in &encoding {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!("{what}\n  {hex}\n"));
        }
        text
    }

    /// Pins the encoding byte for byte (netlink is host-endian: little-endian
    /// hosts only). A change to a set, counter, chain or rule fails here, and
    /// its new tag shows on the first line: rerun with PORTGROUP_UPDATE_GOLDEN=1
    /// to accept it.
    #[test]
    #[cfg(target_endian = "little")]
    fn encoding_matches_the_golden_file() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
        let have = golden_text();
        if std::env::var_os("PORTGROUP_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &have).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert!(
            have == want,
            "the port-security layout changed; if that is meant, rerun with \
             PORTGROUP_UPDATE_GOLDEN=1 and commit {GOLDEN}\n--- now:\n{have}"
        );
    }

    #[test]
    fn tag_follows_the_rules() {
        let encoding = layout_encoding();
        assert_eq!(layout(), layout_tag(&encoding));
        // Any byte of any rule moves the tag.
        let mut changed = encoding.clone();
        let last = changed.len() - 1;
        let byte = changed[last].1.len() - 1;
        changed[last].1[byte] ^= 1;
        assert_ne!(layout_tag(&changed), layout());
        // The comments carry the tag and are not part of what it hashes.
        let mut batch = crate::portsec::nfnl::Batch::new();
        bootstrap(&mut batch);
        let sent = batch.encoded();
        assert_eq!(sent.len(), encoding.len());
        let (what, _) = &sent[last];
        assert!(what.contains(layout()), "{what}");
    }
}
