//! The portgroupd lab: a node namespace whose `eth1` is a veth trunk to a switch
//! namespace, a config file and a run directory, and portgroupd run inside the
//! node namespace. Namespaces, commands and polling come from the test kit.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use portgroup::state::NodeState;
pub use portgroup_testkit::{age_file, sh, tag, wait_until, Netns, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_portgroupd");
pub const NODE: &str = "worker-3";

/// A node namespace with uplink `eth1` (a veth to `sw0` in the switch namespace).
pub struct DaemonLab {
    pub node: Netns,
    pub switch: Netns,
    pub dir: TempDir,
}

impl DaemonLab {
    pub fn new() -> DaemonLab {
        let lab = DaemonLab::bare();
        lab.add_uplink();
        lab
    }

    /// Without an uplink at all.
    pub fn bare() -> DaemonLab {
        DaemonLab {
            node: Netns::new("node"),
            switch: Netns::new("switch"),
            dir: TempDir::new("daemon"),
        }
    }

    pub fn add_uplink(&self) {
        sh(&[
            "ip",
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
        let log = self.dir.0.join(format!("portgroupd-{}.log", tag()));
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
        wait_until(timeout, what, || match self.state() {
            Some(state) if ok(&state) => Ok(state),
            Some(state) => Err(format!("last state: {state:#?}")),
            None => Err("no state file".to_string()),
        })
    }
}

/// An HTTP GET from inside `ns` (its 127.0.0.1 is not ours): (status, body).
pub fn http_get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    let text = ns.run(move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    });
    let text = text.ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
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
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
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
