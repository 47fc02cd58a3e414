//! CHECK: the host side is as ADD left it (veth, on the right bridge, up), the pod
//! end is found by index — KubeVirt renames it and moves its MAC after ADD — and
//! the addresses, port-security rules and record are still there.

use std::collections::HashSet;

use portgroup::attachment::Record;
use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup::{netns, portsec, Error};
use portgroup_plugin::cni::netconf::NetConf;
use portgroup_plugin::cni::CniVersion;
use portgroup_plugin::podlink::PodNetlink;

use crate::bridge;
use crate::env::{Call, Pod};
use crate::ipam;
use crate::spec::{self, Request};

pub async fn check(cmd: &Call<'_, Pod, NetConf>) -> Result<(), Error> {
    let (call, conf, stdin) = (&cmd.env, &cmd.conf, cmd.stdin);
    conf.cni_version.require("CHECK", CniVersion::V0_4_0)?;
    let (container_id, ifname) = (call.container_id.as_str(), call.ifname.as_str());
    let netns_path = call.netns.as_str();
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::invalid_config("prevResult", "CHECK needs the result of the ADD"))?;
    let run = RunDir::from_env();
    let failed = |why: String| Error::CheckFailed(why);

    let record = Record::find(&run.attachments_dir(), container_id, ifname)
        .map_err(|e| Error::system("reading the attachment record", e))?
        .ok_or_else(|| failed(format!("no attachment record for {container_id}/{ifname}")))?;

    let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
    let target = bridge::resolve(&nl, conf, &run).await?;
    // What ADD would make of this config now, the MAC falling back to the recorded
    // one (a random MAC is chosen once), compared with what the record says it made.
    let requested = spec::choose_mac(conf, &call.node.args)?.unwrap_or(record.mac);
    let owners = bridge::mac_owners(&run, Some(requested))?;
    let spec = spec::resolve(
        &Request {
            conf,
            args: &call.node.args,
            container_id,
            ifname,
        },
        &target.place(&owners),
        record.mac,
    )?;
    if spec.mac != record.mac {
        return Err(failed(format!(
            "the config asks for MAC {}, the attachment was made with {}",
            spec.mac, record.mac
        )));
    }
    if spec.spoof_check != record.spoof_check {
        return Err(failed(format!(
            "the config asks for spoofCheck {}, the attachment was made with {}",
            spec.spoof_check, record.spoof_check
        )));
    }
    let host_veth = spec.host_veth.clone();
    let host = nl
        .link_by_name(&host_veth)
        .await
        .map_err(|e| Error::netlink(format!("looking up {host_veth}"), e))?
        .ok_or_else(|| failed(format!("host veth {host_veth} is missing")))?;
    if !host.is_kind("veth") {
        return Err(failed(format!("{host_veth} is not a veth")));
    }
    if host.controller != Some(target.bridge.index) {
        return Err(failed(format!(
            "host veth {host_veth} is not on bridge {}",
            target.bridge.name
        )));
    }
    if !host.admin_up {
        return Err(failed(format!("host veth {host_veth} is down")));
    }
    let peer_index = host
        .link
        .ok_or_else(|| failed(format!("host veth {host_veth} has no peer")))?;

    let pod_ns = netns::open(std::path::Path::new(netns_path))
        .map_err(|e| Error::env("CNI_NETNS", e.to_string()))?;
    let pod = Netlink::connect_in(&pod_ns)
        .map_err(|e| Error::system("opening netlink in the pod netns", e))?;
    let peer = pod
        .link_by_index(peer_index)
        .await
        .map_err(|e| Error::netlink("looking up the pod end", e))?
        .ok_or_else(|| {
            failed(format!(
                "the pod end of {host_veth} (index {peer_index}) is not in {netns_path}"
            ))
        })?;

    // Addresses our ADD reported for the pod interface, found by the interface entry
    // that names it (or its sandbox), not by name alone: the pod end may be renamed.
    let ours: HashSet<usize> = prev
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i.name == ifname && i.sandbox.as_deref() == Some(netns_path))
        .map(|(index, _)| index)
        .collect();
    let present: HashSet<_> = pod
        .addresses(peer.index)
        .await
        .map_err(|e| Error::netlink("listing the pod end's addresses", e))?
        .into_iter()
        .collect();
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_some_and(|i| ours.contains(&i)))
    {
        if !present.contains(&(ip.address.ip(), ip.address.prefix())) {
            return Err(failed(format!(
                "address {} is missing from the pod end {}",
                ip.address, peer.name
            )));
        }
    }

    if record.spoof_check {
        portsec::verify(&portsec::PortRules {
            host_veth: host_veth.clone(),
            mac: record.mac,
            ips: spec.allowed_ips(&record.ips),
            allow_router_advertisements: spec.allow_router_advertisements,
            allow_dhcp_server: spec.allow_dhcp_server,
            trunk: spec.tagged,
        })?;
    }

    // A migration target waiting for its guest is healthy however long it waits
    // (large VMs migrate for many minutes): say so, never fail.
    if let Some(handover) = &record.handover {
        match portsec::handover_state(&host_veth)? {
            portsec::HandoverState::Waiting => tracing::info!(
                "{host_veth} is healthy and waits for the migration handover: held since {} \
                 until the guest announces itself",
                handover.held_at
            ),
            portsec::HandoverState::Announced => {
                tracing::debug!("{host_veth}: the guest announced itself, the port is open")
            }
            portsec::HandoverState::NotHeld => {
                tracing::debug!("{host_veth}: no handover hold left, the port is open")
            }
        }
    }

    if let Some(section) = &conf.ipam {
        ipam::Call {
            command: "CHECK",
            ipam: section,
            config: stdin,
            cni_path: &call.node.cni_path,
            attachment: None,
        }
        .run()?;
    }
    Ok(())
}
