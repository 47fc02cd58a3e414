//! ADD: validate → resolve bridge → create veth → addresses → port security →
//! probe → result. Whatever a failed ADD made is undone before it returns.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use portgroup::attachment::Record;
use portgroup::mac::MacAddr;
use portgroup::naming::host_veth_name;
use portgroup::netlink::{is_exists, Netlink};
use portgroup::nodeconfig::parse_cidr;
use portgroup::paths::{rfc3339, RunDir};
use portgroup::{netns, portsec, Error};
use portgroup_plugin::cni::netconf::NetConf;
use portgroup_plugin::cni::result::{CniResult, Interface, IpConfig, Route};
use portgroup_plugin::podlink::PodNetlink;
use portgroup_plugin::probe;
use serde_json::Value;

use crate::bridge::{self, Resolved};
use crate::env::{CniArgs, Env};
use crate::fault;
use crate::ipam;
use crate::teardown::Teardown;

/// Where the VM's MAC came from, first match wins (DESIGN.md).
pub fn choose_mac(conf: &NetConf, args: &CniArgs) -> MacAddr {
    conf.runtime_mac
        .or(conf.args_mac)
        .or(args.mac)
        .unwrap_or_else(MacAddr::random_local)
}

/// Addresses we configure ourselves: `runtimeConfig.ips`, else `args.cni.ips`, else
/// `CNI_ARGS` `IP=`. None means "ask IPAM, if configured" — with an `ipam` section
/// requested addresses are the IPAM plugin's to honour, so none are ours.
pub fn declared_ips(conf: &NetConf, args: &CniArgs) -> Result<Option<Vec<IpNetwork>>, Error> {
    if let Some(ips) = conf.runtime_ips.as_ref().or(conf.args_ips.as_ref()) {
        return Ok(Some(ips.clone()));
    }
    if conf.ipam.is_some() || args.ips.is_empty() {
        return Ok(None);
    }
    let mut ips = Vec::new();
    for text in &args.ips {
        let ip = parse_cidr(text).map_err(|why| {
            Error::env(
                "CNI_ARGS",
                format!("IP={text}: {why}; with no ipam section to allocate from, the address needs its prefix length (or add an ipam section)"),
            )
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(Some(ips))
}

/// Host-side veth MACs start with fe: a Linux bridge adopts the lowest port MAC,
/// and fe:… is never the lowest, so attaching a VM never changes the bridge's MAC.
fn host_side_mac() -> MacAddr {
    let mut mac = MacAddr::random_local();
    mac.0[0] = 0xfe;
    mac
}

pub async fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Value, Error> {
    let (container_id, ifname) = env.attachment()?;
    let netns_path = env
        .netns()
        .ok_or_else(|| Error::env("CNI_NETNS", "is required"))?;
    let run = RunDir::from_env();

    let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
    let target = bridge::resolve(&nl, conf, &run).await?;
    let mac = choose_mac(conf, &env.args);
    let reservation = target
        .portgroup
        .as_ref()
        .and_then(|pg| pg.reservation_for(mac));
    if let Some(pg) = &target.portgroup {
        if pg.strict && reservation.is_none() {
            return Err(Error::MacNotReserved {
                mac,
                portgroup: pg.name.clone(),
            });
        }
    }
    let mtu = conf.mtu.unwrap_or(target.bridge.mtu);
    let declared = declared_ips(conf, &env.args)?;
    let pod_ns = netns::open(std::path::Path::new(netns_path))
        .map_err(|e| Error::env("CNI_NETNS", e.to_string()))?;

    let records = run.attachments_dir();
    if Record::find(&records, container_id, ifname)
        .map_err(|e| Error::system("reading the attachment record", e))?
        .is_some()
    {
        return Err(Error::InterfaceExists(format!(
            "attachment {container_id}/{ifname} already exists; DEL it before adding it again"
        )));
    }
    let host_veth = host_veth_name(container_id, ifname);
    let mut record = Record {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        network: conf.name.clone(),
        netns: netns_path.to_string(),
        host_veth: host_veth.clone(),
        bridge: target.bridge.name.clone(),
        portgroup: target.portgroup.as_ref().map(|pg| pg.name.clone()),
        vlan: target.portgroup.as_ref().map(|pg| pg.vlan),
        mac,
        ips: declared.clone().unwrap_or_default(),
        spoof_check: conf.spoof_check,
        ipam: conf.ipam.clone(),
        cni_version: conf.cni_version.as_str().to_string(),
        created_at: rfc3339(std::time::SystemTime::now()),
    };
    // Written before the veth exists, so a killed ADD never leaves a veth nobody knows of.
    record
        .write(&records)
        .map_err(|e| Error::system("writing the attachment record", e))?;
    fault::point("record-written");

    let attempt = Attempt {
        env,
        conf,
        stdin,
        target: &target,
        nl: &nl,
        pod_ns: &pod_ns,
        mac,
        mtu,
        ifname,
        host_veth: &host_veth,
        reserved_ips: reservation.map(|r| r.ips.clone()).unwrap_or_default(),
        declared: declared.as_deref(),
    };
    let declared_record_ips = record.ips.clone();
    let mut created_veth = false;
    match attempt.build(&mut record, &mut created_veth).await {
        Ok(result) => {
            // IPAM may have added addresses the first write could not know.
            if record.ips != declared_record_ips {
                if let Err(e) = record.write(&records) {
                    tracing::warn!("updating the attachment record: {e}");
                }
            }
            Ok(result)
        }
        Err(err) => {
            tracing::warn!("ADD {container_id}/{ifname} failed, rolling back: {err}");
            rollback(
                env,
                conf,
                stdin,
                &nl,
                &run,
                container_id,
                ifname,
                created_veth,
            )
            .await;
            Err(err)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn rollback(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    nl: &Netlink,
    run: &RunDir,
    container_id: &str,
    ifname: &str,
    created_veth: bool,
) {
    if created_veth {
        let teardown = Teardown {
            container_id,
            ifname,
            ipam: conf.ipam.as_ref(),
            config: stdin,
            cni_path: &env.path,
            foreign: false,
        };
        if let Err(e) = teardown.run(nl, run).await {
            tracing::warn!("rollback: {e}");
        }
    } else if let Err(e) =
        portgroup::attachment::remove(&run.attachments_dir(), container_id, ifname)
    {
        // The veth was never made, so only the record is ours to remove: a veth that
        // already existed under this name belongs to an earlier attachment.
        tracing::warn!("rollback: removing the record: {e}");
    }
}

struct Attempt<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    stdin: &'a [u8],
    target: &'a Resolved,
    nl: &'a Netlink,
    pod_ns: &'a std::os::fd::OwnedFd,
    mac: MacAddr,
    mtu: u32,
    ifname: &'a str,
    host_veth: &'a str,
    reserved_ips: Vec<IpNetwork>,
    declared: Option<&'a [IpNetwork]>,
}

impl Attempt<'_> {
    async fn build(&self, record: &mut Record, created_veth: &mut bool) -> Result<Value, Error> {
        let (conf, nl) = (self.conf, self.nl);
        let host_mac = host_side_mac();
        if let Err(e) = nl
            .create_veth(
                self.host_veth,
                self.target.bridge.index,
                self.mtu,
                self.ifname,
                self.mac,
                self.pod_ns,
                host_mac,
            )
            .await
        {
            return Err(self.explain_create_failure(e).await);
        }
        *created_veth = true;
        fault::point("veth-created");

        let pod = Netlink::connect_in(self.pod_ns)
            .map_err(|e| Error::system("opening netlink in the pod netns", e))?;
        let peer = pod
            .link_by_name(self.ifname)
            .await
            .map_err(|e| Error::netlink(format!("looking up {} in the pod", self.ifname), e))?
            .ok_or_else(|| {
                Error::CheckFailed(format!(
                    "{} vanished from the pod right after ADD made it",
                    self.ifname
                ))
            })?;

        let (ips, routes, dns) = match self.declared {
            Some(ips) => (
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
            None => match &conf.ipam {
                Some(section) => {
                    let result = ipam::Call {
                        command: "ADD",
                        ipam: section,
                        config: self.stdin,
                        cni_path: &self.env.path,
                        attachment: None,
                    }
                    .run()?
                    .unwrap_or_default();
                    (result.ips, result.routes, result.dns)
                }
                None => (Vec::new(), Vec::new(), None),
            },
        };
        record.ips = ips.iter().map(|ip| ip.address).collect();

        for ip in &ips {
            pod.add_address(peer.index, ip.address.ip(), ip.address.prefix())
                .await
                .map_err(|e| {
                    Error::netlink(format!("adding {} to {}", ip.address, self.ifname), e)
                })?;
        }
        fault::point("addresses-added");
        if conf.link_down {
            if !routes.is_empty() {
                // A down link has no connected routes for a gateway to resolve through.
                tracing::warn!(
                    "linkDown: {} IPAM route(s) not installed on {}",
                    routes.len(),
                    self.ifname
                );
            }
        } else {
            pod.set_up(peer.index)
                .await
                .map_err(|e| Error::netlink(format!("bringing {} up", self.ifname), e))?;
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

        // The reservation for the VM's MAC is part of what it may use and what we probe.
        let mut allowed: Vec<IpAddr> = ips.iter().map(|ip| ip.address.ip()).collect();
        for ip in &self.reserved_ips {
            if !allowed.contains(&ip.ip()) {
                allowed.push(ip.ip());
            }
        }
        if conf.spoof_check {
            portsec::install(&portsec::PortRules {
                host_veth: self.host_veth.to_string(),
                mac: self.mac,
                ips: allowed.clone(),
            })?;
            fault::point("port-security-installed");
        }
        if conf.conflict_probe && !allowed.is_empty() {
            let answers = probe::probe(&self.target.bridge.name, self.mac, &allowed, &conf.probe)?;
            if let Some(conflict) = answers.iter().find(|a| a.mac != self.mac) {
                return Err(Error::IpConflict {
                    ip: conflict.ip,
                    vlan: self.target.segment(),
                    mac: conflict.mac,
                });
            }
            if let Some(own) = answers.first() {
                tracing::info!(
                    "{} answered from the VM's own MAC {}: live migration in progress, going on",
                    own.ip,
                    own.mac
                );
            }
        }

        fault::point("probed");
        Ok(self
            .result(host_mac, ips, routes, dns)
            .to_json(conf.cni_version))
    }

    async fn explain_create_failure(&self, e: rtnetlink::Error) -> Error {
        if !is_exists(&e) {
            return Error::netlink(
                format!("creating veth {} / {}", self.host_veth, self.ifname),
                e,
            );
        }
        match self.nl.link_by_name(self.host_veth).await {
            Ok(Some(_)) => Error::InterfaceExists(format!(
                "host veth {} of this container and interface already exists; DEL the attachment first",
                self.host_veth
            )),
            _ => Error::InterfaceExists(format!(
                "interface {} already exists in the pod's network namespace",
                self.ifname
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
            name: self.host_veth.to_string(),
            mac: Some(host_mac.to_string()),
            ..Default::default()
        });
        result.interfaces.push(Interface {
            name: self.ifname.to_string(),
            mac: Some(self.mac.to_string()),
            mtu: Some(self.mtu),
            sandbox: self.env.netns().map(str::to_string),
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
    use serde_json::json;

    fn conf(extra: Value) -> NetConf {
        let mut v =
            json!({"cniVersion": "1.0.0", "name": "n", "type": "portgroup", "bridge": "br0"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        NetConf::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn mac_precedence() {
        let runtime = json!({"runtimeConfig": {"mac": "00:50:56:00:00:01"}});
        let args = json!({"args": {"cni": {"mac": "00:50:56:00:00:02"}}});
        let both = json!({"runtimeConfig": {"mac": "00:50:56:00:00:01"}, "args": {"cni": {"mac": "00:50:56:00:00:02"}}});
        let env_mac = CniArgs {
            mac: Some("00:50:56:00:00:03".parse().unwrap()),
            ..Default::default()
        };
        let none = CniArgs::default();
        let cases = [
            (both.clone(), &env_mac, "00:50:56:00:00:01"),
            (runtime, &env_mac, "00:50:56:00:00:01"),
            (args, &env_mac, "00:50:56:00:00:02"),
            (json!({}), &env_mac, "00:50:56:00:00:03"),
        ];
        for (extra, cni_args, want) in cases {
            assert_eq!(choose_mac(&conf(extra), cni_args).to_string(), want);
        }
        let random = choose_mac(&conf(json!({})), &none);
        assert!(!random.is_multicast() && random.0[0] & 2 == 2);
    }

    #[test]
    fn ip_precedence() {
        let none = CniArgs::default();
        let podman = CniArgs {
            ips: vec!["10.0.0.3".into()],
            ..Default::default()
        };
        let with_prefix = CniArgs {
            ips: vec!["10.0.0.4/24".into(), "10.0.0.4/24".into()],
            ..Default::default()
        };
        let first = |c: &NetConf, a: &CniArgs| {
            declared_ips(c, a)
                .unwrap()
                .map(|ips| ips.iter().map(|i| i.to_string()).collect::<Vec<_>>())
        };
        let both = conf(
            json!({"runtimeConfig": {"ips": ["10.0.0.1/24"]}, "args": {"cni": {"ips": ["10.0.0.2/24"]}}}),
        );
        assert_eq!(
            first(&both, &with_prefix),
            Some(vec!["10.0.0.1/24".to_string()])
        );
        let args = conf(json!({"args": {"cni": {"ips": ["10.0.0.2/24"]}}}));
        assert_eq!(first(&args, &none), Some(vec!["10.0.0.2/24".to_string()]));
        assert_eq!(
            first(&conf(json!({})), &with_prefix),
            Some(vec!["10.0.0.4/24".to_string()])
        );
        assert_eq!(first(&conf(json!({})), &none), None);
        // A bare IP= with nothing to allocate from: a clear error, not silence.
        let err = declared_ips(&conf(json!({})), &podman).unwrap_err();
        assert_eq!(err.code(), portgroup::error::code::INVALID_ENV);
        assert!(err.to_string().contains("IP=10.0.0.3"));
        // With IPAM, requested addresses are IPAM's business.
        let ipam =
            conf(json!({"ipam": {"type": "host-local"}, "runtimeConfig": {"ips": ["10.0.0.1"]}}));
        assert_eq!(first(&ipam, &podman), None);
    }

    #[test]
    fn host_mac_never_lowest() {
        let mac = host_side_mac();
        assert_eq!(mac.0[0], 0xfe);
        assert!(!mac.is_multicast());
    }
}
