//! STATUS: ready to serve ADD? The node state must say the portgroup is ready, or
//! the admin's bridge must exist; a delegated IPAM plugin is asked too.

use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup::state::read_ready_portgroup;
use portgroup::Error;
use portgroup_plugin::cni::netconf::{NetConf, Target};
use portgroup_plugin::cni::CniVersion;

use crate::env::{Call, Node};
use crate::ipam;

pub async fn status(cmd: &Call<'_, Node, NetConf>) -> Result<(), Error> {
    let (node, conf, stdin) = (&cmd.env, &cmd.conf, cmd.stdin);
    conf.cni_version.require("STATUS", CniVersion::V1_1_0)?;
    let run = RunDir::from_env();
    match &conf.target {
        Target::Portgroup(name) => {
            read_ready_portgroup(&run, name).map_err(|e| Error::NotAvailable(e.to_string()))?;
        }
        Target::Bridge(name) => {
            let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
            match nl.link_by_name(name).await {
                Ok(Some(link)) if link.is_kind("bridge") => {
                    let allowed = crate::bridge::node_allowed_bridges(&run)?;
                    crate::spec::admit_bridge_mode(name, link.alias.as_deref(), allowed.as_deref())
                        .map_err(|e| Error::NotAvailable(e.to_string()))?;
                }
                Ok(Some(_)) => return Err(Error::NotAvailable(format!("{name} is not a bridge"))),
                Ok(None) => {
                    return Err(Error::NotAvailable(format!("bridge {name} does not exist")))
                }
                Err(e) => {
                    return Err(Error::NotAvailable(format!(
                        "looking up bridge {name}: {e}"
                    )))
                }
            }
        }
    }
    if let Some(section) = &conf.ipam {
        ipam::Call {
            command: "STATUS",
            ipam: section,
            config: stdin,
            cni_path: &node.cni_path,
            attachment: None,
        }
        .run()
        .map_err(|e| Error::NotAvailable(e.to_string()))?;
    }
    Ok(())
}
