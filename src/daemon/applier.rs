//! Executes a plan. Every operation is tried even when an earlier one failed: a
//! portgroup that cannot be made must not hold up the others, and the failures
//! end up in the reasons of the portgroups they belong to.

use crate::mac::MacAddr;
use std::collections::HashMap;
use std::fmt;

use nix::libc;

use super::planner::{Observed, Operation, Step};

/// A failed link operation, already in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkError {
    pub errno: Option<i32>,
    pub message: String,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl LinkError {
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno, Some(libc::ENODEV) | Some(libc::ENOENT))
    }
}

/// The link operations the daemon needs, small enough for a fake to stand in for
/// the kernel in unit tests of the reconcile loop.
#[allow(async_fn_in_trait)] // used on one thread only; no Send bound wanted
pub trait Links {
    async fn dump(&self) -> Result<Observed, LinkError>;
    async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError>;
    /// Created down, in [`super::planner::LINK_GROUP`].
    async fn create_vlan(
        &self,
        name: &str,
        parent: u32,
        vid: u16,
        mtu: u32,
    ) -> Result<(), LinkError>;
    /// Created down, in [`super::planner::LINK_GROUP`], at `mtu`, with `mac` as
    /// its address: pinned, whatever ports come and go. Until its MTU is set
    /// again it follows its smallest port's.
    async fn create_bridge(&self, name: &str, mtu: u32, mac: MacAddr) -> Result<(), LinkError>;
    /// Both ends in this namespace, created down, in [`super::planner::LINK_GROUP`].
    async fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(), LinkError>;
    /// Takes the link out of its bridge.
    async fn release_controller(&self, index: u32) -> Result<(), LinkError>;
    async fn set_alias(&self, index: u32, alias: &str) -> Result<(), LinkError>;
    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError>;
    async fn set_address(&self, index: u32, mac: MacAddr) -> Result<(), LinkError>;
    async fn set_controller(&self, index: u32, controller: u32) -> Result<(), LinkError>;
    async fn set_up(&self, index: u32) -> Result<(), LinkError>;
    async fn delete(&self, index: u32) -> Result<(), LinkError>;
    /// Puts the native-VLAN guard of trunk portgroups in place
    /// ([`crate::portsec::ensure_native_guard`]); Ok(true) when it had to be made.
    async fn ensure_native_guard(&self) -> Result<bool, LinkError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub portgroup: String,
    pub message: String,
    /// The operation's text: the key it is held under while it backs off.
    pub op: String,
    /// Not tried this time: still backing off from an earlier failure.
    pub held: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub done: usize,
    pub failures: Vec<Failure>,
}

pub async fn apply<L: Links>(links: &L, steps: &[Step]) -> Applied {
    apply_holding(links, steps, &HashMap::new()).await
}

/// Like [`apply`], but an operation whose text is a key of `held` is not tried:
/// it failed recently and waits out its backoff, and its last failure (the
/// value) is reported again. A failed netlink request can itself raise a link
/// event (a failed VLAN creation notifies its parent); retrying at once on that
/// event would spin.
pub async fn apply_holding<L: Links>(
    links: &L,
    steps: &[Step],
    held: &HashMap<String, String>,
) -> Applied {
    let mut out = Applied::default();
    // Links whose creation failed: the steps that would attach or raise them can
    // only fail too, and would bury the one reason that matters.
    let mut not_made: Vec<&str> = Vec::new();
    let indexes = Indexes::default();
    for step in steps {
        if step.op.needs().iter().any(|n| not_made.contains(n)) {
            // What it would make is not made either.
            not_made.extend(step.op.makes());
            continue;
        }
        let text = step.op.to_string();
        if let Some(message) = held.get(&text) {
            not_made.extend(step.op.makes());
            out.failures.push(Failure {
                portgroup: step.portgroup.clone(),
                message: message.clone(),
                op: text,
                held: true,
            });
            continue;
        }
        match apply_one(links, &indexes, &step.op).await {
            Ok(()) => {
                tracing::info!(portgroup = %step.portgroup, "{}", step.op);
                out.done += 1;
            }
            Err(e) => {
                not_made.extend(step.op.makes());
                let hint = match (&step.op, e.errno) {
                    (Operation::CreateVlan { .. }, Some(libc::EOPNOTSUPP)) => {
                        " (this kernel has no 802.1Q VLAN support: load the 8021q module)"
                    }
                    _ => "",
                };
                let message = format!("{}: {e}{hint}", step.op);
                tracing::warn!(portgroup = %step.portgroup, "failed to {message}");
                out.failures.push(Failure {
                    portgroup: step.portgroup.clone(),
                    message: format!("failed to {message}"),
                    op: text,
                    held: false,
                });
            }
        }
    }
    out
}

/// Indexes looked up during one apply: a link is named by several steps (made,
/// marked, attached, raised), and each lookup is a netlink round trip. Any
/// delete empties it, so a name made again is looked up again.
#[derive(Default)]
struct Indexes(std::cell::RefCell<HashMap<String, u32>>);

impl Indexes {
    async fn of(&self, links: &impl Links, name: &str) -> Result<u32, LinkError> {
        if let Some(index) = self.0.borrow().get(name) {
            return Ok(*index);
        }
        let index = links.index_of(name).await?.ok_or_else(|| LinkError {
            errno: Some(libc::ENODEV),
            message: format!("{name} does not exist"),
        })?;
        self.0.borrow_mut().insert(name.to_string(), index);
        Ok(index)
    }
}

async fn apply_one(links: &impl Links, indexes: &Indexes, op: &Operation) -> Result<(), LinkError> {
    let index = |name: &str| {
        let name = name.to_string();
        async move { indexes.of(links, &name).await }
    };
    match op {
        Operation::SetUp { name } => links.set_up(index(name).await?).await,
        Operation::CreateVlan {
            name,
            parent,
            parent_index,
            vid,
            mtu,
            alias,
        } => {
            let parent = match parent_index {
                Some(i) => *i,
                None => index(parent).await?,
            };
            links.create_vlan(name, parent, *vid, *mtu).await?;
            links.set_alias(index(name).await?, alias).await
        }
        Operation::CreateVeth {
            name,
            peer,
            mtu,
            alias,
            peer_alias,
        } => {
            links.create_veth(name, peer, *mtu).await?;
            links.set_alias(index(name).await?, alias).await?;
            links.set_alias(index(peer).await?, peer_alias).await
        }
        Operation::ReleaseController { name } => links.release_controller(index(name).await?).await,
        Operation::CreateBridge {
            name,
            mtu,
            mac,
            alias,
        } => {
            // A bridge's MTU given at creation follows its smallest port's; one
            // set afterwards stays whatever ports join. Setting the value it
            // has is a no-op to the kernel, so it is made at a neighbour of its
            // MTU and set once: once, because every MTU change walks the
            // namespace's whole IPv6 routing table (rt6_mtu_change).
            let neighbour = if *mtu > crate::nodeconfig::MTU_MIN {
                mtu - 1
            } else {
                mtu + 1
            };
            links.create_bridge(name, neighbour, *mac).await?;
            let bridge = index(name).await?;
            links.set_mtu(bridge, *mtu).await?;
            links.set_alias(bridge, alias).await
        }
        Operation::SetController { name, controller } => {
            let controller = index(controller).await?;
            links.set_controller(index(name).await?, controller).await
        }
        Operation::SetMtu { name, mtu } => links.set_mtu(index(name).await?, *mtu).await,
        Operation::SetAlias { name, alias } => links.set_alias(index(name).await?, alias).await,
        Operation::SetAddress { name, mac } => links.set_address(index(name).await?, *mac).await,
        Operation::Delete { index, .. } => {
            // A veth's peer and a parent's VLANs go with it: forget them all.
            indexes.0.borrow_mut().clear();
            match links.delete(*index).await {
                // Someone else removed it first: what we wanted.
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            }
        }
    }
}
