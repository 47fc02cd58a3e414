//! A minimal nfnetlink (`NETLINK_NETFILTER`) client for nf_tables: message
//! building, batched transactions with per-message acknowledgements, and
//! GET/dump requests. Only what the port-security table needs.

use nix::libc;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

// netlink
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

// nfnetlink
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
pub const NFPROTO_BRIDGE: u8 = 7;

/// `enum nf_tables_msg_types`.
/// The generation after one commit of ours (the kernel skips 0).
pub fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// NFNL_BATCH_GENID, in a batch's begin message (Linux 4.19+).
const NFNL_BATCH_GENID: u16 = 1;
/// NFTA_GEN_ID, in a NEWGEN reply.
const NFTA_GEN_ID: u16 = 1;

pub mod msg {
    pub const NEWTABLE: u16 = 0;
    #[cfg(feature = "daemon")]
    pub const GETTABLE: u16 = 1;
    pub const DELTABLE: u16 = 2;
    pub const NEWCHAIN: u16 = 3;
    pub const NEWRULE: u16 = 6;
    pub const GETRULE: u16 = 7;
    pub const DELRULE: u16 = 8;
    pub const NEWSET: u16 = 9;
    pub const NEWSETELEM: u16 = 12;
    pub const GETSETELEM: u16 = 13;
    pub const DELSETELEM: u16 = 14;
    pub const GETGEN: u16 = 16;
    pub const NEWOBJ: u16 = 18;
    pub const GETOBJ: u16 = 19;
}

/// A kernel error: the errno and what we were doing.
#[derive(Debug)]
pub struct NlError {
    pub errno: i32,
    pub what: String,
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl NlError {
    fn io(what: &str, e: std::io::Error) -> Self {
        NlError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            what: what.to_string(),
        }
    }
}

/// One netlink message under construction, with nested attributes.
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
    /// An attribute grew past what its 16-bit length can say: never sent.
    overflow: bool,
}

impl Msg {
    /// An nf_tables message: nlmsghdr + nfgenmsg.
    pub fn new(kind: u16, flags: u16, family: u8) -> Self {
        Self::raw((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, family, 0)
    }

    fn raw(ty: u16, flags: u16, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq, set by the batch
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg {
            buf,
            nests: Vec::new(),
            overflow: false,
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// NFTA_LIST_ELEM attributes inside the message's element list (tests).
    #[cfg(test)]
    pub fn element_count(&self) -> usize {
        // nlmsghdr (16) + nfgenmsg (4), then the top-level attributes.
        attrs(&self.buf[20..])
            .filter(|(ty, _)| *ty == 3) // NFTA_SET_ELEM_LIST_ELEMENTS
            .map(|(_, list)| attrs(list).count())
            .sum()
    }

    /// Whether every attribute's length fits its 16 bits (see `commit`).
    pub fn fits(&self) -> bool {
        !self.overflow
    }

    pub fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.overflow |= 4 + data.len() > usize::from(u16::MAX);
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.bytes(ty, &data)
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            self.overflow |= self.buf.len() - start > usize::from(u16::MAX);
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        while !self.nests.is_empty() {
            self.end();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// Attributes of a message body or of a nested attribute: (type, payload).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        let next = (len + 3) & !3;
        buf = if next >= buf.len() { &[] } else { &buf[next..] };
        Some((ty, data))
    })
}

/// The first attribute of type `ty`.
pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

/// A NUL-terminated string attribute.
pub fn attr_str(buf: &[u8], ty: u16) -> Option<String> {
    attr(buf, ty).map(|d| {
        let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
        String::from_utf8_lossy(&d[..end]).into_owned()
    })
}

pub fn attr_u64(buf: &[u8], ty: u16) -> Option<u64> {
    attr(buf, ty).and_then(|d| d.try_into().ok().map(u64::from_be_bytes))
}

/// A socket on the nf_tables subsystem of the caller's network namespace.
pub struct Nfnl {
    sock: Socket,
    seq: u32,
}

/// A transaction: every message lands, or none does.
pub struct Batch {
    msgs: Vec<(Msg, String)>,
}

impl Batch {
    pub fn new() -> Self {
        Batch { msgs: Vec::new() }
    }

    /// Adds a message; `what` names it in an error.
    pub fn push(&mut self, msg: Msg, what: impl Into<String>) {
        self.msgs.push((msg, what.into()));
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    #[cfg(test)]
    pub fn msgs(&self) -> impl Iterator<Item = &Msg> {
        self.msgs.iter().map(|(m, _)| m)
    }

    /// Each message as it would be sent (sequence number 0), with its name.
    pub fn encoded(self) -> Vec<(String, Vec<u8>)> {
        self.msgs
            .into_iter()
            .map(|(msg, what)| (what, msg.finish(0)))
            .collect()
    }
}

impl Nfnl {
    pub fn open() -> Result<Self, NlError> {
        let mut sock =
            Socket::new(NETLINK_NETFILTER).map_err(|e| NlError::io("netlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| NlError::io("netlink bind", e))?;
        // Acks without the request echoed back; ignore failure on old kernels.
        let _ = sock.set_cap_ack(true);
        let timeout = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| NlError::io("netlink SO_RCVTIMEO", e.into()))?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Nfnl { sock, seq })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, buf: &[u8], what: &str) -> Result<(), NlError> {
        let n = self.sock.send(buf, 0).map_err(|e| NlError::io(what, e))?;
        if n != buf.len() {
            return Err(NlError {
                errno: libc::EMSGSIZE,
                what: format!("{what}: short send"),
            });
        }
        Ok(())
    }

    /// Reads one datagram and calls `each(type, seq, body)` per message in it.
    fn recv_each(
        &self,
        what: &str,
        mut each: impl FnMut(u16, u32, &[u8]) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        let n = self
            .sock
            .recv(&mut buf, libc::MSG_TRUNC)
            .map_err(|e| NlError::io(what, e))?;
        if n > buf.len() {
            return Err(NlError {
                errno: libc::EMSGSIZE,
                what: format!("{what}: reply truncated ({n} bytes)"),
            });
        }
        let mut rest = &buf[..];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < 16 || len > rest.len() {
                break;
            }
            let ty = u16::from_ne_bytes([rest[4], rest[5]]);
            let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
            each(ty, seq, &rest[16..len])?;
            let next = (len + 3) & !3;
            rest = if next >= rest.len() {
                &[]
            } else {
                &rest[next..]
            };
        }
        Ok(())
    }

    /// Sends `batch` as one nf_tables transaction and waits for every ack.
    /// On failure nothing of the batch was applied; the error names the first
    /// message the kernel refused.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NlError> {
        self.commit_at(batch, None)
    }

    /// The ruleset's generation now: every commit moves it on.
    pub fn generation(&mut self) -> Result<u32, NlError> {
        let m = Msg::new(msg::GETGEN, NLM_F_REQUEST, 0);
        let bodies = self.request(m, "reading the nf_tables generation")?;
        bodies
            .iter()
            .find_map(|b| attr(b, NFTA_GEN_ID))
            .and_then(|d| <[u8; 4]>::try_from(d).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| NlError {
                errno: libc::EPROTO,
                what: "the nf_tables generation reply has no id".into(),
            })
    }

    /// [`Nfnl::commit`], applied only if the ruleset is still at `generation`
    /// (from [`Nfnl::generation`]): a decision made from what was read then
    /// is not applied over another writer's commit since (ERESTART instead).
    pub fn commit_at(&mut self, batch: Batch, generation: Option<u32>) -> Result<(), NlError> {
        if batch.is_empty() {
            return Ok(());
        }
        // A length that wrapped would send a different message than the one built.
        if let Some((_, what)) = batch.msgs.iter().find(|(m, _)| !m.fits()) {
            return Err(NlError {
                errno: libc::EMSGSIZE,
                what: format!("{what}: an attribute exceeds netlink's 64 KiB limit"),
            });
        }
        let mut buf = Vec::with_capacity(batch.len() * 128 + 40);
        let mut pending: Vec<(u32, String)> = Vec::with_capacity(batch.len());
        let begin_seq = self.next_seq();
        let mut begin = Msg::raw(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        if let Some(generation) = generation {
            begin.u32(NFNL_BATCH_GENID, generation);
        }
        buf.extend(begin.finish(begin_seq));
        for (mut msg, what) in batch.msgs {
            let seq = self.next_seq();
            let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_ACK;
            msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
            buf.extend(msg.finish(seq));
            pending.push((seq, what));
        }
        let end_seq = self.next_seq();
        buf.extend(
            Msg::raw(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES).finish(end_seq),
        );
        self.send(&buf, "nf_tables transaction")?;

        let mut first_error: Option<NlError> = None;
        let mut acked = 0usize;
        while acked < pending.len() {
            self.recv_each("nf_tables transaction", |ty, seq, body| {
                if ty != NLMSG_ERROR || body.len() < 4 {
                    return Ok(());
                }
                let errno = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                // An error on the batch markers themselves: nothing else will come.
                if seq == begin_seq || seq == end_seq {
                    if errno != 0 && first_error.is_none() {
                        acked = pending.len();
                        first_error = Some(NlError {
                            errno,
                            what: "nf_tables transaction framing".into(),
                        });
                    }
                    return Ok(());
                }
                let Some(pos) = pending.iter().position(|(s, _)| *s == seq) else {
                    return Ok(());
                };
                acked += 1;
                if errno != 0 && first_error.is_none() {
                    first_error = Some(NlError {
                        errno,
                        what: pending[pos].1.clone(),
                    });
                }
                Ok(())
            })?;
            // The kernel aborts a failed batch; acks of messages after a fatal
            // error may never come.
            if first_error.is_some() && acked < pending.len() {
                self.drain();
                break;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drops whatever is still queued (acks of an aborted batch).
    fn drain(&self) {
        let _ = self.sock.set_non_blocking(true);
        while self.recv_each("drain", |_, _, _| Ok(())).is_ok() {}
        let _ = self.sock.set_non_blocking(false);
    }

    /// A GET (or dump, with `NLM_F_DUMP` in the message's flags): returns the
    /// bodies (after nfgenmsg) of every reply message.
    pub fn request(&mut self, msg: Msg, what: &str) -> Result<Vec<Vec<u8>>, NlError> {
        let seq = self.next_seq();
        let dump = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) & NLM_F_DUMP == NLM_F_DUMP;
        self.send(&msg.finish(seq), what)?;
        let mut out = Vec::new();
        let mut done = false;
        while !done {
            self.recv_each(what, |ty, s, body| {
                if s != seq {
                    return Ok(());
                }
                match ty {
                    NLMSG_ERROR => {
                        let errno = if body.len() >= 4 {
                            -i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                        } else {
                            libc::EIO
                        };
                        done = true;
                        if errno != 0 {
                            return Err(NlError {
                                errno,
                                what: what.to_string(),
                            });
                        }
                    }
                    NLMSG_DONE => done = true,
                    _ => {
                        if body.len() >= 4 {
                            out.push(body[4..].to_vec());
                        }
                        if !dump {
                            done = true;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}
