//! nf_tables change notifications (`NFNLGRP_NFTABLES`): what wakes portgroupd's
//! repair within milliseconds of an `nft flush ruleset`, rather than at the next
//! resync.
//!
//! Every committed transaction is announced message by message (table, chain,
//! rule, set, element, object), then closed by a NEWGEN message that names the
//! committing process. A transaction counts when one of its messages is about
//! `table bridge portgroup` and it was committed neither by this process (the
//! daemon's own repairs are announced too, and must not wake it again) nor by
//! the CNI plugin: its ADDs and DELs are how the table is meant to change, and
//! a sweep after each would make pod churn cost the daemon a full read of the
//! table per pod. What a sweep repairs is somebody else's change (a firewall
//! reload, `nft flush ruleset`); the plugin's DEL leaves its elements to the
//! sweep that a removed attachment record wakes.

use nix::libc;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::ruleset::TABLE;
use crate::error::Error;

/// `NFNLGRP_NFTABLES` in `enum nfnetlink_groups`.
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_PID: u16 = 2;
/// The committing task's name (its `comm`, at most 15 bytes).
const NFTA_GEN_PROC_NAME: u16 = 3;
/// The CNI plugin's executable name, as the kernel names its task.
const PLUGIN_TASK_NAME: &str = "portgroup";
const NFPROTO_BRIDGE: u8 = 7;
/// Every nf_tables object message names its table in attribute 1
/// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
/// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE).
const NFTA_ANY_TABLE: u16 = 1;

/// Folds notifications into transactions.
#[derive(Debug, Default)]
pub struct Transactions {
    ours_touched: bool,
}

impl Transactions {
    /// Takes one notification (netlink type, body after the 16-byte header).
    /// Returns true when it closes a transaction that touched our table and was
    /// committed by a process other than `own_pid` and the CNI plugin.
    pub fn feed(&mut self, ty: u16, body: &[u8], own_pid: u32) -> bool {
        if ty >> 8 != NFNL_SUBSYS_NFTABLES || body.len() < 4 {
            return false;
        }
        let family = body[0];
        let attrs = &body[4..];
        if ty & 0xff == NFT_MSG_NEWGEN {
            let pid = super::nfnl::attr(attrs, NFTA_GEN_PROC_PID)
                .and_then(|d| <[u8; 4]>::try_from(d).ok())
                .map(u32::from_be_bytes);
            let by_plugin = super::nfnl::attr_str(attrs, NFTA_GEN_PROC_NAME).as_deref()
                == Some(PLUGIN_TASK_NAME);
            let touched = std::mem::take(&mut self.ours_touched);
            return touched && pid != Some(own_pid) && !by_plugin;
        }
        if family == NFPROTO_BRIDGE
            && super::nfnl::attr_str(attrs, NFTA_ANY_TABLE).as_deref() == Some(TABLE)
        {
            self.ours_touched = true;
        }
        false
    }
}

/// A subscription to nf_tables notifications in the caller's network namespace.
pub struct Watcher {
    sock: Socket,
}

fn fail(what: &str, e: std::io::Error) -> Error {
    Error::PortSecurity(format!("nf_tables notifications: {what}: {e}"))
}

/// Subscribes to `NFNLGRP_NFTABLES`.
pub fn subscribe() -> Result<Watcher, Error> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| fail("socket", e))?;
    sock.bind_auto().map_err(|e| fail("bind", e))?;
    sock.add_membership(NFNLGRP_NFTABLES)
        .map_err(|e| fail("joining NFNLGRP_NFTABLES", e))?;
    // A flush of a large table announces every element: room for bursts. If
    // the buffer stays small, an overrun (ENOBUFS) still triggers a sweep.
    let _ = sock.set_rx_buf_sz(4usize << 20);
    Ok(Watcher { sock })
}

impl Watcher {
    /// Calls `on_change` for every transaction another process made to our
    /// table, and when notifications were lost (ENOBUFS: something may have
    /// changed). Blocks; returns when `on_change` returns false, or on a
    /// socket error.
    pub fn run(self, mut on_change: impl FnMut() -> bool) -> Result<(), Error> {
        let own_pid = std::process::id();
        let mut transactions = Transactions::default();
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        loop {
            buf.clear();
            match self.sock.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    transactions = Transactions::default();
                    if !on_change() {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(fail("receiving", e)),
            }
            let mut rest = &buf[..];
            let mut changed = false;
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    break;
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                changed |= transactions.feed(ty, &rest[16..len], own_pid);
                let next = (len + 3) & !3;
                rest = if next >= rest.len() {
                    &[]
                } else {
                    &rest[next..]
                };
            }
            if changed && !on_change() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        for (ty, data) in attrs {
            let len = (4 + data.len()) as u16;
            b.extend_from_slice(&len.to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(data);
            while b.len() % 4 != 0 {
                b.push(0);
            }
        }
        b
    }

    fn named(family: u8, table: &str) -> Vec<u8> {
        let mut name = table.as_bytes().to_vec();
        name.push(0);
        body(family, &[(NFTA_ANY_TABLE, name)])
    }

    fn gen(pid: u32, task: &str) -> Vec<u8> {
        let mut name = task.as_bytes().to_vec();
        name.push(0);
        body(
            0,
            &[
                (1, 7u32.to_be_bytes().to_vec()),
                (NFTA_GEN_PROC_PID, pid.to_be_bytes().to_vec()),
                (NFTA_GEN_PROC_NAME, name),
            ],
        )
    }

    const fn nft(kind: u16) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | kind
    }
    const DELTABLE: u16 = nft(2);
    const DELSETELEM: u16 = nft(14);
    const NEWGEN: u16 = nft(NFT_MSG_NEWGEN);

    #[test]
    fn only_foreign_transactions_on_our_table_count() {
        let me = 4242;
        // (messages of one transaction, committed by pid and task, counts)
        type Messages = Vec<(u16, Vec<u8>)>;
        let cases: Vec<(&str, Messages, u32, &str, bool)> = vec![
            (
                "nft flush ruleset",
                vec![
                    (DELTABLE, named(2, "filter")),
                    (DELTABLE, named(NFPROTO_BRIDGE, TABLE)),
                ],
                1,
                "nft",
                true,
            ),
            (
                "our own repair",
                vec![(DELSETELEM, named(NFPROTO_BRIDGE, TABLE))],
                me,
                "portgroupd",
                false,
            ),
            (
                "another table of the bridge family",
                vec![(DELTABLE, named(NFPROTO_BRIDGE, "filter"))],
                1,
                "nft",
                false,
            ),
            (
                "a table named like ours in another family",
                vec![(DELTABLE, named(2, TABLE))],
                1,
                "nft",
                false,
            ),
            (
                "an element deleted by hand",
                vec![(DELSETELEM, named(NFPROTO_BRIDGE, TABLE))],
                7,
                "nft",
                true,
            ),
            (
                "a pod's port removed by the CNI plugin",
                vec![(DELSETELEM, named(NFPROTO_BRIDGE, TABLE))],
                8,
                PLUGIN_TASK_NAME,
                false,
            ),
            (
                "another portgroupd (another namespace's, or its successor)",
                vec![(DELSETELEM, named(NFPROTO_BRIDGE, TABLE))],
                9,
                "portgroupd",
                true,
            ),
        ];
        let mut t = Transactions::default();
        for (name, msgs, pid, task, counts) in cases {
            for (ty, b) in &msgs {
                assert!(!t.feed(*ty, b, me), "{name}: before NEWGEN");
            }
            assert_eq!(t.feed(NEWGEN, &gen(pid, task), me), counts, "{name}");
        }
        // Other subsystems' messages are ignored.
        assert!(!t.feed(0x0100, &named(NFPROTO_BRIDGE, TABLE), me));
        assert!(!t.feed(NEWGEN, &gen(1, "nft"), me));
    }
}
