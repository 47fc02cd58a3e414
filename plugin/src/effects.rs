//! ADD's side effects on the node, each with its undo, behind one small trait
//! ([`NodeEffects`]) so that the order they are made and undone in is tested with
//! a recording fake. The order is what keeps the port secure:
//!
//! 1. the attachment record, created exclusively: the ADD that creates it owns
//!    everything after it, and a duplicate ADD stops here having touched nothing;
//! 2. the port's port-security elements, keyed by the host veth's name (the
//!    nftables sets match `iifname`, so they can exist before the interface);
//! 3. the veth, on its bridge.
//!
//! So the veth never exists without its rules and cannot forward one frame
//! unchecked. A failure undoes what was made, newest first: the veth, then the
//! elements, then the record.

use portgroup::attachment::{self, Record};
use portgroup::netlink::{is_exists, Netlink};
use portgroup::{portsec, Error};
use portgroup_plugin::podlink::{PodNetlink, VethSpec};
use serde_json::Value;

use crate::env::Pod;
use crate::fault;
use crate::teardown::{delete_host_veth, Teardown};

/// What ADD does to the node, one method per side effect and one per undo.
#[allow(async_fn_in_trait)]
pub trait NodeEffects {
    /// Creates the attachment's record exclusively; code 101 when it has one.
    fn create_record(&mut self, record: &Record) -> Result<(), Error>;
    /// Removes the record this ADD created, and no other.
    fn remove_record(&mut self) -> Result<(), Error>;
    /// Whether an interface with this name exists on the node.
    async fn host_link_exists(&mut self, name: &str) -> Result<bool, Error>;
    /// Installs (or replaces) a port's elements, by its host veth's name.
    /// `new_interface`: its veth does not exist yet, so whatever elements the
    /// name has are a deleted port's and all go first (`portsec::install_new`).
    fn install_port_security(
        &mut self,
        rules: &portsec::PortRules,
        new_interface: bool,
    ) -> Result<(), Error>;
    fn remove_port_security(&mut self, host_veth: &str) -> Result<(), Error>;
    /// Makes the veth: the pod end in the pod, the host end down and on no bridge.
    async fn create_veth(&mut self, veth: &VethSpec<'_>) -> Result<(), Error>;
    /// Puts the host end on its bridge and up: the port forwards from here on.
    async fn attach_host_end(&mut self, host_veth: &str, bridge_index: u32) -> Result<(), Error>;
    async fn delete_veth(&mut self, host_veth: &str) -> Result<(), Error>;
    /// Releases what a delegated IPAM plugin may have allocated.
    fn release_ipam(&mut self, section: &Value) -> Result<(), Error>;
}

/// One side effect of ADD, to undo if ADD fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    Record,
    /// Logged before installing: a half-installed set of elements goes too.
    PortSecurity,
    /// Only a veth this ADD made: one that already existed under the name is an
    /// earlier attachment's.
    Veth,
    /// Logged before the IPAM plugin is asked: a failed IPAM ADD is cleaned up by DEL.
    Ipam(Value),
}

/// The side effects made so far, to undo in reverse if ADD fails.
#[derive(Debug)]
pub struct UndoLog {
    host_veth: String,
    steps: Vec<Undo>,
}

impl UndoLog {
    pub fn new(host_veth: &str) -> Self {
        UndoLog {
            host_veth: host_veth.to_string(),
            steps: Vec::new(),
        }
    }

    pub fn push(&mut self, step: Undo) {
        self.steps.push(step);
    }

    /// Undoes every step, newest first, going on past failures.
    pub async fn run(&mut self, fx: &mut impl NodeEffects) {
        while let Some(step) = self.steps.pop() {
            let result = match step {
                Undo::Ipam(section) => fx.release_ipam(&section),
                Undo::Veth => fx.delete_veth(&self.host_veth).await,
                Undo::PortSecurity => fx.remove_port_security(&self.host_veth),
                Undo::Record => fx.remove_record(),
            };
            if let Err(e) = result {
                tracing::warn!("undoing ADD: {e}");
            }
        }
    }
}

/// Makes the port's host side: record, then its port-security elements (when
/// `rules` is given), then the veth. Each step is logged in `undo` as it is
/// made; on an error the caller runs the log.
pub async fn make_port(
    fx: &mut impl NodeEffects,
    undo: &mut UndoLog,
    record: &Record,
    rules: Option<&portsec::PortRules>,
    veth: &VethSpec<'_>,
) -> Result<(), Error> {
    fx.create_record(record)?;
    undo.push(Undo::Record);
    fault::point("record-written");

    // The elements are keyed by name: those of an interface that already has
    // this name (an attachment whose record is gone) are not ours to replace,
    // nor to remove when the veth then fails to appear.
    if fx.host_link_exists(veth.host_name).await? {
        return Err(Error::InterfaceExists(format!(
            "host veth {} of this container and interface already exists; DEL the attachment first",
            veth.host_name
        )));
    }
    if let Some(rules) = rules {
        undo.push(Undo::PortSecurity);
        fx.install_port_security(rules, true)?;
        fault::point("port-security-installed");
    }
    fx.create_veth(veth).await?;
    undo.push(Undo::Veth);
    fault::point("veth-created");
    Ok(())
}

/// The node itself: the run directory's records, nftables and netlink.
pub struct Node<'a> {
    pub nl: &'a Netlink,
    pub records: std::path::PathBuf,
    pub call: &'a Pod,
    /// The network config, for the IPAM plugin.
    pub stdin: &'a [u8],
    /// The record this ADD created: the only one it may update or remove.
    pub owned: Option<attachment::Owned>,
}

impl Node<'_> {
    /// Why the record could not be created: the attachment has one (DEL first), or
    /// the name holds an older release's record of another attachment.
    fn already_attached(&self) -> Error {
        let (id, ifname) = (&self.call.container_id, &self.call.ifname);
        match Record::find(&self.records, id, ifname) {
            Ok(_) => Error::InterfaceExists(format!(
                "attachment {id}/{ifname} already exists; DEL it before adding it again"
            )),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Error::InterfaceExists(e.to_string())
            }
            Err(e) => Error::InterfaceExists(format!(
                "attachment {id}/{ifname} already exists with an unreadable record ({e}); \
                 DEL it before adding it again"
            )),
        }
    }
}

impl NodeEffects for Node<'_> {
    fn create_record(&mut self, record: &Record) -> Result<(), Error> {
        match record.create(&self.records) {
            Ok(owned) => {
                self.owned = Some(owned);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(self.already_attached()),
            Err(e) => Err(Error::system("creating the attachment record", e)),
        }
    }

    fn remove_record(&mut self) -> Result<(), Error> {
        match self.owned.take() {
            Some(owned) => owned
                .remove()
                .map_err(|e| Error::system("removing the attachment record", e)),
            None => Ok(()),
        }
    }

    async fn host_link_exists(&mut self, name: &str) -> Result<bool, Error> {
        self.nl
            .link_by_name(name)
            .await
            .map(|link| link.is_some())
            .map_err(|e| Error::netlink(format!("looking up {name}"), e))
    }

    fn install_port_security(
        &mut self,
        rules: &portsec::PortRules,
        new_interface: bool,
    ) -> Result<(), Error> {
        match new_interface {
            true => portsec::install_new(rules),
            false => portsec::install(rules),
        }
    }

    fn remove_port_security(&mut self, host_veth: &str) -> Result<(), Error> {
        portsec::remove(host_veth)
    }

    async fn create_veth(&mut self, veth: &VethSpec<'_>) -> Result<(), Error> {
        let Err(e) = self.nl.create_veth(veth).await else {
            return Ok(());
        };
        let host_veth = veth.host_name;
        if !is_exists(&e) {
            return Err(Error::netlink(
                format!("creating veth {host_veth} / {}", veth.pod_name),
                e,
            ));
        }
        Err(match self.nl.link_by_name(host_veth).await {
            Ok(Some(_)) => Error::InterfaceExists(format!(
                "host veth {host_veth} of this container and interface already exists; DEL the attachment first"
            )),
            _ => Error::InterfaceExists(format!(
                "interface {} already exists in the pod's network namespace",
                veth.pod_name
            )),
        })
    }

    async fn attach_host_end(&mut self, host_veth: &str, bridge_index: u32) -> Result<(), Error> {
        self.nl
            .attach_host_end(host_veth, bridge_index)
            .await
            .map_err(|e| Error::netlink(format!("putting {host_veth} on its bridge"), e))
    }

    async fn delete_veth(&mut self, host_veth: &str) -> Result<(), Error> {
        delete_host_veth(self.nl, host_veth).await
    }

    fn release_ipam(&mut self, section: &Value) -> Result<(), Error> {
        Teardown {
            container_id: &self.call.container_id,
            ifname: &self.call.ifname,
            ipam: Some(section),
            config: self.stdin,
            cni_path: &self.call.node.cni_path,
            foreign: false,
            leave_rules_to_sweeper: false,
        }
        .release_ipam(section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portgroup::mac::MacAddr;
    use std::os::fd::OwnedFd;

    const HOST: &str = "pg0123456789ab";

    /// Records every call in order; fails the one named in `fail`.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail: Option<&'static str>,
        record_exists: bool,
        link_exists: bool,
    }

    impl Recorder {
        fn call(&mut self, what: &'static str, arg: &str) -> Result<(), Error> {
            self.calls
                .push(format!("{what} {arg}").trim_end().to_string());
            if self.fail == Some(what) {
                return Err(Error::PortSecurity(format!("{what} failed")));
            }
            Ok(())
        }
    }

    impl NodeEffects for Recorder {
        fn create_record(&mut self, record: &Record) -> Result<(), Error> {
            self.call("create_record", &record.host_veth)?;
            if self.record_exists {
                return Err(Error::InterfaceExists("exists".into()));
            }
            Ok(())
        }
        fn remove_record(&mut self) -> Result<(), Error> {
            self.call("remove_record", "")
        }
        async fn host_link_exists(&mut self, name: &str) -> Result<bool, Error> {
            self.call("host_link_exists", name)?;
            Ok(self.link_exists)
        }
        fn install_port_security(
            &mut self,
            rules: &portsec::PortRules,
            _new_interface: bool,
        ) -> Result<(), Error> {
            self.call("install_port_security", &rules.host_veth)
        }
        fn remove_port_security(&mut self, host_veth: &str) -> Result<(), Error> {
            self.call("remove_port_security", host_veth)
        }
        async fn create_veth(&mut self, veth: &VethSpec<'_>) -> Result<(), Error> {
            self.call("create_veth", veth.host_name)
        }
        async fn attach_host_end(&mut self, host_veth: &str, _bridge: u32) -> Result<(), Error> {
            self.call("attach_host_end", host_veth)
        }
        async fn delete_veth(&mut self, host_veth: &str) -> Result<(), Error> {
            self.call("delete_veth", host_veth)
        }
        fn release_ipam(&mut self, _section: &Value) -> Result<(), Error> {
            self.call("release_ipam", "")
        }
    }

    fn record() -> Record {
        Record {
            device_id: None,
            handover: None,
            port_security: None,
            container_id: "c1".into(),
            ifname: "net1".into(),
            network: "n".into(),
            netns: "/run/netns/x".into(),
            host_veth: HOST.into(),
            bridge: "br0".into(),
            portgroup: None,
            vlan: None,
            mac: "00:50:56:aa:bb:01".parse().unwrap(),
            ips: vec![],
            spoof_check: true,
            ipam: None,
            cni_version: "1.1.0".into(),
            created_at: "2026-11-23T10:00:00Z".into(),
            namespace: None,
        }
    }

    fn rules() -> portsec::PortRules {
        portsec::PortRules {
            host_veth: HOST.into(),
            mac: "00:50:56:aa:bb:01".parse().unwrap(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        }
    }

    /// Runs `make_port`, and the undo log when it fails (as ADD does); returns
    /// the outcome and every call made.
    fn run(mut fx: Recorder, secured: bool) -> (Result<(), Error>, Vec<String>) {
        let netns: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let veth = VethSpec {
            host_name: HOST,
            host_mac: MacAddr([0xfe, 0, 0, 0, 0, 1]),
            host_mtu: 1500,
            bridge_index: 2,
            pod_name: "net1",
            pod_mac: "00:50:56:aa:bb:01".parse().unwrap(),
            pod_mtu: 1500,
            pod_netns: &netns,
            pod_up: true,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rules = rules();
        let outcome = rt.block_on(async {
            let mut undo = UndoLog::new(HOST);
            let outcome = make_port(
                &mut fx,
                &mut undo,
                &record(),
                secured.then_some(&rules),
                &veth,
            )
            .await;
            if outcome.is_err() {
                undo.run(&mut fx).await;
            }
            outcome
        });
        (outcome, fx.calls)
    }

    #[test]
    fn the_port_is_secured_before_its_veth_exists() {
        let (outcome, calls) = run(Recorder::default(), true);
        assert!(outcome.is_ok());
        assert_eq!(
            calls,
            [
                "create_record pg0123456789ab",
                "host_link_exists pg0123456789ab",
                "install_port_security pg0123456789ab",
                "create_veth pg0123456789ab",
            ]
        );
    }

    #[test]
    fn without_port_security_no_elements_are_made() {
        let (outcome, calls) = run(Recorder::default(), false);
        assert!(outcome.is_ok());
        assert_eq!(
            calls,
            [
                "create_record pg0123456789ab",
                "host_link_exists pg0123456789ab",
                "create_veth pg0123456789ab",
            ]
        );
    }

    /// Each failure, and exactly what is undone after it, newest first.
    #[test]
    fn failures_undo_what_was_made_in_reverse() {
        let cases: [(Recorder, &[&str]); 4] = [
            // The veth cannot be made: its elements go, then the record.
            (
                Recorder {
                    fail: Some("create_veth"),
                    ..Default::default()
                },
                &[
                    "create_record pg0123456789ab",
                    "host_link_exists pg0123456789ab",
                    "install_port_security pg0123456789ab",
                    "create_veth pg0123456789ab",
                    "remove_port_security pg0123456789ab",
                    "remove_record",
                ],
            ),
            // Installing fails half-way: what it made goes; no veth is ever made.
            (
                Recorder {
                    fail: Some("install_port_security"),
                    ..Default::default()
                },
                &[
                    "create_record pg0123456789ab",
                    "host_link_exists pg0123456789ab",
                    "install_port_security pg0123456789ab",
                    "remove_port_security pg0123456789ab",
                    "remove_record",
                ],
            ),
            // Another ADD owns the attachment: nothing is made, nothing undone.
            (
                Recorder {
                    record_exists: true,
                    ..Default::default()
                },
                &["create_record pg0123456789ab"],
            ),
            // An interface already has the name: its elements are not touched.
            (
                Recorder {
                    link_exists: true,
                    ..Default::default()
                },
                &[
                    "create_record pg0123456789ab",
                    "host_link_exists pg0123456789ab",
                    "remove_record",
                ],
            ),
        ];
        for (fx, want) in cases {
            let (outcome, calls) = run(fx, true);
            assert!(outcome.is_err(), "{calls:?}");
            assert_eq!(calls, want);
        }
    }
}
