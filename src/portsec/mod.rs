//! Port security: only the VM's MAC and IPs may leave its port.
//!
//! # Layout
//!
//! One table, `table bridge portgroup`, owned by us. Ports exist only as set
//! elements; the chains and their ~45 rules are fixed, so neither the cost of an
//! ADD nor the per-packet cost grows with the number of ports (hash-set lookups).
//! The full listing, what each port drops and why, is in docs/DESIGN.md ("Port
//! security: the nftables layout"); in short:
//!
//! - every port: source MAC = the port's; no frames to 01:80:c2:00:00:0x (BPDU
//!   filter); no 802.1Q/802.1ad/0x9100 tags (VID 0 included); ARP sender MAC =
//!   the port's; no router advertisements or redirects unless the port is in
//!   `ra_allowed_ports`; no DHCPv4/DHCPv6 server messages unless in
//!   `dhcp_server_ports`; neighbour advertisements only for the port's
//!   addresses (declared, or the EUI-64 link-local of its MAC in `port_ll`);
//! - IP-locked ports (`ip_locked_ports`): only IPv4, ARP, IPv6 and RARP pass,
//!   and sources of a locked family must be the port's; a family with no
//!   address known (`ip4_open_ports`, `ip6_open_ports`) is not source-checked.
//!
//! Every drop goes through a named counter, `drop_<reason>` ([`counters`]).
//! Every rule carries a comment `<layout>:<chain>:<n>`, where the layout tag is
//! a hash of the encoded sets, chains and rules (`ruleset::layout`); `install` and `verify`
//! compare them with what this build expects and rebuild the chains (flush and
//! re-add, in one transaction) when they differ, then add the derived elements
//! (`port_ll`, open families) of ports installed under an older layout.
//!
//! # Mechanism: nf_tables netlink, spoken directly
//!
//! We build the nfnetlink messages ourselves (`nfnl.rs`, ~400 lines on
//! `netlink-sys`, which the crate already depends on) instead of going through
//! `nft`. Measured with `hack/bench/portsec_scale.rs` (`hack/bench.sh
//! --portsec-mechanisms`; release build, in a netns, on 2 cores shared with
//! other builds; kernel 6.18, nft 1.0.6),
//! adding one port's set elements (the `nft` rows add the 5 base elements;
//! `portsec::install` adds those and the port's link-local, and checks the 44
//! rules of the current layout), median of 10, at ~10 and at ~1050 ports (load average
//! ~9 at the time):
//!
//! | mechanism | ~10 ports | ~1050 ports |
//! |---|---|---|
//! | `portsec::install` (netlink: rule check + GET + one batch) | 0.11 ms | 0.09 ms |
//! | `nft -f -`, one process spawn per call | 3.0 ms | 2.5 ms |
//! | `nft -j -f -` (JSON), one process spawn per call | 2.9 ms | 4.5 ms |
//! | libnftables.so.1 in process: dlopen + `nft_ctx_new` + `nft_run_cmd_from_buffer` | 0.98 ms | 0.97 ms |
//! | the same, `nft_run_cmd_from_buffer` alone (warm context) | 0.27 ms | 0.28 ms |
//!
//! (Runs under heavier load scale every row up to ~1.5x; the ordering holds.)
//!
//! The plugin is a fresh process per ADD, so the libnftables figure that counts
//! is the dlopen + context one. All are small next to a CNI ADD, so speed is
//! not the main reason; these are: nothing to ship or require (no `nft` binary,
//! no libnftables1 in the DaemonSet image or the plugin's host, no dlopen, no
//! version skew with whatever nft the node has), errors come back per message
//! with the kernel's errno, and we control exactly which kernel requests each
//! call makes (one GET and one batch for an ADD, which a generic nft front-end
//! cannot promise as its cache rules change between versions). The cost: we
//! own the encoding of ~45 rules; `nft list table bridge portgroup` on a node
//! decodes them back (with comments), and the tests check them with real frames.
//!
//! What the node needs: nf_tables with the bridge family (`CONFIG_NF_TABLES`,
//! `CONFIG_NF_TABLES_BRIDGE`; the core expressions meta, payload, cmp, lookup,
//! bitwise, immediate, objref and counter; built in or auto-loaded modules on
//! every mainstream distribution kernel since 4.x; concatenated set keys need
//! 4.1+), and CAP_NET_ADMIN in the host network namespace (the plugin runs as
//! root there; the DaemonSet is privileged with hostNetwork). The image needs
//! nothing extra. Removing a port's elements takes ~15 ms of wall-clock time at
//! any scale: the kernel waits for an RCU grace period when committing element
//! deletions (`nft delete element` shows the same); it is not CPU time.
//!
//! # Concurrency
//!
//! Every change is an nf_tables transaction (the kernel serialises commits), so
//! 50 plugin processes installing at once need no lock file: creating the table
//! is one idempotent transaction (create-if-missing for table, sets and counters;
//! flush-and-re-add for every chain), run only when the rule check finds the
//! chains missing or different; adding a port is then one transaction of
//! element adds. Concurrent first installs each leave exactly one copy of the
//! rules (tested with 20 threads and 20 processes on an empty namespace).
//! Removal reads the port's elements and deletes them; if a concurrent removal of
//! the same port wins (ENOENT), it reads again and retries.
//!
//! # Costs
//!
//! install of a new port: one rule dump of the fixed chains, one element GET, one
//! batch of element adds: O(1) in the number of ports. Re-install of an existing
//! port, remove and verify read the port's MAC/IP elements with a set dump
//! (netlink has no prefix lookup on a concatenated key), which is linear in the
//! total number of elements but only on DEL/CHECK; a port that is not installed
//! is found with one GET and costs O(1).

mod nfnl;
mod ruleset;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use nix::libc;

use crate::error::Error;
use crate::mac::MacAddr;

use nfnl::{attr, attr_str, attr_u64, attrs, Batch, Msg, Nfnl, NlError, NFPROTO_BRIDGE};
use nfnl::{msg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST};
use ruleset::*;

pub use ruleset::{GUARD_TABLE, TABLE};

/// What one VM port may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRules {
    /// The host-side veth: the bridge port frames from the VM enter by.
    pub host_veth: String,
    pub mac: MacAddr,
    /// Allowed source IPs; empty means any IP (but still only `mac`). Locking
    /// is per family: a family with no address here is not restricted by source.
    pub ips: Vec<IpAddr>,
    /// The VM is a router: it may send router advertisements and redirects,
    /// and advertise any link-local address (the portgroup's
    /// `allowRouterAdvertisements`).
    pub allow_router_advertisements: bool,
    /// The VM is a DHCP server: it may send DHCPv4 (UDP from port 67) and
    /// DHCPv6 (UDP from port 547) replies (the portgroup's `allowDhcpServer`).
    pub allow_dhcp_server: bool,
    /// A trunk port: the VM tags its own VLANs, so frames with one 802.1Q tag
    /// pass (MAC lock and BPDU filter still hold; 802.1ad, 0x9100, QinQ and
    /// VID-0 tags are dropped). Access ports drop every tagged frame.
    pub trunk: bool,
}

/// Dropped packets per reason, from the table's named counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Ethernet source not the port's MAC.
    pub mac: u64,
    /// Malformed ARP/RARP, ARP sender MAC not the port's, or ARP sender IP not allowed.
    pub arp: u64,
    /// IPv4 source not allowed.
    pub ip4: u64,
    /// IPv6 source not allowed.
    pub ip6: u64,
    /// Neighbour advertisement for an address that is not the port's.
    pub nd: u64,
    /// Tagged frame (802.1Q, VID 0 included; 802.1ad; 0x9100) from an access port.
    pub vlan: u64,
    /// Frame to an IEEE 802.1D reserved group address (STP BPDU, LACP, LLDP, ...).
    pub bpdu: u64,
    /// Ethertype other than IPv4, ARP, IPv6 or RARP from an IP-locked port.
    pub ethertype: u64,
    /// ICMPv6 router advertisement from a port not allowed to be a router.
    pub ra: u64,
    /// ICMPv6 redirect from a port not allowed to be a router.
    pub redirect: u64,
    /// DHCPv4 or DHCPv6 server message from a port not allowed to be a DHCP server.
    pub dhcp_server: u64,
}

impl DropCounters {
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// (reason, packets) for every reason, in a fixed order: what `/metrics`
    /// exports as `portgroup_portsec_drops_total{reason="..."}`.
    pub fn by_reason(&self) -> [(&'static str, u64); COUNTERS.len()] {
        [
            ("mac", self.mac),
            ("arp", self.arp),
            ("ip4", self.ip4),
            ("ip6", self.ip6),
            ("nd", self.nd),
            ("vlan", self.vlan),
            ("bpdu", self.bpdu),
            ("ethertype", self.ethertype),
            ("ra", self.ra),
            ("redirect", self.redirect),
            ("dhcp_server", self.dhcp_server),
        ]
    }

    fn slot(&mut self, reason: &str) -> Option<&mut u64> {
        Some(match reason {
            "mac" => &mut self.mac,
            "arp" => &mut self.arp,
            "ip4" => &mut self.ip4,
            "ip6" => &mut self.ip6,
            "nd" => &mut self.nd,
            "vlan" => &mut self.vlan,
            "bpdu" => &mut self.bpdu,
            "ethertype" => &mut self.ethertype,
            "ra" => &mut self.ra,
            "redirect" => &mut self.redirect,
            "dhcp_server" => &mut self.dhcp_server,
            _ => return None,
        })
    }

    /// The counters in Prometheus text format, one series per reason.
    pub fn render_prometheus(&self) -> String {
        let name = "portgroup_portsec_drops_total";
        let mut out = format!(
            "# HELP {name} Frames dropped by port security, by reason.\n# TYPE {name} counter\n"
        );
        for (reason, n) in self.by_reason() {
            out.push_str(&format!("{name}{{reason=\"{reason}\"}} {n}\n"));
        }
        out
    }
}

/// fe80::/10.
fn is_link_local(ip: &[u8; 16]) -> bool {
    ip[0] == 0xfe && ip[1] & 0xc0 == 0x80
}

/// The modified EUI-64 link-local address (RFC 4291, appendix A) of a MAC:
/// what a VM that does not use stable-privacy or random identifiers takes.
pub fn eui64_link_local(mac: &MacAddr) -> std::net::Ipv6Addr {
    let m = mac.0;
    std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

fn err(context: impl std::fmt::Display, e: NlError) -> Error {
    let hint = match e.errno {
        libc::EPERM => " (needs CAP_NET_ADMIN in the host network namespace)",
        libc::EEXIST => {
            " (table bridge portgroup exists with another layout, perhaps from another \
             version; `nft delete table bridge portgroup` and reinstall)"
        }
        libc::EAFNOSUPPORT | libc::EOPNOTSUPP => {
            " (the kernel lacks nf_tables or its bridge family: CONFIG_NF_TABLES_BRIDGE)"
        }
        _ => "",
    };
    Error::PortSecurity(format!("{context}: {e}{hint}"))
}

fn open(context: &str) -> Result<Nfnl, Error> {
    Nfnl::open().map_err(|e| err(context, e))
}

/// The 16-byte, NUL-padded form the kernel compares `iifname` in.
fn ifname_key(name: &str) -> Result<[u8; IFNAMSIZ], Error> {
    let bad = |why: &str| Error::PortSecurity(format!("port name {name:?} {why}"));
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() >= IFNAMSIZ {
        return Err(bad("is longer than 15 bytes"));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace() || b == b':')
    {
        return Err(bad("has a character an interface name cannot have"));
    }
    let mut key = [0u8; IFNAMSIZ];
    key[..name.len()].copy_from_slice(name.as_bytes());
    Ok(key)
}

fn name_of(key: &[u8]) -> String {
    let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
}

/// One port's elements, as installed or as wanted.
#[derive(Debug, Default, PartialEq, Eq)]
struct PortElems {
    port: bool,
    locked: bool,
    macs: BTreeSet<[u8; 6]>,
    ip4: BTreeSet<[u8; 4]>,
    ip6: BTreeSet<[u8; 16]>,
    /// Derived from the above: locked, but no address of the family known.
    ip4_open: bool,
    ip6_open: bool,
    /// Derived: the link-local address of each MAC.
    link_local: BTreeSet<[u8; 16]>,
    allow_ra: bool,
    allow_dhcp_server: bool,
    trunk: bool,
}

impl PortElems {
    fn wanted(rules: &PortRules) -> Self {
        let mut e = PortElems {
            port: true,
            locked: !rules.ips.is_empty(),
            allow_ra: rules.allow_router_advertisements,
            allow_dhcp_server: rules.allow_dhcp_server,
            trunk: rules.trunk,
            ..Default::default()
        };
        e.macs.insert(rules.mac.0);
        for ip in &rules.ips {
            match ip {
                IpAddr::V4(v4) => e.ip4.insert(v4.octets()),
                // A declared link-local (a guest with stable-privacy or random
                // identifiers) is one it may advertise; it does not lock IPv6.
                IpAddr::V6(v6) if is_link_local(&v6.octets()) => e.link_local.insert(v6.octets()),
                IpAddr::V6(v6) => e.ip6.insert(v6.octets()),
            };
        }
        e.derive();
        e
    }

    /// Adds the elements that follow from the MAC and the addresses.
    fn derive(&mut self) {
        self.ip4_open = self.locked && self.ip4.is_empty();
        self.ip6_open = self.locked && self.ip6.iter().all(is_link_local);
        let own: Vec<[u8; 16]> = self
            .macs
            .iter()
            .map(|m| eui64_link_local(&MacAddr(*m)).octets())
            .collect();
        self.link_local.extend(own);
    }

    /// (set, key) pairs, the ifname prefix included.
    fn keys(&self, ifkey: &[u8; IFNAMSIZ]) -> Vec<(&'static str, Vec<u8>)> {
        let cat = |tail: &[u8]| {
            let mut k = ifkey.to_vec();
            k.extend_from_slice(tail);
            k
        };
        let mut out = Vec::new();
        if self.port {
            out.push((SET_PORTS, ifkey.to_vec()));
        }
        for (on, set) in [
            (self.locked, SET_LOCKED),
            (self.ip4_open, SET_IP4_OPEN),
            (self.ip6_open, SET_IP6_OPEN),
            (self.allow_ra, SET_RA),
            (self.allow_dhcp_server, SET_DHCP),
            (self.trunk, SET_TRUNK),
        ] {
            if on {
                out.push((set, ifkey.to_vec()));
            }
        }
        for mac in &self.macs {
            let mut tail = mac.to_vec();
            tail.extend_from_slice(&[0, 0]); // ether_addr is padded to 8 bytes
            out.push((SET_MAC, cat(&tail)));
        }
        for ip in &self.ip4 {
            out.push((SET_IP4, cat(ip)));
        }
        for ip in &self.ip6 {
            out.push((SET_IP6, cat(ip)));
        }
        for ip in &self.link_local {
            out.push((SET_LL, cat(ip)));
        }
        out
    }
}

fn setelem_msg(kind: u16, flags: u16, set: &str, keys: &[&[u8]]) -> Msg {
    let mut m = Msg::new(kind, flags, NFPROTO_BRIDGE);
    m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, set)
        .begin(NFTA_SET_ELEM_LIST_ELEMENTS);
    for key in keys {
        m.begin(1) // NFTA_LIST_ELEM
            .begin(NFTA_SET_ELEM_KEY)
            .bytes(NFTA_DATA_VALUE, key)
            .end()
            .end();
    }
    m.end();
    m
}

/// Bytes of elements one message carries at most. The element list is one netlink
/// attribute with a 16-bit length (65535: about 2047 IPv4 or 1489 IPv6 port
/// elements); well below it, so a message never comes near the limit.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 16 * 1024;

/// One element's bytes in a set-element message: list element, key and value headers.
fn element_bytes(key: &[u8]) -> usize {
    12 + key.len().div_ceil(4) * 4
}

/// Adds element messages for `keys` to `batch`: per set, as many messages as it
/// takes, all in the one transaction. Split, never truncated.
fn push_elems(batch: &mut Batch, kind: u16, keys: &[(&'static str, Vec<u8>)], what: &str) {
    let flags = if kind == msg::NEWSETELEM {
        NLM_F_REQUEST | NLM_F_CREATE
    } else {
        NLM_F_REQUEST
    };
    for (set, _, _) in SETS {
        let mut chunk: Vec<&[u8]> = Vec::new();
        let mut bytes = 0;
        let in_set = keys.iter().filter(|(s, _)| *s == set).map(|(_, k)| k);
        for key in in_set {
            if !chunk.is_empty() && bytes + element_bytes(key) > ELEMENTS_PER_MESSAGE_BYTES {
                batch.push(
                    setelem_msg(kind, flags, set, &chunk),
                    format!("{what} in set {set}"),
                );
                chunk.clear();
                bytes = 0;
            }
            bytes += element_bytes(key);
            chunk.push(key);
        }
        if !chunk.is_empty() {
            batch.push(
                setelem_msg(kind, flags, set, &chunk),
                format!("{what} in set {set}"),
            );
        }
    }
}

/// Whether `set` holds `key`: one GET, O(1). A missing table or set is "no".
fn has_elem(nl: &mut Nfnl, set: &str, key: &[u8]) -> Result<bool, NlError> {
    let m = setelem_msg(msg::GETSETELEM, NLM_F_REQUEST, set, &[key]);
    match nl.request(m, &format!("looking up an element of set {set}")) {
        Ok(_) => Ok(true),
        Err(e) if e.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key in `set` (dump). A missing table or set is empty.
fn dump_set(nl: &mut Nfnl, set: &str) -> Result<Vec<Vec<u8>>, NlError> {
    let mut m = Msg::new(msg::GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, NFPROTO_BRIDGE);
    m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, set);
    let bodies = match nl.request(m, &format!("listing set {set}")) {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut keys = Vec::new();
    for body in &bodies {
        let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
            continue;
        };
        for (_, elem) in attrs(list) {
            if let Some(key) = attr(elem, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE))
            {
                keys.push(key.to_vec());
            }
        }
    }
    Ok(keys)
}

/// The elements installed for one port.
fn port_elems(nl: &mut Nfnl, ifkey: &[u8; IFNAMSIZ]) -> Result<PortElems, NlError> {
    let mut e = PortElems {
        port: has_elem(nl, SET_PORTS, ifkey)?,
        locked: has_elem(nl, SET_LOCKED, ifkey)?,
        ip4_open: has_elem(nl, SET_IP4_OPEN, ifkey)?,
        ip6_open: has_elem(nl, SET_IP6_OPEN, ifkey)?,
        allow_ra: has_elem(nl, SET_RA, ifkey)?,
        allow_dhcp_server: has_elem(nl, SET_DHCP, ifkey)?,
        trunk: has_elem(nl, SET_TRUNK, ifkey)?,
        ..Default::default()
    };
    let mine = |keys: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        keys.into_iter()
            .filter(|k| k.len() > IFNAMSIZ && k[..IFNAMSIZ] == ifkey[..])
            .map(|k| k[IFNAMSIZ..].to_vec())
            .collect()
    };
    for tail in mine(dump_set(nl, SET_MAC)?) {
        if let Some(mac) = tail.get(..6).and_then(|m| <[u8; 6]>::try_from(m).ok()) {
            e.macs.insert(mac);
        }
    }
    for tail in mine(dump_set(nl, SET_IP4)?) {
        if let Ok(ip) = <[u8; 4]>::try_from(tail.as_slice()) {
            e.ip4.insert(ip);
        }
    }
    for tail in mine(dump_set(nl, SET_IP6)?) {
        if let Ok(ip) = <[u8; 16]>::try_from(tail.as_slice()) {
            e.ip6.insert(ip);
        }
    }
    for tail in mine(dump_set(nl, SET_LL)?) {
        if let Ok(ip) = <[u8; 16]>::try_from(tail.as_slice()) {
            e.link_local.insert(ip);
        }
    }
    Ok(e)
}

/// The comments of the rules in our table, in chain order; None when the table is missing.
fn rule_comments(nl: &mut Nfnl) -> Result<Option<Vec<(String, String)>>, NlError> {
    table_rule_comments(nl, TABLE)
}

/// The comments of the rules in `table`, in chain order; None when it is missing.
fn table_rule_comments(
    nl: &mut Nfnl,
    table: &str,
) -> Result<Option<Vec<(String, String)>>, NlError> {
    let mut m = Msg::new(msg::GETRULE, NLM_F_REQUEST | NLM_F_DUMP, NFPROTO_BRIDGE);
    m.str(NFTA_RULE_TABLE, table);
    let bodies = match nl.request(m, "listing the rules of the port-security table") {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        bodies
            .iter()
            .filter(|b| attr_str(b, NFTA_RULE_TABLE).as_deref() == Some(table))
            .map(|b| {
                (
                    attr_str(b, NFTA_RULE_CHAIN).unwrap_or_default(),
                    attr(b, NFTA_RULE_USERDATA)
                        .and_then(udata_comment)
                        .unwrap_or_default(),
                )
            })
            .collect(),
    ))
}

/// Whether the chains hold exactly the rules this build makes.
fn base_ok(nl: &mut Nfnl) -> Result<bool, NlError> {
    let Some(mut have) = rule_comments(nl)? else {
        return Ok(false);
    };
    let mut want = expected_comments();
    have.sort();
    want.sort();
    Ok(have == want)
}

/// After a layout upgrade: adds the elements that follow from each installed
/// port's MAC and addresses (per-family open sets, link-local of the MAC) and
/// that an older layout did not have, so running VMs keep their IPv6 and their
/// link-local neighbour advertisements without being re-added. The opt-in sets
/// cannot be derived: they stay empty (the stricter default) until the port is
/// installed again. Idempotent; cheap on a new table (five empty dumps).
fn backfill_derived(nl: &mut Nfnl) -> Result<(), NlError> {
    let mut ports: std::collections::BTreeMap<Vec<u8>, PortElems> = Default::default();
    let split = |key: &[u8]| {
        let cut = IFNAMSIZ.min(key.len());
        (key[..cut].to_vec(), key[cut..].to_vec())
    };
    for key in dump_set(nl, SET_PORTS)? {
        ports.entry(key).or_default().port = true;
    }
    for key in dump_set(nl, SET_LOCKED)? {
        ports.entry(key).or_default().locked = true;
    }
    for key in dump_set(nl, SET_MAC)? {
        let (name, tail) = split(&key);
        if let Some(mac) = tail.get(..6).and_then(|m| <[u8; 6]>::try_from(m).ok()) {
            ports.entry(name).or_default().macs.insert(mac);
        }
    }
    for key in dump_set(nl, SET_IP4)? {
        let (name, tail) = split(&key);
        if let Ok(ip) = <[u8; 4]>::try_from(tail.as_slice()) {
            ports.entry(name).or_default().ip4.insert(ip);
        }
    }
    for key in dump_set(nl, SET_IP6)? {
        let (name, tail) = split(&key);
        if let Ok(ip) = <[u8; 16]>::try_from(tail.as_slice()) {
            ports.entry(name).or_default().ip6.insert(ip);
        }
    }
    let mut add = Vec::new();
    for (name, mut elems) in ports {
        let Ok(ifkey) = <[u8; IFNAMSIZ]>::try_from(name.as_slice()) else {
            continue;
        };
        if !elems.port {
            continue; // a half-removed port: the collector's, not ours to extend
        }
        elems.derive();
        add.extend(
            elems
                .keys(&ifkey)
                .into_iter()
                .filter(|(set, _)| [SET_IP4_OPEN, SET_IP6_OPEN, SET_LL].contains(set)),
        );
    }
    for chunk in add.chunks(512) {
        let mut batch = Batch::new();
        push_elems(
            &mut batch,
            msg::NEWSETELEM,
            chunk,
            "adding a derived element",
        );
        nl.commit(batch)?;
    }
    Ok(())
}

/// Number of attempts when a concurrent change makes a transaction fail.
const ATTEMPTS: usize = 5;

fn retryable(e: &NlError) -> bool {
    // ENOENT: an element we meant to delete went away; EEXIST/EBUSY: a
    // concurrent bootstrap; ERESTART/EAGAIN: the kernel asks us to retry.
    matches!(
        e.errno,
        libc::ENOENT | libc::EEXIST | libc::EBUSY | libc::EAGAIN | libc::EINTR
    )
}

fn too_busy() -> NlError {
    NlError {
        errno: libc::EBUSY,
        what: "gave up after concurrent changes".into(),
    }
}

/// Opens a socket and runs `attempt` until it succeeds, fails for good, or has
/// lost to concurrent changes [`ATTEMPTS`] times. Each attempt reads what it
/// needs afresh, so a retry sees what the other writer did.
fn with_retries<T>(
    context: &str,
    mut attempt: impl FnMut(&mut Nfnl) -> Result<T, NlError>,
) -> Result<T, Error> {
    let mut nl = open(context)?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match attempt(&mut nl) {
            Ok(value) => return Ok(value),
            Err(e) if retryable(&e) => last = Some(e),
            Err(e) => return Err(err(context, e)),
        }
    }
    Err(err(context, last.unwrap_or_else(too_busy)))
}

/// Installs (or replaces) the rules for one port. Cost must not grow with the number of ports.
pub fn install(rules: &PortRules) -> Result<(), Error> {
    let ifkey = ifname_key(&rules.host_veth)?;
    if rules.mac.is_multicast() || rules.mac.0 == [0; 6] {
        return Err(Error::PortSecurity(format!(
            "port {}: {} is not a unicast MAC",
            rules.host_veth, rules.mac
        )));
    }
    let context = format!("installing port security for {}", rules.host_veth);
    let want = PortElems::wanted(rules);
    with_retries(&context, |nl| {
        if !base_ok(nl)? {
            // First use on this node, or damaged: its own idempotent transaction.
            let mut batch = Batch::new();
            bootstrap(&mut batch);
            nl.commit(batch)?;
            backfill_derived(nl)?;
        }
        let mut batch = Batch::new();
        // A new port (the ADD path) is one GET; only a re-install reads the sets.
        let have = if has_elem(nl, SET_PORTS, &ifkey)? {
            port_elems(nl, &ifkey)?
        } else {
            PortElems::default()
        };
        let have_keys = have.keys(&ifkey);
        let want_keys = want.keys(&ifkey);
        let stale: Vec<_> = have_keys
            .iter()
            .filter(|k| !want_keys.contains(k))
            .cloned()
            .collect();
        let new: Vec<_> = want_keys
            .iter()
            .filter(|k| !have_keys.contains(k))
            .cloned()
            .collect();
        push_elems(
            &mut batch,
            msg::DELSETELEM,
            &stale,
            "deleting a stale element",
        );
        push_elems(&mut batch, msg::NEWSETELEM, &new, "adding an element");
        nl.commit(batch)
    })
}

/// Removes every rule for one port; a port with no rules is fine.
pub fn remove(host_veth: &str) -> Result<(), Error> {
    let ifkey = ifname_key(host_veth)?;
    let context = format!("removing port security for {host_veth}");
    with_retries(&context, |nl| {
        if !has_elem(nl, SET_PORTS, &ifkey)? {
            return Ok(());
        }
        let have = port_elems(nl, &ifkey)?;
        let mut batch = Batch::new();
        push_elems(&mut batch, msg::DELSETELEM, &have.keys(&ifkey), "deleting");
        nl.commit(batch)
    })
}

/// Garbage collection: removes the elements of every port not named in `keep`
/// (also elements left without their `ports` entry). Returns the ports removed.
/// A port whose interface still exists in this namespace is never collected,
/// so a `keep` list read just before a concurrent ADD cannot strip a live port:
/// the daemon deletes a dead attachment's veth first, then its rules.
pub fn remove_all_not_in(keep: &[String]) -> Result<Vec<String>, Error> {
    let context = "collecting port-security rules of gone ports";
    let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
    with_retries(context, |nl| {
        let mut all: Vec<(&'static str, Vec<u8>)> = Vec::new();
        for (set, _, _) in SETS {
            for key in dump_set(nl, set)? {
                all.push((set, key));
            }
        }
        let names: BTreeSet<String> = all
            .iter()
            .map(|(_, key)| name_of(&key[..IFNAMSIZ.min(key.len())]))
            .collect();
        let ports: Vec<String> = names
            .into_iter()
            .filter(|name| {
                !keep.contains(name.as_str())
                    && nix::net::if_::if_nametoindex(name.as_str()).is_err()
            })
            .collect();
        let stale: Vec<(&'static str, Vec<u8>)> = all
            .into_iter()
            .filter(|(_, key)| ports.contains(&name_of(&key[..IFNAMSIZ.min(key.len())])))
            .collect();
        // Bounded transactions: the kernel takes a batch in one message.
        for chunk in stale.chunks(512) {
            let mut batch = Batch::new();
            push_elems(&mut batch, msg::DELSETELEM, chunk, "deleting");
            nl.commit(batch)?;
        }
        Ok(ports)
    })
}

/// Deletes the whole `table bridge portgroup`, every port's rules with it: for
/// uninstalling. Tables of other owners are never looked at. Ok(false) when
/// there was no table.
pub fn delete_table() -> Result<bool, Error> {
    let context = format!("deleting table bridge {TABLE}");
    let mut nl = open(&context)?;
    let mut batch = Batch::new();
    let mut m = Msg::new(msg::DELTABLE, NLM_F_REQUEST, NFPROTO_BRIDGE);
    m.str(NFTA_TABLE_NAME, TABLE);
    batch.push(m, context.clone());
    match nl.commit(batch) {
        Ok(()) => Ok(true),
        Err(e) if e.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(err(&context, e)),
    }
}

/// Puts the native-VLAN guard of trunk portgroups in place (see
/// [`ruleset::GUARD_TABLE`]): one rule dump when it is there, one transaction
/// when it is missing or not this build's. Ok(true) when it had to be (re)made.
pub fn ensure_native_guard() -> Result<bool, Error> {
    let context = format!("guarding trunks' native VLANs (table bridge {GUARD_TABLE})");
    with_retries(&context, |nl| {
        let have: Option<Vec<String>> = table_rule_comments(nl, GUARD_TABLE)?
            .map(|rules| rules.into_iter().map(|(_, comment)| comment).collect());
        if have == Some(guard_comments()) {
            return Ok(false);
        }
        let mut batch = Batch::new();
        guard_bootstrap(&mut batch);
        nl.commit(batch)?;
        Ok(true)
    })
}

/// Deletes the native-VLAN guard's table: for uninstalling. Ok(false) when
/// there was none.
pub fn delete_native_guard() -> Result<bool, Error> {
    let context = format!("deleting table bridge {GUARD_TABLE}");
    let mut nl = open(&context)?;
    let mut batch = Batch::new();
    let mut m = Msg::new(msg::DELTABLE, NLM_F_REQUEST, NFPROTO_BRIDGE);
    m.str(NFTA_TABLE_NAME, GUARD_TABLE);
    batch.push(m, context.clone());
    match nl.commit(batch) {
        Ok(()) => Ok(true),
        Err(e) if e.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(err(&context, e)),
    }
}

/// Tagged frames the native-VLAN guard dropped (0 when it is not installed).
pub fn native_guard_drops() -> Result<u64, Error> {
    let context = "reading the native-VLAN guard's counter";
    let mut nl = open(context)?;
    let mut m = Msg::new(msg::GETOBJ, NLM_F_REQUEST | NLM_F_DUMP, NFPROTO_BRIDGE);
    m.str(NFTA_OBJ_TABLE, GUARD_TABLE)
        .u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
    let bodies = match nl.request(m, context) {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => return Ok(0),
        Err(e) => return Err(err(context, e)),
    };
    Ok(bodies
        .iter()
        .filter(|b| attr_str(b, NFTA_OBJ_TABLE).as_deref() == Some(GUARD_TABLE))
        .filter(|b| attr_str(b, NFTA_OBJ_NAME).as_deref() == Some(GUARD_COUNTER))
        .filter_map(|b| attr(b, NFTA_OBJ_DATA).and_then(|d| attr_u64(d, NFTA_COUNTER_PACKETS)))
        .sum())
}

/// The ports that have rules installed.
pub fn ports() -> Result<Vec<String>, Error> {
    let context = "listing secured ports";
    let mut nl = open(context)?;
    let keys = dump_set(&mut nl, SET_PORTS).map_err(|e| err(context, e))?;
    let mut names: Vec<String> = keys.iter().map(|k| name_of(k)).collect();
    names.sort();
    Ok(names)
}

/// Verifies the rules for one port are in place, for CHECK: the table's chains
/// and rules are this build's, and the port's elements are exactly its MAC and IPs.
pub fn verify(rules: &PortRules) -> Result<(), Error> {
    let ifkey = ifname_key(&rules.host_veth)?;
    let context = format!("checking port security for {}", rules.host_veth);
    let mut nl = open(&context)?;
    if !base_ok(&mut nl).map_err(|e| err(&context, e))? {
        return Err(Error::PortSecurity(format!(
            "{context}: the chains of table bridge {TABLE} are missing or not this version's"
        )));
    }
    let have = port_elems(&mut nl, &ifkey).map_err(|e| err(&context, e))?;
    let want = PortElems::wanted(rules);
    if have == want {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !have.port {
        problems.push("the port is not in set ports".to_string());
    }
    if have.locked != want.locked {
        problems.push(if want.locked {
            "source IPs are not restricted".to_string()
        } else {
            "source IPs are restricted but no IPs were given".to_string()
        });
    }
    let show_mac = |m: &[u8; 6]| MacAddr(*m).to_string();
    if have.macs != want.macs {
        problems.push(format!(
            "MAC {} wanted, {} installed",
            show_mac(&rules.mac.0),
            list(have.macs.iter().map(show_mac))
        ));
    }
    let show4 = |a: &[u8; 4]| std::net::Ipv4Addr::from(*a).to_string();
    let show6 = |a: &[u8; 16]| std::net::Ipv6Addr::from(*a).to_string();
    if have.ip4 != want.ip4 {
        problems.push(format!(
            "IPv4 {} wanted, {} installed",
            list(want.ip4.iter().map(show4)),
            list(have.ip4.iter().map(show4))
        ));
    }
    if have.ip6 != want.ip6 {
        problems.push(format!(
            "IPv6 {} wanted, {} installed",
            list(want.ip6.iter().map(show6)),
            list(have.ip6.iter().map(show6))
        ));
    }
    if have.ip4_open != want.ip4_open || have.ip6_open != want.ip6_open {
        problems.push("the per-family locks differ from the addresses".to_string());
    }
    if have.link_local != want.link_local {
        problems.push("the link-local address of the MAC is not installed".to_string());
    }
    if have.allow_ra != want.allow_ra {
        problems.push(format!(
            "router advertisements {} wanted, {} installed",
            allowed(want.allow_ra),
            allowed(have.allow_ra)
        ));
    }
    if have.allow_dhcp_server != want.allow_dhcp_server {
        problems.push(format!(
            "DHCP server replies {} wanted, {} installed",
            allowed(want.allow_dhcp_server),
            allowed(have.allow_dhcp_server)
        ));
    }
    if have.trunk != want.trunk {
        problems.push(format!(
            "802.1Q-tagged frames {} wanted, {} installed",
            allowed(want.trunk),
            allowed(have.trunk)
        ));
    }
    Err(Error::PortSecurity(format!(
        "{context}: {}",
        problems.join("; ")
    )))
}

fn allowed(on: bool) -> &'static str {
    if on {
        "allowed"
    } else {
        "dropped"
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Reads the drop counters (all zero when the table does not exist yet).
pub fn counters() -> Result<DropCounters, Error> {
    let context = "reading the port-security drop counters";
    let mut nl = open(context)?;
    let mut m = Msg::new(msg::GETOBJ, NLM_F_REQUEST | NLM_F_DUMP, NFPROTO_BRIDGE);
    m.str(NFTA_OBJ_TABLE, TABLE)
        .u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
    let bodies = match nl.request(m, context) {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => Vec::new(),
        Err(e) => return Err(err(context, e)),
    };
    let mut c = DropCounters::default();
    for body in &bodies {
        if attr_str(body, NFTA_OBJ_TABLE).as_deref() != Some(TABLE) {
            continue;
        }
        let packets = attr(body, NFTA_OBJ_DATA)
            .and_then(|d| attr_u64(d, NFTA_COUNTER_PACKETS))
            .unwrap_or(0);
        let name = attr_str(body, NFTA_OBJ_NAME).unwrap_or_default();
        if let Some(slot) = name.strip_prefix("drop_").and_then(|r| c.slot(r)) {
            *slot = packets;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(ifname_key("veth1234").is_ok());
        assert!(ifname_key("").is_err());
        assert!(ifname_key("0123456789abcdef").is_err());
        assert!(ifname_key("a/b").is_err());
        assert!(ifname_key("a b").is_err());
        assert_eq!(&ifname_key("ab").unwrap()[..3], b"ab\0");
    }

    #[test]
    fn wanted_keys() {
        let rules = PortRules {
            host_veth: "pg1".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec!["10.0.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
            allow_router_advertisements: false,
            allow_dhcp_server: true,
            trunk: false,
        };
        let keys = PortElems::wanted(&rules).keys(&ifname_key("pg1").unwrap());
        let sets: Vec<&str> = keys.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sets,
            [SET_PORTS, SET_LOCKED, SET_DHCP, SET_MAC, SET_IP4, SET_IP6, SET_LL]
        );
        for (set, key) in &keys {
            let (_, _, len) = SETS.iter().find(|(s, _, _)| s == set).unwrap();
            assert_eq!(key.len() as u32, *len, "{set}");
        }
        // Locked for both families: neither is open.
        let v4_only = PortRules {
            ips: vec!["10.0.0.2".parse().unwrap()],
            ..rules.clone()
        };
        let sets: Vec<&str> = PortElems::wanted(&v4_only)
            .keys(&ifname_key("pg1").unwrap())
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(sets.contains(&SET_IP6_OPEN) && !sets.contains(&SET_IP4_OPEN));
        let mac_only = PortRules {
            ips: vec![],
            ..rules
        };
        let sets: Vec<&str> = PortElems::wanted(&mac_only)
            .keys(&ifname_key("pg1").unwrap())
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(!sets.contains(&SET_LOCKED) && !sets.contains(&SET_IP6_OPEN));
    }

    #[test]
    fn a_declared_link_local_does_not_lock_ipv6() {
        let rules = PortRules {
            host_veth: "pg1".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec!["10.0.0.2".parse().unwrap(), "fe80::1234".parse().unwrap()],
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        };
        let e = PortElems::wanted(&rules);
        assert!(e.locked && e.ip6_open && !e.ip4_open);
        assert!(e.ip6.is_empty());
        let ll: Vec<std::net::Ipv6Addr> = e.link_local.iter().map(|a| (*a).into()).collect();
        assert_eq!(
            ll,
            [
                "fe80::1234".parse::<std::net::Ipv6Addr>().unwrap(),
                "fe80::ff:fe00:1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn link_local_of_a_mac() {
        // RFC 4291 appendix A: the universal/local bit is inverted, ff:fe inserted.
        assert_eq!(
            eui64_link_local(&MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])),
            "fe80::5054:ff:fe12:3456"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        assert_eq!(
            eui64_link_local(&MacAddr([0x02, 0x50, 0x56, 0, 0, 0x02])),
            "fe80::50:56ff:fe00:2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
    }

    #[test]
    fn every_counter_has_a_reason() {
        let mut c = DropCounters::default();
        for name in COUNTERS {
            let slot = c.slot(name.strip_prefix("drop_").unwrap()).unwrap();
            *slot += 1;
        }
        assert_eq!(c.total(), COUNTERS.len() as u64);
        let text = c.render_prometheus();
        assert!(text.contains("portgroup_portsec_drops_total{reason=\"bpdu\"} 1"));
        assert_eq!(text.lines().count(), 2 + COUNTERS.len());
    }

    #[test]
    fn many_addresses_are_split_never_truncated() {
        let ifkey = ifname_key("pg1").unwrap();
        let ips: Vec<std::net::IpAddr> = (0..2100u32)
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).into())
            .chain((0..1500u128).map(|i| std::net::Ipv6Addr::from(0x2001_0db8 << 96 | i).into()))
            .collect();
        let rules = PortRules {
            host_veth: "pg1".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips,
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        };
        let keys = PortElems::wanted(&rules).keys(&ifkey);
        let mut batch = Batch::new();
        push_elems(&mut batch, msg::NEWSETELEM, &keys, "port pg1");
        // ports, locked, mac: one each; 2100 IPv4 and 1500 IPv6 need several.
        assert!(batch.len() > 5, "{} messages", batch.len());
        assert!(batch.msgs().all(|m| m.fits()));
        let elements: usize = batch.msgs().map(|m| m.element_count()).sum();
        assert_eq!(elements, keys.len(), "every element sent exactly once");
        // The old single message would not have fit.
        let ip4: Vec<&[u8]> = keys
            .iter()
            .filter(|(s, _)| *s == SET_IP4)
            .map(|(_, k)| k.as_slice())
            .collect();
        assert!(!setelem_msg(msg::NEWSETELEM, NLM_F_REQUEST, SET_IP4, &ip4).fits());
    }

    #[test]
    fn comments_unique() {
        let c = expected_comments();
        let set: HashSet<_> = c.iter().collect();
        assert_eq!(set.len(), c.len());
        assert_eq!(
            udata_comment(&comment_udata("pg1:x:1")).as_deref(),
            Some("pg1:x:1")
        );
    }
}
