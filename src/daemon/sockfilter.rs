//! A classic BPF filter on the daemon's link-event socket, so that the kernel
//! drops the bulk of pod churn before it is copied to the daemon at all:
//! - `AF_BRIDGE` link notifications (bridge port state; the planner reads none);
//! - `RTM_NEWLINK` of the plugin's host veths (`pg<12 hex>`; the name is the
//!   first attribute of every link notification). Their `RTM_DELLINK` still
//!   comes: the collector and draining bridges want it;
//! - IPv6 link-local address changes (the planner does not count them).
//!
//! Everything else reaches the user-space [`super::interest`] filter. A message
//! laid out otherwise than expected is let through: the filter only drops what
//! it is sure of. (An uplink named like a host veth would lose its link events
//! to it until the next resync: do not name one so.)

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use nix::libc;

const LD_B: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LD_H: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JGT: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K

const ACCEPT: u32 = 0xffff_ffff;
const DROP: u32 = 0;

/// Netlink headers are in host order, classic BPF loads in network order: a
/// 16-bit field as the filter sees it.
const fn host16(v: u16) -> u32 {
    u16::from_be_bytes(v.to_ne_bytes()) as u32
}

/// nlmsghdr is 16 bytes; the family byte of ifinfomsg / ifaddrmsg follows.
const FAMILY: u32 = 16;
/// The first attribute of a link message (after the 16-byte ifinfomsg).
const LINK_ATTR: u32 = 32;
/// The first attribute of an address message (after the 8-byte ifaddrmsg).
const ADDR_ATTR: u32 = 24;

/// A tiny assembler: jumps name labels, resolved to relative offsets at the end.
#[derive(Default)]
struct Asm {
    code: Vec<(u16, Option<&'static str>, Option<&'static str>, u32)>,
    labels: HashMap<&'static str, usize>,
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) {
        self.code.push((code, None, None, k));
    }
    /// A conditional jump; None is the next instruction.
    fn jump(&mut self, code: u16, k: u32, yes: Option<&'static str>, no: Option<&'static str>) {
        self.code.push((code, yes, no, k));
    }
    fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.code.len());
    }
    fn build(self) -> Option<Vec<libc::sock_filter>> {
        let mut out = Vec::with_capacity(self.code.len());
        for (i, (code, yes, no, k)) in self.code.iter().enumerate() {
            let offset = |target: &Option<&'static str>| -> Option<u8> {
                match target {
                    None => Some(0),
                    Some(l) => u8::try_from(self.labels.get(l)?.checked_sub(i + 1)?).ok(),
                }
            };
            out.push(libc::sock_filter {
                code: *code,
                jt: offset(yes)?,
                jf: offset(no)?,
                k: *k,
            });
        }
        Some(out)
    }
}

fn program() -> Option<Vec<libc::sock_filter>> {
    let (accept, drop) = (Some("accept"), Some("drop"));
    let mut a = Asm::default();
    a.op(LD_H, 4); // nlmsg_type
    a.jump(JEQ, host16(libc::RTM_NEWLINK), Some("newlink"), None);
    a.jump(JEQ, host16(libc::RTM_DELLINK), Some("dellink"), None);
    a.jump(JEQ, host16(libc::RTM_NEWADDR), Some("addr"), None);
    a.jump(JEQ, host16(libc::RTM_DELADDR), Some("addr"), accept);

    a.label("dellink");
    a.op(LD_B, FAMILY);
    a.jump(JEQ, libc::AF_BRIDGE as u32, drop, accept);

    a.label("newlink");
    a.op(LD_B, FAMILY);
    a.jump(JEQ, libc::AF_BRIDGE as u32, drop, None);
    // IFLA_IFNAME first, 15 bytes with its NUL: nla_len 19.
    a.op(LD_H, LINK_ATTR + 2);
    a.jump(JEQ, host16(libc::IFLA_IFNAME), None, accept);
    a.op(LD_H, LINK_ATTR);
    a.jump(JEQ, host16(4 + 15), None, accept);
    a.op(LD_H, LINK_ATTR + 4);
    a.jump(JEQ, u32::from(u16::from_be_bytes(*b"pg")), None, accept);
    const HEX_OK: [&str; 12] = [
        "h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9", "h10", "h11",
    ];
    for (i, ok) in HEX_OK.iter().enumerate() {
        a.op(LD_B, LINK_ATTR + 6 + i as u32);
        a.jump(JGT, u32::from(b'f'), accept, None);
        a.jump(JGE, u32::from(b'a'), Some(ok), None);
        a.jump(JGT, u32::from(b'9'), accept, None);
        a.jump(JGE, u32::from(b'0'), Some(ok), accept);
        a.label(ok);
    }
    a.op(RET, DROP);

    a.label("addr");
    a.op(LD_B, FAMILY);
    a.jump(JEQ, libc::AF_INET6 as u32, None, accept);
    a.op(LD_H, ADDR_ATTR + 2);
    a.jump(JEQ, host16(libc::IFA_ADDRESS), None, accept);
    a.op(LD_B, ADDR_ATTR + 4);
    a.jump(JEQ, 0xfe, None, accept);
    a.op(LD_B, ADDR_ATTR + 5);
    a.op(AND, 0xc0);
    a.jump(JEQ, 0x80, drop, accept);

    a.label("accept");
    a.op(RET, ACCEPT);
    a.label("drop");
    a.op(RET, DROP);
    a.build()
}

/// Attaches the filter to a route-netlink socket.
pub fn attach(socket: &impl AsRawFd) -> std::io::Result<()> {
    let mut code = program().ok_or_else(|| std::io::Error::other("socket filter: bad jump"))?;
    let prog = libc::sock_fprog {
        len: u16::try_from(code.len()).map_err(std::io::Error::other)?,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, which outlives the call; the kernel copies
    // the program and keeps no pointer to it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    #[test]
    fn the_program_assembles() {
        let p = program().expect("jumps resolve");
        assert!(p.len() < 4096);
    }

    /// Needs root: a network namespace of its own, on a thread of its own.
    #[test]
    fn the_kernel_drops_host_veth_news_and_bridge_port_state_and_nothing_else() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip").args(args).status();
                assert!(ok.is_ok_and(|s| s.success()), "ip {args:?}");
            };
            let mut s = Socket::new(NETLINK_ROUTE).expect("socket");
            // RTMGRP_LINK | RTMGRP_IPV6_IFADDR
            s.bind(&SocketAddr::new(0, 1 | 0x100)).expect("bind");
            attach(&s).expect("attach");
            ip(&["link", "add", "br0", "type", "bridge"]);
            ip(&[
                "link",
                "add",
                "pg0123456789ab",
                "type",
                "veth",
                "peer",
                "name",
                "other0",
            ]);
            ip(&["link", "set", "pg0123456789ab", "master", "br0", "up"]);
            ip(&["link", "set", "other0", "up"]);
            ip(&["link", "set", "br0", "up"]);
            ip(&["link", "del", "pg0123456789ab"]);
            ip(&["link", "add", "pgbr0000.100", "type", "bridge"]);
            s.set_non_blocking(true).expect("nonblocking");
            std::thread::sleep(std::time::Duration::from_millis(200));
            let mut seen: Vec<(String, String)> = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.recv(&mut &mut buf[..], 0) {
                let mut off = 0;
                while off < n {
                    let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                    else {
                        break;
                    };
                    let len = msg.header.length as usize;
                    if let NetlinkPayload::InnerMessage(m) = msg.payload {
                        let what = match &m {
                            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                                let kind = if matches!(m, RouteNetlinkMessage::NewLink(_)) {
                                    "new"
                                } else {
                                    "del"
                                };
                                let family = if l.header.interface_family
                                    == netlink_packet_route::AddressFamily::Bridge
                                {
                                    "bridge-"
                                } else {
                                    ""
                                };
                                let name = crate::netlink::LinkSummary::from_message(l).name;
                                (format!("{family}{kind}"), name)
                            }
                            RouteNetlinkMessage::NewAddress(a)
                            | RouteNetlinkMessage::DelAddress(a) => {
                                ("addr".to_string(), a.header.index.to_string())
                            }
                            _ => ("other".into(), String::new()),
                        };
                        seen.push(what);
                    }
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
                }
            }
            let has = |k: &str, n: &str| seen.iter().any(|(a, b)| a == k && b == n);
            assert!(has("new", "br0") && has("new", "other0"), "{seen:?}");
            assert!(has("new", "pgbr0000.100"), "{seen:?}");
            assert!(has("del", "pg0123456789ab"), "{seen:?}");
            assert!(!has("new", "pg0123456789ab"), "{seen:?}");
            assert!(
                !seen.iter().any(|(a, _)| a.starts_with("bridge-")),
                "{seen:?}"
            );
        })
        .join()
        .expect("test thread");
    }
}
