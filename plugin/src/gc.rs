//! GC: removes every attachment of this network that the runtime no longer lists.
//! Keeps going past errors, then forwards GC to a delegated IPAM plugin.
//!
//! The list is required: a GC without `cni.dev/valid-attachments` (or the older
//! `cni.dev/attachments`) would take every attachment of the network for stale,
//! so it is refused (code 7) before anything is looked at or removed.
//!
//! A record that cannot be read names no network, MAC or IPAM section; only its
//! file name tells the attachment (and so its host veth). It is never skipped
//! without a word: listed as valid, it is kept; its host veth alive, it is left
//! to that attachment's DEL (which needs no record) with a warning, since it may
//! be another network's; its host veth gone, the attachment is dead whatever its
//! network was, and GC removes its port-security elements and the record. Its
//! IPAM addresses, if it had any, are left to the IPAM plugin's own GC.

use std::collections::BTreeSet;
use std::path::Path;

use portgroup::attachment::{self, TryLock};
use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup::{portsec, Error};
use portgroup_plugin::cni::netconf::{ipam_section, NetConf};
use portgroup_plugin::cni::CniVersion;

use crate::env::{Call, Node};
use crate::ipam;
use crate::teardown::Teardown;

pub async fn gc(cmd: &Call<'_, Node, NetConf>) -> Result<(), Error> {
    let (node, conf, stdin) = (&cmd.env, &cmd.conf, cmd.stdin);
    conf.cni_version.require("GC", CniVersion::V1_1_0)?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        Error::invalid_config(
            "cni.dev/valid-attachments",
            "GC needs the list of valid attachments (cni.dev/valid-attachments, or the older \
             cni.dev/attachments); without it every attachment of the network would look \
             stale, so nothing was removed",
        )
    })?;
    let run = RunDir::from_env();
    let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
    let (records, broken) = attachment::list(&run.attachments_dir());
    let mut first_error = None;
    for (path, why) in broken {
        if let Err(e) = collect_unreadable(&nl, &path, &why, valid).await {
            tracing::warn!("GC of unreadable record {}: {e}", path.display());
            first_error.get_or_insert(e);
        }
    }
    for record in records {
        let key = (record.container_id.clone(), record.ifname.clone());
        if record.network != conf.name || valid.contains(&key) {
            continue;
        }
        tracing::info!(
            "GC: removing stale attachment {}/{}",
            record.container_id,
            record.ifname
        );
        // Released through the section recorded at ADD, validated again; never the
        // config's, which may have changed since.
        let ipam = match ipam_section(record.ipam.as_ref()) {
            Ok(section) => section,
            Err(e) => {
                tracing::warn!(
                    "GC: recorded IPAM section of {}/{} not run: {e}",
                    record.container_id,
                    record.ifname
                );
                None
            }
        };
        let result = Teardown {
            container_id: &record.container_id,
            ifname: &record.ifname,
            ipam: ipam.as_ref(),
            config: stdin,
            cni_path: &node.cni_path,
            foreign: true,
            leave_rules_to_sweeper: false,
        }
        .run(&nl, &run)
        .await;
        if let Err(e) = result {
            tracing::warn!("GC of {}/{}: {e}", record.container_id, record.ifname);
            first_error.get_or_insert(e);
        }
    }
    if let Some(section) = &conf.ipam {
        let call = ipam::Call {
            command: "GC",
            ipam: section,
            config: stdin,
            cni_path: &node.cni_path,
            attachment: None,
        };
        match call.run() {
            // IPAM plugins older than spec 1.1 know no GC; nothing to forward to.
            Err(e) if e.code() == portgroup::error::code::INCOMPATIBLE_VERSION => {
                tracing::debug!("IPAM plugin does not support GC: {e}")
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
            Ok(_) => {}
        }
    }
    // Elements of ports no record names and whose interface is gone: those a
    // DEL left to a portgroupd that then went away for good (portgroup::sweeper),
    // or any other leak. A backstop: a failure here is said, not GC's.
    let dir = run.attachments_dir();
    match portsec::sweep_orphans(&|| attachment::host_veths_named_in(&dir)) {
        Ok(ports) if !ports.is_empty() => tracing::info!(
            "GC: removed the port-security elements of {} port(s) no attachment record owns: {}",
            ports.len(),
            ports.join(", ")
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("GC: sweeping port-security elements no record owns: {e}"),
    }
    first_error.map_or(Ok(()), Err)
}

/// GC of one record that cannot be read (see the module comment).
async fn collect_unreadable(
    nl: &Netlink,
    path: &Path,
    why: &str,
    valid: &BTreeSet<(String, String)>,
) -> Result<(), Error> {
    let shown = path.display();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(named) = attachment::named_by(&file_name) else {
        tracing::warn!("GC: {shown} is unreadable ({why}) and named like no record; left alone");
        return Ok(());
    };
    if named.pair.as_ref().is_some_and(|pair| valid.contains(pair)) {
        tracing::warn!("GC: record {shown} of a valid attachment is unreadable ({why}); kept");
        return Ok(());
    }
    let host_veth = &named.host_veth;
    let live = nl
        .link_by_name(host_veth)
        .await
        .map_err(|e| Error::netlink(format!("looking up {host_veth}"), e))?
        .is_some();
    if live {
        tracing::warn!(
            "GC: record {shown} is unreadable ({why}) and its port {host_veth} is live; \
             it may be another network's, so it is left to that attachment's DEL"
        );
        return Ok(());
    }
    let _lock = match attachment::try_lock_file(path) {
        Ok(TryLock::Locked(lock)) => lock,
        Ok(TryLock::Busy) => {
            tracing::info!("GC: unreadable record {shown} is held by a DEL; left to it");
            return Ok(());
        }
        Ok(TryLock::Gone) => return Ok(()),
        Err(e) => return Err(Error::system(format!("locking {shown}"), e)),
    };
    portsec::remove(host_veth)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::system(format!("removing {shown}"), e))
        }
        _ => {}
    }
    tracing::info!(
        "GC: removed unreadable record {shown} ({why}) and the port-security elements of \
         its port {host_veth}, which is gone; its IPAM addresses, if any, are left to the \
         IPAM plugin's GC"
    );
    Ok(())
}
