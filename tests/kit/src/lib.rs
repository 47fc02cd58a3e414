//! Test support shared by every integration test of the workspace: private
//! network namespaces ([`Netns`]), commands that must succeed ([`sh`]), polling
//! ([`wait_until`]), a raw packet socket ([`PacketSocket`]) and builders for the
//! frames tests send ([`frame`]).
//!
//! Nothing here creates a link, a table or a bridge in the caller's own network
//! namespace: every `ip` command runs inside a namespace made by [`Netns::new`],
//! which its `Drop` deletes.

// Test support fails a test by panicking: unwrap and expect are its way to fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod frame;
mod netns;
mod packet;

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

pub use netns::{has_8021q, require_8021q, Link, Netns};
pub use packet::PacketSocket;

use portgroup::mac::MacAddr;
use portgroup::portsec::PortRules;

/// Eight random hex digits, for names that must not collide between tests
/// running at once.
pub fn tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Runs `args[0]` with the rest as arguments; panics, with its output, unless
/// it succeeds. Returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = try_sh(args);
    assert!(
        out.status.success(),
        "{} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args[0]` with the rest as arguments, whatever its exit status.
pub fn try_sh(args: &[&str]) -> Output {
    let (program, rest) = args.split_first().expect("sh: no command");
    Command::new(program)
        .args(rest)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Polls `check` every 10 ms until it returns `Some`, and returns that. Panics
/// after `timeout`, naming `what` and the last `Err` `check` gave.
pub fn wait_until<T, E: Display>(
    timeout: Duration,
    what: impl Display,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Whether the tests run as root (network namespaces, nftables and packet
/// sockets need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A directory under the system's temp dir, removed on drop unless
/// `PORTGROUP_KEEP_TEST_DIRS` is set.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(role: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("pgt-{role}-{}", tag()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PORTGROUP_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Makes a file look `age` old (its mtime), as a file written that long ago.
pub fn age_file(path: &Path, age: Duration) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.set_modified(SystemTime::now() - age)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// Port-security rules for VM port number `i`: host veth `pgs<i>`, a MAC, one
/// IPv4 and one IPv6 address, all distinct for every `i` below 2^24.
pub fn numbered_port(i: u32) -> PortRules {
    PortRules {
        host_veth: format!("pgs{i}"),
        mac: MacAddr([2, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]),
        ips: vec![
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            )),
        ],
        allow_router_advertisements: false,
        allow_dhcp_server: false,
        trunk: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_returns_stdout_and_fails_loudly() {
        assert_eq!(sh(&["echo", "hello"]), "hello\n");
        let panic = std::panic::catch_unwind(|| sh(&["false"])).unwrap_err();
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.starts_with("false failed"), "{text}");
    }

    #[test]
    fn wait_until_returns_the_value_or_names_what_timed_out() {
        let mut calls = 0;
        let got = wait_until(Duration::from_secs(5), "the third call", || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err("not yet")
            }
        });
        assert_eq!(got, 3);
        let panic = std::panic::catch_unwind(|| {
            wait_until(Duration::from_millis(30), "nothing", || {
                Err::<(), _>("still nothing")
            })
        })
        .unwrap_err();
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            text.contains("waiting for nothing: still nothing"),
            "{text}"
        );
    }
}
