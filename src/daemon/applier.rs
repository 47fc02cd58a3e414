//! Executes a plan. Every operation is tried even when an earlier one failed: a
//! portgroup that cannot be made must not hold up the others, and the failures
//! end up in the reasons of the portgroups they belong to.

use crate::mac::MacAddr;
use std::collections::{HashMap, HashSet};
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
    /// Created down, in [`super::planner::LINK_GROUP`], already a port of
    /// `placed`'s controller when it names one.
    async fn create_vlan(
        &self,
        name: &str,
        parent: u32,
        vid: u16,
        mtu: u32,
        placed: Placement,
    ) -> Result<(), LinkError>;
    /// Created down, in [`super::planner::LINK_GROUP`], at `mtu`, with `mac` as
    /// its address: pinned, whatever ports come and go. Until its MTU is set
    /// again it follows its smallest port's.
    async fn create_bridge(&self, name: &str, mtu: u32, mac: MacAddr) -> Result<(), LinkError>;
    /// Both ends in this namespace, created down, in
    /// [`super::planner::LINK_GROUP`]; `name` placed as `placed` says.
    async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        placed: Placement,
    ) -> Result<(), LinkError>;
    /// Takes the link out of its bridge.
    async fn release_controller(&self, index: u32) -> Result<(), LinkError>;
    async fn set_alias(&self, index: u32, alias: &str) -> Result<(), LinkError>;
    /// The alias of the link called `name`, found by the kernel: no lookup first.
    async fn set_alias_by_name(&self, name: &str, alias: &str) -> Result<(), LinkError>;
    /// Both in one request.
    async fn set_mtu_and_alias(&self, index: u32, mtu: u32, alias: &str) -> Result<(), LinkError>;
    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError>;
    async fn set_address(&self, index: u32, mac: MacAddr) -> Result<(), LinkError>;
    async fn set_controller(&self, index: u32, controller: u32) -> Result<(), LinkError>;
    async fn set_up(&self, index: u32) -> Result<(), LinkError>;
    async fn delete(&self, index: u32) -> Result<(), LinkError>;
    /// Puts the native-VLAN guard of trunk portgroups in place
    /// ([`crate::portsec::ensure_native_guard`]); Ok(true) when it had to be made.
    async fn ensure_native_guard(&self) -> Result<bool, LinkError>;
}

/// Where a new link goes as it is made: the kernel takes IFLA_MASTER in the
/// RTM_NEWLINK that creates it (one request where the floor takes two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub controller: Option<u32>,
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
    let order = schedule(steps);
    let later = Later::of(steps, &order);
    // Steps a link's creation already did (attach, raise), by position in `steps`.
    let mut done_by_create: HashSet<usize> = HashSet::new();
    for &at in &order {
        let step = &steps[at];
        if done_by_create.contains(&at) {
            tracing::info!(portgroup = %step.portgroup, "{}", step.op);
            out.done += 1;
            continue;
        }
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
        // A link's attach, later in the plan, goes into its creation when
        // nothing holds it back (backing off, its bridge not made). Not its
        // raise: links come up last (see `schedule`).
        let mut fused = None;
        let mut placed = Placement::default();
        if let Operation::CreateVlan { name, .. } | Operation::CreateVeth { name, .. } = &step.op {
            let attach = later.attach.get(name.as_str()).copied().filter(|&i| {
                let op = &steps[i].op;
                !held.contains_key(&op.to_string())
                    && !op.needs().iter().any(|n| not_made.contains(n))
            });
            if let Some(i) = attach {
                if let Operation::SetController { controller, .. } = &steps[i].op {
                    // One that cannot be found: the attach step says so.
                    if let Ok(index) = indexes.of(links, controller).await {
                        placed.controller = Some(index);
                        fused = Some(i);
                    }
                }
            }
        }
        let result = apply_one(links, &indexes, &step.op, placed).await;
        if result.is_ok() {
            done_by_create.extend(fused);
        }
        match result {
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

/// The order steps run in (positions in `steps`): the plan's, except that a
/// bridge whose name no earlier step touches is made first. A port can then be
/// created already attached to it, and every bridge's MTU is set while no link
/// is up yet: an MTU change walks the namespace's IPv6 routes (rt6_mtu_change),
/// which up links add to, so set after N ports came up it would cost O(N) each.
pub fn schedule(steps: &[Step]) -> Vec<usize> {
    let mut touched: HashSet<&str> = HashSet::new();
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for (at, step) in steps.iter().enumerate() {
        match &step.op {
            Operation::CreateBridge { name, .. } if !touched.contains(name.as_str()) => {
                first.push(at)
            }
            _ => rest.push(at),
        }
        touched.insert(step.op.link_name());
        touched.extend(step.op.needs());
        touched.extend(step.op.makes());
    }
    first.extend(rest);
    first
}

/// The attach step of each link, when it runs after the link's creation.
struct Later<'a> {
    attach: HashMap<&'a str, usize>,
}

impl<'a> Later<'a> {
    fn of(steps: &'a [Step], order: &[usize]) -> Self {
        let mut created: HashSet<&str> = HashSet::new();
        let mut later = Later {
            attach: HashMap::new(),
        };
        for &at in order {
            match &steps[at].op {
                Operation::CreateVlan { name, .. } => {
                    created.insert(name);
                }
                Operation::CreateVeth { name, peer, .. } => {
                    created.insert(name);
                    created.insert(peer);
                }
                Operation::SetController { name, .. } if created.contains(name.as_str()) => {
                    later.attach.entry(name).or_insert(at);
                }
                _ => {}
            }
        }
        later
    }
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

async fn apply_one(
    links: &impl Links,
    indexes: &Indexes,
    op: &Operation,
    placed: Placement,
) -> Result<(), LinkError> {
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
            links.create_vlan(name, parent, *vid, *mtu, placed).await?;
            // By name: its index is looked up only if a later step needs it.
            links.set_alias_by_name(name, alias).await
        }
        Operation::CreateVeth {
            name,
            peer,
            mtu,
            alias,
            peer_alias,
        } => {
            links.create_veth(name, peer, *mtu, placed).await?;
            links.set_alias_by_name(name, alias).await?;
            links.set_alias_by_name(peer, peer_alias).await
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
            // Its ports are created naming it: its index is needed anyway.
            let bridge = index(name).await?;
            links.set_mtu_and_alias(bridge, *mtu, alias).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::fake::{FakeKernel, FakeLinks};
    use crate::netlink::LinkSummary;

    fn step(op: Operation) -> Step {
        Step {
            portgroup: "pg".into(),
            op,
        }
    }

    fn up(name: &str) -> Operation {
        Operation::SetUp { name: name.into() }
    }

    fn vlan(name: &str, parent: &str) -> Operation {
        Operation::CreateVlan {
            name: name.into(),
            parent: parent.into(),
            parent_index: None,
            vid: 100,
            mtu: 1500,
            alias: format!("mark of {name}"),
        }
    }

    fn bridge(name: &str) -> Operation {
        Operation::CreateBridge {
            name: name.into(),
            mtu: 1500,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            alias: format!("mark of {name}"),
        }
    }

    fn attach(name: &str, controller: &str) -> Operation {
        Operation::SetController {
            name: name.into(),
            controller: controller.into(),
        }
    }

    /// A node with its uplink eth1 (index 2), up.
    fn node() -> FakeLinks {
        FakeLinks(std::cell::RefCell::new(FakeKernel::with(vec![
            LinkSummary {
                index: 2,
                name: "eth1".into(),
                mtu: 1500,
                admin_up: true,
                lower_up: true,
                ..Default::default()
            },
        ])))
    }

    fn get(links: &FakeLinks, name: &str) -> LinkSummary {
        links.0.borrow().get(name).cloned().expect(name)
    }

    fn run(links: &FakeLinks, steps: &[Step], held: &[(&str, &str)]) -> Applied {
        let held = held
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        futures::executor::block_on(apply_holding(links, steps, &held))
    }

    #[test]
    fn new_bridges_go_first_but_never_before_a_step_on_their_name() {
        let steps: Vec<Step> = [
            up("eth1"),
            vlan("v1", "eth1"),
            bridge("b1"),
            Operation::Delete {
                index: 9,
                name: "b2".into(),
            },
            bridge("b2"),
            attach("v1", "b1"),
            bridge("b3"),
            up("b1"),
        ]
        .into_iter()
        .map(step)
        .collect();
        assert_eq!(schedule(&steps), vec![2, 6, 0, 1, 3, 4, 5, 7]);
        assert_eq!(schedule(&[]), Vec::<usize>::new());
    }

    #[test]
    fn a_vlan_is_created_attached_in_one_request_and_raised_last() {
        let links = node();
        let steps: Vec<Step> = [
            vlan("v1", "eth1"),
            bridge("b1"),
            attach("v1", "b1"),
            up("v1"),
            up("b1"),
        ]
        .into_iter()
        .map(step)
        .collect();
        let applied = run(&links, &steps, &[]);
        assert!(applied.failures.is_empty(), "{:?}", applied.failures);
        assert_eq!(applied.done, 5);
        let (v1, b1) = (get(&links, "v1"), get(&links, "b1"));
        assert_eq!(v1.controller, Some(b1.index));
        assert!(v1.admin_up && b1.admin_up);
        assert_eq!(v1.alias.as_deref(), Some("mark of v1"));
        assert_eq!(b1.alias.as_deref(), Some("mark of b1"));
        assert_eq!(
            links.0.borrow().calls,
            [
                "create_bridge b1",
                "index_of b1",
                "set_mtu_and_alias 3 1500",
                "index_of eth1",
                "create_vlan v1",
                "set_alias_by_name v1",
                "index_of v1",
                "set_up 4",
                "set_up 3",
            ],
            "one request makes and attaches v1"
        );
    }

    /// Bridge b1, then VLAN v1 on eth1 made, attached to b1 and brought up.
    fn bridge_and_its_vlan_port() -> Vec<Step> {
        [
            bridge("b1"),
            vlan("v1", "eth1"),
            attach("v1", "b1"),
            up("v1"),
        ]
        .into_iter()
        .map(step)
        .collect()
    }

    /// An attach that is backing off is not slipped into the creation.
    #[test]
    fn a_held_attach_stays_held() {
        let links = node();
        let steps = bridge_and_its_vlan_port();
        let applied = run(&links, &steps, &[("attach v1 to bridge b1", "it failed")]);
        assert_eq!(applied.done, 3);
        assert_eq!(applied.failures.len(), 1);
        assert_eq!(applied.failures[0].message, "it failed");
        let v1 = get(&links, "v1");
        assert_eq!(v1.controller, None);
        assert!(v1.admin_up);
    }

    /// A bridge that could not be made: its port is still made (down, alone),
    /// and the one failure is the bridge's.
    #[test]
    fn a_port_of_a_bridge_not_made_is_made_alone() {
        let links = node();
        links.0.borrow_mut().links.push(LinkSummary {
            index: 50,
            name: "b1".into(),
            ..Default::default()
        });
        let steps = bridge_and_its_vlan_port();
        let applied = run(&links, &steps, &[]);
        assert_eq!(applied.failures.len(), 1, "{:?}", applied.failures);
        assert!(applied.failures[0].op.starts_with("create bridge b1"));
        let v1 = get(&links, "v1");
        assert_eq!(v1.controller, None);
    }
}
