//! A non-blocking AF_PACKET raw socket bound to one interface, in the network
//! namespace of the calling thread, receiving only ARP and ICMPv6 NS/NA frames.

// One `unsafe`: nix builds a packet address only from a raw sockaddr_ll.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::libc;
use nix::net::if_::if_nametoindex;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, getsockname, recvfrom, sendto, setsockopt, LinkAddr, MsgFlags};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use socket2::{Domain, SockFilter, Socket, Type};

use super::frame::{
    ETH_P_ARP, ETH_P_IPV6, IPPROTO_ICMPV6, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT,
};
use portgroup::mac::MacAddr;

// PACKET_IGNORE_OUTGOING (Linux 4.20+), which nix does not name. The macro
// expands to itself and setsockopt_impl by bare name.
use nix::{setsockopt_impl, sockopt_impl};
sockopt_impl!(
    IgnoreOutgoing,
    SetOnly,
    libc::SOL_PACKET,
    libc::PACKET_IGNORE_OUTGOING,
    bool
);

// Classic BPF opcodes: u16 in a sock_filter; libc spells the parts as u32.
const LDH_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LDB_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Classic BPF: accept ARP, and IPv6 whose next header is ICMPv6 with type 135 or 136
/// (no extension headers: NDP messages carry none in practice). Everything else
/// is dropped in the kernel, so a busy VLAN costs us nothing.
fn filter() -> [SockFilter; 10] {
    let op = SockFilter::new;
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
    socket: Socket,
    ifindex: libc::c_int,
    /// The interface's own hardware address.
    pub mac: MacAddr,
}

fn with_context(what: &str, ifname: &str, err: impl Into<io::Error>) -> io::Error {
    let err = err.into();
    io::Error::new(err.kind(), format!("{what} on {ifname}: {err}"))
}

/// A packet address: interface `ifindex`, EtherType `protocol` (host order).
fn link_addr(ifindex: libc::c_int, protocol: u16) -> io::Result<LinkAddr> {
    let raw = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `raw` is a fully initialised sockaddr_ll of `len` bytes, alive for the
    // call; from_raw copies it and checks the family.
    unsafe { LinkAddr::from_raw(std::ptr::addr_of!(raw).cast(), Some(len)) }
        .ok_or_else(|| io::Error::other("building a packet address"))
}

impl PacketSocket {
    /// Opens the socket on `ifname`. Nothing is queued before the filter is attached:
    /// the socket is created with protocol 0 (receives nothing) and bound afterwards.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let ifindex = match if_nametoindex(ifname) {
            Ok(index) => libc::c_int::try_from(index).map_err(io::Error::other)?,
            Err(e) => return Err(with_context("looking up the interface", ifname, e)),
        };
        let socket = Socket::new(Domain::PACKET, Type::RAW.nonblocking().cloexec(), None)
            .map_err(|e| with_context("opening an AF_PACKET socket", ifname, e))?;
        socket
            .attach_filter(&filter())
            .map_err(|e| with_context("attaching the packet filter", ifname, e))?;
        // Our own transmissions would loop back as PACKET_OUTGOING; ask the kernel not
        // to (Linux 4.20+). Older kernels refuse the option; recv() checks anyway.
        let _ = setsockopt(&socket, IgnoreOutgoing, &true);

        bind(
            socket.as_raw_fd(),
            &link_addr(ifindex, libc::ETH_P_ALL as u16)?,
        )
        .map_err(|e| with_context("binding the packet socket", ifname, e))?;
        // A bound packet socket's own address carries the device's type and address
        // (18 bytes for Ethernet, shorter than a sockaddr_ll: hence the storage).
        let own: SockaddrStorage = getsockname(socket.as_raw_fd())
            .map_err(|e| with_context("reading the hardware address", ifname, e))?;
        let mac = match own.as_link_addr() {
            Some(own) if own.hatype() == libc::ARPHRD_ETHER && own.halen() == 6 => own.addr(),
            _ => None,
        };
        let Some(mac) = mac else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname} is not an Ethernet interface"),
            ));
        };
        Ok(PacketSocket {
            socket,
            ifindex,
            mac: MacAddr(mac),
        })
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let Some(ethertype) = frame.get(12..14) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame shorter than an Ethernet header",
            ));
        };
        let ethertype = u16::from_be_bytes([ethertype[0], ethertype[1]]);
        let to = link_addr(self.ifindex, ethertype)?;
        let sent = sendto(self.socket.as_raw_fd(), frame, &to, MsgFlags::empty())?;
        if sent != frame.len() {
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
        match recvfrom::<SockaddrStorage>(self.socket.as_raw_fd(), buf) {
            Ok((len, from)) => {
                let outgoing = from
                    .as_ref()
                    .and_then(SockaddrStorage::as_link_addr)
                    .is_some_and(|from| from.pkttype() == libc::PACKET_OUTGOING);
                Ok(Some(if outgoing { 0 } else { len }))
            }
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(nix::errno::Errno::EINTR) => Ok(Some(0)),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout` for a frame to be readable.
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        let millis = timeout.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_opcodes_are_the_classic_bpf_ones() {
        // linux/filter.h: ldh [k], ldb [k], jeq #k, ret #k.
        assert_eq!([LDH_ABS, LDB_ABS, JEQ_K, RET_K], [0x28, 0x30, 0x15, 0x06]);
        assert_eq!(filter().len(), 10);
    }
}
