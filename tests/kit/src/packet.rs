//! A raw AF_PACKET socket bound to one interface of a test namespace: sends
//! frames exactly as given and hears every frame on the interface, both ways.

// The raw socket calls are libc's; each `unsafe` block says why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::libc;

use crate::Netns;

pub struct PacketSocket {
    fd: OwnedFd,
    pub ifname: String,
}

impl PacketSocket {
    /// Opens the socket inside `ns`, bound to its interface `ifname`. The socket
    /// stays in that namespace however the caller's threads move.
    pub fn open(ns: &Netns, ifname: &str) -> PacketSocket {
        let name = ifname.to_string();
        let fd = ns
            .run(move || open_bound(&name))
            .unwrap_or_else(|e| panic!("packet socket on {ifname} in {}: {e}", ns.name));
        PacketSocket {
            fd,
            ifname: ifname.to_string(),
        }
    }

    /// Sends one frame (Ethernet header included).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for `frame.len()` bytes; the socket is bound.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            sent,
            frame.len() as isize,
            "sending a frame on {}: {}",
            self.ifname,
            io::Error::last_os_error()
        );
    }

    /// [`PacketSocket::send`] that may fail: for a sender whose interface
    /// goes away under it.
    pub fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for `frame.len()` bytes; the socket is bound.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Every frame queued now, without waiting.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: receiving into a buffer we own, of the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(
                    e.kind(),
                    io::ErrorKind::WouldBlock,
                    "receiving on {}: {e}",
                    self.ifname
                );
                return frames;
            }
            frames.push(buf[..n as usize].to_vec());
        }
    }

    /// Every frame heard during `window`.
    pub fn listen(&self, window: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + window;
        let mut frames = self.drain();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return frames;
            }
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pollfd, 1, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
            }
            frames.extend(self.drain());
        }
    }
}

fn open_bound(ifname: &str) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the length given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
