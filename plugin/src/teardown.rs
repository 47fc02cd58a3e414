//! Taking one attachment down, shared by DEL, GC and a failed ADD's undo log.
//! Every step runs even when an earlier one failed; the first error is returned.

use std::path::PathBuf;

use portgroup::attachment;
use portgroup::naming::host_veth_name;
use portgroup::netlink::{link_change, Netlink};
use portgroup::paths::RunDir;
use portgroup::{portsec, Error};
use serde_json::Value;

use crate::ipam;

pub struct Teardown<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// The delegated IPAM section whose addresses to release, if any.
    pub ipam: Option<&'a Value>,
    pub config: &'a [u8],
    pub cni_path: &'a [PathBuf],
    /// Whether this is another attachment than the one in our environment (GC).
    pub foreign: bool,
    /// Leave the port's nftables elements to portgroupd's sweep once its veth
    /// is gone (see [`leaves_rules_to_sweeper`]).
    pub leave_rules_to_sweeper: bool,
}

/// Whether a DEL may leave its port's elements to portgroupd: a live daemon of
/// this namespace sweeps them once the record is gone (portgroup::sweeper),
/// and the record says what the port had, with no migration hold (a hold is
/// removed with the port, as before). Removing them is what makes a burst of
/// DELs wait: each commit that deletes elements has the kernel free them
/// after an RCU grace period, and every nf_tables socket that closes meanwhile
/// waits for that under the commit lock, so the DELs of a burst queue behind
/// each other's grace periods. The sweep deletes a burst's in a few batches on
/// a socket it keeps open. A port whose veth is gone sends nothing, whatever
/// elements its name still has; an ADD of the same name clears them first
/// (`portsec::install_new`).
pub fn leaves_rules_to_sweeper(record: Option<&attachment::Record>, run: &RunDir) -> bool {
    record.is_some_and(|r| r.handover.is_none()) && portgroup::sweeper::sweeping(run)
}

/// Deletes our host veth (and so its pod end, in whatever netns it is); a missing
/// one is fine, anything that is not a veth is left alone.
pub async fn delete_host_veth(nl: &Netlink, host_veth: &str) -> Result<(), Error> {
    match find_host_veth(nl, host_veth).await? {
        Some(index) => delete_link(nl, host_veth, index).await,
        None => Ok(()),
    }
}

/// The index of our host veth; None when there is none, or when something that
/// is not a veth has its name (left alone, with a warning).
async fn find_host_veth(nl: &Netlink, host_veth: &str) -> Result<Option<u32>, Error> {
    match nl.link_by_name(host_veth).await {
        Ok(Some(link)) if link.is_kind("veth") => Ok(Some(link.index)),
        Ok(Some(link)) => {
            tracing::warn!(
                "{host_veth} exists but is a {:?} interface, not our veth; left alone",
                link.kind
            );
            Ok(None)
        }
        Ok(None) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up {host_veth}"), e)),
    }
}

async fn delete_link(nl: &Netlink, host_veth: &str, index: u32) -> Result<(), Error> {
    match nl.delete_link(index).await {
        Err(e) if !portgroup::netlink::is_not_found(&e) => {
            Err(Error::netlink(format!("deleting {host_veth}"), e))
        }
        _ => Ok(()),
    }
}

impl Teardown<'_> {
    pub fn release_ipam(&self, section: &Value) -> Result<(), Error> {
        ipam::Call {
            command: "DEL",
            ipam: section,
            config: self.config,
            cni_path: self.cni_path,
            attachment: self.foreign.then_some((self.container_id, self.ifname)),
        }
        .run()
        .map(|_| ())
    }

    pub async fn run(&self, nl: &Netlink, run: &RunDir) -> Result<(), Error> {
        let host_veth = host_veth_name(self.container_id, self.ifname);
        let mut errors = Vec::new();
        // Held until the record is removed: portgroupd's collector sees the veth
        // vanish first, and must leave an attachment whose DEL is running alone
        // rather than report it as a leak. Without the lock, teardown goes on.
        let _held = attachment::lock(&run.attachments_dir(), self.container_id, self.ifname)
            .unwrap_or_else(|e| {
                tracing::warn!("locking the attachment record: {e}");
                None
            });

        // The port goes down first: a down port sends nothing into the bridge (the
        // kernel drops what its pod end sends, and the bridge disables the port),
        // so its rules can go before the veth does. Their socket stays open until
        // the veth is deleted: the grace period the kernel waits for before
        // freeing deleted rules then runs during the veth's deletion, which waits
        // for its own, instead of after it (see portsec::remove_then_close_later).
        let veth = find_host_veth(nl, &host_veth).await;
        let unusable = match &veth {
            Ok(Some(index)) => match nl.set_link(link_change(*index).down().build()).await {
                Ok(()) => true,
                Err(e) if portgroup::netlink::is_not_found(&e) => true,
                Err(e) => {
                    tracing::warn!("taking {host_veth} down: {e}; its rules go after it");
                    false
                }
            },
            Ok(None) => true,
            // Unknown: the port may still be up, its rules stay until it is gone.
            Err(_) => false,
        };
        // Left to the sweep only once the port is down (or gone) and its veth
        // is known; the veth's deletion below then makes it unusable for good.
        let deferred = self.leave_rules_to_sweeper && unusable && veth.is_ok();
        let mut rules_socket = None;
        if unusable && !deferred {
            match portsec::remove_then_close_later(&host_veth) {
                Ok(socket) => rules_socket = Some(socket),
                Err(e) => errors.push(e),
            }
        }
        crate::fault::point("del-port-down-rules-removed");
        match veth {
            Ok(Some(index)) => {
                // Not deleted: the sweep never takes rules off an interface that
                // exists, so a deferred port keeps its restrictions (and is down).
                if let Err(e) = delete_link(nl, &host_veth, index).await {
                    errors.push(e);
                } else if !unusable {
                    if let Err(e) = portsec::remove(&host_veth) {
                        errors.push(e);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        drop(rules_socket);
        if let Some(section) = self.ipam {
            if let Err(e) = self.release_ipam(section) {
                errors.push(e);
            }
        }
        if let Err(e) = attachment::remove(&run.attachments_dir(), self.container_id, self.ifname) {
            errors.push(Error::system("removing the attachment record", e));
        }
        for e in errors.iter().skip(1) {
            tracing::warn!("teardown of {}/{}: {e}", self.container_id, self.ifname);
        }
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }
}
