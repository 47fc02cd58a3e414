//! What portgroupd holds in memory while it reads the node: a link dump keeps
//! one summary per link and never the netlink messages, and a reconcile that
//! changes nothing costs a few KiB per portgroup, not a copy of the dump.
//!
//! Counted, not timed: an allocator that tracks the bytes live on the test's
//! own thread (the daemon's runtime is current-thread, so all of a reconcile's
//! allocations are made there) and their high-water mark. The bounds leave
//! several times the room today's code needs, and are a tenth of what holding
//! whole parsed messages costs (13 to 18 KiB per link).
//!
//! Its own test binary: the counting allocator is global to the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// A global allocator is unsafe to implement; this file alone allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::sync::Arc;

use portgroup::daemon::applier::Links;
use portgroup::daemon::config::ConfigSource;
use portgroup::daemon::metrics::Metrics;
use portgroup::daemon::reconcile::Reconciler;
use portgroup::daemon::rtlinks::RtLinks;
use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup_testkit::{Netns, TempDir};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // try_with: nothing to count once the thread's locals are gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters are plain thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a copy: both blocks may be live at once.
        count(new_size as isize);
        count(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes this thread had live above where it was when `work` began.
fn peak_during<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = work();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Room per link for its summary (about 200 bytes with its strings; the
/// vector that holds them doubles, so briefly twice), and for one datagram.
const PER_LINK: usize = 1024;
const SLACK: usize = 256 * 1024;

#[test]
fn a_link_dump_holds_one_summary_per_link_not_the_messages() {
    let ns = Netns::new("memdump");
    let pairs = 600;
    let mut lines = String::new();
    for i in 0..pairs {
        lines.push_str(&format!(
            "link add mv{i} type veth peer name mp{i}\nlink add mb{i} type bridge\nlink set mv{i} master mb{i} up\n"
        ));
    }
    ns.ip_batch(&lines);
    let (links, peak) = ns.run(move || {
        let rt = runtime();
        let links = rt.block_on(async {
            RtLinks {
                netlink: Netlink::connect().expect("netlink"),
            }
        });
        // The first dump sets up what stays (the runtime's timers, the socket registry).
        rt.block_on(links.dump()).expect("dump");
        let (observed, peak) = peak_during(|| rt.block_on(links.dump()).expect("dump"));
        (observed.links.len(), peak)
    });
    assert_eq!(links, 3 * pairs + 1, "lo, the veths and the bridges");
    let bound = links * PER_LINK + SLACK;
    eprintln!(
        "dump of {links} links: peak {peak} bytes live ({} per link), bound {bound}",
        peak / links
    );
    assert!(
        peak <= bound,
        "a dump of {links} links had {peak} bytes live at its peak, over {bound}: \
         is it holding whole netlink messages?"
    );
}

/// Per portgroup, a reconcile that finds nothing to do: the summaries of its
/// three links, its plan entry and state, the event filter's interest.
const PER_PORTGROUP: usize = 8 * 1024;

#[test]
fn a_reconcile_that_changes_nothing_costs_kibibytes_per_portgroup() {
    let ns = Netns::new("memrec");
    let dir = TempDir::new("memrec");
    let n = 200;
    let mut lines = String::new();
    let mut portgroups = Vec::new();
    for i in 0..n {
        lines.push_str(&format!(
            "link add mu{i} type veth peer name mq{i}\nlink set mu{i} up\nlink set mq{i} up\n"
        ));
        portgroups.push(format!(
            r#"{{"name": "m{i}", "untagged": true, "uplink": "mu{i}"}}"#
        ));
    }
    ns.ip_batch(&lines);
    let config = format!(
        r#"{{"uplink": "mu0", "portgroups": [{}]}}"#,
        portgroups.join(",")
    );
    let run_dir = dir.0.clone();
    let (ready, peak) = ns.run(move || {
        let rt = runtime();
        let links = rt.block_on(async {
            RtLinks {
                netlink: Netlink::connect().expect("netlink"),
            }
        });
        let mut source = ConfigSource::new(run_dir.join("config.json"));
        source.offer(config.into_bytes());
        let mut reconciler = Reconciler::new(
            links,
            "memory".into(),
            RunDir(run_dir),
            Arc::new(Metrics::default()),
        );
        let made = rt
            .block_on(reconciler.reconcile(&source, false))
            .expect("reconcile");
        assert_eq!(made.failures, 0);
        let ((), peak) = peak_during(|| {
            let again = rt
                .block_on(reconciler.reconcile(&source, false))
                .expect("reconcile");
            assert_eq!((again.applied, again.failures), (0, 0), "nothing to do");
        });
        let ready = reconciler
            .previous
            .as_ref()
            .map_or(0, |s| s.portgroups.iter().filter(|p| p.ready).count());
        (ready, peak)
    });
    // Untagged bridges are named after a 16-bit tag of their uplink: among
    // 200 uplinks a collision is possible, and refused.
    assert!(ready >= n - 5, "{ready} of {n} ready");
    let bound = n * PER_PORTGROUP + SLACK;
    eprintln!("no-op reconcile at {n} portgroups: peak {peak} bytes live ({} per portgroup), bound {bound}", peak / n);
    assert!(
        peak <= bound,
        "a reconcile with nothing to do at {n} portgroups had {peak} bytes live at its peak, \
         over {bound}"
    );
}
