//! Self-healing: the table as the kernel holds it, compared with the ports the
//! attachment records want, and the one set of changes that makes them agree.
//!
//! The decision ([`plan`]) is pure; [`heal`] reads the kernel, plans and
//! commits, re-reading and re-planning when a concurrent writer (a plugin ADD
//! or DEL) wins a race. Nothing is written when nothing differs, so a repair
//! that raises nf_tables notifications is followed by one quiet pass, never a loop.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use nix::libc;

use super::nfnl::{msg, next_generation, Batch, Msg, Nfnl, NlError, NFPROTO_BRIDGE, NLM_F_REQUEST};
use super::ruleset::{bootstrap, expected_comments, IFNAMSIZ, NFTA_TABLE_NAME, SETS, TABLE};
use super::ruleset::{SET_FCFS_BINDINGS, SET_FCFS_CLAIMED, SET_PORTS};
use super::{claimed_addrs, claims_to_release, declared_ip6, ip6_holders, ip6_tail};
use super::{dump_set, ifname_key, name_of, push_elems, rule_comments, with_retries};
use super::{PortElems, PortRules};
use crate::error::Error;

/// The state of the table itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    /// No `table bridge portgroup` (an `nft flush ruleset`, a deleted table).
    Missing,
    /// The table is there but its chains or rules are not exactly this build's
    /// (a chain deleted or flushed, a rule deleted, an older layout).
    Damaged,
    Current,
}

/// One element: its set and its key (the 16-byte ifname first).
pub type Element = (&'static str, Vec<u8>);

/// What the kernel holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub table: TableState,
    pub elements: BTreeSet<Element>,
}

/// What to repair, and what it is for the log and the metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Recreate the table (`Some(TableState::Missing)`) or rebuild its chains
    /// (`Some(TableState::Damaged)`) before touching elements.
    pub rebuild: Option<TableState>,
    pub add: Vec<Element>,
    pub delete: Vec<Element>,
    /// Wanted ports whose elements were missing or different.
    pub repaired_ports: Vec<String>,
    /// Ports that no record owns and whose interface is gone: all their elements go.
    pub orphans: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.rebuild.is_none() && self.add.is_empty() && self.delete.is_empty()
    }
}

fn port_of(key: &[u8]) -> String {
    name_of(&key[..IFNAMSIZ.min(key.len())])
}

/// Decides the repair.
///
/// - `want`: the ports whose records say what they carry and whose interface
///   exists; each gets exactly its elements (missing ones added, others removed).
/// - `keep`: every port some record names (whether or not it is in `want`: an
///   ADD still running, a DEL in flight); never an orphan.
/// - `exists`: whether an interface of that name exists. A port whose interface
///   exists is never an orphan either: taking rules off a live port is the one
///   mistake that opens it, and a leaked live veth keeps its restrictions.
///
/// The table is created only when some port wants it; a damaged table is rebuilt
/// whenever it exists (the same rebuild any install does).
pub fn plan(
    installed: &Installed,
    want: &[PortRules],
    keep: &HashSet<String>,
    exists: &dyn Fn(&str) -> bool,
) -> Plan {
    let mut p = Plan {
        rebuild: match installed.table {
            TableState::Missing if !want.is_empty() => Some(TableState::Missing),
            TableState::Damaged => Some(TableState::Damaged),
            _ => None,
        },
        ..Plan::default()
    };
    let mut by_port: BTreeMap<String, BTreeSet<&Element>> = BTreeMap::new();
    for e in &installed.elements {
        by_port.entry(port_of(&e.1)).or_default().insert(e);
    }
    let mut wanted_names = HashSet::new();
    for rules in want {
        let Ok(ifkey) = ifname_key(&rules.host_veth) else {
            continue;
        };
        wanted_names.insert(rules.host_veth.clone());
        let wanted: BTreeSet<Element> = PortElems::wanted(rules).keys(&ifkey).into_iter().collect();
        let have = by_port.remove(&rules.host_veth).unwrap_or_default();
        let add: Vec<Element> = wanted
            .iter()
            .filter(|e| !have.contains(e))
            .cloned()
            .collect();
        let delete: Vec<Element> = have
            .iter()
            .filter(|e| !wanted.contains(**e))
            .map(|e| (*e).clone())
            .collect();
        if !add.is_empty() || !delete.is_empty() {
            p.repaired_ports.push(rules.host_veth.clone());
        }
        p.add.extend(add);
        p.delete.extend(delete);
    }
    for (port, elements) in by_port {
        if keep.contains(&port) || wanted_names.contains(&port) || exists(&port) {
            continue;
        }
        p.delete.extend(elements.into_iter().cloned());
        p.orphans.push(port);
    }
    p
}

/// Whether the table exists: one GET (a filtered rule dump of a missing
/// table is merely empty on current kernels, like that of a table whose
/// chains were all deleted).
fn table_exists(nl: &mut Nfnl) -> Result<bool, NlError> {
    let mut m = Msg::new(msg::GETTABLE, NLM_F_REQUEST, NFPROTO_BRIDGE);
    m.str(NFTA_TABLE_NAME, TABLE);
    match nl.request(m, "looking up the port-security table") {
        Ok(_) => Ok(true),
        Err(e) if e.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

fn observe(nl: &mut Nfnl) -> Result<Installed, NlError> {
    let comments = match table_exists(nl)? {
        true => rule_comments(nl)?,
        false => None,
    };
    let table = match comments {
        None => TableState::Missing,
        Some(mut have) => {
            let mut want = expected_comments();
            have.sort();
            want.sort();
            if have == want {
                TableState::Current
            } else {
                TableState::Damaged
            }
        }
    };
    let mut elements = BTreeSet::new();
    if table != TableState::Missing {
        for (set, _, _) in SETS {
            for key in dump_set(nl, set)? {
                elements.insert((set, key));
            }
        }
    }
    Ok(Installed { table, elements })
}

fn unsupported(e: &NlError) -> bool {
    matches!(
        e.errno,
        libc::EAFNOSUPPORT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT
    )
}

/// Reads the table, plans with [`plan`] and commits the plan; returns what was
/// done (an empty plan when everything was in place).
///
/// `recorded` gives the ports the attachment records name now. It is asked at
/// most once per attempt, and only when some port is an orphan candidate
/// (elements, no interface, not in `keep`): a port whose ADD wrote its record
/// after `keep` was taken is never an orphan.
pub fn heal(
    want: &[PortRules],
    keep: &HashSet<String>,
    exists: &dyn Fn(&str) -> bool,
    recorded: &dyn Fn() -> HashSet<String>,
) -> Result<Plan, Error> {
    with_retries("verifying port security", |nl| {
        // Read first: orphans are deleted only if nothing was committed since
        // (see below).
        let mut generation = nl.generation()?;
        let installed = match observe(nl) {
            Ok(installed) => installed,
            // A kernel without nf_tables for bridges holds no rules; that only
            // matters (and is an error) where a port wants some.
            Err(e) if want.is_empty() && unsupported(&e) => return Ok(Plan::default()),
            Err(e) => return Err(e),
        };
        let named_now = std::cell::OnceCell::new();
        let never_orphan =
            |name: &str| exists(name) || named_now.get_or_init(recorded).contains(name);
        let mut p = plan(&installed, want, keep, &never_orphan);
        let (release, claim) = fcfs_follow(nl, &installed, want, &p.orphans)?;
        p.delete.extend(release);
        p.add.extend(claim);
        // An orphan is a port no record named when the directory was read, and
        // a DEL leaves its port's elements to this sweep (crate::sweeper): an
        // ADD of the same name (same container and interface) may have written
        // its record and installed its elements since. Its commit moved the
        // generation on, so deleting on the generation read before the
        // elements fails (ERESTART) rather than strip the new port; the retry
        // reads the directory again and finds its record.
        let guard = !p.orphans.is_empty();
        let mut commit = |nl: &mut Nfnl, batch: Batch| -> Result<(), NlError> {
            nl.commit_at(batch, guard.then_some(generation))?;
            generation = next_generation(generation);
            Ok(())
        };
        if p.rebuild.is_some() {
            let mut batch = Batch::new();
            bootstrap(&mut batch);
            commit(nl, batch)?;
        }
        // A port's `ports` element goes last, so a sweep cut short between two
        // batches leaves it with its other elements: an ADD of the same name
        // then finds it and clears them all (install_new).
        p.delete.sort_by_key(|(set, _)| *set == SET_PORTS);
        // Deletions first, so a port's stale element never sits beside its new one.
        // Bounded transactions: the kernel takes a batch in one message.
        for (kind, elements, what) in [
            (msg::DELSETELEM, &p.delete, "deleting"),
            (msg::NEWSETELEM, &p.add, "restoring"),
        ] {
            for chunk in elements.chunks(512) {
                let mut batch = Batch::new();
                push_elems(&mut batch, kind, chunk, what);
                commit(nl, batch)?;
            }
        }
        Ok(p)
    })
}

/// What the FCFS sets need after the per-port repair: (deletions, additions).
/// Orphans' DAD bindings go and the addresses only they held are released;
/// every wanted port's declared IPv6 addresses are claimed (a rebuilt table
/// starts with none, and no DAD will come for them).
fn fcfs_follow(
    nl: &mut Nfnl,
    installed: &Installed,
    want: &[PortRules],
    orphans: &[String],
) -> Result<(Vec<Element>, Vec<Element>), NlError> {
    let declared: BTreeSet<[u8; 16]> = want
        .iter()
        .flat_map(|r| declared_ip6(&PortElems::wanted(r)))
        .collect();
    if installed.table == TableState::Missing || (declared.is_empty() && orphans.is_empty()) {
        // A missing table is rebuilt empty: every declared address is free.
        let claim = declared
            .iter()
            .map(|a| (SET_FCFS_CLAIMED, a.to_vec()))
            .collect();
        return Ok((Vec::new(), claim));
    }
    let claimed = claimed_addrs(nl)?;
    let mut release = Vec::new();
    if !orphans.is_empty() {
        let orphaned = |key: &[u8]| orphans.iter().any(|o| *o == port_of(key));
        let holders = ip6_holders(nl)?;
        release.extend(
            holders
                .iter()
                .filter(|(set, key)| *set == SET_FCFS_BINDINGS && orphaned(key))
                .cloned(),
        );
        let (gone, staying): (Vec<_>, Vec<_>) = holders.iter().partition(|(_, key)| orphaned(key));
        release.extend(claims_to_release(
            gone.iter().filter_map(|(_, key)| ip6_tail(key)),
            staying
                .iter()
                .filter_map(|(_, key)| ip6_tail(key))
                .chain(declared.iter().copied()),
            &claimed,
        ));
    }
    let claim = declared
        .iter()
        .filter(|a| !claimed.contains(*a))
        .map(|a| (SET_FCFS_CLAIMED, a.to_vec()))
        .collect();
    Ok((release, claim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::MacAddr;
    use crate::portsec::ruleset::{SET_IP4, SET_LOCKED, SET_MAC, SET_PORTS};

    fn rules(port: &str, last: u8, ips: &[&str]) -> PortRules {
        PortRules {
            host_veth: port.into(),
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            allow_router_advertisements: false,
            allow_dhcp_server: false,
            trunk: false,
        }
    }

    fn elements(r: &PortRules) -> BTreeSet<Element> {
        PortElems::wanted(r)
            .keys(&ifname_key(&r.host_veth).unwrap())
            .into_iter()
            .collect()
    }

    fn key(port: &str, tail: &[u8]) -> Vec<u8> {
        let mut k = ifname_key(port).unwrap().to_vec();
        k.extend_from_slice(tail);
        k
    }

    #[test]
    fn decides_what_to_repair() {
        let a = rules("pga", 1, &["10.0.0.1"]);
        let b = rules("pgb", 2, &[]);
        let full: BTreeSet<Element> = elements(&a).union(&elements(&b)).cloned().collect();
        let without = |e: &Element| full.iter().filter(|x| *x != e).cloned().collect();
        let a_mac = (SET_MAC, key("pga", &[2, 0, 0, 0, 0, 1, 0, 0]));
        let stray_ip = (SET_IP4, key("pga", &[10, 9, 9, 9]));
        let orphan = |port: &str| -> BTreeSet<Element> {
            [(SET_PORTS, key(port, &[])), (SET_LOCKED, key(port, &[]))]
                .into_iter()
                .collect()
        };
        let with = |extra: BTreeSet<Element>| -> BTreeSet<Element> {
            full.union(&extra).cloned().collect()
        };
        struct Case {
            name: &'static str,
            table: TableState,
            elements: BTreeSet<Element>,
            want: Vec<PortRules>,
            keep: &'static [&'static str],
            live: &'static [&'static str],
            rebuild: Option<TableState>,
            repaired: &'static [&'static str],
            orphans: &'static [&'static str],
            adds: usize,
            deletes: usize,
        }
        let cases = [
            Case {
                name: "all in place: nothing to do",
                table: TableState::Current,
                elements: full.clone(),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &[],
                rebuild: None,
                repaired: &[],
                orphans: &[],
                adds: 0,
                deletes: 0,
            },
            Case {
                name: "flushed ruleset: table and every port",
                table: TableState::Missing,
                elements: BTreeSet::new(),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &[],
                rebuild: Some(TableState::Missing),
                repaired: &["pga", "pgb"],
                orphans: &[],
                adds: full.len(),
                deletes: 0,
            },
            Case {
                name: "no table and nobody wants one: not created",
                table: TableState::Missing,
                elements: BTreeSet::new(),
                want: vec![],
                keep: &[],
                live: &[],
                rebuild: None,
                repaired: &[],
                orphans: &[],
                adds: 0,
                deletes: 0,
            },
            Case {
                name: "a chain deleted: rules rebuilt, elements kept",
                table: TableState::Damaged,
                elements: full.clone(),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &[],
                rebuild: Some(TableState::Damaged),
                repaired: &[],
                orphans: &[],
                adds: 0,
                deletes: 0,
            },
            Case {
                name: "one element deleted: that port",
                table: TableState::Current,
                elements: without(&a_mac),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &[],
                rebuild: None,
                repaired: &["pga"],
                orphans: &[],
                adds: 1,
                deletes: 0,
            },
            Case {
                name: "an element the record does not want: removed",
                table: TableState::Current,
                elements: with([stray_ip.clone()].into_iter().collect()),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &[],
                rebuild: None,
                repaired: &["pga"],
                orphans: &[],
                adds: 0,
                deletes: 1,
            },
            Case {
                name: "a port no record owns, interface gone: swept",
                table: TableState::Current,
                elements: with(orphan("pgx")),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &[],
                rebuild: None,
                repaired: &[],
                orphans: &["pgx"],
                adds: 0,
                deletes: 2,
            },
            Case {
                name: "a port no record owns whose interface exists: kept",
                table: TableState::Current,
                elements: with(orphan("pgx")),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb"],
                live: &["pgx"],
                rebuild: None,
                repaired: &[],
                orphans: &[],
                adds: 0,
                deletes: 0,
            },
            Case {
                name: "a recorded port not wanted (ADD running, DEL in flight): untouched",
                table: TableState::Current,
                elements: with(orphan("pgy")),
                want: vec![a.clone(), b.clone()],
                keep: &["pga", "pgb", "pgy"],
                live: &[],
                rebuild: None,
                repaired: &[],
                orphans: &[],
                adds: 0,
                deletes: 0,
            },
            Case {
                name: "an old layout with no ports wanted: rebuilt, orphans swept",
                table: TableState::Damaged,
                elements: orphan("pgx"),
                want: vec![],
                keep: &[],
                live: &[],
                rebuild: Some(TableState::Damaged),
                repaired: &[],
                orphans: &["pgx"],
                adds: 0,
                deletes: 2,
            },
        ];
        for c in cases {
            let installed = Installed {
                table: c.table,
                elements: c.elements,
            };
            let keep: HashSet<String> = c.keep.iter().map(|s| s.to_string()).collect();
            let live = c.live;
            let p = plan(&installed, &c.want, &keep, &|name| live.contains(&name));
            assert_eq!(p.rebuild, c.rebuild, "{}", c.name);
            assert_eq!(p.repaired_ports, c.repaired, "{}", c.name);
            assert_eq!(p.orphans, c.orphans, "{}", c.name);
            assert_eq!(p.add.len(), c.adds, "{}: {:?}", c.name, p.add);
            assert_eq!(p.delete.len(), c.deletes, "{}: {:?}", c.name, p.delete);
            assert_eq!(p.is_empty(), c.rebuild.is_none() && c.adds + c.deletes == 0);
            // Applying the plan to the installed elements gives exactly what is wanted.
            let mut after = installed.elements.clone();
            for e in &p.delete {
                after.remove(e);
            }
            after.extend(p.add.iter().cloned());
            let mut wanted: BTreeSet<Element> = c.want.iter().flat_map(elements).collect();
            for e in &installed.elements {
                let port = port_of(&e.1);
                if keep.contains(&port) && !c.want.iter().any(|r| r.host_veth == port)
                    || live.contains(&port.as_str())
                {
                    wanted.insert(e.clone());
                }
            }
            assert_eq!(after, wanted, "{}", c.name);
        }
    }
}
