//! Port security at scale, and the per-call cost of the mechanisms portsec could
//! have used instead of nf_tables netlink (`nft -f`, `nft -j`, libnftables in
//! process). Prints numbers; checks only that everything landed. Needs root and
//! libnftables.so.1 (Debian: libnftables1); runs in a private network namespace.
//!
//!   cargo bench --bench portsec_scale     (or hack/bench.sh --sections portsec-mechanisms)
//!
//! The results are quoted in src/portsec/mod.rs and BENCHMARKS.md.

// A test fails by panicking: unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Raw sockets and libnftables through libc; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use portgroup::portsec::{self, PortRules};
use portgroup_testkit::{numbered_port as port, Netns};

/// The same elements as `install(port(i))`, in nft syntax.
fn nft_text(i: u32) -> String {
    let p = port(i);
    let name = &p.host_veth;
    format!(
        "add element bridge portgroup ports {{ \"{name}\" }}\n\
         add element bridge portgroup ip_locked_ports {{ \"{name}\" }}\n\
         add element bridge portgroup port_mac {{ \"{name}\" . {} }}\n\
         add element bridge portgroup port_ip4 {{ \"{name}\" . {} }}\n\
         add element bridge portgroup port_ip6 {{ \"{name}\" . {} }}\n",
        p.mac, p.ips[0], p.ips[1]
    )
}

fn nft_json(i: u32) -> String {
    let p = port(i);
    let name = &p.host_veth;
    let el = |set: &str, elem: String| {
        format!(
            r#"{{"add":{{"element":{{"family":"bridge","table":"portgroup","name":"{set}","elem":[{elem}]}}}}}}"#
        )
    };
    let cat = |v: String| format!(r#"{{"concat":["{name}","{v}"]}}"#);
    format!(
        r#"{{"nftables":[{},{},{},{},{}]}}"#,
        el("ports", format!("\"{name}\"")),
        el("ip_locked_ports", format!("\"{name}\"")),
        el("port_mac", cat(p.mac.to_string())),
        el("port_ip4", cat(p.ips[0].to_string())),
        el("port_ip6", cat(p.ips[1].to_string())),
    )
}

/// Spawns `nft [-j] -f -` (from a thread inside the namespace, so the child is
/// in it too, with no `ip netns exec` overhead) and feeds it `input`.
fn nft_spawn(json: bool, input: String) -> Duration {
    let start = Instant::now();
    let mut cmd = Command::new("nft");
    if json {
        cmd.arg("-j");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// In-process libnftables, as the plugin would use it: dlopen, a fresh context,
/// one command buffer. Returns (dlopen + context + run, run alone).
fn libnftables(input: String) -> (Duration, Duration) {
    let start = Instant::now();
    // SAFETY: documented libnftables entry points with their C signatures.
    unsafe {
        let lib = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW);
        assert!(!lib.is_null(), "dlopen libnftables.so.1");
        let sym = |name: &std::ffi::CStr| {
            let p = libc::dlsym(lib, name.as_ptr());
            assert!(!p.is_null());
            p
        };
        let ctx_new: CtxNew = std::mem::transmute(sym(c"nft_ctx_new"));
        let ctx_free: CtxFree = std::mem::transmute(sym(c"nft_ctx_free"));
        let run: RunCmd = std::mem::transmute(sym(c"nft_run_cmd_from_buffer"));
        let ctx = ctx_new(0);
        let cmd = CString::new(input).unwrap();
        let run_start = Instant::now();
        let rc = run(ctx, cmd.as_ptr());
        let run_only = run_start.elapsed();
        ctx_free(ctx);
        libc::dlclose(lib);
        assert_eq!(rc, 0, "nft_run_cmd_from_buffer");
        (start.elapsed(), run_only)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn time_install(ns: &Netns, i: u32) -> Duration {
    ns.run(move || {
        let start = Instant::now();
        portsec::install(&port(i)).expect("install");
        start.elapsed()
    })
}

/// Per-call cost of each mechanism for one port's elements, `samples` times.
fn mechanisms(ns: &Netns, first: u32, samples: u32, label: &str) {
    let base = first;
    let ours = median((0..samples).map(|k| time_install(ns, base + k)).collect());
    let base = base + samples;
    let text = median(
        (0..samples)
            .map(|k| ns.run(move || nft_spawn(false, nft_text(base + k))))
            .collect(),
    );
    let base = base + samples;
    let json = median(
        (0..samples)
            .map(|k| ns.run(move || nft_spawn(true, nft_json(base + k))))
            .collect(),
    );
    let base = base + samples;
    let lib: Vec<(Duration, Duration)> = (0..samples)
        .map(|k| ns.run(move || libnftables(nft_text(base + k))))
        .collect();
    let lib_all = median(lib.iter().map(|x| x.0).collect());
    let lib_run = median(lib.iter().map(|x| x.1).collect());
    println!("mechanism, one port's 5 elements, {label} (median of {samples}):");
    println!("  portsec::install (netlink)          {}", ms(ours));
    println!("  nft -f - (spawned)                  {}", ms(text));
    println!("  nft -j -f - (spawned, JSON)         {}", ms(json));
    println!("  libnftables dlopen+ctx+run          {}", ms(lib_all));
    println!("  libnftables run_cmd only            {}", ms(lib_run));
}

fn main() {
    let ns = Netns::new("scale");
    let first = time_install(&ns, 0);
    let second = time_install(&ns, 1);
    let small: Vec<Duration> = (2..12).map(|i| time_install(&ns, i)).collect();
    let small_removes: Vec<Duration> = (2..7)
        .map(|i| {
            ns.run(move || {
                let start = Instant::now();
                portsec::remove(&format!("pgs{i}")).unwrap();
                start.elapsed()
            })
        })
        .collect();
    for i in 2..7 {
        time_install(&ns, i);
    }
    mechanisms(&ns, 100_000, 10, "with ~10 ports");

    let start = Instant::now();
    for i in 12..1000 {
        time_install(&ns, i);
    }
    let bulk = start.elapsed();
    let large: Vec<Duration> = (1000..1010).map(|i| time_install(&ns, i)).collect();
    let reinstall = ns.run(|| {
        let start = Instant::now();
        portsec::install(&port(500)).unwrap();
        start.elapsed()
    });
    let verify = ns.run(|| {
        let start = Instant::now();
        portsec::verify(&port(500)).unwrap();
        start.elapsed()
    });
    let remove = ns.run(|| {
        let start = Instant::now();
        portsec::remove("pgs500").unwrap();
        start.elapsed()
    });
    let removes: Vec<Duration> = (600..610)
        .map(|i| {
            ns.run(move || {
                let start = Instant::now();
                portsec::remove(&format!("pgs{i}")).unwrap();
                start.elapsed()
            })
        })
        .collect();
    let remove_absent = ns.run(|| {
        let start = Instant::now();
        portsec::remove("pgs500").unwrap();
        start.elapsed()
    });
    mechanisms(&ns, 200_000, 10, "with ~1050 ports");

    println!("install, 1st port (creates the table):  {}", ms(first));
    println!("install, 2nd port:                       {}", ms(second));
    println!(
        "install, ports 3-12 (median):            {}",
        ms(median(small))
    );
    println!(
        "install, ports 13-1000:                  {} total, {} each",
        ms(bulk),
        ms(bulk / 988)
    );
    println!(
        "install, ports 1001-1010 (median):       {}",
        ms(median(large))
    );
    println!("re-install of an existing port at 1010:  {}", ms(reinstall));
    println!("verify at 1010 ports:                    {}", ms(verify));
    println!("remove at 1010 ports:                    {}", ms(remove));
    println!(
        "remove at ~10 ports (median of 5):       {}",
        ms(median(small_removes))
    );
    println!(
        "remove at 1010 ports, 10 more (median):  {}",
        ms(median(removes))
    );
    println!(
        "remove of an absent port:                {}",
        ms(remove_absent)
    );

    let ports = ns.run(|| portsec::ports().unwrap());
    // 1010 installed, 11 removed, and 80 more from the mechanism comparison.
    assert_eq!(ports.len(), 1010 - 11 + 80);
    ns.run(|| portsec::verify(&port(1005)).unwrap());
    let removed = ns.run(|| portsec::remove_all_not_in(&[]).unwrap());
    assert_eq!(removed.len(), 1010 - 11 + 80);
    assert!(ns.run(|| portsec::ports().unwrap()).is_empty());

    // portgroupd's sweep (portsec::heal) over 1000 recorded ports: restoring
    // them all, verifying with nothing to do (what every nf_tables change by a
    // plugin ADD or DEL costs the daemon), and restoring after the table was
    // deleted (`nft flush ruleset`).
    let heal = |what: &'static str| {
        ns.run(move || {
            let want: Vec<PortRules> = (0..1000).map(port).collect();
            let keep = std::collections::HashSet::new();
            let start = Instant::now();
            let plan =
                portsec::heal(&want, &keep, &|_| false, &std::collections::HashSet::new).unwrap();
            let took = start.elapsed();
            println!(
                "heal, 1000 ports, {what}: {} ({} ports restored)",
                ms(took),
                plan.repaired_ports.len()
            );
            plan
        })
    };
    assert_eq!(heal("all missing").repaired_ports.len(), 1000);
    let quiet: Vec<portsec::HealPlan> = (0..5).map(|_| heal("nothing to do")).collect();
    assert!(quiet.iter().all(portsec::HealPlan::is_empty));
    ns.run(|| portsec::delete_table().unwrap());
    let after_flush = heal("table deleted");
    assert_eq!(after_flush.rebuild, Some(portsec::TableState::Missing));
    assert_eq!(after_flush.repaired_ports.len(), 1000);
}
