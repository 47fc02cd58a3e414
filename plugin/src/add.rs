//! ADD: validate → resolve the attachment spec (pure) → record → port security →
//! veth → addresses (IPAM's added to the port's rules) → pod end up → probe →
//! result. The host side (record, rules, veth) is made through
//! [`effects::NodeEffects`], in that order, so the veth never exists without its
//! rules. Each side effect is logged for undo before or as it is made; a failed
//! ADD undoes the log in reverse before it returns.

use std::os::fd::OwnedFd;

use ipnetwork::IpNetwork;
use portgroup::attachment::{self, Handover, Record};
use portgroup::mac::MacAddr;
use portgroup::netlink::Netlink;
use portgroup::paths::{rfc3339, RunDir};
use portgroup::{netns, portsec, Error};
use portgroup_plugin::cni::netconf::NetConf;
use portgroup_plugin::cni::result::{CniResult, Interface, IpConfig, Route};
use portgroup_plugin::podlink::{PodNetlink, VethSpec};
use portgroup_plugin::probe;
use serde_json::Value;

use crate::bridge::{self, Resolved};
use crate::effects::{self, Node, NodeEffects, Undo, UndoLog};
use crate::env::{Call, Pod};
use crate::fault;
use crate::ipam;
use crate::spec::{self, Addresses, Request, Spec};

/// Host-side veth MACs start with fe: a Linux bridge adopts the lowest port MAC,
/// and fe:… is never the lowest, so attaching a VM never changes the bridge's MAC.
fn host_side_mac() -> MacAddr {
    let mut mac = MacAddr::random_local();
    mac.0[0] = 0xfe;
    mac
}

pub async fn add(cmd: &Call<'_, Pod, NetConf>) -> Result<Value, Error> {
    let (call, conf, stdin) = (&cmd.env, &cmd.conf, cmd.stdin);
    fault::gate();
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
        port_security: None,
        handover: None,
        device_id: conf.device_id.clone(),
    };
    // What the port may send before IPAM has answered: its declared addresses
    // and its reservation. Installed before the veth exists; IPAM's addresses
    // are added before the pod end comes up.
    let rules = spec.spoof_check.then(|| port_rules(&spec, &record.ips));
    let host_mac = host_side_mac();
    let veth = VethSpec {
        host_name: &spec.host_veth,
        host_mac,
        host_mtu: spec.bridge_mtu,
        bridge_index: target.bridge.index,
        pod_name: &call.ifname,
        pod_mac: spec.mac,
        pod_mtu: spec.pod_mtu,
        pod_netns: &pod_ns,
        // A pod end that gets addresses comes up only once it holds them
        // (configure_pod); a plain L2 port's comes up as it is made.
        pod_up: !conf.link_down && matches!(spec.addresses, Addresses::None),
    };
    let mut node = Node {
        nl: &nl,
        records: run.attachments_dir(),
        call,
        stdin,
        owned: None,
    };
    let mut undo = UndoLog::new(&spec.host_veth);
    let attempt = Attempt {
        call,
        run: &run,
        conf,
        stdin,
        target: &target,
        pod_ns: &pod_ns,
        spec: &spec,
    };
    let outcome = async {
        effects::make_port(&mut node, &mut undo, &record, rules.as_ref(), &veth).await?;
        attempt
            .configure(&mut node, &mut undo, rules.as_ref(), host_mac)
            .await
    }
    .await;
    match outcome {
        Ok((result, assigned, handover)) => {
            // IPAM may have added addresses the first write could not know; the
            // rules just installed are what portgroupd restores after a flush; a
            // migration target's hold is known only after the probe.
            let port_security = spec.spoof_check.then(|| attachment::RecordedPortSecurity {
                ips: spec.allowed_ips(&assigned),
                allow_router_advertisements: spec.allow_router_advertisements,
                allow_dhcp_server: spec.allow_dhcp_server,
                trunk: spec.tagged,
            });
            if assigned != record.ips || port_security.is_some() || handover.is_some() {
                record.ips = assigned;
                record.port_security = port_security;
                record.handover = handover;
                if let Some(owned) = node.owned.as_mut() {
                    if let Err(e) = owned.update(&record) {
                        tracing::warn!("updating the attachment record: {e}");
                    }
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
            undo.run(&mut node).await;
            Err(err)
        }
    }
}

/// The port's port-security rules for the addresses it was given.
fn port_rules(spec: &Spec, assigned: &[IpNetwork]) -> portsec::PortRules {
    portsec::PortRules {
        host_veth: spec.host_veth.clone(),
        mac: spec.mac,
        ips: spec.allowed_ips(assigned),
        allow_router_advertisements: spec.allow_router_advertisements,
        allow_dhcp_server: spec.allow_dhcp_server,
        trunk: spec.tagged,
    }
}

struct Attempt<'a> {
    call: &'a Pod,
    run: &'a RunDir,
    conf: &'a NetConf,
    stdin: &'a [u8],
    target: &'a Resolved,
    pod_ns: &'a OwnedFd,
    spec: &'a Spec,
}

impl Attempt<'_> {
    /// Configures the pod end of the port [`effects::make_port`] made: addresses
    /// (declared or from IPAM, and the port's rules widened to IPAM's before the
    /// pod end comes up), routes, conflict probe, a migration target's hold, and
    /// last the host end on its bridge. Returns the result, the addresses the
    /// port was given and, for a live migration's target, its hold.
    ///
    /// The host end joins its bridge and comes up last: until then the port has
    /// no carrier and is on no bridge, so nothing the pod sends reaches the VLAN
    /// before we know whether the port must wait for the guest's announcement
    /// (nor can the pod answer the probe for its own addresses).
    async fn configure(
        &self,
        node: &mut Node<'_>,
        undo: &mut UndoLog,
        rules: Option<&portsec::PortRules>,
        host_mac: MacAddr,
    ) -> Result<(Value, Vec<IpNetwork>, Option<Handover>), Error> {
        let (conf, spec) = (self.conf, self.spec);
        let ifname = self.call.ifname.as_str();
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
                undo.push(Undo::Ipam(section.clone()));
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

        let allowed = spec.allowed_ips(&assigned);
        if let Some(rules) = rules.filter(|r| r.ips != allowed) {
            // Before the pod end holds IPAM's addresses: it has sent from none of them.
            node.install_port_security(
                &portsec::PortRules {
                    ips: allowed.clone(),
                    ..rules.clone()
                },
                false,
            )?;
        }

        // A plain L2 port (the VM configures its own addresses) needs nothing in
        // the pod: its pod end was made up there. Addresses and routes are set
        // from inside the pod's namespace, on a socket made there.
        if conf.link_down && !routes.is_empty() {
            // A down link has no connected routes for a gateway to resolve through.
            tracing::warn!(
                "linkDown: {} IPAM route(s) not installed on {ifname}",
                routes.len()
            );
        }
        let routes_to_install: &[Route] = if conf.link_down { &[] } else { &routes };
        if !ips.is_empty() || !routes_to_install.is_empty() {
            self.configure_pod(&ips, routes_to_install, !conf.link_down)
                .await?;
        } else {
            fault::point("addresses-added");
        }
        let mut handover = None;
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
                    "{} answered from the VM's own MAC {}: live migration in progress; \
                     holding {} until the guest announces itself",
                    own.ip,
                    own.mac,
                    spec.host_veth
                );
                // Removed with the port's other elements.
                undo.push(Undo::PortSecurity);
                portsec::hold(&portsec::Hold {
                    host_veth: spec.host_veth.clone(),
                    mac: spec.mac,
                    ips: allowed.clone(),
                })?;
                fault::point("held");
                handover = Some(Handover {
                    held_at: rfc3339(std::time::SystemTime::now()),
                    answered: answers.iter().map(|a| a.ip).collect(),
                });
            }
        }

        fault::point("probed");
        node.attach_host_end(&spec.host_veth, self.target.bridge.index)
            .await?;

        let result = self.result(host_mac, ips, routes, dns);
        Ok((result.to_json(conf.cni_version), assigned, handover))
    }

    /// Adds the addresses and routes to the pod end, from inside the pod's
    /// namespace, bringing it up (`up`) once it holds its addresses and before
    /// the routes, which need it up.
    async fn configure_pod(
        &self,
        ips: &[IpConfig],
        routes: &[Route],
        up: bool,
    ) -> Result<(), Error> {
        let ifname = self.call.ifname.as_str();
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
        for ip in ips {
            pod.add_address(peer.index, ip.address.ip(), ip.address.prefix())
                .await
                .map_err(|e| Error::netlink(format!("adding {} to {ifname}", ip.address), e))?;
        }
        fault::point("addresses-added");
        if up {
            pod.set_up(peer.index)
                .await
                .map_err(|e| Error::netlink(format!("bringing {ifname} up"), e))?;
        }
        for route in routes {
            let gateway = route.gw.or_else(|| {
                ips.iter()
                    .find(|ip| ip.address.is_ipv4() == route.dst.is_ipv4())
                    .and_then(|ip| ip.gateway)
            });
            pod.add_route(peer.index, Some(route.dst), gateway)
                .await
                .map_err(|e| Error::netlink(format!("adding route to {}", route.dst), e))?;
        }
        Ok(())
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
