//! The CNI_* environment, validated per command as the spec and conventions say.

use std::path::PathBuf;

use portgroup::naming::{validate_container_id, validate_ifname};
use portgroup::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniArgs {
    /// `MAC=` as sent. Parsed where it is the MAC that wins, so that a bad value is
    /// named by its source only when that source is the one used.
    pub mac: Option<String>,
    /// `IP=` (comma separated), as podman's `--ip` sends it: for a delegated IPAM
    /// plugin to honour, or for us when it carries prefix lengths.
    pub ips: Vec<String>,
    /// `K8S_POD_NAMESPACE`, as Multus and kubelet's runtimes send it.
    pub pod_namespace: Option<String>,
}

/// What every command has: the runtime's CNI_ARGS and CNI_PATH.
#[derive(Debug, Clone)]
pub struct Node {
    pub args: CniArgs,
    pub cni_path: Vec<PathBuf>,
}

/// ADD and CHECK: one attachment in a pod's network namespace.
#[derive(Debug, Clone)]
pub struct Pod {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub node: Node,
}

/// DEL: one attachment; its namespace may be gone already.
#[derive(Debug, Clone)]
pub struct Detach {
    pub container_id: String,
    pub ifname: String,
    pub node: Node,
}

/// One command as a handler receives it: its environment, checked once; its
/// network config, validated once; and the config's bytes, which delegated IPAM
/// plugins read as the spec has them.
pub struct Call<'a, E, C> {
    pub env: E,
    pub conf: C,
    pub stdin: &'a [u8],
}

/// One CNI command with the environment it needs, checked once when built.
#[derive(Debug, Clone)]
pub enum Invocation {
    Add(Pod),
    Check(Pod),
    Del(Detach),
    Gc(Node),
    Status(Node),
    Version,
}

fn var(name: &'static str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::env(name, "is not valid UTF-8")),
    }
}

fn command_from_env() -> Result<Command, Error> {
    match var("CNI_COMMAND")?.as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        Some(other) => Err(Error::env(
            "CNI_COMMAND",
            format!("{other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
        )),
        None => Err(Error::env("CNI_COMMAND", "is not set")),
    }
}

fn required(name: &'static str, check: fn(&str) -> Result<(), String>) -> Result<String, Error> {
    let value = var(name)?.ok_or_else(|| Error::env(name, "is required"))?;
    check(&value).map_err(|why| Error::env(name, why))?;
    Ok(value)
}

impl Invocation {
    /// The command and its environment, as the spec and conventions require them.
    pub fn from_env() -> Result<Invocation, Error> {
        let command = command_from_env()?;
        if command == Command::Version {
            return Ok(Invocation::Version);
        }
        let node = Node {
            args: parse_cni_args(var("CNI_ARGS")?.as_deref().unwrap_or(""))?,
            cni_path: std::env::split_paths(&var("CNI_PATH")?.unwrap_or_default())
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        };
        let ids = || -> Result<(String, String), Error> {
            Ok((
                required("CNI_CONTAINERID", validate_container_id)?,
                required("CNI_IFNAME", validate_ifname)?,
            ))
        };
        let pod = |node: Node| -> Result<Pod, Error> {
            let (container_id, ifname) = ids()?;
            let netns = var("CNI_NETNS")?.ok_or_else(|| Error::env("CNI_NETNS", "is required"))?;
            Ok(Pod {
                container_id,
                ifname,
                netns,
                node,
            })
        };
        Ok(match command {
            Command::Add => Invocation::Add(pod(node)?),
            Command::Check => Invocation::Check(pod(node)?),
            Command::Del => {
                let (container_id, ifname) = ids()?;
                Invocation::Del(Detach {
                    container_id,
                    ifname,
                    node,
                })
            }
            Command::Gc => Invocation::Gc(node),
            Command::Status => Invocation::Status(node),
            Command::Version => Invocation::Version,
        })
    }
}

/// `K=V;K2=V2`. Unknown keys are ignored: Multus passes K8S_POD_NAME and friends.
pub fn parse_cni_args(text: &str) -> Result<CniArgs, Error> {
    let mut args = CniArgs::default();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::env("CNI_ARGS", format!("{pair:?} is not KEY=VALUE")))?;
        if key == "IP" {
            args.ips = value
                .split(',')
                .filter(|ip| !ip.is_empty())
                .map(str::to_string)
                .collect();
        } else if key == "MAC" {
            args.mac = Some(value.to_string());
        } else if key == "K8S_POD_NAMESPACE" {
            args.pod_namespace = Some(value.to_string()).filter(|ns| !ns.is_empty());
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args() {
        let cases: &[(&str, Option<&str>, Option<&str>, bool)] = &[
            ("", None, None, true),
            ("IgnoreUnknown=1;K8S_POD_NAME=x", None, None, true),
            ("MAC=00:50:56:aa:bb:01", Some("00:50:56:aa:bb:01"), None, true),
            (
                "IgnoreUnknown=true;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=vm;MAC=00:50:56:aa:bb:01;",
                Some("00:50:56:aa:bb:01"),
                Some("team-a"),
                true,
            ),
            // Kept as sent: refused only where it is the MAC used.
            ("MAC=nope", Some("nope"), None, true),
            ("K8S_POD_NAMESPACE=", None, None, true),
            ("garbage", None, None, false),
        ];
        for (text, mac, namespace, ok) in cases {
            let got = parse_cni_args(text);
            assert_eq!(got.is_ok(), *ok, "{text}");
            match got {
                Ok(args) => {
                    assert_eq!(args.mac.as_deref(), *mac, "{text}");
                    assert_eq!(args.pod_namespace.as_deref(), *namespace, "{text}");
                }
                Err(e) => assert_eq!(e.code(), portgroup::error::code::INVALID_ENV),
            }
        }
    }
}
