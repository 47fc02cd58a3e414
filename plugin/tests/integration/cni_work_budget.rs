//! The work of one ADD and one DEL, counted at the real binary's edge: the plugin
//! runs under `strace -f` exactly as a runtime starts it, and every process and
//! thread it starts and every netlink request it sends is counted. A change that
//! adds a round trip, a dump, a thread or a process on the hot path fails here,
//! whatever the machine's speed: nothing is timed.
//!
//! One send on a netlink socket is one round trip (an nf_tables batch is one
//! send). A dump is a GET with NLM_F_DUMP: its cost grows with what the node
//! holds, so the hot path allows only the fixed-size rule listing of the
//! port-security table (its ~45 rules, whatever the number of ports).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::{conf, Lab};
use serde_json::{json, Value};

const NETLINK_ROUTE: u32 = 0;
const NETLINK_NETFILTER: u32 = 12;
const NLM_F_DUMP: u16 = 0x300;
const CLONE_THREAD: u64 = 0x10000;
/// nf_tables GETRULE: `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE`.
const NFT_GETRULE: u16 = 0x0a07;

/// One netlink message: (protocol, type, flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NlMsg {
    protocol: u32,
    kind: u16,
    flags: u16,
}

impl NlMsg {
    fn is_get(&self) -> bool {
        match self.protocol {
            // RTM_GET*: every type that is 2 mod 4 from RTM_BASE (16).
            NETLINK_ROUTE => self.kind >= 16 && self.kind % 4 == 2,
            // NFT_MSG_GET*: table, chain, rule, set, element, gen, obj.
            NETLINK_NETFILTER => {
                self.kind >> 8 == 0x0a && [1, 4, 7, 10, 13, 16, 19].contains(&(self.kind & 0xff))
            }
            _ => false,
        }
    }

    fn is_dump(&self) -> bool {
        self.is_get() && self.flags & NLM_F_DUMP == NLM_F_DUMP
    }
}

/// What one plugin run did, from its strace log.
#[derive(Debug, Default)]
struct Work {
    /// Programs executed, the plugin itself included.
    execs: usize,
    /// Processes started (clone without CLONE_THREAD, fork, vfork).
    processes: usize,
    threads: usize,
    /// One entry per send on a netlink socket: the messages it carried.
    route: Vec<Vec<NlMsg>>,
    netfilter: Vec<Vec<NlMsg>>,
}

impl Work {
    fn dumps(&self) -> Vec<NlMsg> {
        self.route
            .iter()
            .chain(&self.netfilter)
            .flatten()
            .filter(|m| m.is_dump())
            .copied()
            .collect()
    }
}

/// The first number after `key` (hex with 0x, else decimal); `0xa<<8|0x7` is one number.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '<' || c == '|'))
        .unwrap_or(rest.len());
    let mut value = 0u64;
    for part in rest[..end].split('|') {
        let (base, shift) = match part.split_once("<<") {
            Some((b, s)) => (b, s.parse::<u32>().ok()?),
            None => (part, 0),
        };
        let n = match base.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => base.parse().ok()?,
        };
        value |= n << shift;
    }
    Some(value)
}

/// Every `nlmsg_type=…, nlmsg_flags=…` header in one send.
fn messages(args: &str, protocol: u32) -> Vec<NlMsg> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some(at) = rest.find("nlmsg_type=") {
        rest = &rest[at..];
        if let (Some(kind), Some(flags)) = (
            number_after(rest, "nlmsg_type="),
            number_after(rest, "nlmsg_flags="),
        ) {
            out.push(NlMsg {
                protocol,
                kind: kind as u16,
                flags: flags as u16,
            });
        }
        rest = &rest["nlmsg_type=".len()..];
    }
    out
}

/// Parses `strace -f -X raw` output (lines `PID call(args) = result`).
fn parse(log: &str) -> Work {
    let mut work = Work::default();
    let mut sockets: HashMap<u64, u32> = HashMap::new();
    let mut unfinished: HashMap<&str, String> = HashMap::new();
    for line in log.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if let Some(head) = call.strip_suffix("<unfinished ...>") {
            unfinished.insert(pid, head.to_string());
            continue;
        }
        let call = match call.strip_prefix("<... ") {
            Some(resumed) => match (unfinished.remove(pid), resumed.split_once("resumed>")) {
                (Some(head), Some((_, tail))) => head + tail,
                _ => continue,
            },
            None => call.to_string(),
        };
        let Some((name, rest)) = call.split_once('(') else {
            continue;
        };
        let result = call.rsplit_once(" = ").map(|(_, r)| r.trim());
        let failed = result.is_none_or(|r| r.starts_with('-'));
        let first_arg = || number_after(rest, "");
        match name {
            "execve" if !failed => work.execs += 1,
            "fork" | "vfork" if !failed => work.processes += 1,
            "clone" | "clone3" if !failed => {
                let flags = number_after(rest, "flags=").unwrap_or(0);
                if flags & CLONE_THREAD != 0 {
                    work.threads += 1;
                } else {
                    work.processes += 1;
                }
            }
            "socket" if !failed => {
                let args: Vec<&str> = rest.split(')').next().unwrap_or("").split(", ").collect();
                let fd = result.and_then(|r| number_after(r, ""));
                if let (Some(fd), true) = (fd, args.first() == Some(&"0x10")) {
                    let protocol = number_after(args.get(2).unwrap_or(&""), "").unwrap_or(99);
                    sockets.insert(fd, protocol as u32);
                }
            }
            "close" => {
                if let Some(fd) = first_arg() {
                    sockets.remove(&fd);
                }
            }
            "sendto" | "sendmsg" if !failed => {
                let Some(protocol) = first_arg().and_then(|fd| sockets.get(&fd)) else {
                    continue;
                };
                let sent = messages(rest, *protocol);
                match *protocol {
                    NETLINK_ROUTE => work.route.push(sent),
                    NETLINK_NETFILTER => work.netfilter.push(sent),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    work
}

fn require_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is needed to count the plugin's work (hack/install-deps.sh installs it)"
    );
}

/// Runs one CNI command under strace and returns what it did, after checking it succeeded.
fn traced(lab: &Lab, dir: &Path, command: &str, c: &Value, env: &[(&str, &str)]) -> Work {
    let log = dir.join(format!("{command}.strace"));
    let log_arg = log.to_string_lossy().into_owned();
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-X",
        "raw",
        "-s",
        "16",
        "-e",
        "trace=execve,clone,clone3,fork,vfork,socket,close,sendto,sendmsg",
        "-e",
        "signal=none",
        "-o",
        &log_arg,
    ];
    let out = lab.cni_wrapped(
        &wrapper,
        command,
        serde_json::to_vec(c).unwrap().as_slice(),
        env,
    );
    assert_eq!(out.code, 0, "{command}: {} {}", out.stdout, out.stderr);
    let work = parse(&std::fs::read_to_string(&log).unwrap());
    // The trace saw the plugin: a parse that sees nothing must not pass as lean.
    assert_eq!(work.execs, 1, "{command}: the plugin's own exec: {work:#?}");
    assert!(
        !work.route.is_empty(),
        "{command}: no route request seen: {work:#?}"
    );
    work
}

/// The hot path's budget. Lowering a number is welcome; raising one needs a
/// reason in BENCHMARKS.md and docs/DESIGN.md.
struct Budget {
    threads: usize,
    route: usize,
    netfilter: usize,
    /// Dumps allowed, by (protocol, type).
    dumps: &'static [(u32, u16)],
}

fn check(what: &str, work: &Work, budget: &Budget) {
    assert_eq!(
        work.processes, 0,
        "{what}: no process may be started: {work:#?}"
    );
    assert!(
        work.threads <= budget.threads,
        "{what}: {} threads, budget {}: {work:#?}",
        work.threads,
        budget.threads
    );
    assert!(
        work.route.len() <= budget.route,
        "{what}: {} route-netlink round trips, budget {}: {work:#?}",
        work.route.len(),
        budget.route
    );
    assert!(
        work.netfilter.len() <= budget.netfilter,
        "{what}: {} nf_tables round trips, budget {}: {work:#?}",
        work.netfilter.len(),
        budget.netfilter
    );
    let unexpected: Vec<NlMsg> = work
        .dumps()
        .into_iter()
        .filter(|m| !budget.dumps.contains(&(m.protocol, m.kind)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: dumps {unexpected:?} on the hot path: {work:#?}"
    );
}

/// ADD with port security on, a plain L2 port (the VM configures its own IPs),
/// then its DEL. The table exists already (an earlier port made it): the first
/// ADD on a node also creates the table, once.
#[test]
fn add_and_del_stay_within_their_budget() {
    require_strace();
    let (mut lab, _pod, path) = Lab::with_pod();
    let first = Lab::netns_path(&lab.pod());
    let dir = lab.run_dir.join("traces");
    std::fs::create_dir_all(&dir).unwrap();
    let secured = conf(
        "1.0.0",
        json!({"spoofCheck": true, "runtimeConfig": {"mac": "02:00:00:00:10:01"}}),
    );
    let warm = Lab::attach_env("vm0", &first, "net1");
    assert_eq!(lab.cni("ADD", &secured, &warm).code, 0);

    let env = Lab::attach_env("vm1", &path, "net1");
    let mut c = secured.clone();
    c["runtimeConfig"]["mac"] = json!("02:00:00:00:10:02");
    let add = traced(&lab, &dir, "ADD", &c, &env);
    check(
        "ADD",
        &add,
        &Budget {
            // No pod-side thread: the pod end is made and brought up from the node.
            threads: 0,
            // bridge lookup, whether an interface has the host veth's name already
            // (its elements are not ours to replace), veth (pod end up in the
            // pod), host end on the bridge and up.
            route: 4,
            // rule check (fixed-size dump), one batch (the port's `ports`
            // element exclusive: a port installed already is read only then).
            netfilter: 2,
            dumps: &[(NETLINK_NETFILTER, NFT_GETRULE)],
        },
    );
    assert!(!add.netfilter.is_empty(), "port security was not installed");

    let del = traced(&lab, &dir, "DEL", &c, &env);
    check(
        "DEL",
        &del,
        &Budget {
            threads: 0,
            // host veth lookup (it must be a veth), down (so its rules can go
            // before it does, overlapping the kernel's waits), delete.
            route: 3,
            // element GETs for the port's flags, one batch; see DEL_NETFILTER.
            netfilter: DEL_NETFILTER,
            dumps: DEL_DUMPS,
        },
    );

    // Where portgroupd runs (it holds the sweeper lock), a DEL leaves the
    // elements of its port, down and then deleted, to portgroupd's sweep:
    // no nf_tables socket at all.
    let sweeper = lab.hold_sweeper_lock();
    let env = Lab::attach_env("vm2", &path, "net1");
    c["runtimeConfig"]["mac"] = json!("02:00:00:00:10:03");
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    let host_veth = portgroup::naming::host_veth_name("vm2", "net1");
    let del = traced(&lab, &dir, "DEL", &c, &env);
    check(
        "DEL, portgroupd sweeping",
        &del,
        &Budget {
            threads: 0,
            route: 3,
            netfilter: 0,
            dumps: &[],
        },
    );
    assert!(
        lab.secured_ports().contains(&host_veth),
        "the DEL was meant to leave its elements to the sweep"
    );
    drop(sweeper);
    // No sweep runs here: the next port of that name clears them (ADD), and
    // its DEL, with no portgroupd, removes its own.
    assert_eq!(lab.cni("ADD", &c, &env).code, 0);
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);

    assert_eq!(lab.cni("DEL", &secured, &warm).code, 0);
    lab.assert_clean(&["br0"]);
}

/// A DEL on a node where portgroupd does not run (or a migration target's)
/// reads the port's elements (one GET per flag set, a dump of the four
/// address sets: netlink has no prefix lookup on a concatenated key), what it
/// holds of the FCFS sets (the IPv6 holders and the claims, to release only
/// addresses no other port holds; its DAD meter), whether it is a migration
/// target still held (two GETs) and deletes them in one batch. Where
/// portgroupd runs, none of it: see above.
const DEL_NETFILTER: usize = 20;
const DEL_DUMPS: &[(u32, u16)] = &[(NETLINK_NETFILTER, 0x0a0d)];

/// With declared addresses the pod's side needs its own socket (addresses are
/// set from inside the pod's namespace): one thread, one link lookup there, one
/// request per address, and bringing it up once it holds them.
#[test]
fn add_with_addresses_pays_only_for_its_addresses() {
    require_strace();
    let (lab, _pod, path) = Lab::with_pod();
    let dir = lab.run_dir.join("traces");
    std::fs::create_dir_all(&dir).unwrap();
    let c = conf(
        "1.0.0",
        json!({"spoofCheck": false, "runtimeConfig": {"mac": "02:00:00:00:10:03",
            "ips": ["10.9.0.3/24", "2001:db8:9::3/64"]}}),
    );
    let env = Lab::attach_env("vm2", &path, "net1");
    let add = traced(&lab, &dir, "ADD", &c, &env);
    check(
        "ADD with two addresses",
        &add,
        &Budget {
            threads: 1,
            // bridge lookup, host veth name check, veth, host end; in the pod:
            // link lookup, two addresses, up (only once it holds them).
            route: 8,
            netfilter: 0,
            dumps: &[],
        },
    );
    assert_eq!(lab.cni("DEL", &c, &env).code, 0);
    lab.assert_clean(&["br0"]);
}

#[test]
fn the_parser_counts_what_it_must() {
    let log = "\
7 execve(\"/x/portgroup\", [\"/x/portgroup\"], 0x7ffd /* 4 vars */) = 0
7 socket(0x10, 0x2|0x80000, 0)      = 6
7 sendto(6, [{nlmsg_len=40, nlmsg_type=0x12, nlmsg_flags=0x301, nlmsg_seq=1, nlmsg_pid=0}, \"\"...], 40, 0, {sa_family=0x10}, 12) = 40
7 clone3({flags=0x3d0f00, child_tid=0x1} => {parent_tid=[8]}, 88) = 8
8 socket(0x10, 0x2|0x80000, 0xc <unfinished ...>
7 clone(child_stack=NULL, flags=0x1200011, child_tidptr=0x7f) = 9
8 <... socket resumed>)    = 9
7 sendto(9, [[{nlmsg_len=20, nlmsg_type=0x10, nlmsg_flags=0x1, nlmsg_seq=5, nlmsg_pid=0}, {}], [{nlmsg_len=80, nlmsg_type=0xa<<8|0xe, nlmsg_flags=0x5, nlmsg_seq=6}, {}]], 572, 0, NULL, 0) = 572
7 sendto(9, [{nlmsg_len=36, nlmsg_type=0xa<<8|0x7, nlmsg_flags=0x301, nlmsg_seq=7}], 36, 0, NULL, 0) = 36
7 close(9) = 0
7 sendto(9, [{nlmsg_len=36, nlmsg_type=0x12, nlmsg_flags=0x1}], 36, 0, NULL, 0) = 36
7 sendto(6, [{nlmsg_len=160, nlmsg_type=0x10, nlmsg_flags=0x705, nlmsg_seq=2}], 160, 0, NULL, 0) = 160
";
    let work = parse(log);
    assert_eq!((work.execs, work.threads, work.processes), (1, 1, 1));
    assert_eq!(work.route.len(), 2, "{work:#?}");
    assert_eq!(
        work.netfilter.len(),
        2,
        "a send on a closed fd is not counted"
    );
    assert_eq!(
        work.netfilter[0].len(),
        2,
        "a batch is one round trip of two messages"
    );
    assert_eq!(
        work.netfilter[0][1],
        NlMsg {
            protocol: NETLINK_NETFILTER,
            kind: 0x0a0e,
            flags: 0x5
        }
    );
    // A link dump and the rule dump; NEWLINK with CREATE|EXCL|REPLACE is no dump.
    let dumps: Vec<(u32, u16)> = work.dumps().iter().map(|m| (m.protocol, m.kind)).collect();
    assert_eq!(
        dumps,
        [(NETLINK_ROUTE, 0x12), (NETLINK_NETFILTER, NFT_GETRULE)]
    );
    let lean = Budget {
        threads: 1,
        route: 2,
        netfilter: 2,
        dumps: &[(NETLINK_NETFILTER, NFT_GETRULE)],
    };
    let failed = std::panic::catch_unwind(|| check("sample", &work, &lean));
    assert!(
        failed.is_err(),
        "a process, and a link dump, must fail the budget"
    );
}
