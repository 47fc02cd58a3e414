//! Port security: only the VM's MAC and IPs may leave its port.
//!
//! # Layout
//!
//! One table, `table bridge portgroup`, owned by us. Ports exist only as set
//! elements; the chains and their ~60 rules are fixed, so neither the cost of an
//! ADD nor the per-packet cost grows with the number of ports (hash-set lookups).
//! The full listing, what each port drops and why, is in docs/DESIGN.md ("Port
//! security: the nftables layout"); in short:
//!
//! - every port: source MAC = the port's; no frames to 01:80:c2:00:00:0x (BPDU
//!   filter); no 802.1Q/802.1ad/0x9100 tags (VID 0 included); ARP sender MAC =
//!   the port's; no router advertisements or redirects unless the port is in
//!   `ra_allowed_ports`; no DHCPv4/DHCPv6 server messages unless in
//!   `dhcp_server_ports`; neighbour advertisements only for the port's
//!   addresses (declared, the EUI-64 link-local of its MAC in `port_ll`, or
//!   claimed through DAD); no DAD for an address another port holds;
//! - IP-locked ports (`ip_locked_ports`): only IPv4, ARP, IPv6 and RARP pass,
//!   and sources of a locked family must be the port's; link-local sources,
//!   and every IPv6 source when no IPv6 is declared (`ip6_open_ports`), must be
//!   declared or claimed through DAD; an IPv4 family with no address known
//!   (`ip4_open_ports`) is not source-checked.
//!
//! First-come-first-served source address validation (RFC 6620) runs in the
//! kernel: a DAD probe from a port binds its target to the port in the dynamic
//! sets `fcfs_claimed` (every address some port holds) and `fcfs_bindings`
//! (port . address), from the packet path, with a lifetime each use renews;
//! install claims the declared addresses for good, remove releases the port's.
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
//! call makes (one rule listing and one batch for an ADD, which a generic nft front-end
//! cannot promise as its cache rules change between versions). The cost: we
//! own the encoding of ~60 rules; `nft list table bridge portgroup` on a node
//! decodes them back (with comments), and the tests check them with real frames.
//!
//! What the node needs: nf_tables with the bridge family (`CONFIG_NF_TABLES`,
//! `CONFIG_NF_TABLES_BRIDGE`; the core expressions meta, payload, cmp, lookup,
//! bitwise, immediate, objref, counter and dynset (with set timeouts); built in or auto-loaded modules on
//! every mainstream distribution kernel since 4.x; concatenated set keys need
//! 4.1+), and CAP_NET_ADMIN in the host network namespace (the plugin runs as
//! root there; the DaemonSet is privileged with hostNetwork). The image needs
//! nothing extra. Removing a port's elements costs ~15 ms of wall-clock time at
//! any scale, not at the commit but when the socket closes: the kernel frees
//! deleted elements after an RCU grace period, and closing an nf_tables socket
//! waits for that under the commit lock (`nft delete element` shows the same);
//! it is not CPU time. [`remove_then_close_later`] lets DEL overlap it with the
//! veth's deletion.
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
//! install of a new port: one rule dump of the fixed chains, one batch of element
//! adds (its `ports` element exclusive: a port installed already fails it, and
//! only then is it read): O(1) in the number of ports. Re-install of an existing
//! port, remove and verify read the port's MAC/IP elements with a set dump
//! (netlink has no prefix lookup on a concatenated key), which is linear in the
//! total number of elements but only on DEL/CHECK; a port that is not installed
//! is found with one GET and costs O(1).

// What only portgroupd does: the plugin is built without them.
mod handover;
#[cfg(feature = "daemon")]
mod heal;
mod nfnl;
mod ruleset;
#[cfg(feature = "daemon")]
mod watch;

pub use handover::{awaiting_handover, handover_state, held_frames, hold, HandoverState, Hold};

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use nix::libc;

use crate::error::Error;
use crate::mac::MacAddr;

use nfnl::{attr, attr_str, attr_u64, attrs, Batch, Msg, Nfnl, NlError, NFPROTO_BRIDGE};
use nfnl::{msg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use ruleset::*;

#[cfg(feature = "daemon")]
pub use heal::{heal, Plan as HealPlan, TableState};
pub use ruleset::{GUARD_TABLE, TABLE};
#[cfg(feature = "daemon")]
pub use watch::{subscribe as watch_changes, Watcher};

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
    /// Duplicate-address detection for an address another port holds
    /// (declared, or claimed first: FCFS source address validation).
    pub dad: u64,
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
            ("dad", self.dad),
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
            "dad" => &mut self.dad,
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
    push_elems_exclusive(batch, kind, keys, what, &[])
}

/// [`push_elems`], adding the elements of the sets `exclusive` with NLM_F_EXCL:
/// the whole transaction fails with EEXIST if one of them exists already.
fn push_elems_exclusive(
    batch: &mut Batch,
    kind: u16,
    keys: &[(&'static str, Vec<u8>)],
    what: &str,
    exclusive: &[&str],
) {
    for (set, _, _) in all_sets() {
        let flags = match kind {
            msg::NEWSETELEM if exclusive.contains(&set) => {
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
            }
            msg::NEWSETELEM => NLM_F_REQUEST | NLM_F_CREATE,
            _ => NLM_F_REQUEST,
        };
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

/// The address at the end of a `port_ip6`, `port_ll` or `fcfs_bindings` key.
fn ip6_tail(key: &[u8]) -> Option<[u8; 16]> {
    key.get(IFNAMSIZ..)
        .and_then(|t| <[u8; 16]>::try_from(t).ok())
}

/// How `fcfs_claimed` holds an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Nobody's: the next DAD claims it.
    Free,
    /// Some port declares it (no timeout).
    Declared,
    /// Some port claimed it through DAD (it lapses).
    Bound,
}

const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;

/// One GET: whether and how `addr` is claimed.
fn claim_of(nl: &mut Nfnl, addr: &[u8; 16]) -> Result<Claim, NlError> {
    let m = setelem_msg(
        msg::GETSETELEM,
        NLM_F_REQUEST,
        SET_FCFS_CLAIMED,
        &[addr.as_slice()],
    );
    let bodies = match nl.request(
        m,
        &format!("looking up an element of set {SET_FCFS_CLAIMED}"),
    ) {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => return Ok(Claim::Free),
        Err(e) => return Err(e),
    };
    let lapses = bodies.iter().any(|body| {
        attr(body, NFTA_SET_ELEM_LIST_ELEMENTS).is_some_and(|list| {
            attrs(list).any(|(_, elem)| {
                attr(elem, NFTA_SET_ELEM_TIMEOUT).is_some()
                    || attr(elem, NFTA_SET_ELEM_EXPIRATION).is_some()
            })
        })
    });
    Ok(if lapses {
        Claim::Bound
    } else {
        Claim::Declared
    })
}

/// Every (set, key) by which a port holds an IPv6 address: declared
/// (`port_ip6`, `port_ll`) or claimed through DAD (`fcfs_bindings`).
fn ip6_holders(nl: &mut Nfnl) -> Result<Vec<(&'static str, Vec<u8>)>, NlError> {
    let mut out = Vec::new();
    for set in [SET_IP6, SET_LL, SET_FCFS_BINDINGS] {
        out.extend(dump_set(nl, set)?.into_iter().map(|k| (set, k)));
    }
    Ok(out)
}

/// The `fcfs_claimed` elements to delete when the holdings `released` go: the
/// addresses no `remaining` holding still has and that are claimed at all.
/// (Two ports may declare one address, say a VM and the same VM's migration
/// target: the first to go must not free it for a third port's DAD.)
fn claims_to_release(
    released: impl IntoIterator<Item = [u8; 16]>,
    remaining: impl IntoIterator<Item = [u8; 16]>,
    claimed: &HashSet<[u8; 16]>,
) -> Vec<(&'static str, Vec<u8>)> {
    let remaining: HashSet<[u8; 16]> = remaining.into_iter().collect();
    let released: BTreeSet<[u8; 16]> = released
        .into_iter()
        .filter(|a| !remaining.contains(a) && claimed.contains(a))
        .collect();
    released
        .into_iter()
        .map(|a| (SET_FCFS_CLAIMED, a.to_vec()))
        .collect()
}

fn claimed_addrs(nl: &mut Nfnl) -> Result<HashSet<[u8; 16]>, NlError> {
    Ok(dump_set(nl, SET_FCFS_CLAIMED)?
        .into_iter()
        .filter_map(|k| <[u8; 16]>::try_from(k.as_slice()).ok())
        .collect())
}

/// The IPv6 addresses a port declares: its own in `fcfs_claimed`, so no other
/// port can claim them through DAD.
fn declared_ip6(e: &PortElems) -> BTreeSet<[u8; 16]> {
    e.ip6.union(&e.link_local).copied().collect()
}

/// The changes that make `fcfs_claimed` hold the port's declared addresses for
/// good: (deletions, additions). A free address is added; one another port
/// claimed through DAD (before this reservation was known) is taken from it:
/// its bindings go, and the claim is made permanent. On a re-install
/// (`stale` holds the declared keys that go), addresses no longer declared by
/// anyone are released.
type Changes = (Vec<(&'static str, Vec<u8>)>, Vec<(&'static str, Vec<u8>)>);
fn fcfs_declare(
    nl: &mut Nfnl,
    declared: &BTreeSet<[u8; 16]>,
    stale: &[(&'static str, Vec<u8>)],
) -> Result<Changes, NlError> {
    let (mut del, mut add) = (Vec::new(), Vec::new());
    let mut taken = BTreeSet::new();
    for addr in declared {
        match claim_of(nl, addr)? {
            Claim::Free => add.push((SET_FCFS_CLAIMED, addr.to_vec())),
            Claim::Declared => {}
            Claim::Bound => {
                taken.insert(*addr);
            }
        }
    }
    let stale_ip6: Vec<&(&'static str, Vec<u8>)> = stale
        .iter()
        .filter(|(set, _)| [SET_IP6, SET_LL].contains(set))
        .collect();
    if taken.is_empty() && stale_ip6.is_empty() {
        return Ok((del, add));
    }
    let holders = ip6_holders(nl)?;
    for (set, key) in &holders {
        if *set == SET_FCFS_BINDINGS && ip6_tail(key).is_some_and(|a| taken.contains(&a)) {
            del.push((*set, key.clone()));
        }
    }
    for addr in &taken {
        del.push((SET_FCFS_CLAIMED, addr.to_vec()));
        add.push((SET_FCFS_CLAIMED, addr.to_vec()));
    }
    let remaining = holders
        .iter()
        .filter(|h| !stale_ip6.contains(h) && !del.contains(h))
        .filter_map(|(_, key)| ip6_tail(key))
        .chain(declared.iter().copied());
    let released = stale_ip6.iter().filter_map(|(_, key)| ip6_tail(key));
    del.extend(claims_to_release(released, remaining, &claimed_addrs(nl)?));
    Ok((del, add))
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
        // Its declared addresses, claimed for good (an existing claim stays).
        add.extend(
            declared_ip6(&elems)
                .into_iter()
                .map(|a| (SET_FCFS_CLAIMED, a.to_vec())),
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
    // concurrent bootstrap; ERESTART/EAGAIN: the kernel asks us to retry
    // (ERESTART also: another commit since the generation a batch names).
    matches!(
        e.errno,
        libc::ENOENT | libc::EEXIST | libc::EBUSY | libc::EAGAIN | libc::EINTR | libc::ERESTART
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
    attempt: impl FnMut(&mut Nfnl) -> Result<T, NlError>,
) -> Result<T, Error> {
    let mut nl = open(context)?;
    retrying(context, &mut nl, attempt)
}

/// [`with_retries`] on a socket the caller opened.
fn retrying<T>(
    context: &str,
    nl: &mut Nfnl,
    mut attempt: impl FnMut(&mut Nfnl) -> Result<T, NlError>,
) -> Result<T, Error> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match attempt(nl) {
            Ok(value) => return Ok(value),
            Err(e) if retryable(&e) => last = Some(e),
            Err(e) => return Err(err(context, e)),
        }
    }
    Err(err(context, last.unwrap_or_else(too_busy)))
}

/// The key of a port whose elements are about to be made for `mac`: its
/// host veth's name, with the MAC checked to be a unicast one.
fn port_key(host_veth: &str, mac: MacAddr) -> Result<[u8; IFNAMSIZ], Error> {
    if mac.is_multicast() || mac.0 == [0; 6] {
        return Err(Error::PortSecurity(format!(
            "port {host_veth}: {mac} is not a unicast MAC"
        )));
    }
    ifname_key(host_veth)
}

/// Installs (or replaces) the rules for one port. Cost must not grow with the number of ports.
pub fn install(rules: &PortRules) -> Result<(), Error> {
    install_as(rules, false)
}

/// [`install`] for a port whose interface does not exist yet (ADD, before
/// making its veth): elements its name already has are a deleted port's, whose
/// DEL left them to portgroupd's sweep (crate::sweeper), or a leak. They are all
/// removed first (its DAD bindings and handover hold too), so the new port
/// inherits nothing; then it is installed as new. One batch, as for any new
/// port, when there are none.
pub fn install_new(rules: &PortRules) -> Result<(), Error> {
    install_as(rules, true)
}

fn install_as(rules: &PortRules, new_interface: bool) -> Result<(), Error> {
    let ifkey = port_key(&rules.host_veth, rules.mac)?;
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
        // A new port (the ADD path) is one batch: its `ports` element and its
        // claims on its declared IPv6 addresses are added exclusively, so a port
        // installed already, or an address some port holds already (declared, or
        // claimed through DAD before this reservation was known), fails it whole
        // (EEXIST, nothing changed); only then are the elements read and replaced
        // and the claims sorted out one by one.
        let mut keys = want.keys(&ifkey);
        keys.extend(
            declared_ip6(&want)
                .into_iter()
                .map(|a| (SET_FCFS_CLAIMED, a.to_vec())),
        );
        let exclusive_add = |nl: &mut Nfnl| {
            let mut batch = Batch::new();
            push_elems_exclusive(
                &mut batch,
                msg::NEWSETELEM,
                &keys,
                "adding an element",
                &[SET_PORTS, SET_FCFS_CLAIMED],
            );
            nl.commit(batch)
        };
        match exclusive_add(nl) {
            Err(e) if e.errno == libc::EEXIST => {}
            done => return done,
        }
        if new_interface && has_elem(nl, SET_PORTS, &ifkey)? {
            remove_port(nl, &ifkey)?;
            match exclusive_add(nl) {
                Err(e) if e.errno == libc::EEXIST => {}
                done => return done,
            }
        }
        let mut batch = Batch::new();
        let have = if has_elem(nl, SET_PORTS, &ifkey)? {
            port_elems(nl, &ifkey)?
        } else {
            PortElems::default()
        };
        let have_keys = have.keys(&ifkey);
        let want_keys = want.keys(&ifkey);
        let mut stale: Vec<_> = have_keys
            .iter()
            .filter(|k| !want_keys.contains(k))
            .cloned()
            .collect();
        let mut new: Vec<_> = want_keys
            .iter()
            .filter(|k| !have_keys.contains(k))
            .cloned()
            .collect();
        let (fcfs_del, fcfs_add) = fcfs_declare(nl, &declared_ip6(&want), &stale)?;
        stale.extend(fcfs_del);
        new.extend(fcfs_add);
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

/// What a secured port holds in the FCFS sets, to delete with it: what it
/// claimed through DAD, its claims on addresses no other port holds, its meter.
fn fcfs_held_by(nl: &mut Nfnl, ifkey: &[u8]) -> Result<Vec<(&'static str, Vec<u8>)>, NlError> {
    let (mine, others): (Vec<_>, Vec<_>) = ip6_holders(nl)?
        .into_iter()
        .partition(|(_, key)| key.starts_with(ifkey));
    let released = mine.iter().filter_map(|(_, key)| ip6_tail(key));
    let remaining = others.iter().filter_map(|(_, key)| ip6_tail(key));
    let release = claims_to_release(released, remaining, &claimed_addrs(nl)?);
    let mut gone: Vec<(&'static str, Vec<u8>)> = mine
        .into_iter()
        .filter(|(set, _)| *set == SET_FCFS_BINDINGS)
        .collect();
    gone.extend(release);
    if has_elem(nl, SET_FCFS_RATE, ifkey)? {
        gone.push((SET_FCFS_RATE, ifkey.to_vec()));
    }
    Ok(gone)
}

/// Removes every rule for one port, its handover hold included; a port with
/// no rules is fine.
pub fn remove(host_veth: &str) -> Result<(), Error> {
    remove_then_close_later(host_veth).map(drop)
}

/// The socket a removal was committed on, still open: see
/// [`remove_then_close_later`]. Dropping it closes it.
pub struct OpenSocket(#[allow(dead_code)] Nfnl);

/// [`remove`], returning its socket open, for the caller to drop after its own
/// slow work. Why: the kernel frees deleted elements after an RCU grace period
/// (~15 ms), on a worker; closing any nf_tables socket waits for that worker,
/// holding the nf_tables commit lock. Closed at once, every DEL pays a grace
/// period, and concurrent DELs pay theirs one after the other (100 DELs: over a
/// second). Kept open across the veth's deletion, which waits for grace periods
/// of its own, the worker is done by the time the socket closes.
pub fn remove_then_close_later(host_veth: &str) -> Result<OpenSocket, Error> {
    let ifkey = ifname_key(host_veth)?;
    let context = format!("removing port security for {host_veth}");
    let mut nl = open(&context)?;
    retrying(&context, &mut nl, |nl| remove_port(nl, &ifkey))?;
    Ok(OpenSocket(nl))
}

/// Every element of one port, in one transaction: its own, what it holds in
/// the FCFS sets, its handover hold. Nothing to delete is fine.
fn remove_port(nl: &mut Nfnl, ifkey: &[u8; IFNAMSIZ]) -> Result<(), NlError> {
    let mut gone = Vec::new();
    if has_elem(nl, SET_PORTS, ifkey)? {
        gone.extend(port_elems(nl, ifkey)?.keys(ifkey));
        gone.extend(fcfs_held_by(nl, ifkey)?);
    }
    // A migration target's hold goes with the port, whether or not it was
    // secured: two GETs when it had none.
    gone.extend(handover::port_keys(nl, ifkey)?);
    if gone.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new();
    push_elems(&mut batch, msg::DELSETELEM, &gone, "deleting");
    nl.commit(batch)
}

/// Garbage collection: removes the elements of every port not named in `keep`
/// (also elements left without their `ports` entry). Returns the ports removed.
/// A port whose interface still exists in this namespace is never collected,
/// so a `keep` list read just before a concurrent ADD cannot strip a live port:
/// the daemon deletes a dead attachment's veth first, then its rules.
pub fn remove_all_not_in(keep: &[String]) -> Result<Vec<String>, Error> {
    let keep: HashSet<String> = keep.iter().cloned().collect();
    sweep_orphans(&|| keep.clone())
}

/// [`remove_all_not_in`] the ports `named()` names, asked after the elements
/// are read: CNI GC passes the host veths its records name, so the elements
/// a DEL left to portgroupd (crate::sweeper) are collected even where
/// portgroupd never comes back. An ADD writes its record before its elements,
/// and the deletions are committed on the nf_tables generation read before
/// the elements (ERESTART if anything was committed since, then read again):
/// an ADD of an orphan's name in between is never stripped.
pub fn sweep_orphans(named: &dyn Fn() -> HashSet<String>) -> Result<Vec<String>, Error> {
    let context = "collecting port-security rules of gone ports";
    with_retries(context, |nl| {
        let mut generation = nl.generation()?;
        let mut all: Vec<(&'static str, Vec<u8>)> = Vec::new();
        // Every set keyed by port: the FCFS bindings and claim meter too (not
        // fcfs_claimed, keyed by address), and the handover's.
        let by_port = SETS
            .iter()
            .map(|(s, _, _)| *s)
            .chain([SET_FCFS_BINDINGS, SET_FCFS_RATE])
            .chain(HANDOVER_SETS.iter().map(|(s, _, _)| *s));
        for set in by_port {
            for key in dump_set(nl, set)? {
                all.push((set, key));
            }
        }
        let names: BTreeSet<String> = all
            .iter()
            .map(|(_, key)| name_of(&key[..IFNAMSIZ.min(key.len())]))
            .collect();
        let keep = if names.is_empty() {
            HashSet::new()
        } else {
            named()
        };
        let ports: Vec<String> = names
            .into_iter()
            .filter(|name| {
                !keep.contains(name.as_str())
                    && nix::net::if_::if_nametoindex(name.as_str()).is_err()
            })
            .collect();
        let (mut stale, kept): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|(_, key)| ports.contains(&name_of(&key[..IFNAMSIZ.min(key.len())])));
        let holds_ip6 =
            |(set, _): &&(&str, Vec<u8>)| [SET_IP6, SET_LL, SET_FCFS_BINDINGS].contains(set);
        let released: Vec<[u8; 16]> = stale
            .iter()
            .filter(holds_ip6)
            .filter_map(|(_, key)| ip6_tail(key))
            .collect();
        if !released.is_empty() {
            let remaining = kept
                .iter()
                .filter(holds_ip6)
                .filter_map(|(_, key)| ip6_tail(key));
            stale.extend(claims_to_release(released, remaining, &claimed_addrs(nl)?));
        }
        // A port's `ports` element last: see portsec::heal.
        stale.sort_by_key(|(set, _)| *set == SET_PORTS);
        // Bounded transactions: the kernel takes a batch in one message.
        for chunk in stale.chunks(512) {
            let mut batch = Batch::new();
            push_elems(&mut batch, msg::DELSETELEM, chunk, "deleting");
            nl.commit_at(batch, Some(generation))?;
            generation = nfnl::next_generation(generation);
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
    let mut unclaimed = Vec::new();
    for addr in declared_ip6(&want) {
        // Free, or bound to a port through DAD (a claim that raced the
        // install): either way not held for this port's reservation.
        if claim_of(&mut nl, &addr).map_err(|e| err(&context, e))? != Claim::Declared {
            unclaimed.push(std::net::Ipv6Addr::from(addr).to_string());
        }
    }
    if have == want && unclaimed.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !unclaimed.is_empty() {
        problems.push(format!(
            "IPv6 {} not held in set {SET_FCFS_CLAIMED} for the reservation (another port could claim it through DAD)",
            unclaimed.join(", ")
        ));
    }
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

/// An address a port claimed through duplicate-address detection, as the
/// kernel holds it (FCFS source address validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcfsBinding {
    /// The host-side veth.
    pub port: String,
    pub address: std::net::Ipv6Addr,
    /// What is left of the binding's lifetime (each use renews it).
    pub expires: std::time::Duration,
}

/// Every FCFS binding on the node, for a snapshot the daemon can restore
/// after the table was lost ([`restore_fcfs_bindings`]). Empty without a table.
pub fn fcfs_bindings() -> Result<Vec<FcfsBinding>, Error> {
    let context = "listing the FCFS bindings";
    let mut nl = open(context)?;
    let mut m = Msg::new(msg::GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, NFPROTO_BRIDGE);
    m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, SET_FCFS_BINDINGS);
    let bodies = match nl.request(m, context) {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => return Ok(Vec::new()),
        Err(e) => return Err(err(context, e)),
    };
    let mut out = Vec::new();
    for body in &bodies {
        let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
            continue;
        };
        for (_, elem) in attrs(list) {
            let Some(key) = attr(elem, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE))
            else {
                continue;
            };
            let Some(address) = ip6_tail(key) else {
                continue;
            };
            let left = attr_u64(elem, NFTA_SET_ELEM_EXPIRATION).unwrap_or(FCFS_LIFETIME_MS);
            out.push(FcfsBinding {
                port: name_of(&key[..IFNAMSIZ]),
                address: address.into(),
                expires: std::time::Duration::from_millis(left),
            });
        }
    }
    out.sort_by(|a, b| (&a.port, a.address).cmp(&(&b.port, b.address)));
    Ok(out)
}

/// Binds again what [`fcfs_bindings`] listed, after the table was lost (an
/// `nft flush ruleset`) and reinstalled: each binding whose port is secured
/// and whose address nobody holds now, with the lifetime it had left. The
/// rest is skipped (the port went, or another port declared or claimed the
/// address since). Returns how many were restored.
pub fn restore_fcfs_bindings(bindings: &[FcfsBinding]) -> Result<usize, Error> {
    let context = "restoring FCFS bindings";
    with_retries(context, |nl| {
        let mut secured: std::collections::HashMap<String, bool> = Default::default();
        let mut restore = Vec::new();
        for b in bindings {
            let Ok(ifkey) = ifname_key(&b.port) else {
                continue;
            };
            let is_secured = match secured.get(&b.port) {
                Some(known) => *known,
                None => {
                    let known = has_elem(nl, SET_PORTS, &ifkey)?;
                    secured.insert(b.port.clone(), known);
                    known
                }
            };
            let addr = b.address.octets();
            if !is_secured || claim_of(nl, &addr)? != Claim::Free {
                continue;
            }
            let mut key = ifkey.to_vec();
            key.extend_from_slice(&addr);
            let left = u64::try_from(b.expires.as_millis())
                .unwrap_or(FCFS_LIFETIME_MS)
                .clamp(1000, FCFS_LIFETIME_MS);
            restore.push((key, addr, left));
        }
        for chunk in restore.chunks(256) {
            let mut batch = Batch::new();
            let claims: Vec<(&[u8], u64)> = chunk.iter().map(|(_, a, t)| (&a[..], *t)).collect();
            let binds: Vec<(&[u8], u64)> = chunk.iter().map(|(k, _, t)| (&k[..], *t)).collect();
            batch.push(
                setelem_timeout_msg(SET_FCFS_CLAIMED, &claims),
                format!("restoring claims in set {SET_FCFS_CLAIMED}"),
            );
            batch.push(
                setelem_timeout_msg(SET_FCFS_BINDINGS, &binds),
                format!("restoring bindings in set {SET_FCFS_BINDINGS}"),
            );
            nl.commit(batch)?;
        }
        Ok(restore.len())
    })
}

/// Adds elements that lapse: (key, timeout in milliseconds).
fn setelem_timeout_msg(set: &str, elems: &[(&[u8], u64)]) -> Msg {
    let mut m = Msg::new(
        msg::NEWSETELEM,
        NLM_F_REQUEST | NLM_F_CREATE,
        NFPROTO_BRIDGE,
    );
    m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, set)
        .begin(NFTA_SET_ELEM_LIST_ELEMENTS);
    for (key, timeout_ms) in elems {
        m.begin(1) // NFTA_LIST_ELEM
            .begin(NFTA_SET_ELEM_KEY)
            .bytes(NFTA_DATA_VALUE, key)
            .end()
            .bytes(NFTA_SET_ELEM_TIMEOUT, &timeout_ms.to_be_bytes())
            .end();
    }
    m.end();
    m
}

/// Reads the drop counters (all zero when the table does not exist yet).
pub fn counters() -> Result<DropCounters, Error> {
    let mut c = DropCounters::default();
    for (name, packets) in counter_packets("reading the port-security drop counters")? {
        if let Some(slot) = name.strip_prefix("drop_").and_then(|r| c.slot(r)) {
            *slot = packets;
        }
    }
    Ok(c)
}

/// (name, packets) of every named counter of the table (none before it exists).
fn counter_packets(context: &str) -> Result<Vec<(String, u64)>, Error> {
    let mut nl = open(context)?;
    let mut m = Msg::new(msg::GETOBJ, NLM_F_REQUEST | NLM_F_DUMP, NFPROTO_BRIDGE);
    m.str(NFTA_OBJ_TABLE, TABLE)
        .u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
    let bodies = match nl.request(m, context) {
        Ok(b) => b,
        Err(e) if e.errno == libc::ENOENT => Vec::new(),
        Err(e) => return Err(err(context, e)),
    };
    Ok(bodies
        .iter()
        .filter(|body| attr_str(body, NFTA_OBJ_TABLE).as_deref() == Some(TABLE))
        .map(|body| {
            let packets = attr(body, NFTA_OBJ_DATA)
                .and_then(|d| attr_u64(d, NFTA_COUNTER_PACKETS))
                .unwrap_or(0);
            (attr_str(body, NFTA_OBJ_NAME).unwrap_or_default(), packets)
        })
        .collect())
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

    #[test]
    fn claims_go_only_when_nobody_else_holds_them() {
        let a = |last: u8| {
            let mut v = [0u8; 16];
            v[0] = 0xfe;
            v[1] = 0x80;
            v[15] = last;
            v
        };
        let claimed: HashSet<[u8; 16]> = [a(1), a(2), a(3)].into();
        // (released, still held by another port, expected deletions)
        type Addrs<'a> = &'a [[u8; 16]];
        let table: [(Addrs, Addrs, Addrs); 5] = [
            (&[a(1), a(2)], &[], &[a(1), a(2)]),
            // The same address declared by another port (a migration target).
            (&[a(1), a(2)], &[a(2)], &[a(1)]),
            // Claimed no more (lapsed, or never claimed): nothing to delete.
            (&[a(4)], &[], &[]),
            (&[], &[a(1)], &[]),
            // Released twice (declared and bound): deleted once.
            (&[a(3), a(3)], &[], &[a(3)]),
        ];
        for (released, remaining, want) in table {
            let got = claims_to_release(
                released.iter().copied(),
                remaining.iter().copied(),
                &claimed,
            );
            let want: Vec<(&str, Vec<u8>)> = want
                .iter()
                .map(|x| (SET_FCFS_CLAIMED, x.to_vec()))
                .collect();
            assert_eq!(got, want, "released {released:?}, remaining {remaining:?}");
        }
    }

    #[test]
    fn declared_ip6_covers_globals_declared_link_locals_and_the_mac_link_local() {
        let rules = PortRules {
            host_veth: "pg1".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec![
                "10.0.0.2".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                "fe80::1234".parse().unwrap(),
            ],
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        };
        let got: Vec<std::net::Ipv6Addr> = declared_ip6(&PortElems::wanted(&rules))
            .into_iter()
            .map(Into::into)
            .collect();
        let want: Vec<std::net::Ipv6Addr> = ["2001:db8::2", "fe80::1234", "fe80::ff:fe00:1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
