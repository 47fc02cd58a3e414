//! DEL: idempotent. Succeeds when the netns, the interface or the record is already
//! gone, and when the record cannot be read.

use portgroup::attachment::Record;
use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup::Error;
use portgroup_plugin::cni::netconf::{ipam_section, TeardownConf};

use crate::env::{Call, Detach};
use crate::teardown::Teardown;

pub async fn del(cmd: &Call<'_, Detach, TeardownConf>) -> Result<(), Error> {
    let (call, conf, stdin) = (&cmd.env, &cmd.conf, cmd.stdin);
    let (container_id, ifname) = (call.container_id.as_str(), call.ifname.as_str());
    let run = RunDir::from_env();
    let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
    let record = match Record::find(&run.attachments_dir(), container_id, ifname) {
        Ok(record) => record,
        Err(e) => {
            // Not a reason to fail (the runtime would retry forever) nor to stop
            // early: the host veth's name and the port's elements follow from the
            // pair, and the unreadable file goes with the rest.
            tracing::warn!(
                "DEL {container_id}/{ifname}: unreadable record ({e}); tearing down by name, \
                 releasing IPAM through the config's section, and removing the record"
            );
            None
        }
    };
    let ipam = release_through(record.as_ref(), conf);
    Teardown {
        container_id,
        ifname,
        ipam: ipam.as_ref(),
        config: stdin,
        cni_path: &call.node.cni_path,
        foreign: false,
        leave_rules_to_sweeper: crate::teardown::leaves_rules_to_sweeper(record.as_ref(), &run),
    }
    .run(&nl, &run)
    .await
}

/// The IPAM section whose addresses DEL releases. Where a record exists, the one ADD
/// recorded (validated again: records from older releases are not trusted blindly),
/// whatever the config says now. Without one, the config's, if it is valid; an invalid
/// one cannot have allocated anything, since ADD refuses it first, and is never run.
pub fn release_through(record: Option<&Record>, conf: &TeardownConf) -> Option<serde_json::Value> {
    if let Some(record) = record {
        return match ipam_section(record.ipam.as_ref()) {
            Ok(section) => section,
            Err(e) => {
                tracing::warn!(
                    "recorded IPAM section of {}/{} not run: {e}",
                    record.container_id,
                    record.ifname
                );
                None
            }
        };
    }
    if let Some(e) = &conf.ignored_ipam {
        tracing::warn!("IPAM section not run on DEL: {e}");
    }
    conf.ipam.clone()
}
