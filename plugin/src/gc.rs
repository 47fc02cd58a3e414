//! GC: removes every attachment of this network that the runtime no longer lists.
//! Keeps going past errors, then forwards GC to a delegated IPAM plugin.
//!
//! The list is required: a GC without `cni.dev/valid-attachments` (or the older
//! `cni.dev/attachments`) would take every attachment of the network for stale,
//! so it is refused (code 7) before anything is looked at or removed.

use portgroup::attachment;
use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup::Error;
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
    for (path, why) in broken {
        tracing::warn!("GC: skipping unreadable record {}: {why}", path.display());
    }
    let mut first_error = None;
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
    first_error.map_or(Ok(()), Err)
}
