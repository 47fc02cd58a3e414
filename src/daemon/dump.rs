//! The daemon's link and address dumps, read one datagram at a time: each
//! message becomes its [`LinkSummary`] (or address) as it is read, and only the
//! attributes a summary keeps are parsed. What a dump leaves in memory is the
//! summaries; the messages are never held, let alone all at once.
//!
//! Not rtnetlink's request stream: its connection task reads the socket for as
//! long as it has data and queues every message, fully parsed, for the reader.
//! On the daemon's one thread the reader gets its first message only when the
//! whole dump is queued: about 13 KiB per link, 40 MiB for 3000 links, which
//! glibc then keeps as free heap for the life of the process.

use std::io;

use netlink_packet_core::{
    DecodeError, NetlinkBuffer, NetlinkMessage, NlasIterator, Parseable, ParseableParametrized,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkHeader, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};
use nix::libc;

use super::applier::LinkError;
use super::planner::{Observed, LINK_GROUP};
use super::rtlinks::observe_addresses;
use crate::netlink::LinkSummary;

/// RTM_NEWLINK and RTM_NEWADDR (linux/rtnetlink.h): the messages of the two dumps.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
/// IFLA_GROUP (linux/if_link.h): not part of a summary, but marks our links.
const IFLA_GROUP: u16 = 27;
/// A dump the kernel marks inconsistent (links changed while it ran) is read
/// again, at most this many times in all; then the last one is taken as it is.
/// The change that interrupted it raised an event of its own, which will
/// bring another pass.
const ATTEMPTS: usize = 3;

/// The links, each summarised as it is read.
pub async fn links() -> Result<Observed, LinkError> {
    links_read_into(DATAGRAM).await
}

/// [`links`], its datagrams read into `capacity` bytes at first.
async fn links_read_into(capacity: usize) -> Result<Observed, LinkError> {
    let mut request = LinkMessage::default();
    // Counters and their 64-bit copies are a third of every message, and unused.
    request
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let request = RouteNetlinkMessage::GetLink(request);
    read(&request, capacity, |observed, kind, payload| {
        if kind == RTM_NEWLINK {
            summarise_link(payload, observed)?;
        }
        Ok(())
    })
    .await
}

/// The links, then every link's addresses (IPv6 link-local ones left out).
pub async fn links_and_addresses() -> Result<Observed, LinkError> {
    let mut observed = links().await?;
    let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    let addresses: Observed = read(&request, DATAGRAM, |addresses, kind, payload| {
        if kind == RTM_NEWADDR {
            let msg = AddressMessage::parse(payload)?;
            observe_addresses(std::slice::from_ref(&msg), addresses);
        }
        Ok(())
    })
    .await?;
    observed.addresses = addresses.addresses;
    Ok(observed)
}

/// Reads a whole dump of `request` into a fresh `T`, each message handed to
/// `each` as it is read. Every read of the dump starts from a fresh `T`: one
/// the kernel marks inconsistent (read again, up to [`ATTEMPTS`] in all), and
/// one cut by a datagram larger than the buffer (read again into more room, as
/// often as that takes: the buffer doubles each time).
async fn read<T: Default>(
    request: &RouteNetlinkMessage,
    mut capacity: usize,
    mut each: impl FnMut(&mut T, u16, &[u8]) -> Result<(), DecodeError>,
) -> Result<T, LinkError> {
    let mut attempt = 1;
    loop {
        let mut into = T::default();
        match dump(request, capacity, |kind, payload| {
            each(&mut into, kind, payload)
        })
        .await?
        {
            Dumped::Done { consistent } if consistent || attempt == ATTEMPTS => return Ok(into),
            Dumped::Done { .. } => attempt += 1,
            // A message larger than the buffer (the kernel sizes a dump's
            // datagrams to the largest message, which a link with many VFs
            // or alternative names can make larger than 32 KiB).
            Dumped::Cut => capacity *= 2,
        }
    }
}

/// One link message into `observed`: its header, and only the attributes a
/// summary keeps.
fn summarise_link(payload: &[u8], observed: &mut Observed) -> Result<(), DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let mut link = LinkSummary::from_header(&header);
    let attributes = payload.get(LINK_HEADER_LEN..).unwrap_or_default();
    for nla in NlasIterator::new(attributes) {
        let nla = nla?;
        let kind = nla.kind();
        if kind == IFLA_GROUP {
            if let LinkAttribute::Group(LINK_GROUP) =
                LinkAttribute::parse_with_param(&nla, header.interface_family)?
            {
                observed.in_our_group.insert(header.index);
            }
        } else if LinkSummary::ATTRIBUTES.contains(&kind) {
            link.absorb(&LinkAttribute::parse_with_param(
                &nla,
                header.interface_family,
            )?);
        }
    }
    observed.links.push(link);
    Ok(())
}

/// struct ifinfomsg (linux/rtnetlink.h): what comes before a link's attributes.
const LINK_HEADER_LEN: usize = 16;

fn decode_error(e: DecodeError) -> LinkError {
    LinkError {
        errno: None,
        message: format!("reading a netlink dump: {e}"),
    }
}

fn io_error(what: &str, e: io::Error) -> LinkError {
    LinkError {
        errno: e.raw_os_error(),
        message: format!("{what}: {e}"),
    }
}

/// The kernel's error code in an NLMSG_ERROR or NLMSG_DONE payload (0 or -errno).
fn kernel_error(payload: &[u8]) -> Result<(), LinkError> {
    let code = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_ne_bytes);
    match code {
        0 => Ok(()),
        c => Err(LinkError {
            errno: Some(-c),
            message: io::Error::from_raw_os_error(-c).to_string(),
        }),
    }
}

/// What a dump datagram is read into at first: the kernel fills a dump's
/// datagrams up to the largest read the socket has seen, capped at 32 KiB
/// (netlink_recvmsg), so a read this large gets about twenty links per datagram
/// where a peek-sized read gets two, and every datagram costs one `recv`.
const DATAGRAM: usize = 32 * 1024;

/// How one read of a dump ended.
enum Dumped {
    /// Read to its end; `consistent` false when the kernel marked it
    /// interrupted (NLM_F_DUMP_INTR: links changed while it ran).
    Done { consistent: bool },
    /// A datagram did not fit the buffer; what was read is incomplete.
    Cut,
}

/// Sends `request` as a dump on a socket of its own and hands every message's
/// type and payload to `each` as it is read, one datagram in memory at a time,
/// read into `capacity` bytes.
async fn dump(
    request: &RouteNetlinkMessage,
    capacity: usize,
    mut each: impl FnMut(u16, &[u8]) -> Result<(), DecodeError>,
) -> Result<Dumped, LinkError> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE)
        .map_err(|e| io_error("opening a route netlink socket", e))?;
    socket
        .socket_mut()
        .bind_auto()
        .map_err(|e| io_error("binding a route netlink socket", e))?;
    let mut message = NetlinkMessage::from(request.clone());
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket
        .send(&buf)
        .await
        .map_err(|e| io_error("sending a netlink dump request", e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(capacity);
    let mut consistent = true;
    loop {
        buf.clear();
        socket
            .recv(&mut buf)
            .await
            .map_err(|e| io_error("reading a netlink dump", e))?;
        // A datagram larger than the buffer is cut to it (the rest is lost), so
        // a full buffer may be a cut one. The kernel makes a dump's datagrams
        // no larger than the largest read (below 32 KiB), unless one message
        // is larger.
        if buf.len() == buf.capacity() {
            return Ok(Dumped::Cut);
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let message = NetlinkBuffer::new_checked(rest).map_err(decode_error)?;
            if message.flags() & NLM_F_DUMP_INTR != 0 {
                consistent = false;
            }
            match message.message_type() {
                NLMSG_DONE => {
                    kernel_error(message.payload())?;
                    return Ok(Dumped::Done { consistent });
                }
                NLMSG_ERROR => kernel_error(message.payload())?,
                NLMSG_OVERRUN => {
                    return Err(LinkError {
                        errno: Some(libc::ENOBUFS),
                        message: "netlink dump overrun".into(),
                    })
                }
                kind => each(kind, message.payload()).map_err(decode_error)?,
            }
            let length = (message.length() as usize + 3) & !3;
            rest = rest.get(length..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -batch` lines for `n` veth pairs (`<p>v<i>`, `<p>p<i>`), each with
    /// one end a port of a bridge (`<p>b<i>`) in portgroup's link group.
    fn bridged_pairs(p: char, n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "link add {p}v{i} type veth peer name {p}p{i}\n\
                     link add {p}b{i} group {LINK_GROUP} type bridge\n\
                     link set {p}v{i} master {p}b{i} alias portgroup:test up\n"
                )
            })
            .collect()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    /// The summaries read from raw messages are those rtnetlink's fully parsed
    /// messages give, over links of every kind the daemon meets, across many
    /// datagrams; the group mark and the addresses are found too.
    #[test]
    fn a_streamed_dump_summarises_links_as_rtnetlink_parses_them() {
        let ns = portgroup_testkit::Netns::new("dump");
        let mut lines = bridged_pairs('d', 300);
        lines.push_str("link add dmv link dp1 type macvlan mode bridge\naddr add 192.0.2.1/24 dev dp0\naddr add 2001:db8::1/64 dev dp0 nodad\nlink set dp0 up\n");
        ns.ip_batch(&lines);
        ns.run(move || {
            block_on(async {
                let observed = links_and_addresses().await.expect("dump");
                use futures::TryStreamExt;
                let netlink = crate::netlink::Netlink::connect().expect("netlink");
                let messages: Vec<LinkMessage> = netlink
                    .handle
                    .link()
                    .get()
                    .execute()
                    .try_collect()
                    .await
                    .expect("rtnetlink dump");
                let full = super::super::rtlinks::observe(&messages);
                assert_eq!(
                    observed.links.len(),
                    902,
                    "lo, 600 veths, 300 bridges, a macvlan"
                );
                assert_eq!(observed.links, full.links);
                assert_eq!(observed.in_our_group, full.in_our_group);
                assert_eq!(observed.in_our_group.len(), 300);
                let dp0 = observed
                    .links
                    .iter()
                    .find(|l| l.name == "dp0")
                    .expect("dp0");
                let mut addresses = observed
                    .addresses
                    .get(&dp0.index)
                    .cloned()
                    .unwrap_or_default();
                addresses.sort();
                assert_eq!(addresses, ["192.0.2.1/24", "2001:db8::1/64"]);
                let db7 = observed
                    .links
                    .iter()
                    .find(|l| l.name == "db7")
                    .expect("db7");
                assert_eq!(db7.kind.as_deref(), Some("bridge"));
                let dv7 = observed
                    .links
                    .iter()
                    .find(|l| l.name == "dv7")
                    .expect("dv7");
                assert_eq!(dv7.controller, Some(db7.index));
                assert_eq!(dv7.alias.as_deref(), Some("portgroup:test"));
            });
        });
    }

    /// A datagram larger than the buffer it is read into is never taken cut,
    /// and a dump cut after datagrams already read (a message larger than the
    /// buffer behind smaller ones) is read again from nothing: no link is
    /// summarised twice. A link with many long alternative names makes a
    /// message of about 8 KiB right after `lo`; reads from a range of buffer
    /// sizes cut the first datagram for some, a later one for others.
    #[test]
    fn a_dump_cut_anywhere_is_read_again_whole() {
        let ns = portgroup_testkit::Netns::new("dumpmid");
        let mut lines = String::from("link add big0 type bridge\n");
        for i in 0..60 {
            lines.push_str(&format!(
                "link property add dev big0 altname a{i:03}{:0>120}\n",
                0
            ));
        }
        lines.push_str(&bridged_pairs('m', 2));
        ns.ip_batch(&lines);
        ns.run(move || {
            block_on(async {
                let whole = links().await.expect("dump");
                assert_eq!(whole.links.len(), 8, "lo, 4 veths, 3 bridges");
                for capacity in (256..16 * 1024).step_by(256) {
                    let read = links_read_into(capacity).await.expect("dump");
                    assert_eq!(
                        read.links, whole.links,
                        "read into {capacity} bytes at first"
                    );
                }
            });
        });
    }
}
