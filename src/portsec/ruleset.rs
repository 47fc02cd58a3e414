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

/// First-come-first-served source address validation (RFC 6620): every IPv6
/// address some port holds, declared (no timeout) or claimed through
/// duplicate-address detection (with the binding's lifetime). A DAD claim of an
/// address in here by another port is dropped.
pub const SET_FCFS_CLAIMED: &str = "fcfs_claimed";
/// The FCFS bindings: (port . address) for each address a port claimed through
/// DAD, refreshed by every use, lapsing after [`FCFS_LIFETIME_MS`] unused.
pub const SET_FCFS_BINDINGS: &str = "fcfs_bindings";
/// How long an FCFS binding lives without being used (source address, NA
/// target or a repeated DAD). Long, because the VM is not asked again: a
/// binding that lapsed comes back only with the guest's next DAD. Seven days is
/// the valid lifetime of a temporary (privacy) address in Linux and Windows, so
/// rotated privacy addresses lapse when their guest stops using them.
pub const FCFS_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Elements each FCFS set holds at most (the kernel refuses dynamic adds past it).
pub const FCFS_SET_SIZE: u32 = 65536;
/// Per port, the rate of new DAD claims (a meter keyed by port): a guest
/// claims its link-local and a stable and a temporary address per prefix at
/// boot and a new temporary address a day; a VM probing for many addresses
/// to fill the sets is held to this rate. Claims over it are dropped
/// (`drop_dad`); refreshing a claim the port has is not counted.
pub const SET_FCFS_RATE: &str = "fcfs_claim_rate";
/// 16 new claims at once, then 6 an hour. (Current kernels fill a packet
/// limit's bucket with `burst` packets; older ones with rate + burst, 22.)
const FCFS_CLAIM_RATE: Rate = Rate {
    per: 6,
    unit_s: 3600,
    burst: 16,
};
/// A port's meter is forgotten a day after its first new claim (and with the port).
const FCFS_RATE_LIFETIME_MS: u64 = 24 * 3600 * 1000;

pub const BASE_CHAIN: &str = "prerouting";
/// Named counters, one per reason a frame is dropped: `drop_<reason>`.
pub const COUNTERS: [&str; 12] = [
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
    "drop_dad",
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

/// The FCFS sets, filled from the packet path: (name, key type, key length).
pub const FCFS_SETS: [(&str, u32, u32); 3] = [
    (SET_FCFS_CLAIMED, TYPE_IP6ADDR, 16),
    (SET_FCFS_RATE, TYPE_IFNAME, 16),
    (
        SET_FCFS_BINDINGS,
        (TYPE_IFNAME << TYPE_BITS) | TYPE_IP6ADDR,
        16 + 16,
    ),
];

const CHAINS: [&str; 11] = [
    BASE_CHAIN,
    "port_in",
    "arp_sha",
    "ip4_guard",
    "ip6_guard",
    "ip4_in",
    "arp_in",
    "ip6_in",
    "nd_in",
    "fcfs_dad",
    "fcfs_src",
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
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
/// Elements are added and refreshed from the packet path (`dynamic`).
const NFT_SET_EVAL: u32 = 0x20;
/// Elements may carry a timeout.
const NFT_SET_TIMEOUT: u32 = 0x10;
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
// dynset (linux/netfilter/nf_tables.h: nft_dynset_attributes, nft_dynset_ops)
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_DYNSET_TIMEOUT: u16 = 6;
const NFTA_DYNSET_EXPR: u16 = 7;
// limit (nft_limit_attributes): packets per unit, `over` inverts the match
const NFTA_LIMIT_RATE: u16 = 1;
const NFTA_LIMIT_UNIT: u16 = 2;
const NFTA_LIMIT_BURST: u16 = 3;
const NFTA_LIMIT_TYPE: u16 = 4;
const NFTA_LIMIT_FLAGS: u16 = 5;
const NFT_LIMIT_PKTS: u32 = 0;
const NFT_LIMIT_F_INV: u32 = 1;
pub(super) const NFT_DYNSET_OP_ADD: u32 = 0;
pub(super) const NFT_DYNSET_OP_UPDATE: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(&'static str),
}

/// A token bucket: `per` packets every `unit_s` seconds, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    per: u64,
    unit_s: u64,
    burst: u32,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// `add`/`update @set { key timeout t }`: the key is in the registers from
    /// `sreg` on; an update also resets the element's timeout.
    Dynset {
        set: &'static str,
        op: u32,
        sreg: u32,
        timeout_ms: u64,
        /// A per-element `limit rate over`: the expression matches only when
        /// the element's rate is exceeded (a meter).
        over: Option<Rate>,
    },
    /// Adds the key in register 1 to a set from the packet path (dynset).
    AddToSet(&'static str),
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
const ICMPV6_ROUTER_SOLICIT: u8 = 133;
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

/// `iifname . <16 bytes at base+off>` in REG_1/REG_2: a port's claim on an
/// IPv6 address (the key of `port_ip6`, `port_ll`, `fcfs_bindings`).
fn port_and_ip6(base: u32, off: u32) -> Vec<Expr> {
    vec![iifname(), load2(base, off, 16)]
}

/// With `iifname . address` in REG_1/REG_2: binds the address to the port
/// (`op` add: first come; update: refresh the lifetime of a binding).
fn bind(op: u32) -> Vec<Expr> {
    let dynset = |set, sreg| Dynset {
        set,
        op,
        sreg,
        timeout_ms: FCFS_LIFETIME_MS,
        over: None,
    };
    vec![
        dynset(SET_FCFS_CLAIMED, REG_2),
        dynset(SET_FCFS_BINDINGS, REG_1),
    ]
}

/// The source address is :: (duplicate-address detection, RFC 4862).
fn from_unspecified() -> Vec<Expr> {
    vec![load(BASE_NH, 8, 16), eq(&[0; 16])]
}

/// Offset of the target address in a neighbour solicitation or advertisement.
const ND_TARGET: u32 = 8;

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
/// The target of an NA or a DAD probe (ICMPv6 offset 8): the port's own
/// (declared, the link-local of its MAC, or claimed through DAD, which refreshes
/// the binding) returns; another port's (declared or claimed) is dropped and
/// counted in `counter`; anything else falls through to the chain's next rule.
fn own_target_else_drop(
    chain: &'static str,
    counter: &'static str,
) -> [(&'static str, Vec<Expr>); 4] {
    [
        rule(
            chain,
            vec![
                port_and_ip6(BASE_TH, ND_TARGET),
                vec![in_set(SET_IP6)],
                ret(),
            ],
        ),
        rule(
            chain,
            vec![
                port_and_ip6(BASE_TH, ND_TARGET),
                vec![in_set(SET_LL)],
                ret(),
            ],
        ),
        rule(
            chain,
            vec![
                port_and_ip6(BASE_TH, ND_TARGET),
                vec![in_set(SET_FCFS_BINDINGS)],
                bind(NFT_DYNSET_OP_UPDATE),
                ret(),
            ],
        ),
        rule(
            chain,
            vec![
                vec![load(BASE_TH, ND_TARGET, 16), in_set(SET_FCFS_CLAIMED)],
                drop_counted(counter).into(),
            ],
        ),
    ]
}

fn rules() -> Vec<(&'static str, Vec<Expr>)> {
    let mut rules = handover_rules();
    rules.extend([
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
    ]);
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
        // Duplicate-address detection: the port claims the target (FCFS).
        rule(
            "ip6_guard",
            vec![
                from_unspecified(),
                icmpv6_type(ICMPV6_NEIGHBOR_SOLICIT),
                jump("fcfs_dad"),
            ],
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
        // ip6_in: declared addresses, the MAC's link-local, what the port
        // claimed through DAD (FCFS: link-local always, global when no IPv6
        // address is declared), and from :: only what a host sends before it
        // has an address.
        rule(
            "ip6_in",
            vec![port_and_ip6(BASE_NH, 8), vec![in_set(SET_IP6)], accept()],
        ),
        rule(
            "ip6_in",
            vec![port_and_ip6(BASE_NH, 8), vec![in_set(SET_LL)], accept()],
        ),
        rule(
            "ip6_in",
            vec![
                from_unspecified(),
                icmpv6_type(ICMPV6_NEIGHBOR_SOLICIT),
                accept(),
            ],
        ),
        rule(
            "ip6_in",
            vec![
                from_unspecified(),
                icmpv6_type(ICMPV6_MLD2_REPORT),
                accept(),
            ],
        ),
        rule(
            "ip6_in",
            vec![
                from_unspecified(),
                icmpv6_type(ICMPV6_ROUTER_SOLICIT),
                accept(),
            ],
        ),
        rule(
            "ip6_in",
            vec![link_local(BASE_NH, 8).into(), jump("fcfs_src")],
        ),
        rule("ip6_in", vec![port_in(SET_IP6_OPEN), jump("fcfs_src")]),
        rule("ip6_in", vec![drop_counted("drop_ip6").into()]),
    ]);
    // nd_in: the target of a neighbour advertisement must be the port's:
    // declared, the link-local of its MAC, or claimed through DAD (refreshing
    // the binding: a host answering its neighbours' reachability probes still
    // holds the address). Another port's is dropped on every port.
    rules.extend(own_target_else_drop("nd_in", "drop_nd"));
    rules.extend([
        // Other link-local targets (the router's fe80::1, a neighbour's) only
        // from ports allowed to be routers.
        rule(
            "nd_in",
            vec![
                link_local(BASE_TH, ND_TARGET).into(),
                port_in(SET_RA),
                ret(),
            ],
        ),
        rule(
            "nd_in",
            vec![
                link_local(BASE_TH, ND_TARGET).into(),
                drop_counted("drop_nd").into(),
            ],
        ),
        // A global target nobody holds: MAC-only ports may advertise it; an
        // IP-locked port only its own (above), FCFS or declared.
        rule("nd_in", vec![port_not_in(SET_LOCKED), ret()]),
        rule("nd_in", vec![drop_counted("drop_nd").into()]),
    ]);
    // fcfs_dad: a DAD probe (NS from ::) claims its target for the port, first
    // come first served (RFC 6620). Its own addresses need no claim; a repeated
    // DAD refreshes the binding; another port's address is dropped (the prober
    // is not told: its use of the address is dropped too); a free one is bound
    // to the port for the binding's lifetime.
    rules.extend(own_target_else_drop("fcfs_dad", "drop_dad"));
    rules.extend([
        // A new claim: within the port's rate, bind it.
        rule(
            "fcfs_dad",
            vec![
                vec![
                    iifname(),
                    Dynset {
                        set: SET_FCFS_RATE,
                        op: NFT_DYNSET_OP_ADD,
                        sreg: REG_1,
                        timeout_ms: FCFS_RATE_LIFETIME_MS,
                        over: Some(FCFS_CLAIM_RATE),
                    },
                ],
                drop_counted("drop_dad").into(),
            ],
        ),
        rule(
            "fcfs_dad",
            vec![
                port_and_ip6(BASE_TH, ND_TARGET),
                bind(NFT_DYNSET_OP_ADD),
                ret(),
            ],
        ),
        // fcfs_src: a source the port claimed through DAD (refreshing the
        // binding); anything else is dropped.
        rule(
            "fcfs_src",
            vec![
                port_and_ip6(BASE_NH, 8),
                vec![in_set(SET_FCFS_BINDINGS)],
                bind(NFT_DYNSET_OP_UPDATE),
                accept(),
            ],
        ),
        rule("fcfs_src", vec![drop_counted("drop_ip6").into()]),
    ]);
    rules
}

/// The comments `verify` expects, in chain order.
pub fn expected_comments() -> Vec<(String, String)> {
    precomputed_comments(LAYOUT_TAG, RULES_PER_CHAIN)
}

/// [`layout`] and the number of rules in each chain, as this build computes
/// them, written down: every ADD checks the table's rules against them, and
/// computing them encodes the whole ruleset (~0.8 M instructions, more than
/// half of an ADD's own). `precomputed_layout_is_this_builds` fails, with the
/// values to write here, when the rules change.
const LAYOUT_TAG: &str = "pg2488dd97";
const RULES_PER_CHAIN: &[(&str, usize)] = &[
    ("prerouting", 2),
    ("handover", 5),
    ("port_in", 20),
    ("arp_sha", 2),
    ("ip4_guard", 1),
    ("ip6_guard", 5),
    ("ip4_in", 4),
    ("arp_in", 4),
    ("ip6_in", 8),
    ("nd_in", 8),
    ("fcfs_dad", 6),
    ("fcfs_src", 2),
];

fn precomputed_comments(tag: &str, counts: &[(&str, usize)]) -> Vec<(String, String)> {
    counts
        .iter()
        .flat_map(|(chain, n)| {
            (1..=*n).map(move |i| (chain.to_string(), format!("{tag}:{chain}:{i}")))
        })
        .collect()
}

/// What [`LAYOUT_TAG`] and [`RULES_PER_CHAIN`] must say (Rust source).
#[cfg(test)]
fn precomputed_source() -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (chain, _) in comments(layout()) {
        match counts.iter_mut().find(|(c, _)| *c == chain) {
            Some((_, n)) => *n += 1,
            None => counts.push((chain, 1)),
        }
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(c, n)| format!("(\"{c}\", {n})"))
        .collect();
    format!(
        "const LAYOUT_TAG: &str = \"{}\";\nconst RULES_PER_CHAIN: &[(&str, usize)] = &[{}];",
        layout(),
        counts.join(", ")
    )
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
        Dynset {
            set,
            op,
            sreg,
            timeout_ms,
            over,
        } => {
            m.str(NFTA_EXPR_NAME, "dynset").begin(NFTA_EXPR_DATA);
            m.str(NFTA_DYNSET_SET_NAME, set)
                .u32(NFTA_DYNSET_OP, *op)
                .u32(NFTA_DYNSET_SREG_KEY, *sreg)
                .bytes(NFTA_DYNSET_TIMEOUT, &timeout_ms.to_be_bytes());
            if let Some(rate) = over {
                m.begin(NFTA_DYNSET_EXPR);
                m.str(NFTA_EXPR_NAME, "limit").begin(NFTA_EXPR_DATA);
                m.bytes(NFTA_LIMIT_RATE, &rate.per.to_be_bytes())
                    .bytes(NFTA_LIMIT_UNIT, &rate.unit_s.to_be_bytes())
                    .u32(NFTA_LIMIT_BURST, rate.burst)
                    .u32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS)
                    .u32(NFTA_LIMIT_FLAGS, NFT_LIMIT_F_INV);
                m.end().end();
            }
        }
        AddToSet(set) => {
            // `add @set { <register 1> }`: no timeout, for sets without one.
            m.str(NFTA_EXPR_NAME, "dynset").begin(NFTA_EXPR_DATA);
            m.str(NFTA_DYNSET_SET_NAME, set)
                .u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_ADD)
                .u32(NFTA_DYNSET_SREG_KEY, REG_1);
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

    for (i, (name, key_type, key_len)) in all_sets().enumerate() {
        let dynamic = FCFS_SETS.iter().any(|(fcfs, _, _)| *fcfs == name);
        let mut m = Msg::new(msg::NEWSET, create, NFPROTO_BRIDGE);
        m.str(NFTA_SET_TABLE, TABLE)
            .str(NFTA_SET_NAME, name)
            .u32(NFTA_SET_FLAGS, set_flags(name))
            .u32(NFTA_SET_KEY_TYPE, key_type)
            .u32(NFTA_SET_KEY_LEN, key_len)
            .u32(NFTA_SET_ID, i as u32 + 1);
        if dynamic {
            m.begin(NFTA_SET_DESC)
                .u32(NFTA_SET_DESC_SIZE, FCFS_SET_SIZE)
                .end();
        }
        // NFTNL_UDATA_SET_KEYBYTEORDER: host order for ifname keys (so nft prints strings).
        if key_type == TYPE_IFNAME {
            m.bytes(NFTA_SET_USERDATA, &[0, 4, 1, 0, 0, 0]);
        }
        batch.push(m, format!("creating set {name}"));
    }
    for name in COUNTERS.into_iter().chain([HANDOVER_COUNTER]) {
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
    for chain in CHAINS.iter().chain(HANDOVER_CHAINS.iter()) {
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

// ---------------------------------------------------------------------------
// Live-migration handover: a migration target's port is held (nothing from it
// reaches the bridge, so nothing is learned or forwarded) until the guest
// announces itself from the VM's MAC; the announcement opens the port from the
// packet path (a dynset add to `handover_announced`) and goes out itself.

/// Ports held until the guest announces itself: migration targets.
pub const SET_HANDOVER_HELD: &str = "handover_held";
/// Held ports the guest has announced itself on: filled by the kernel from the
/// packet path, never by us. Held = in `handover_held` and not in here.
pub const SET_HANDOVER_ANNOUNCED: &str = "handover_announced";
/// A held port's VM MAC: the only source an announcement may come from.
pub const SET_HANDOVER_MAC: &str = "handover_mac";
/// A held port's IPv4 addresses as `ifname . addr . addr`: a gratuitous ARP
/// has sender IP = target IP = one of them.
pub const SET_HANDOVER_GARP: &str = "handover_garp";
/// A held port's IPv6 addresses and the link-local of its MAC: an unsolicited
/// neighbour advertisement's target is one of them.
pub const SET_HANDOVER_NA: &str = "handover_na";
/// Frames a held port sent before its announcement (dropped).
pub const HANDOVER_COUNTER: &str = "held_for_handover";

pub const HANDOVER_SETS: [(&str, u32, u32); 5] = [
    (SET_HANDOVER_HELD, TYPE_IFNAME, 16),
    (SET_HANDOVER_ANNOUNCED, TYPE_IFNAME, 16),
    (
        SET_HANDOVER_MAC,
        (TYPE_IFNAME << TYPE_BITS) | TYPE_ETHERADDR,
        16 + 8,
    ),
    (
        SET_HANDOVER_GARP,
        (((TYPE_IFNAME << TYPE_BITS) | TYPE_IPADDR) << TYPE_BITS) | TYPE_IPADDR,
        16 + 4 + 4,
    ),
    (
        SET_HANDOVER_NA,
        (TYPE_IFNAME << TYPE_BITS) | TYPE_IP6ADDR,
        16 + 16,
    ),
];

const HANDOVER_CHAINS: [&str; 1] = ["handover"];

/// Every set of the table: port security's, then the handover's.
pub fn all_sets() -> impl Iterator<Item = (&'static str, u32, u32)> {
    SETS.into_iter().chain(FCFS_SETS).chain(HANDOVER_SETS)
}

/// The FCFS sets are filled from the packet path and lapse; the handover's
/// `announced` is filled from the packet path and lasts as long as its port;
/// the others are the control plane's.
fn set_flags(name: &str) -> u32 {
    if FCFS_SETS.iter().any(|(fcfs, _, _)| *fcfs == name) {
        NFT_SET_EVAL | NFT_SET_TIMEOUT
    } else if name == SET_HANDOVER_ANNOUNCED {
        NFT_SET_EVAL
    } else {
        0
    }
}

/// NFT_REG32_05: the 32-bit register after `REG_2`'s first word, for the third
/// field of an `ifname . ipv4 . ipv4` key.
const REG32_05: u32 = 13;
/// ff02::1, where unsolicited neighbour advertisements go (RFC 4861, 7.2.6).
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// QEMU's announcement (qemu_announce_self): RARP "request reverse" (op 3),
/// Ethernet/IPv4, sender and target hardware address the VM's MAC.
const RARP_REQUEST_REVERSE: [u8; 8] = [0, 1, 8, 0, 6, 4, 0, 3];
/// An ARP header for Ethernet/IPv4 (any opcode: a gratuitous ARP is a request or a reply).
const ARP_ETHER_IP4: [u8; 6] = [0, 1, 8, 0, 6, 4];

/// Opens the port (from the packet path) and lets the announcement go on to the
/// port-security checks.
fn announce() -> Vec<Expr> {
    vec![
        iifname(),
        AddToSet(SET_HANDOVER_ANNOUNCED),
        Verdict(Verdict::Return),
    ]
}

/// The handover's rules: first in `prerouting`, so a held port's frames are
/// dropped before the bridge learns their source (learning happens after the
/// bridge family's prerouting hook) and before port security looks at them.
fn handover_rules() -> Vec<(&'static str, Vec<Expr>)> {
    vec![
        rule(
            BASE_CHAIN,
            vec![
                port_in(SET_HANDOVER_HELD),
                vec![not_in_set(SET_HANDOVER_ANNOUNCED)],
                jump("handover"),
            ],
        ),
        // Only the VM's MAC can announce the VM.
        rule(
            "handover",
            vec![
                vec![
                    iifname(),
                    load2(BASE_LL, 6, 6),
                    not_in_set(SET_HANDOVER_MAC),
                ],
                drop_counted(HANDOVER_COUNTER).into(),
            ],
        ),
        // RARP as QEMU sends it after a migration, for the VM's MAC.
        rule(
            "handover",
            vec![
                ether_type(ETH_RARP).into(),
                vec![load(BASE_NH, 0, 8), eq(&RARP_REQUEST_REVERSE)],
                vec![iifname(), load2(BASE_NH, 8, 6), in_set(SET_HANDOVER_MAC)],
                announce(),
            ],
        ),
        // Gratuitous ARP: sender IP = target IP = one of the port's addresses.
        rule(
            "handover",
            vec![
                ether_type(ETH_ARP).into(),
                vec![load(BASE_NH, 0, 6), eq(&ARP_ETHER_IP4)],
                vec![
                    iifname(),
                    load2(BASE_NH, 14, 4),
                    Payload {
                        base: BASE_NH,
                        off: 24,
                        len: 4,
                        dreg: REG32_05,
                    },
                    in_set(SET_HANDOVER_GARP),
                ],
                announce(),
            ],
        ),
        // Unsolicited neighbour advertisement: to all nodes, solicited flag
        // clear, for one of the port's IPv6 addresses or its link-local.
        rule(
            "handover",
            vec![
                ether_type(ETH_IP6).into(),
                icmpv6_type(ICMPV6_NEIGHBOR_ADVERT),
                vec![load(BASE_NH, 24, 16), eq(&ALL_NODES)],
                vec![
                    load(BASE_TH, 4, 1),
                    Bitwise {
                        len: 1,
                        mask: vec![0x40],
                    },
                    eq(&[0]),
                ],
                vec![iifname(), load2(BASE_TH, 8, 16), in_set(SET_HANDOVER_NA)],
                announce(),
            ],
        ),
        // Anything else waits: the source VM still owns the MAC on the VLAN.
        rule("handover", vec![drop_counted(HANDOVER_COUNTER).into()]),
    ]
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
    fn precomputed_layout_is_this_builds() {
        let mut have = expected_comments();
        let mut want = comments(layout());
        have.sort();
        want.sort();
        assert!(
            have == want,
            "the rules changed: write this in ruleset.rs\n{}",
            precomputed_source()
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
    /// The NEWSET message of `name`, decoded: (flags, size from the description).
    fn set_shape(name: &str) -> (u32, Option<u32>) {
        let encoding = layout_encoding();
        let (_, bytes) = encoding
            .iter()
            .find(|(what, _)| what == &format!("creating set {name}"))
            .unwrap();
        let body = &bytes[20..];
        let be32 = |d: &[u8]| u32::from_be_bytes(d.try_into().unwrap());
        let flags = be32(crate::portsec::nfnl::attr(body, NFTA_SET_FLAGS).unwrap());
        let size = crate::portsec::nfnl::attr(body, NFTA_SET_DESC)
            .and_then(|d| crate::portsec::nfnl::attr(d, NFTA_SET_DESC_SIZE))
            .map(be32);
        (flags, size)
    }

    #[test]
    fn fcfs_sets_are_dynamic_with_timeouts_and_bounded() {
        for (name, _, _) in FCFS_SETS {
            assert_eq!(
                set_shape(name),
                (NFT_SET_EVAL | NFT_SET_TIMEOUT, Some(FCFS_SET_SIZE)),
                "{name}"
            );
        }
        // The sets filled from the control plane keep their plain shape, so
        // tables of the previous layout keep their elements.
        for (name, _, _) in SETS {
            assert_eq!(set_shape(name), (0, None), "{name}");
        }
    }

    #[test]
    fn dynset_is_encoded_with_its_op_key_register_and_timeout() {
        let mut m = Msg::new(msg::NEWRULE, 0, NFPROTO_BRIDGE);
        encode_expr(
            &mut m,
            &Dynset {
                set: SET_FCFS_BINDINGS,
                op: NFT_DYNSET_OP_UPDATE,
                sreg: REG_1,
                timeout_ms: FCFS_LIFETIME_MS,
                over: None,
            },
        );
        let mut batch = crate::portsec::nfnl::Batch::new();
        batch.push(m, "rule");
        let (_, bytes) = batch.encoded().remove(0);
        use crate::portsec::nfnl::{attr, attr_str};
        let elem = attr(&bytes[20..], NFTA_LIST_ELEM).unwrap();
        assert_eq!(attr_str(elem, NFTA_EXPR_NAME).as_deref(), Some("dynset"));
        let data = attr(elem, NFTA_EXPR_DATA).unwrap();
        assert_eq!(
            attr_str(data, NFTA_DYNSET_SET_NAME).as_deref(),
            Some(SET_FCFS_BINDINGS)
        );
        assert_eq!(attr(data, NFTA_DYNSET_OP), Some(&1u32.to_be_bytes()[..]));
        assert_eq!(
            attr(data, NFTA_DYNSET_SREG_KEY),
            Some(&REG_1.to_be_bytes()[..])
        );
        // Milliseconds, big-endian 64 bits (nf_msecs_to_jiffies64).
        assert_eq!(
            attr(data, NFTA_DYNSET_TIMEOUT),
            Some(&604_800_000u64.to_be_bytes()[..])
        );
    }

    fn chain_rules(chain: &str) -> Vec<Vec<Expr>> {
        rules()
            .into_iter()
            .filter(|(c, _)| *c == chain)
            .map(|(_, e)| e)
            .collect()
    }

    #[test]
    fn every_drop_is_counted_and_every_chain_is_reached() {
        let all = rules();
        for (chain, exprs) in &all {
            for (i, e) in exprs.iter().enumerate() {
                if *e == Verdict(Verdict::Drop) {
                    assert!(
                        i > 0 && matches!(exprs[i - 1], Counter(_)),
                        "an uncounted drop in {chain}"
                    );
                }
            }
        }
        let jumped: std::collections::HashSet<&str> = all
            .iter()
            .flat_map(|(_, exprs)| exprs)
            .filter_map(|e| match e {
                Verdict(Verdict::Jump(to)) => Some(*to),
                _ => None,
            })
            .collect();
        for chain in CHAINS.iter().skip(1) {
            assert!(jumped.contains(chain), "{chain} is never jumped to");
        }
        for chain in HANDOVER_CHAINS {
            assert!(jumped.contains(chain), "{chain} is never jumped to");
        }
        for to in jumped {
            assert!(
                CHAINS.contains(&to) || HANDOVER_CHAINS.contains(&to),
                "a jump to {to}, which is not created"
            );
        }
    }

    /// FCFS: a DAD probe binds (the only `add`, the last rule, after another
    /// port's claim was dropped with drop_dad); link-local sources are never
    /// accepted outright, only through fcfs_src, which refreshes what it accepts.
    #[test]
    fn fcfs_chains_bind_on_dad_and_check_sources() {
        let adds: Vec<(&str, usize)> = rules()
            .iter()
            .flat_map(|(chain, exprs)| {
                exprs.iter().filter_map(move |e| match e {
                    Dynset { op, .. } if *op == NFT_DYNSET_OP_ADD => Some(*chain),
                    _ => None,
                })
            })
            .fold(Vec::new(), |mut v, chain| {
                match v.iter_mut().find(|(c, _)| *c == chain) {
                    Some((_, n)) => *n += 1,
                    None => v.push((chain, 1)),
                }
                v
            });
        assert_eq!(
            adds,
            [("fcfs_dad", 3)],
            "the meter and both sets, from DAD only"
        );
        let dad = chain_rules("fcfs_dad");
        let n = dad.len();
        let last = &dad[n - 1];
        assert!(last
            .iter()
            .any(|e| matches!(e, Dynset { set, .. } if *set == SET_FCFS_CLAIMED)));
        assert!(last
            .iter()
            .any(|e| matches!(e, Dynset { set, .. } if *set == SET_FCFS_BINDINGS)));
        // Before it, new claims over the port's rate are dropped...
        let metered = &dad[n - 2];
        assert!(metered.iter().any(|e| matches!(
            e,
            Dynset { set, over: Some(_), .. } if *set == SET_FCFS_RATE
        )));
        assert!(metered.contains(&Counter("drop_dad")));
        // ...and before that, a claim on what another port holds.
        let taken = &dad[n - 3];
        assert!(taken.contains(&Lookup {
            set: SET_FCFS_CLAIMED,
            inv: false
        }));
        assert!(taken.contains(&Counter("drop_dad")));

        // In ip6_in, a link-local source leads to fcfs_src, never to accept.
        for exprs in chain_rules("ip6_in") {
            let link_local_match = exprs.windows(3).any(|w| {
                matches!(&w[1], Bitwise { mask, .. } if mask == &[0xff, 0xc0])
                    && w[2] == eq(&[0xfe, 0x80])
            });
            if link_local_match {
                assert_eq!(exprs.last(), Some(&Verdict(Verdict::Jump("fcfs_src"))));
            }
        }
        let src = chain_rules("fcfs_src");
        assert_eq!(src.len(), 2);
        assert!(src[0].contains(&Lookup {
            set: SET_FCFS_BINDINGS,
            inv: false
        }));
        assert!(src[0]
            .iter()
            .any(|e| matches!(e, Dynset { op, .. } if *op == NFT_DYNSET_OP_UPDATE)));
        assert_eq!(src[0].last(), Some(&Verdict(Verdict::Accept)));
        assert_eq!(src[1], drop_counted("drop_ip6").to_vec());
        // NA targets: another port's claim is dropped before any link-local
        // allowance (routers included).
        let nd = chain_rules("nd_in");
        let claimed = nd
            .iter()
            .position(|r| {
                r.contains(&Lookup {
                    set: SET_FCFS_CLAIMED,
                    inv: false,
                })
            })
            .unwrap();
        let router = nd
            .iter()
            .position(|r| {
                r.contains(&Lookup {
                    set: SET_RA,
                    inv: false,
                })
            })
            .unwrap();
        assert!(claimed < router);
    }
}
