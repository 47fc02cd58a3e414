//! Taking one attachment down, shared by DEL, GC and a failed ADD's undo log.
//! Every step runs even when an earlier one failed; the first error is returned.

use std::path::PathBuf;

use portgroup::attachment;
use portgroup::naming::host_veth_name;
use portgroup::netlink::Netlink;
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
}

/// Deletes our host veth (and so its pod end, in whatever netns it is); a missing
/// one is fine, anything that is not a veth is left alone.
pub async fn delete_host_veth(nl: &Netlink, host_veth: &str) -> Result<(), Error> {
    match nl.link_by_name(host_veth).await {
        Ok(Some(link)) if link.is_kind("veth") => match nl.delete_link(link.index).await {
            Err(e) if !portgroup::netlink::is_not_found(&e) => {
                Err(Error::netlink(format!("deleting {host_veth}"), e))
            }
            _ => Ok(()),
        },
        Ok(Some(link)) => {
            tracing::warn!(
                "{host_veth} exists but is a {:?} interface, not our veth; left alone",
                link.kind
            );
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(Error::netlink(format!("looking up {host_veth}"), e)),
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

        if let Err(e) = delete_host_veth(nl, &host_veth).await {
            errors.push(e);
        }
        if let Err(e) = portsec::remove(&host_veth) {
            errors.push(e);
        }
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
