//! Private network namespaces for tests.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::{sh, tag, try_sh, wait_until};

/// A network namespace `pgt-<role>-<random>` with `lo` up, deleted on drop
/// (with every link in it).
pub struct Netns {
    pub name: String,
    fd: OwnedFd,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        assert!(
            crate::is_root(),
            "this test needs root: it makes network namespaces"
        );
        let name = format!("pgt-{role}-{}", tag());
        sh(&["ip", "netns", "add", &name]);
        let path = PathBuf::from(format!("/run/netns/{name}"));
        let fd = portgroup::netns::open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let ns = Netns { name, fd };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Where `ip netns` mounted it: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// [`Netns::path`] as a string.
    pub fn path_str(&self) -> String {
        self.path().to_string_lossy().into_owned()
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// `ip -n NS ARGS`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// `ip -n NS` with `line` split on whitespace, which must succeed.
    pub fn ip_line(&self, line: &str) -> String {
        self.ip(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// `ip -n NS -batch -` fed `lines` (one command per line), which must
    /// succeed: thousands of links in one process.
    pub fn ip_batch(&self, lines: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip -n {} -batch: {e}", self.name));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(lines.as_bytes())
                .unwrap_or_else(|e| panic!("ip -n {} -batch: writing: {e}", self.name));
        }
        let status = child
            .wait()
            .unwrap_or_else(|e| panic!("ip -n {} -batch: {e}", self.name));
        assert!(status.success(), "ip -n {} -batch: {status}", self.name);
    }

    /// `ip -n NS ARGS`, allowed to fail: whether it succeeded.
    pub fn try_ip(&self, args: &[&str]) -> bool {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        try_sh(&all).status.success()
    }

    /// `ip netns exec NS ARGS`, whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name))
    }

    /// Runs `work` on a short-lived thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        portgroup::netns::run_in(&self.fd, move || Ok(work()))
            .unwrap_or_else(|e| panic!("running in netns {}: {e}", self.name))
    }

    /// Every link, as `ip -d -j link show` describes it.
    pub fn links(&self) -> Vec<Link> {
        let text = self.ip(&["-d", "-j", "link", "show"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j link: {e}: {text}"))
    }

    /// Names of every link other than `lo`.
    pub fn link_names(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .map(|l| l.ifname)
            .filter(|n| n != "lo")
            .collect()
    }

    pub fn link(&self, name: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.ifname == name)
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.try_ip(&["link", "show", "dev", name])
    }

    /// Waits until `link` is operationally up (carrier on, qdisc active).
    pub fn wait_up(&self, link: &str) {
        wait_until(
            Duration::from_secs(5),
            format_args!("{link} in {} to come up", self.name),
            || {
                let text = self.ip(&["-o", "link", "show", "dev", link]);
                if text.contains("state UP") {
                    Ok(())
                } else {
                    Err(text)
                }
            },
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What `ip -d -j link show` says of one link (the fields tests look at).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: String,
    #[serde(default)]
    pub ifalias: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub linkinfo: Option<serde_json::Value>,
}

impl Link {
    pub fn kind(&self) -> Option<String> {
        self.linkinfo
            .as_ref()?
            .get("info_kind")?
            .as_str()
            .map(String::from)
    }

    pub fn vlan_id(&self) -> Option<u64> {
        self.linkinfo
            .as_ref()?
            .get("info_data")?
            .get("id")?
            .as_u64()
    }

    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// Whether this kernel can make 802.1Q VLAN interfaces, tried in a throwaway namespace.
pub fn has_8021q() -> bool {
    let ns = Netns::new("8021q");
    ns.try_ip(&[
        "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb",
    ]) && ns.try_ip(&[
        "link", "add", "link", "pa", "name", "pa.5", "type", "vlan", "id", "5",
    ])
}

/// For tests marked `#[ignore = "needs 802.1Q ..."]`: fails at once, saying
/// why, when they are run on a kernel without 802.1Q.
pub fn require_8021q() {
    assert!(
        has_8021q(),
        "this kernel has no 802.1Q support; hack/test.sh runs this test in the test VM (hack/vm.sh)"
    );
}
