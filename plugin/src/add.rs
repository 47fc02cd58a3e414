//! ADD: validate → resolve the attachment spec (pure) → record → veth → addresses →
//! port security → probe → result. Each side effect is logged for undo before or
//! as it is made; a failed ADD undoes the log in reverse before it returns.

use std::os::fd::OwnedFd;

use ipnetwork::IpNetwork;
use portgroup::attachment::{self, Record};
use portgroup::mac::MacAddr;
use portgroup::netlink::{is_exists, Netlink};
use portgroup::paths::{rfc3339, RunDir};
use portgroup::{netns, portsec, Error};
use portgroup_plugin::cni::netconf::NetConf;
use portgroup_plugin::cni::result::{CniResult, Interface, IpConfig, Route};
use portgroup_plugin::podlink::{PodNetlink, VethSpec};
use portgroup_plugin::probe;
use serde_json::Value;

use crate::bridge::{self, Resolved};
use crate::env::{Call, Pod};
use crate::fault;
use crate::ipam;
use crate::spec::{self, Addresses, Request, Spec};
use crate::teardown::{delete_host_veth, Teardown};

/// Host-side veth MACs start with fe: a Linux bridge adopts the lowest port MAC,
/// and fe:… is never the lowest, so attaching a VM never changes the bridge's MAC.
fn host_side_mac() -> MacAddr {
    let mut mac = MacAddr::random_local();
    mac.0[0] = 0xfe;
    mac
}

pub async fn add(cmd: &Call<'_, Pod, NetConf>) -> Result<Value, Error> {
    let (call, conf, stdin) = (&cmd.env, &cmd.conf, cmd.stdin);
    let run = RunDir::from_env();
    let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
    let target = bridge::resolve(&nl, conf, &run).await?;
    let owners = bridge::mac_owners(&run, spec::choose_mac(conf, &call.node.args)?)?;
    let spec = spec::resolve(
        &Request {
            conf,
            args: &call.node.args,
            container_id: &call.container_id,
            ifname: &call.ifname,
        },
        &target.place(&owners),
        MacAddr::random_local(),
    )?;
    let pod_ns = netns::open(std::path::Path::new(&call.netns))
        .map_err(|e| Error::env("CNI_NETNS", e.to_string()))?;

    let records = run.attachments_dir();
    if Record::find(&records, &call.container_id, &call.ifname)
        .map_err(|e| Error::system("reading the attachment record", e))?
        .is_some()
    {
        return Err(Error::InterfaceExists(format!(
            "attachment {}/{} already exists; DEL it before adding it again",
            call.container_id, call.ifname
        )));
    }
    let mut record = Record {
        container_id: call.container_id.clone(),
        ifname: call.ifname.clone(),
        network: conf.name.clone(),
        netns: call.netns.clone(),
        host_veth: spec.host_veth.clone(),
        bridge: target.bridge.name.clone(),
        portgroup: target.portgroup.as_ref().map(|pg| pg.name.clone()),
        vlan: target.portgroup.as_ref().and_then(|pg| pg.vlan),
        mac: spec.mac,
        ips: match &spec.addresses {
            Addresses::Declared(ips) => ips.clone(),
            _ => Vec::new(),
        },
        spoof_check: spec.spoof_check,
        ipam: conf.ipam.clone(),
        cni_version: conf.cni_version.as_str().to_string(),
        created_at: rfc3339(std::time::SystemTime::now()),
        namespace: spec.namespace.clone(),
        device_id: conf.device_id.clone(),
    };
    let mut undo = UndoLog {
        call,
        stdin,
        nl: &nl,
        run: &run,
        host_veth: spec.host_veth.clone(),
        steps: Vec::new(),
    };
    // Written before the veth exists, so a killed ADD never leaves a veth nobody knows of.
    undo.steps.push(Undo::Record);
    if let Err(e) = record.write(&records) {
        undo.run().await;
        return Err(Error::system("writing the attachment record", e));
    }
    fault::point("record-written");

    let attempt = Attempt {
        call,
        run: &run,
        conf,
        stdin,
        target: &target,
        nl: &nl,
        pod_ns: &pod_ns,
        spec: &spec,
    };
    match attempt.build(&mut undo).await {
        Ok((result, assigned)) => {
            // IPAM may have added addresses the first write could not know.
            if assigned != record.ips {
                record.ips = assigned;
                if let Err(e) = record.write(&records) {
                    tracing::warn!("updating the attachment record: {e}");
                }
            }
            Ok(result)
        }
        Err(err) => {
            tracing::warn!(
                "ADD {}/{} failed, undoing: {err}",
                call.container_id,
                call.ifname
            );
            undo.run().await;
            Err(err)
        }
    }
}

/// One side effect of ADD, to undo if ADD fails.
enum Undo {
    Record,
    /// Only a veth this ADD made: one that already existed under the name is an
    /// earlier attachment's.
    Veth,
    /// Logged before the IPAM plugin is asked: a failed IPAM ADD is cleaned up by DEL.
    Ipam(Value),
    /// Logged before installing: a half-installed set of rules goes too.
    PortSecurity,
}

struct UndoLog<'a> {
    call: &'a Pod,
    stdin: &'a [u8],
    nl: &'a Netlink,
    run: &'a RunDir,
    host_veth: String,
    steps: Vec<Undo>,
}

impl UndoLog<'_> {
    /// Undoes every step, newest first, going on past failures.
    async fn run(&mut self) {
        while let Some(step) = self.steps.pop() {
            let result = match step {
                Undo::PortSecurity => portsec::remove(&self.host_veth),
                Undo::Ipam(section) => Teardown {
                    container_id: &self.call.container_id,
                    ifname: &self.call.ifname,
                    ipam: Some(&section),
                    config: self.stdin,
                    cni_path: &self.call.node.cni_path,
                    foreign: false,
                }
                .release_ipam(&section),
                Undo::Veth => delete_host_veth(self.nl, &self.host_veth).await,
                Undo::Record => attachment::remove(
                    &self.run.attachments_dir(),
                    &self.call.container_id,
                    &self.call.ifname,
                )
                .map_err(|e| Error::system("removing the attachment record", e)),
            };
            if let Err(e) = result {
                tracing::warn!("undoing ADD: {e}");
            }
        }
    }
}

struct Attempt<'a> {
    call: &'a Pod,
    run: &'a RunDir,
    conf: &'a NetConf,
    stdin: &'a [u8],
    target: &'a Resolved,
    nl: &'a Netlink,
    pod_ns: &'a OwnedFd,
    spec: &'a Spec,
}

impl Attempt<'_> {
    /// Makes the attachment; returns the result and the addresses it was given.
    async fn build(&self, undo: &mut UndoLog<'_>) -> Result<(Value, Vec<IpNetwork>), Error> {
        let (conf, nl, spec) = (self.conf, self.nl, self.spec);
        let ifname = self.call.ifname.as_str();
        let host_mac = host_side_mac();
        let veth = VethSpec {
            host_name: &spec.host_veth,
            host_mac,
            host_mtu: spec.bridge_mtu,
            bridge_index: self.target.bridge.index,
            pod_name: ifname,
            pod_mac: spec.mac,
            pod_mtu: spec.pod_mtu,
            pod_netns: self.pod_ns,
        };
        if let Err(e) = nl.create_veth(&veth).await {
            return Err(self.explain_create_failure(e).await);
        }
        undo.steps.push(Undo::Veth);
        fault::point("veth-created");

        let pod = Netlink::connect_in(self.pod_ns)
            .map_err(|e| Error::system("opening netlink in the pod netns", e))?;
        let peer = pod
            .link_by_name(ifname)
            .await
            .map_err(|e| Error::netlink(format!("looking up {ifname} in the pod"), e))?
            .ok_or_else(|| {
                Error::CheckFailed(format!(
                    "{ifname} vanished from the pod right after ADD made it"
                ))
            })?;

        let (ips, routes, dns) = match &spec.addresses {
            Addresses::Declared(ips) => (
                ips.iter()
                    .map(|address| IpConfig {
                        address: *address,
                        gateway: None,
                        interface: None,
                    })
                    .collect(),
                Vec::new(),
                None,
            ),
            Addresses::Ipam(section) => {
                undo.steps.push(Undo::Ipam(section.clone()));
                let result = ipam::Call {
                    command: "ADD",
                    ipam: section,
                    config: self.stdin,
                    cni_path: &self.call.node.cni_path,
                    attachment: None,
                }
                .run()?
                .unwrap_or_default();
                (result.ips, result.routes, result.dns)
            }
            Addresses::None => (Vec::new(), Vec::new(), None),
        };
        let assigned: Vec<IpNetwork> = ips.iter().map(|ip| ip.address).collect();
        spec.admit(&assigned)?;

        for ip in &ips {
            pod.add_address(peer.index, ip.address.ip(), ip.address.prefix())
                .await
                .map_err(|e| Error::netlink(format!("adding {} to {ifname}", ip.address), e))?;
        }
        fault::point("addresses-added");
        if conf.link_down {
            if !routes.is_empty() {
                // A down link has no connected routes for a gateway to resolve through.
                tracing::warn!(
                    "linkDown: {} IPAM route(s) not installed on {ifname}",
                    routes.len()
                );
            }
        } else {
            pod.set_up(peer.index)
                .await
                .map_err(|e| Error::netlink(format!("bringing {ifname} up"), e))?;
            for route in &routes {
                let gateway = route.gw.or_else(|| {
                    ips.iter()
                        .find(|ip| ip.address.is_ipv4() == route.dst.is_ipv4())
                        .and_then(|ip| ip.gateway)
                });
                pod.add_route(peer.index, Some(route.dst), gateway)
                    .await
                    .map_err(|e| Error::netlink(format!("adding route to {}", route.dst), e))?;
            }
        }

        let allowed = spec.allowed_ips(&assigned);
        if spec.spoof_check {
            undo.steps.push(Undo::PortSecurity);
            portsec::install(&portsec::PortRules {
                host_veth: spec.host_veth.clone(),
                mac: spec.mac,
                ips: allowed.clone(),
                allow_router_advertisements: spec.allow_router_advertisements,
                allow_dhcp_server: spec.allow_dhcp_server,
                trunk: spec.tagged,
            })?;
            fault::point("port-security-installed");
        }
        if let Some(settings) = spec.probe.as_ref().filter(|_| !allowed.is_empty()) {
            let answers = probe::probe(&self.target.bridge.name, spec.mac, &allowed, settings)?;
            if let Some(conflict) = answers.iter().find(|a| a.mac != spec.mac) {
                return Err(Error::IpConflict {
                    ip: conflict.ip,
                    vlan: self.target.segment(),
                    mac: conflict.mac,
                });
            }
            if let Some(own) = answers.first() {
                // A reserved MAC reached here only from its portgroups' namespaces
                // (spec::resolve). Where the answering attachment is on this node,
                // its record says its namespace: a takeover from another is refused.
                if let Some(holder) = self.live_here_elsewhere() {
                    return Err(Error::NamespaceNotAllowed {
                        what: format!(
                            "taking over MAC {} from attachment {}/{} on this node",
                            spec.mac, holder.container_id, holder.ifname
                        ),
                        namespace: spec::shown_namespace(spec.namespace.as_deref()),
                        portgroup: self
                            .target
                            .portgroup
                            .as_ref()
                            .map_or(&self.target.bridge.name, |pg| &pg.name)
                            .clone(),
                        allowed: spec::shown_namespace(holder.namespace.as_deref()),
                    });
                }
                tracing::info!(
                    "{} answered from the VM's own MAC {}: live migration in progress, going on",
                    own.ip,
                    own.mac
                );
            }
        }

        fault::point("probed");
        let result = self.result(host_mac, ips, routes, dns);
        Ok((result.to_json(conf.cni_version), assigned))
    }

    /// Another attachment on this node with this MAC, of another namespace. A record
    /// with no namespace (written by an older release, or for a runtime that sends
    /// none) proves nothing either way and is not held against the pod.
    fn live_here_elsewhere(&self) -> Option<Record> {
        let (records, _) = attachment::list(&self.run.attachments_dir());
        records.into_iter().find(|r| {
            r.mac == self.spec.mac
                && (r.container_id != self.call.container_id || r.ifname != self.call.ifname)
                && r.namespace.is_some()
                && r.namespace != self.spec.namespace
        })
    }

    async fn explain_create_failure(&self, e: rtnetlink::Error) -> Error {
        let host_veth = &self.spec.host_veth;
        if !is_exists(&e) {
            return Error::netlink(
                format!("creating veth {host_veth} / {}", self.call.ifname),
                e,
            );
        }
        match self.nl.link_by_name(host_veth).await {
            Ok(Some(_)) => Error::InterfaceExists(format!(
                "host veth {host_veth} of this container and interface already exists; DEL the attachment first"
            )),
            _ => Error::InterfaceExists(format!(
                "interface {} already exists in the pod's network namespace",
                self.call.ifname
            )),
        }
    }

    fn result(
        &self,
        host_mac: MacAddr,
        ips: Vec<IpConfig>,
        routes: Vec<Route>,
        dns: Option<Value>,
    ) -> CniResult {
        let mut result = self.conf.prev_result.clone().unwrap_or_default();
        let pod_index = result.interfaces.len() + 1;
        result.interfaces.push(Interface {
            name: self.spec.host_veth.clone(),
            mac: Some(host_mac.to_string()),
            ..Default::default()
        });
        result.interfaces.push(Interface {
            name: self.call.ifname.clone(),
            mac: Some(self.spec.mac.to_string()),
            mtu: Some(self.spec.pod_mtu),
            sandbox: Some(self.call.netns.clone()),
            ..Default::default()
        });
        result.ips.extend(ips.into_iter().map(|ip| IpConfig {
            interface: Some(pod_index),
            ..ip
        }));
        result.routes.extend(routes);
        if result.dns.is_none() {
            result.dns = dns;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mac_never_lowest() {
        let mac = host_side_mac();
        assert_eq!(mac.0[0], 0xfe);
        assert!(!mac.is_multicast());
    }
}
