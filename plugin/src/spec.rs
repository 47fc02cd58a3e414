//! What an attachment will be, decided before anything on the node is touched: a
//! pure function of the network config, the CNI arguments and what the node says
//! about the target (its bridge, the portgroup's state, the node config's policy).
//! ADD executes the spec; CHECK resolves it again, from the record, and compares.
//!
//! The node config (the cluster admin) decides; a network config (whoever may
//! write a NetworkAttachmentDefinition) only chooses within that. Every such rule
//! lives here.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use portgroup::mac::MacAddr;
use portgroup::naming::host_veth_name;
use portgroup::nodeconfig::parse_cidr;
use portgroup::nodeconfig::AttachPolicy;
use portgroup::state::{MacOwner, PortgroupState};
use portgroup::Error;
use portgroup_plugin::cni::netconf::{NetConf, MAX_ADDRESSES};
use portgroup_plugin::probe::ProbeConfig;
use serde_json::Value;

use crate::env::CniArgs;

/// The attachment asked for.
pub struct Request<'a> {
    pub conf: &'a NetConf,
    pub args: &'a CniArgs,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// What the node says about where the port goes.
pub struct Place<'a> {
    pub bridge: &'a str,
    pub bridge_mtu: u32,
    /// The bridge's alias, which carries portgroupd's ownership mark on its bridges.
    pub bridge_alias: Option<&'a str>,
    /// The portgroup (portgroup mode), as the node state publishes it.
    pub portgroup: Option<&'a PortgroupState>,
    /// `allowedBridges` of the node config (`bridge:` mode on a node running portgroupd).
    pub allowed_bridges: Option<&'a [String]>,
    /// The portgroups on this node reserving the MAC the request names, if any.
    pub mac_owners: &'a [MacOwner],
}

/// Where the pod's addresses come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Addresses {
    /// Declared by the runtime; configured by the plugin itself.
    Declared(Vec<IpNetwork>),
    /// Asked of the delegated IPAM plugin of this (validated) section.
    Ipam(Value),
    /// Plain L2: the VM brings its own (static or DHCP-reserved) addresses.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub mac: MacAddr,
    pub addresses: Addresses,
    /// The reservation for the MAC on its portgroup: part of what the port may use.
    pub reserved: Vec<IpNetwork>,
    /// A strict portgroup: the reservation's addresses are the only ones allowed.
    pub strict_portgroup: Option<String>,
    pub pod_mtu: u32,
    /// The host end joins the bridge at the bridge's own MTU, so the bridge never moves.
    pub bridge_mtu: u32,
    pub host_veth: String,
    pub spoof_check: bool,
    /// The portgroup's port-security opt-ins: the node config's (the admin's);
    /// a network config cannot set them.
    pub allow_router_advertisements: bool,
    pub allow_dhcp_server: bool,
    /// A trunk port: frames carry 802.1Q tags, the VM's addresses live on its
    /// VLANs and are not known here, so port security locks the source MAC only
    /// (locking IPs would drop every tagged frame) and nothing is probed.
    pub tagged: bool,
    /// None: no conflict probe.
    pub probe: Option<ProbeConfig>,
    pub namespace: Option<String>,
}

impl Spec {
    /// Addresses the attachment receives (declared or from IPAM), checked against
    /// the cap and, on a strict portgroup, against the reservation.
    pub fn admit(&self, assigned: &[IpNetwork]) -> Result<(), Error> {
        if assigned.len() > MAX_ADDRESSES {
            return Err(Error::invalid_config(
                "ips",
                format!(
                    "{} addresses; an attachment may have at most {MAX_ADDRESSES}",
                    assigned.len()
                ),
            ));
        }
        // A strict trunk reserves MACs only: its VMs' addresses are per VLAN.
        if let Some(portgroup) = self.strict_portgroup.as_ref().filter(|_| !self.tagged) {
            if let Some(outside) = assigned
                .iter()
                .find(|ip| !self.reserved.iter().any(|r| r.ip() == ip.ip()))
            {
                return Err(Error::IpNotReserved {
                    ip: outside.ip(),
                    mac: self.mac,
                    portgroup: portgroup.clone(),
                });
            }
        }
        Ok(())
    }

    /// Source addresses the port may use: what it was assigned, and its reservation;
    /// none (any address, the MAC still locked) on a trunk port.
    pub fn allowed_ips(&self, assigned: &[IpNetwork]) -> Vec<IpAddr> {
        if self.tagged {
            return Vec::new();
        }
        let mut allowed: Vec<IpAddr> = Vec::with_capacity(assigned.len() + self.reserved.len());
        for ip in assigned.iter().chain(&self.reserved) {
            if !allowed.contains(&ip.ip()) {
                allowed.push(ip.ip());
            }
        }
        allowed
    }
}

/// Resolves the attachment. `fallback_mac` is used when no source names a MAC (a
/// fresh random one on ADD; the recorded one on CHECK).
pub fn resolve(req: &Request, place: &Place, fallback_mac: MacAddr) -> Result<Spec, Error> {
    let conf = req.conf;
    let namespace = req.args.pod_namespace.clone();
    match place.portgroup {
        Some(pg) => admit_namespace(pg, namespace.as_deref())?,
        None => admit_bridge(place)?,
    }
    let mac = choose_mac(conf, req.args)?.unwrap_or(fallback_mac);
    admit_mac_owner(mac, namespace.as_deref(), place.mac_owners)?;
    let reservation = place.portgroup.and_then(|pg| pg.reservation_for(mac));
    let strict_portgroup = place
        .portgroup
        .filter(|pg| pg.strict)
        .map(|pg| pg.name.clone());
    if let Some(portgroup) = &strict_portgroup {
        if reservation.is_none() {
            return Err(Error::MacNotReserved {
                mac,
                portgroup: portgroup.clone(),
            });
        }
    }
    if let Some(pg) = place.portgroup {
        if pg.policy.require_spoof_check && !conf.spoof_check {
            return Err(required_here("spoofCheck", &pg.name));
        }
        if pg.policy.require_conflict_probe && !conf.conflict_probe {
            return Err(required_here("conflictProbe", &pg.name));
        }
    }
    let pod_mtu = conf.mtu.unwrap_or(place.bridge_mtu);
    if pod_mtu > place.bridge_mtu {
        return Err(Error::invalid_config(
            "mtu",
            format!(
                "{pod_mtu} is above bridge {}'s MTU {}: the VM's frames would not fit; use at most {}",
                place.bridge, place.bridge_mtu, place.bridge_mtu
            ),
        ));
    }
    let addresses = match declared_ips(conf, req.args)? {
        Some(ips) => Addresses::Declared(ips),
        None => match &conf.ipam {
            Some(section) => Addresses::Ipam(section.clone()),
            None => Addresses::None,
        },
    };
    let spec = Spec {
        mac,
        addresses,
        reserved: reservation.map(|r| r.ips.clone()).unwrap_or_default(),
        strict_portgroup,
        pod_mtu,
        bridge_mtu: place.bridge_mtu,
        host_veth: host_veth_name(req.container_id, req.ifname),
        spoof_check: conf.spoof_check,
        allow_router_advertisements: place
            .portgroup
            .is_some_and(|pg| pg.allow_router_advertisements),
        allow_dhcp_server: place.portgroup.is_some_and(|pg| pg.allow_dhcp_server),
        tagged: place.portgroup.is_some_and(PortgroupState::tagged),
        probe: conf.conflict_probe.then(|| conf.probe.clone()),
        namespace,
    };
    if let Addresses::Declared(ips) = &spec.addresses {
        spec.admit(ips)?;
    }
    Ok(spec)
}

fn required_here(field: &str, portgroup: &str) -> Error {
    Error::NotPermitted(format!(
        "{field}: false is not permitted on portgroup {portgroup}: the node config requires it"
    ))
}

fn admit_namespace(pg: &PortgroupState, namespace: Option<&str>) -> Result<(), Error> {
    if pg.policy.allows_namespace(namespace) {
        return Ok(());
    }
    Err(Error::NamespaceNotAllowed {
        what: "attaching".into(),
        namespace: shown_namespace(namespace),
        portgroup: pg.name.clone(),
        allowed: pg
            .policy
            .namespaces
            .as_deref()
            .unwrap_or_default()
            .join(", "),
    })
}

/// A reserved MAC belongs to the namespaces of the portgroups reserving it, whatever
/// the pod attaches to: another namespace cannot take a VM's MAC elsewhere.
fn admit_mac_owner(
    mac: MacAddr,
    namespace: Option<&str>,
    owners: &[MacOwner],
) -> Result<(), Error> {
    let allowed_by = |owner: &MacOwner| {
        AttachPolicy {
            namespaces: owner.namespaces.clone(),
            ..Default::default()
        }
        .allows_namespace(namespace)
    };
    if owners.is_empty() || owners.iter().any(allowed_by) {
        return Ok(());
    }
    Err(Error::NamespaceNotAllowed {
        what: format!("using MAC {mac}, which it reserves"),
        namespace: shown_namespace(namespace),
        portgroup: owners
            .iter()
            .map(|o| o.portgroup.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        allowed: owners
            .iter()
            .flat_map(|o| o.namespaces.iter().flatten().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A namespace as messages show it.
pub fn shown_namespace(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{ns:?}"),
        None => "(none: the runtime sent no K8S_POD_NAMESPACE)".into(),
    }
}

/// `bridge:` mode: never a bridge portgroupd owns (that is a portgroup's, with its
/// own tenancy), and only a listed one where the node config lists them.
fn admit_bridge(place: &Place) -> Result<(), Error> {
    admit_bridge_mode(place.bridge, place.bridge_alias, place.allowed_bridges)
}

/// The `bridge:` mode rule on its own, for STATUS as well as ADD and CHECK.
pub fn admit_bridge_mode(
    bridge: &str,
    alias: Option<&str>,
    allowed_bridges: Option<&[String]>,
) -> Result<(), Error> {
    if portgroup::naming::is_owned(alias) {
        return Err(Error::NotPermitted(format!(
            "bridge: {bridge} belongs to portgroupd ({}); attach to it with \"portgroup\" instead",
            alias.unwrap_or_default()
        )));
    }
    match allowed_bridges {
        None => Ok(()),
        Some([]) => Err(Error::NotPermitted(format!(
            "bridge: {bridge}: bridge mode is turned off on this node (allowedBridges is empty); use \"portgroup\""
        ))),
        Some(list) if list.iter().any(|b| b == bridge) => Ok(()),
        Some(list) => Err(Error::NotPermitted(format!(
            "bridge: {bridge} is not one of the node's allowedBridges ({})",
            list.join(", ")
        ))),
    }
}

/// The VM's MAC, first source wins (DESIGN.md): `runtimeConfig.mac`, `args.cni.mac`,
/// `CNI_ARGS MAC=`. Errors name the source used.
pub fn choose_mac(conf: &NetConf, args: &CniArgs) -> Result<Option<MacAddr>, Error> {
    if let Some(mac) = conf.runtime_mac.or(conf.args_mac) {
        return Ok(Some(mac));
    }
    args.mac
        .as_deref()
        .map(|text| {
            MacAddr::parse_unicast(text).map_err(|e| Error::env("CNI_ARGS", format!("MAC: {e}")))
        })
        .transpose()
}

/// Addresses we configure ourselves: `runtimeConfig.ips`, else `args.cni.ips`, else
/// `CNI_ARGS` `IP=`. None means "ask IPAM, if configured" — with an `ipam` section
/// requested addresses are the IPAM plugin's to honour, so none are ours.
pub fn declared_ips(conf: &NetConf, args: &CniArgs) -> Result<Option<Vec<IpNetwork>>, Error> {
    if conf.ipam.is_some() {
        return Ok(None);
    }
    if let Some(ips) = conf.runtime_ips.as_ref().or(conf.args_ips.as_ref()) {
        return Ok(Some(ips.clone()));
    }
    if args.ips.is_empty() {
        return Ok(None);
    }
    if args.ips.len() > MAX_ADDRESSES {
        return Err(Error::env(
            "CNI_ARGS",
            format!(
                "IP= lists {} addresses; an attachment may have at most {MAX_ADDRESSES}",
                args.ips.len()
            ),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use portgroup::error::code;
    use portgroup::nodeconfig::{AttachPolicy, Reservation};
    use serde_json::json;

    const FALLBACK: &str = "02:00:00:00:00:99";

    fn conf(extra: Value) -> NetConf {
        let mut v =
            json!({"cniVersion": "1.0.0", "name": "n", "type": "portgroup", "portgroup": "web"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        NetConf::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn bridge_conf(extra: Value) -> NetConf {
        let mut c = extra;
        c["portgroup"] = Value::Null;
        c["bridge"] = "br0".into();
        conf(c)
    }

    fn portgroup(strict: bool, policy: Value) -> PortgroupState {
        PortgroupState {
            name: "web".into(),
            mode: Default::default(),
            vlan: Some(100),
            trunk: None,
            native_vlan: None,
            uplink: "eth1".into(),
            bridge: "pgbr0000.100".into(),
            vlan_interface: "pgv0000.100".into(),
            mtu: Some(1500),
            ready: true,
            reason: None,
            draining: false,
            strict,
            reservations: vec![Reservation {
                mac: "00:50:56:00:00:01".parse().unwrap(),
                ips: vec!["10.0.0.1/24".parse().unwrap()],
            }],
            policy: serde_json::from_value::<AttachPolicy>(policy).unwrap(),
            allow_router_advertisements: false,
            allow_dhcp_server: false,
        }
    }

    fn args(text: &str) -> CniArgs {
        crate::env::parse_cni_args(text).unwrap()
    }

    fn run(conf: &NetConf, cni_args: &str, pg: Option<&PortgroupState>) -> Result<Spec, Error> {
        run_on(conf, cni_args, pg, None, None)
    }

    fn run_on(
        conf: &NetConf,
        cni_args: &str,
        pg: Option<&PortgroupState>,
        alias: Option<&str>,
        allowed: Option<&[String]>,
    ) -> Result<Spec, Error> {
        run_owned(conf, cni_args, pg, alias, allowed, &[])
    }

    fn run_owned(
        conf: &NetConf,
        cni_args: &str,
        pg: Option<&PortgroupState>,
        alias: Option<&str>,
        allowed: Option<&[String]>,
        owners: &[MacOwner],
    ) -> Result<Spec, Error> {
        let a = args(cni_args);
        resolve(
            &Request {
                conf,
                args: &a,
                container_id: "c1",
                ifname: "net1",
            },
            &Place {
                bridge: pg.map_or("br0", |p| p.bridge.as_str()),
                bridge_mtu: 1500,
                bridge_alias: alias,
                portgroup: pg,
                allowed_bridges: allowed,
                mac_owners: owners,
            },
            FALLBACK.parse().unwrap(),
        )
    }

    #[test]
    fn mac_precedence_and_the_source_named() {
        let cases: &[(Value, &str, Result<&str, &str>)] = &[
            (
                json!({"runtimeConfig": {"mac": "00:50:56:00:00:01"}, "args": {"cni": {"mac": "00:50:56:00:00:02"}}}),
                "MAC=00:50:56:00:00:03",
                Ok("00:50:56:00:00:01"),
            ),
            (
                json!({"args": {"cni": {"mac": "00:50:56:00:00:02"}}}),
                "MAC=00:50:56:00:00:03",
                Ok("00:50:56:00:00:02"),
            ),
            (json!({}), "MAC=00:50:56:00:00:03", Ok("00:50:56:00:00:03")),
            (json!({}), "", Ok(FALLBACK)),
            // A bad CNI_ARGS MAC that does not win is not an error...
            (
                json!({"runtimeConfig": {"mac": "00:50:56:00:00:01"}}),
                "MAC=junk",
                Ok("00:50:56:00:00:01"),
            ),
            // ...and one that wins is named as CNI_ARGS.
            (json!({}), "MAC=01:00:5e:00:00:01", Err("CNI_ARGS MAC")),
        ];
        for (extra, cni_args, want) in cases {
            let got = run(&bridge_conf(extra.clone()), cni_args, None);
            match want {
                Ok(mac) => assert_eq!(got.unwrap().mac.to_string(), *mac, "{extra} {cni_args}"),
                Err(text) => {
                    let err = got.unwrap_err();
                    assert!(err.to_string().contains(text), "{err}");
                    assert_eq!(err.code(), code::INVALID_ENV);
                }
            }
        }
        // A bad runtimeConfig.mac is refused by the config parser, under its own name.
        let bad = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","bridge":"br0","runtimeConfig":{"mac":"zz"}}"#,
        )
        .unwrap_err();
        assert!(bad.to_string().starts_with("runtimeConfig.mac: "), "{bad}");
    }

    #[test]
    fn addresses_and_their_sources() {
        let declared = |s: &Spec| match &s.addresses {
            Addresses::Declared(ips) => ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let both = bridge_conf(
            json!({"runtimeConfig": {"ips": ["10.0.0.1/24"]}, "args": {"cni": {"ips": ["10.0.0.2/24"]}}}),
        );
        assert_eq!(
            declared(&run(&both, "IP=10.0.0.4/24", None).unwrap()),
            ["10.0.0.1/24"]
        );
        let args_only = bridge_conf(json!({"args": {"cni": {"ips": ["10.0.0.2/24"]}}}));
        assert_eq!(
            declared(&run(&args_only, "", None).unwrap()),
            ["10.0.0.2/24"]
        );
        let plain = bridge_conf(json!({}));
        assert_eq!(
            declared(&run(&plain, "IP=10.0.0.4/24,10.0.0.4/24", None).unwrap()),
            ["10.0.0.4/24"]
        );
        assert_eq!(run(&plain, "", None).unwrap().addresses, Addresses::None);
        // A bare IP= with nothing to allocate from: a clear error, not silence.
        let err = run(&plain, "IP=10.0.0.3", None).unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert!(err.to_string().contains("IP=10.0.0.3"));
        // With IPAM, requested addresses are IPAM's business.
        let ipam = bridge_conf(
            json!({"ipam": {"type": "host-local"}, "runtimeConfig": {"ips": ["10.0.0.1"]}}),
        );
        assert_eq!(
            run(&ipam, "IP=10.0.0.3", None).unwrap().addresses,
            Addresses::Ipam(json!({"type": "host-local"}))
        );
        // The cap on declared addresses.
        let many: Vec<String> = (0..=MAX_ADDRESSES)
            .map(|i| format!("10.1.{}.{}/16", i / 250, i % 250 + 1))
            .collect();
        let err = run(&plain, &format!("IP={}", many.join(",")), None).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[test]
    fn mtu_never_above_the_bridge() {
        /// (pod MTU, bridge MTU), or the error code.
        type Want = Result<(u32, u32), u32>;
        let cases: &[(Value, Want)] = &[
            (json!({}), Ok((1500, 1500))),
            (json!({"mtu": 1400}), Ok((1400, 1500))),
            (json!({"mtu": 68}), Ok((68, 1500))),
            (json!({"mtu": 1500}), Ok((1500, 1500))),
            (json!({"mtu": 9000}), Err(code::INVALID_CONFIG)),
        ];
        for (extra, want) in cases {
            let got = run(&bridge_conf(extra.clone()), "", None);
            match want {
                Ok((pod, bridge)) => {
                    let spec = got.unwrap();
                    assert_eq!((spec.pod_mtu, spec.bridge_mtu), (*pod, *bridge), "{extra}");
                }
                Err(c) => assert_eq!(got.unwrap_err().code(), *c, "{extra}"),
            }
        }
    }

    #[test]
    fn namespaces_decide_who_attaches() {
        let cases: &[(Value, &str, Option<u32>)] = &[
            (json!({}), "", None),
            (json!({}), "K8S_POD_NAMESPACE=anyone", None),
            (
                json!({"namespaces": ["team-a"]}),
                "K8S_POD_NAMESPACE=team-a",
                None,
            ),
            (
                json!({"namespaces": ["team-a"]}),
                "IgnoreUnknown=true;K8S_POD_NAMESPACE=team-b;K8S_POD_NAME=vm",
                Some(code::NAMESPACE_NOT_ALLOWED),
            ),
            (
                json!({"namespaces": ["team-*"]}),
                "K8S_POD_NAMESPACE=team-b",
                None,
            ),
            (
                json!({"namespaces": ["team-*"]}),
                "K8S_POD_NAMESPACE=other",
                Some(code::NAMESPACE_NOT_ALLOWED),
            ),
            (
                json!({"namespaces": ["team-a"]}),
                "",
                Some(code::NAMESPACE_NOT_ALLOWED),
            ),
            (json!({"namespaces": ["*"]}), "", None),
            (
                json!({"namespaces": []}),
                "K8S_POD_NAMESPACE=team-a",
                Some(code::NAMESPACE_NOT_ALLOWED),
            ),
        ];
        for (policy, cni_args, want) in cases {
            let pg = portgroup(false, policy.clone());
            let got = run(&conf(json!({})), cni_args, Some(&pg));
            match want {
                None => assert!(got.is_ok(), "{policy} {cni_args}: {got:?}"),
                Some(c) => {
                    let err = got.unwrap_err();
                    assert_eq!(err.code(), *c, "{policy} {cni_args}");
                    assert!(err.to_string().contains("portgroup web"), "{err}");
                }
            }
        }
        let pg = portgroup(false, json!({"namespaces": ["team-a"]}));
        let err = run(&conf(json!({})), "K8S_POD_NAMESPACE=team-b", Some(&pg)).unwrap_err();
        assert!(err.to_string().contains("\"team-b\""), "{err}");
        // A reserved MAC belongs to the portgroup's namespaces: another one cannot use it.
        let reserved = conf(json!({"runtimeConfig": {"mac": "00:50:56:00:00:01"}}));
        assert_eq!(
            run(&reserved, "K8S_POD_NAMESPACE=team-b", Some(&pg))
                .unwrap_err()
                .code(),
            code::NAMESPACE_NOT_ALLOWED
        );
    }

    #[test]
    fn a_reserved_mac_belongs_to_its_portgroups_namespaces_everywhere() {
        let owners = [
            MacOwner {
                portgroup: "db".into(),
                namespaces: Some(vec!["db".into()]),
            },
            MacOwner {
                portgroup: "db-dr".into(),
                namespaces: Some(vec!["dr-*".into()]),
            },
        ];
        let open = portgroup(false, json!({}));
        let c = conf(json!({"runtimeConfig": {"mac": "00:50:56:00:00:07"}}));
        let cases: &[(&str, Option<u32>)] = &[
            ("K8S_POD_NAMESPACE=db", None),
            ("K8S_POD_NAMESPACE=dr-east", None),
            ("K8S_POD_NAMESPACE=web", Some(code::NAMESPACE_NOT_ALLOWED)),
            ("", Some(code::NAMESPACE_NOT_ALLOWED)),
        ];
        for (cni_args, want) in cases {
            // On another portgroup, and in bridge: mode, alike.
            for pg in [Some(&open), None] {
                let conf = if pg.is_some() {
                    c.clone()
                } else {
                    bridge_conf(json!({"runtimeConfig": {"mac": "00:50:56:00:00:07"}}))
                };
                let got = run_owned(&conf, cni_args, pg, None, None, &owners);
                assert_eq!(
                    got.as_ref().err().map(Error::code),
                    *want,
                    "{cni_args}: {got:?}"
                );
                if let Err(e) = got {
                    let text = e.to_string();
                    assert!(
                        text.contains("00:50:56:00:00:07") && text.contains("db, db-dr"),
                        "{text}"
                    );
                }
            }
        }
        // A MAC reserved for any namespace is anyone's, as before.
        let anyone = [MacOwner {
            portgroup: "web".into(),
            namespaces: None,
        }];
        assert!(run_owned(&c, "K8S_POD_NAMESPACE=x", Some(&open), None, None, &anyone).is_ok());
    }

    #[test]
    fn strict_portgroups_allow_only_the_reservation() {
        let pg = portgroup(true, json!({}));
        let reserved = json!({"mac": "00:50:56:00:00:01"});
        let cases: &[(Value, Option<u32>)] = &[
            (json!({"runtimeConfig": reserved}), None),
            (
                json!({"runtimeConfig": {"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1/24"]}}),
                None,
            ),
            (
                json!({"runtimeConfig": {"mac": "00:50:56:00:00:01", "ips": ["10.0.0.1/24", "10.0.0.254/24"]}}),
                Some(code::MAC_NOT_RESERVED),
            ),
            (
                json!({"runtimeConfig": {"mac": "00:50:56:00:00:02"}}),
                Some(code::MAC_NOT_RESERVED),
            ),
        ];
        for (extra, want) in cases {
            let got = run(&conf(extra.clone()), "", Some(&pg));
            assert_eq!(
                got.as_ref().err().map(Error::code),
                *want,
                "{extra}: {got:?}"
            );
        }
        let spec = run(&conf(json!({"runtimeConfig": reserved})), "", Some(&pg)).unwrap();
        assert_eq!(
            spec.allowed_ips(&[]),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        // IPAM's addresses are held to the same rule.
        assert!(spec.admit(&["10.0.0.1/24".parse().unwrap()]).is_ok());
        assert_eq!(
            spec.admit(&["10.0.0.7/24".parse().unwrap()])
                .unwrap_err()
                .code(),
            code::MAC_NOT_RESERVED
        );
        // Not strict: declared addresses join the reservation.
        let open = portgroup(false, json!({}));
        let spec = run(
            &conf(json!({"runtimeConfig": {"mac": "00:50:56:00:00:01", "ips": ["10.0.0.9/24"]}})),
            "",
            Some(&open),
        )
        .unwrap();
        let declared = match &spec.addresses {
            Addresses::Declared(ips) => ips.clone(),
            _ => unreachable!(),
        };
        assert_eq!(spec.allowed_ips(&declared).len(), 2);
    }

    #[test]
    fn the_node_config_can_require_port_security_and_the_probe() {
        let pg = portgroup(
            false,
            json!({"requireSpoofCheck": true, "requireConflictProbe": true}),
        );
        assert!(run(&conf(json!({})), "", Some(&pg)).is_ok());
        for field in ["spoofCheck", "conflictProbe"] {
            let mut off = json!({});
            off[field] = false.into();
            let err = run(&conf(off), "", Some(&pg)).unwrap_err();
            assert_eq!(err.code(), code::NOT_PERMITTED);
            assert!(err.to_string().contains(field), "{err}");
        }
        // Where the admin allows it, a config may turn them off.
        let open = portgroup(false, json!({}));
        let spec = run(
            &conf(json!({"spoofCheck": false, "conflictProbe": false})),
            "",
            Some(&open),
        )
        .unwrap();
        assert!(!spec.spoof_check && spec.probe.is_none());
    }

    #[test]
    fn bridge_mode_limits() {
        let c = bridge_conf(json!({}));
        let owned = "portgroup:bridge web uplink=eth1 vlan=100";
        let listed = ["br0".to_string()];
        let other = ["br9".to_string()];
        /// (bridge alias, allowedBridges, error code if refused)
        type Case<'a> = (Option<&'a str>, Option<&'a [String]>, Option<u32>);
        let cases: &[Case] = &[
            (None, None, None),
            (Some("lab bridge"), None, None),
            (Some(owned), None, Some(code::NOT_PERMITTED)),
            (Some(owned), Some(&listed), Some(code::NOT_PERMITTED)),
            (None, Some(&listed), None),
            (None, Some(&other), Some(code::NOT_PERMITTED)),
            (None, Some(&[]), Some(code::NOT_PERMITTED)),
        ];
        for (alias, allowed, want) in cases {
            let got = run_on(&c, "", None, *alias, *allowed);
            assert_eq!(
                got.as_ref().err().map(Error::code),
                *want,
                "{alias:?} {allowed:?}"
            );
        }
    }
}
