//! A throwaway lab for running the plugin exactly as a runtime does: a "node"
//! network namespace (the plugin's host side, never the host's own), pod
//! namespaces, and a private run directory. Dropping the lab deletes it all.
//! Namespaces and commands come from the test kit.

#![allow(dead_code)] // a test file of its own may use only part of this

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use portgroup_testkit::{Netns, TempDir};
use serde_json::{json, Value};

pub use portgroup_testkit::sh;

pub fn plugin_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portgroup"))
}

/// A node namespace (with bridge `br0`), its pods and a run directory.
pub struct Lab {
    /// The node namespace's name.
    pub node: String,
    pub run_dir: PathBuf,
    node_ns: Netns,
    pods: Vec<Netns>,
    _dir: TempDir,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

impl Output {
    /// The CNI error code, or 0 on success.
    pub fn cni_code(&self) -> u64 {
        if self.code == 0 {
            0
        } else {
            self.json["code"].as_u64().unwrap_or(999)
        }
    }
}

impl Lab {
    /// A node namespace with bridge `br0` up.
    pub fn new() -> Lab {
        let node_ns = Netns::new("node");
        let dir = TempDir::new("run");
        let lab = Lab {
            node: node_ns.name.clone(),
            run_dir: dir.0.clone(),
            node_ns,
            pods: Vec::new(),
            _dir: dir,
        };
        lab.add_bridge("br0");
        lab
    }

    /// The node's log directory for plugin log files (`logFile` names a file in it).
    pub fn log_dir(&self) -> PathBuf {
        self.run_dir.join("log")
    }

    /// A lab with one pod namespace: (lab, pod name, pod netns path).
    pub fn with_pod() -> (Lab, String, String) {
        let mut lab = Lab::new();
        let pod = lab.pod();
        let path = Lab::netns_path(&pod);
        (lab, pod, path)
    }

    /// Holds the sweeper lock as a portgroupd of the node namespace would
    /// (portgroup::sweeper): DELs leave their ports' elements to a sweep,
    /// which nothing in the plugin's tests runs. Dropping it lets go.
    pub fn hold_sweeper_lock(&self) -> portgroup::sweeper::Held {
        let run = portgroup::paths::RunDir(self.run_dir.clone());
        self.node_ns
            .run(move || portgroup::sweeper::hold(&run))
            .expect("take the sweeper lock")
            .expect("nobody else holds the sweeper lock")
    }

    pub fn add_bridge(&self, name: &str) {
        self.node_ip(&["link", "add", name, "type", "bridge"]);
        self.node_ip(&["link", "set", name, "up"]);
    }

    pub fn node_ip(&self, args: &[&str]) -> String {
        self.node_ns.ip(args)
    }

    pub fn pod_ip(&self, pod: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", pod];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A new pod namespace; returns its name (its path is /run/netns/<name>).
    pub fn pod(&mut self) -> String {
        let pod = Netns::new("pod");
        let name = pod.name.clone();
        self.pods.push(pod);
        name
    }

    pub fn netns_path(pod: &str) -> String {
        format!("/run/netns/{pod}")
    }

    /// Runs the plugin inside the node namespace with the CNI environment.
    pub fn cni(&self, command: &str, conf: &Value, env: &[(&str, &str)]) -> Output {
        self.cni_raw(command, serde_json::to_vec(conf).unwrap().as_slice(), env)
    }

    pub fn cni_raw(&self, command: &str, stdin: &[u8], env: &[(&str, &str)]) -> Output {
        self.cni_wrapped(&[], command, stdin, env)
    }

    /// As [`Lab::cni_raw`], with the plugin started through `wrapper` (a tracer
    /// such as `strace -o FILE`), still inside the node namespace.
    pub fn cni_wrapped(
        &self,
        wrapper: &[&str],
        command: &str,
        stdin: &[u8],
        env: &[(&str, &str)],
    ) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .args(wrapper)
            .arg(plugin_binary())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PORTGROUP_RUN_DIR", &self.run_dir)
            .env("PORTGROUP_LOG_DIR", self.log_dir())
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !command.is_empty() {
            cmd.env("CNI_COMMAND", command);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn plugin");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout:?}"))
        };
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        }
    }

    /// The standard environment for one attachment.
    pub fn attach_env<'a>(
        container_id: &'a str,
        pod_path: &'a str,
        ifname: &'a str,
    ) -> Vec<(&'static str, &'a str)> {
        vec![
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", pod_path),
            ("CNI_IFNAME", ifname),
        ]
    }

    /// Link names in the node namespace, other than lo.
    pub fn node_links(&self) -> Vec<String> {
        links(&self.node)
    }

    pub fn records(&self) -> Vec<String> {
        std::fs::read_dir(self.run_dir.join("attachments"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts the node holds only the given links and no attachment records.
    pub fn assert_clean(&self, expected_links: &[&str]) {
        let mut links = self.node_links();
        links.sort();
        let mut want: Vec<String> = expected_links.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(links, want, "links left in the node namespace");
        assert_eq!(
            self.records(),
            Vec::<String>::new(),
            "attachment records left"
        );
        assert_eq!(
            self.secured_ports(),
            Vec::<String>::new(),
            "port-security elements left"
        );
        assert_eq!(
            self.held_ports(),
            Vec::<String>::new(),
            "handover holds left"
        );
    }

    /// Ports with port-security rules in the node's nftables (set `ports`).
    pub fn secured_ports(&self) -> Vec<String> {
        self.port_set("ports")
    }

    /// Ports held for a migration handover (set `handover_held`).
    pub fn held_ports(&self) -> Vec<String> {
        self.port_set("handover_held")
    }

    /// The port names in one of the table's `ifname` sets.
    pub fn port_set(&self, set: &str) -> Vec<String> {
        let out = self
            .node_ns
            .exec(&["nft", "-j", "list", "set", "bridge", "portgroup", set]);
        if !out.status.success() {
            return Vec::new(); // no table yet: nothing installed
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item.get("set"))
            .flat_map(|set| set["elem"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect()
    }

    /// Publishes node state as portgroupd does (state.json and a file per portgroup).
    pub fn write_state(&self, state: &Value) {
        let state: portgroup::state::NodeState = serde_json::from_value(state.clone()).unwrap();
        state
            .write(&portgroup::paths::RunDir(self.run_dir.clone()), None)
            .unwrap();
    }
}

pub fn links(netns: &str) -> Vec<String> {
    let out = sh(&["ip", "-n", netns, "-j", "link", "show"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n != "lo")
        .collect()
}

/// The pod-side link as `ip -j -d` shows it.
pub fn pod_link(pod: &str, ifname: &str) -> Value {
    let out = sh(&["ip", "-n", pod, "-j", "-d", "addr", "show", "dev", ifname]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

/// A bridge-mode config with the given extra fields merged in.
pub fn conf(version: &str, extra: Value) -> Value {
    let mut v = json!({
        "cniVersion": version,
        "name": "testnet",
        "type": "portgroup",
        "bridge": "br0",
        "conflictProbe": false,
    });
    merge(&mut v, extra);
    v
}

pub fn merge(base: &mut Value, extra: Value) {
    for (k, val) in extra.as_object().unwrap() {
        if val.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = val.clone();
        }
    }
}
