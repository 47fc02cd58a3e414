//! Which link and address events are worth a reconcile. A node with VMs sees a
//! stream of events for their veths (made, enslaved, raised, deleted), and every
//! one of them used to cost a full dump and plan. The reconciler now says, after
//! each pass, which links it read and what of them it read ([`Interest`]); the
//! event task drops what cannot change a plan before it wakes anyone.
//!
//! An event counts when it is about:
//! - a link the daemon owns (exact mark, or its link group unmarked), an uplink,
//!   a link stacked on an uplink, or a link holding a name the plan wants, and
//!   changes something the planner reads of it (not a bridge's carrier or MAC,
//!   which follow its VM ports);
//! - a new link with a wanted name, in the daemon's link group, with its mark, or
//!   stacked on an uplink;
//! - a VM port of a draining bridge leaving it (the bridge goes with the last one);
//! - an address on an uplink (an untagged portgroup waits for it to have none).
//!
//! `AF_BRIDGE` notifications (bridge port state) never count: the planner reads
//! none of it, and the same change comes as an ordinary link event too.
//!
//! Level-triggered still: a dropped event can only be one that the last pass's
//! result already covers. The one gap is an event that arrives while a pass runs
//! and is judged by the interest from before it: such drops are kept and judged
//! again by the new interest when it is installed ([`Filter::install`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::AddressFamily;

use super::planner::{is_ours, Observed, Plan, LINK_GROUP};
use crate::naming;
use crate::netlink::LinkSummary;
use crate::nodeconfig::NodeConfig;

/// What the event task needs of one link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub link: LinkSummary,
    pub group: Option<u32>,
    pub deleted: bool,
}

impl LinkEvent {
    /// None for notifications that never count (`AF_BRIDGE` port state).
    pub fn from_message(msg: &LinkMessage, deleted: bool) -> Option<LinkEvent> {
        if msg.header.interface_family == AddressFamily::Bridge {
            return None;
        }
        let group = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Group(g) => Some(*g),
            _ => None,
        });
        Some(LinkEvent {
            link: LinkSummary::from_message(msg),
            group,
            deleted,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// A link the planner read: counts when its fingerprint changes.
    Link(u64),
    /// A VM port of the draining bridge with this index: counts when it leaves.
    Port(u32),
    /// Seen passing since the last pass: every change counts until the next one.
    Any,
}

/// What the last reconcile read. [`Interest::everything`] before the first one
/// and while the config is unusable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    everything: bool,
    /// Names the plan wants, and the uplinks'.
    names: HashSet<String>,
    uplink_names: HashSet<String>,
    watched: HashMap<u32, Watch>,
    uplinks: HashSet<u32>,
}

/// The planner's reading of a link: everything it compares. A bridge's carrier
/// and MAC follow its ports and are left out; an uplink's carrier is not.
fn fingerprint(link: &LinkSummary, uplink: bool) -> u64 {
    let mut h = DefaultHasher::new();
    (
        &link.name,
        &link.kind,
        link.controller,
        link.admin_up,
        link.mtu,
        &link.alias,
        link.link,
        link.link_netns_id,
        link.vlan_id,
    )
        .hash(&mut h);
    if uplink {
        link.lower_up.hash(&mut h);
    }
    // Our bridges' MACs are pinned: another one is drift to repair.
    if link.kind.as_deref() == Some("bridge") {
        link.mac.hash(&mut h);
    }
    h.finish()
}

impl Interest {
    pub fn everything() -> Interest {
        Interest {
            everything: true,
            ..Default::default()
        }
    }

    /// From the links a pass ended with and its plan.
    pub fn of(config: &NodeConfig, node: &str, observed: &Observed, plan: &Plan) -> Interest {
        let uplink_names: HashSet<String> = config
            .portgroups
            .iter()
            .filter_map(|pg| config.uplink_of(pg, node))
            .map(str::to_string)
            .collect();
        let mut names: HashSet<String> = plan.wanted.clone();
        names.extend(uplink_names.iter().cloned());
        let uplinks: HashSet<u32> = observed
            .links
            .iter()
            .filter(|l| uplink_names.contains(&l.name))
            .map(|l| l.index)
            .collect();
        let draining: HashSet<u32> = plan
            .portgroups
            .iter()
            .filter(|pg| pg.draining)
            .filter_map(|pg| observed.links.iter().find(|l| l.name == pg.bridge))
            .map(|l| l.index)
            .collect();
        let mut watched = HashMap::new();
        for link in &observed.links {
            let uplink = uplinks.contains(&link.index);
            let read = uplink
                || names.contains(&link.name)
                || is_ours(link, &observed.in_our_group)
                || (link.link.is_some_and(|l| uplinks.contains(&l))
                    && link.link_netns_id.is_none());
            if read {
                watched.insert(link.index, Watch::Link(fingerprint(link, uplink)));
            } else if let Some(bridge) = link.controller.filter(|c| draining.contains(c)) {
                watched.insert(link.index, Watch::Port(bridge));
            }
        }
        Interest {
            everything: false,
            names,
            uplink_names,
            watched,
            uplinks,
        }
    }

    fn judge_link(&self, e: &LinkEvent) -> bool {
        if self.everything {
            return true;
        }
        let link = &e.link;
        match self.watched.get(&link.index) {
            Some(Watch::Any) => true,
            Some(Watch::Link(fp)) => {
                e.deleted || fingerprint(link, self.uplinks.contains(&link.index)) != *fp
            }
            Some(Watch::Port(bridge)) => e.deleted || link.controller != Some(*bridge),
            None => {
                !e.deleted
                    && (self.names.contains(&link.name)
                        || e.group == Some(LINK_GROUP)
                        || link.alias.as_deref().is_some_and(naming::is_exact_mark)
                        || (link.link.is_some_and(|l| self.uplinks.contains(&l))
                            && link.link_netns_id.is_none()))
            }
        }
    }

    fn judge_address(&self, index: u32) -> bool {
        self.everything || self.uplinks.contains(&index)
    }
}

/// A dropped event kept while a pass runs.
#[derive(Debug, Clone)]
enum Dropped {
    Link(LinkEvent),
    Address(u32),
}

/// Drops kept per pass at most; more, and the new interest is not trusted with them.
const WINDOW_MAX: usize = 4096;

/// The interest in force, and the events dropped while a pass runs.
#[derive(Debug, Default)]
pub struct Filter {
    interest: Interest,
    window: Option<Vec<Dropped>>,
    window_overflowed: bool,
}

impl Filter {
    pub fn new() -> Filter {
        Filter {
            interest: Interest::everything(),
            ..Default::default()
        }
    }

    /// Whether a link event counts. One that does marks its link, so that what
    /// follows for it (an uplink's addresses right after it appears) counts too.
    pub fn link(&mut self, e: LinkEvent) -> bool {
        let wanted = self.interest.judge_link(&e);
        if wanted {
            if !e.deleted && !self.interest.everything {
                self.interest.watched.insert(e.link.index, Watch::Any);
                if self.interest.uplink_names.contains(&e.link.name) {
                    self.interest.uplinks.insert(e.link.index);
                }
            }
        } else {
            self.keep(Dropped::Link(e));
        }
        wanted
    }

    pub fn address(&mut self, index: u32) -> bool {
        let wanted = self.interest.judge_address(index);
        if !wanted {
            self.keep(Dropped::Address(index));
        }
        wanted
    }

    fn keep(&mut self, d: Dropped) {
        if let Some(w) = &mut self.window {
            if w.len() < WINDOW_MAX {
                w.push(d);
            } else {
                self.window_overflowed = true;
            }
        }
    }

    /// A pass is about to read the links: keep what is dropped from now on.
    pub fn open_window(&mut self) {
        self.window = Some(Vec::new());
        self.window_overflowed = false;
    }

    /// Puts the interest of the pass that just ended in force. True when an
    /// event dropped during the pass counts by it: another pass is due.
    pub fn install(&mut self, interest: Interest) -> bool {
        let window = self.window.take().unwrap_or_default();
        let again = self.window_overflowed
            || window.into_iter().any(|d| match d {
                Dropped::Link(e) => interest.judge_link(&e),
                Dropped::Address(index) => interest.judge_address(index),
            });
        self.window_overflowed = false;
        self.interest = interest;
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::planner::plan;
    use crate::naming::{owner_alias, untagged_bridge_name};

    const NODE: &str = "worker-3";

    fn link(index: u32, name: &str) -> LinkSummary {
        LinkSummary {
            index,
            name: name.into(),
            admin_up: true,
            lower_up: true,
            mtu: 1500,
            ..Default::default()
        }
    }

    /// A node with two untagged portgroups made (bridges 10, 11 on uplinks 3, 4),
    /// a VM port (20) on the first, a draining bridge (12) with its VM port (21),
    /// and a stranger (30).
    fn node() -> (NodeConfig, Observed) {
        let config = NodeConfig::parse(
            br#"{"uplink": "eth1", "portgroups": [
                {"name": "a", "untagged": true},
                {"name": "b", "untagged": true, "uplink": "eth2"}]}"#,
        )
        .expect("config");
        let bridge = |index, uplink: &str, pg: &str| LinkSummary {
            kind: Some("bridge".into()),
            mac: Some(crate::naming::bridge_mac(
                NODE,
                &untagged_bridge_name(uplink),
            )),
            alias: Some(owner_alias("bridge", pg, uplink, 0)),
            ..link(index, &untagged_bridge_name(uplink))
        };
        let port = |index, name: &str, controller| LinkSummary {
            kind: Some("veth".into()),
            controller: Some(controller),
            ..link(index, name)
        };
        let links = vec![
            link(1, "lo"),
            LinkSummary {
                controller: Some(10),
                ..link(3, "eth1")
            },
            LinkSummary {
                controller: Some(11),
                ..link(4, "eth2")
            },
            bridge(10, "eth1", "a"),
            bridge(11, "eth2", "b"),
            bridge(12, "eth9", "old"),
            port(20, "pg0123456789ab", 10),
            port(21, "pg00000000000f", 12),
            port(30, "veth-other", 0),
        ];
        let observed = Observed {
            links,
            ..Default::default()
        };
        (config, observed)
    }

    fn interest() -> Interest {
        let (config, observed) = node();
        let p = plan(&config, NODE, None, &observed);
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(p.portgroups.iter().any(|pg| pg.draining));
        Interest::of(&config, NODE, &observed, &p)
    }

    fn get(index: u32) -> LinkSummary {
        node()
            .1
            .links
            .into_iter()
            .find(|l| l.index == index)
            .expect("link")
    }

    fn ev(link: LinkSummary, deleted: bool) -> LinkEvent {
        LinkEvent {
            link,
            group: None,
            deleted,
        }
    }

    #[test]
    fn what_counts() {
        let i = interest();
        let cases: Vec<(&str, LinkEvent, bool)> = vec![
            // VM ports of live portgroups, and strangers: never.
            ("VM port made", ev(link(40, "pg0000000000aa"), false), false),
            (
                "VM port enslaved",
                ev(
                    LinkSummary {
                        controller: Some(10),
                        ..link(40, "pg0000000000aa")
                    },
                    false,
                ),
                false,
            ),
            ("VM port deleted", ev(get(20), true), false),
            (
                "VM port down",
                ev(
                    LinkSummary {
                        admin_up: false,
                        ..get(20)
                    },
                    false,
                ),
                false,
            ),
            ("stranger deleted", ev(get(30), true), false),
            // Our bridge's carrier follows its ports: not a change. Its MAC is
            // pinned: another one is drift.
            (
                "bridge carrier",
                ev(
                    LinkSummary {
                        lower_up: false,
                        ..get(10)
                    },
                    false,
                ),
                false,
            ),
            (
                "bridge MAC changed",
                ev(
                    LinkSummary {
                        mac: Some("02:00:00:00:00:01".parse().expect("mac")),
                        ..get(10)
                    },
                    false,
                ),
                true,
            ),
            ("bridge unchanged", ev(get(10), false), false),
            // Our links and uplinks changing what the planner reads: always.
            (
                "bridge down",
                ev(
                    LinkSummary {
                        admin_up: false,
                        ..get(10)
                    },
                    false,
                ),
                true,
            ),
            ("bridge deleted", ev(get(10), true), true),
            (
                "uplink carrier",
                ev(
                    LinkSummary {
                        lower_up: false,
                        ..get(3)
                    },
                    false,
                ),
                true,
            ),
            (
                "uplink out of its bridge",
                ev(
                    LinkSummary {
                        controller: None,
                        ..get(4)
                    },
                    false,
                ),
                true,
            ),
            // New links that may be ours or in the way.
            (
                "wanted name",
                ev(link(41, &untagged_bridge_name("eth1")), false),
                true,
            ),
            (
                "our group",
                LinkEvent {
                    group: Some(LINK_GROUP),
                    ..ev(link(42, "x"), false)
                },
                true,
            ),
            (
                "stacked on an uplink",
                ev(
                    LinkSummary {
                        link: Some(3),
                        ..link(43, "eth1.7")
                    },
                    false,
                ),
                true,
            ),
            (
                "alias only looks like a mark",
                ev(
                    LinkSummary {
                        alias: Some("portgroup: reserved".into()),
                        ..link(44, "br-admin")
                    },
                    false,
                ),
                false,
            ),
            // A draining bridge's VM port leaving: its bridge may go now.
            ("draining port deleted", ev(get(21), true), true),
            (
                "draining port released",
                ev(
                    LinkSummary {
                        controller: None,
                        ..get(21)
                    },
                    false,
                ),
                true,
            ),
            (
                "draining port down",
                ev(
                    LinkSummary {
                        admin_up: false,
                        ..get(21)
                    },
                    false,
                ),
                false,
            ),
        ];
        for (what, e, want) in cases {
            assert_eq!(i.judge_link(&e), want, "{what}");
            assert!(Interest::everything().judge_link(&e), "{what}");
        }
        assert!(i.judge_address(3) && i.judge_address(4));
        assert!(!i.judge_address(20) && !i.judge_address(10));
    }

    #[test]
    fn a_link_that_counted_counts_until_the_next_pass() {
        // eth2 is missing: its portgroup waits for it.
        let (config, mut observed) = node();
        observed.links.retain(|l| l.index != 4);
        let mut f = Filter::new();
        f.install(Interest::of(
            &config,
            NODE,
            &observed,
            &plan(&config, NODE, None, &observed),
        ));
        assert!(!f.address(60));
        // It appears, and gets an address before the pass that it woke has run.
        assert!(f.link(ev(link(60, "eth2"), false)));
        assert!(f.address(60), "an address on the new uplink");
        assert!(f.link(ev(link(60, "eth2"), false)));
    }

    #[test]
    fn drops_during_a_pass_are_judged_again_by_its_interest() {
        let (config, mut observed) = node();
        let mut f = Filter::new();
        f.install(Interest::of(
            &config,
            NODE,
            &observed,
            &plan(&config, NODE, None, &observed),
        ));
        f.open_window();
        // An address on link 60 while the pass runs: not an uplink yet...
        assert!(!f.address(60));
        // ...but the pass found 60 to be one (eth2 came back under a new index).
        observed.links.retain(|l| l.index != 4);
        observed.links.push(link(60, "eth2"));
        let after = Interest::of(
            &config,
            NODE,
            &observed,
            &plan(&config, NODE, None, &observed),
        );
        assert!(f.install(after.clone()), "another pass is due");
        f.open_window();
        assert!(!f.link(ev(get(20), true)));
        assert!(!f.install(after), "nothing dropped that counts");
    }
}
