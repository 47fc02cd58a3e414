//! A non-blocking AF_PACKET raw socket bound to one interface, in the network
//! namespace of the calling thread, receiving only ARP and ICMPv6 NS/NA frames.

// Raw socket calls through libc; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::libc;

use super::frame::{
    ETH_P_ARP, ETH_P_IPV6, IPPROTO_ICMPV6, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT,
};
use portgroup::mac::MacAddr;

/// linux/if_packet.h; not all of these are exported by the libc crate.
const PACKET_OUTGOING: u8 = 4;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// asm-generic/socket.h (x86, arm, riscv, ...).
const SO_ATTACH_FILTER: libc::c_int = 26;
const ARPHRD_ETHER: libc::sa_family_t = 1;

/// Classic BPF: accept ARP, and IPv6 whose next header is ICMPv6 with type 135 or 136
/// (no extension headers: NDP messages carry none in practice). Everything else
/// is dropped in the kernel, so a busy VLAN costs us nothing.
fn filter() -> [libc::sock_filter; 10] {
    const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        /* 0 */ op(LDH_ABS, 0, 0, 12),
        /* 1 */ op(JEQ_K, 6, 0, u32::from(ETH_P_ARP)), // -> 8 accept
        /* 2 */ op(JEQ_K, 0, 6, u32::from(ETH_P_IPV6)), // -> 9 drop
        /* 3 */ op(LDB_ABS, 0, 0, 14 + 6),
        /* 4 */ op(JEQ_K, 0, 4, u32::from(IPPROTO_ICMPV6)), // -> 9 drop
        /* 5 */ op(LDB_ABS, 0, 0, 14 + 40),
        /* 6 */ op(JEQ_K, 1, 0, u32::from(ND_NEIGHBOR_SOLICIT)), // -> 8 accept
        /* 7 */ op(JEQ_K, 0, 1, u32::from(ND_NEIGHBOR_ADVERT)), // -> 8 / 9
        /* 8 */ op(RET_K, 0, 0, 0x0004_0000),
        /* 9 */ op(RET_K, 0, 0, 0),
    ]
}

pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
    /// The interface's own hardware address.
    pub mac: MacAddr,
}

fn last_error(what: &str, ifname: &str) -> io::Error {
    let err = io::Error::last_os_error();
    io::Error::new(err.kind(), format!("{what} on {ifname}: {err}"))
}

fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    let name = CString::new(ifname)
        .ok()
        .filter(|n| !n.as_bytes().is_empty() && n.as_bytes().len() < libc::IFNAMSIZ)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname:?} is not a valid interface name"),
            )
        })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

impl PacketSocket {
    /// Opens the socket on `ifname`. Nothing is queued before the filter is attached:
    /// the socket is created with protocol 0 (receives nothing) and bound afterwards.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let mut req = ifreq(ifname)?;
        // SAFETY: plain socket(2) call; the result is checked before being owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(last_error("opening an AF_PACKET socket", ifname));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: ioctl with a properly sized, initialised ifreq.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } < 0 {
            return Err(last_error("looking up the interface", ifname));
        }
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        let ifindex = unsafe { req.ifr_ifru.ifru_ifindex };

        // SAFETY: as above.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return Err(last_error("reading the hardware address", ifname));
        }
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        if hw.sa_family != ARPHRD_ETHER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname} is not an Ethernet interface"),
            ));
        }
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *dst = *src as u8;
        }

        let program = filter();
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points at `program`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                &fprog as *const _ as *const libc::c_void,
                mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_error("attaching the packet filter", ifname));
        }

        // Our own transmissions would loop back as PACKET_OUTGOING; ask the kernel not
        // to (Linux 4.20+). Older kernels refuse the option; recv() checks anyway.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a c_int value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };

        let mut addr = sockaddr_ll(ifindex, libc::ETH_P_ALL as u16);
        addr.sll_ifindex = ifindex;
        // SAFETY: bind with a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_error("binding the packet socket", ifname));
        }
        Ok(PacketSocket {
            fd,
            ifindex,
            mac: MacAddr(mac),
        })
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let mut addr = sockaddr_ll(self.ifindex, ethertype);
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sendto with a valid buffer and a sockaddr_ll of the right size.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::other(format!(
                "short send: {sent} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    /// Receives one frame into `buf` without blocking. `Ok(None)` when nothing is
    /// queued; frames we sent ourselves (PACKET_OUTGOING) come back as length 0.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: sockaddr_ll is plain old data.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom into a valid buffer and address of the given sizes.
        let got = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if got < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => Ok(Some(0)),
                _ => Err(err),
            };
        }
        if from.sll_pkttype == PACKET_OUTGOING {
            return Ok(Some(0));
        }
        Ok(Some(got as usize))
    }

    /// Waits up to `timeout` for a frame to be readable.
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, millis) } < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }
}

fn sockaddr_ll(ifindex: libc::c_int, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    addr
}
