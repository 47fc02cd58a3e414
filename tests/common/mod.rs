//! Helpers for tests that run portgroupd in private network namespaces. Nothing
//! here creates a link in the test machine's own namespace: every `ip` command
//! names a namespace made by [`Netns::new`], which its Drop deletes.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use portgroup::state::NodeState;

pub const BIN: &str = env!("CARGO_BIN_EXE_portgroupd");
pub const NODE: &str = "worker-3";

fn random_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(Command::new("ip").args(args)).stdout).into_owned()
}

/// A network namespace `pgt-<random>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!("pgt-{}", random_tag());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -n NS ARGS`, allowed to fail.
    pub fn try_ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn links(&self) -> Vec<Link> {
        let text = self.ip(&["-d", "-j", "link", "show"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j link: {e}: {text}"))
    }

    pub fn link(&self, name: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.ifname == name)
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.try_ip(&["link", "show", "dev", name])
    }

    /// An HTTP GET from inside the namespace (its 127.0.0.1 is not ours).
    pub fn http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let ns = portgroup::netns::open(&self.path()).ok()?;
        let path = path.to_string();
        portgroup::netns::run_in(&ns, move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .ok()
        .and_then(|text| {
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
            Some((status, body))
        })
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

/// A node namespace whose `eth1` is a veth trunk to a switch namespace.
pub struct Lab {
    pub node: Netns,
    pub switch: Netns,
    pub dir: TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let lab = Lab {
            node: Netns::new(),
            switch: Netns::new(),
            dir: TempDir::new(),
        };
        lab.add_uplink();
        lab
    }

    /// Without an uplink at all.
    pub fn bare() -> Lab {
        Lab {
            node: Netns::new(),
            switch: Netns::new(),
            dir: TempDir::new(),
        }
    }

    pub fn add_uplink(&self) {
        ip(&[
            "link",
            "add",
            "name",
            "eth1",
            "netns",
            &self.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "sw0",
            "netns",
            &self.switch.name,
        ]);
        self.switch.ip(&["link", "set", "sw0", "up"]);
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("config.json")
    }

    pub fn write_config(&self, json: &str) {
        std::fs::write(self.config_path(), json).expect("write config");
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    pub fn state(&self) -> Option<NodeState> {
        NodeState::read(&self.run_dir().join("state.json")).ok()
    }

    /// portgroupd in the node namespace, with this lab's config and run dir.
    pub fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.name, BIN])
            .arg("--config")
            .arg(self.config_path())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(["--node-name", NODE, "--log-level", "info"]);
        // Never the host's kubelet: the device plugin is off unless a test
        // gives its own directory.
        if !extra.contains(&"--device-plugin-dir") {
            cmd.args(["--device-plugin-dir", ""]);
        }
        cmd.args(extra);
        cmd
    }

    pub fn once(&self) -> Output {
        self.command(&["--once"])
            .output()
            .expect("run portgroupd --once")
    }

    pub fn start(&self, extra: &[&str]) -> Daemon {
        let log = self.dir.0.join(format!("portgroupd-{}.log", random_tag()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = self
            .command(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start portgroupd");
        Daemon { child, log }
    }

    /// Polls the state until `ok` holds; panics with the last state after `timeout`.
    pub fn wait_state(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&NodeState) -> bool,
    ) -> NodeState {
        let start = Instant::now();
        loop {
            if let Some(state) = self.state() {
                if ok(&state) {
                    return state;
                }
                if start.elapsed() > timeout {
                    panic!("timed out waiting for {what}; last state: {state:#?}");
                }
            } else if start.elapsed() > timeout {
                panic!("timed out waiting for {what}: no state file");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running portgroupd, SIGKILLed on drop if still running.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Waits for exit; None on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("pgt-daemon-{}", random_tag()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PORTGROUP_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Whether this kernel can make 802.1Q VLAN interfaces, probed in a throwaway namespace.
pub fn has_8021q() -> bool {
    let ns = Netns::new();
    ns.try_ip(&[
        "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb",
    ]) && ns.try_ip(&[
        "link", "add", "link", "pa", "name", "pa.5", "type", "vlan", "id", "5",
    ])
}

/// Returns early from a VLAN test on a kernel without 802.1Q, saying so; with
/// PORTGROUP_REQUIRE_VLAN=1 (as in the VM) it fails instead.
#[macro_export]
macro_rules! require_vlan {
    () => {
        if !common::has_8021q() {
            if std::env::var("PORTGROUP_REQUIRE_VLAN").as_deref() == Ok("1") {
                panic!("PORTGROUP_REQUIRE_VLAN=1 but this kernel has no 802.1Q support");
            }
            println!("SKIP: no 802.1Q");
            eprintln!("SKIP: no 802.1Q (run in the VM: hack/daemon-vlan-tests.sh)");
            return;
        }
    };
}

/// Makes a file look `age` old, as an attachment record written that long ago.
pub fn age_file(path: &Path, age: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open for mtime");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}
