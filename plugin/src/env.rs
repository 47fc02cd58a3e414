//! The CNI_* environment, validated per command as the spec and conventions say.

use std::path::PathBuf;

use portgroup::mac::MacAddr;
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

#[derive(Debug, Clone, Default)]
pub struct CniArgs {
    pub mac: Option<MacAddr>,
    /// `IP=` (comma separated), as podman's `--ip` sends it: for a delegated IPAM
    /// plugin to honour, or for us when it carries prefix lengths.
    pub ips: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Env {
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

fn var(name: &'static str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::env(name, "is not valid UTF-8")),
    }
}

impl Env {
    pub fn command_from_env() -> Result<Command, Error> {
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

    pub fn from_env(command: Command) -> Result<Env, Error> {
        let container_id = var("CNI_CONTAINERID")?;
        let ifname = var("CNI_IFNAME")?;
        let netns = var("CNI_NETNS")?;
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            match &container_id {
                None => return Err(Error::env("CNI_CONTAINERID", "is required")),
                Some(id) => {
                    validate_container_id(id).map_err(|why| Error::env("CNI_CONTAINERID", why))?
                }
            }
            match &ifname {
                None => return Err(Error::env("CNI_IFNAME", "is required")),
                Some(name) => validate_ifname(name).map_err(|why| Error::env("CNI_IFNAME", why))?,
            }
            if command != Command::Del && netns.is_none() {
                return Err(Error::env("CNI_NETNS", "is required"));
            }
        }
        Ok(Env {
            container_id,
            netns,
            ifname,
            args: parse_cni_args(var("CNI_ARGS")?.as_deref().unwrap_or(""))?,
            path: std::env::split_paths(&var("CNI_PATH")?.unwrap_or_default())
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        })
    }

    /// (container ID, ifname): validated present for ADD, DEL and CHECK.
    pub fn attachment(&self) -> Result<(&str, &str), Error> {
        match (&self.container_id, &self.ifname) {
            (Some(id), Some(ifname)) => Ok((id, ifname)),
            (None, _) => Err(Error::env("CNI_CONTAINERID", "is required")),
            (_, None) => Err(Error::env("CNI_IFNAME", "is required")),
        }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
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
            args.mac = Some(
                MacAddr::parse_unicast(value)
                    .map_err(|e| Error::env("CNI_ARGS", format!("MAC: {e}")))?,
            );
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("", None, true),
            ("IgnoreUnknown=1;K8S_POD_NAME=x", None, true),
            ("MAC=00:50:56:aa:bb:01", Some("00:50:56:aa:bb:01"), true),
            (
                "K8S_POD_NAME=x;MAC=00:50:56:aa:bb:01;",
                Some("00:50:56:aa:bb:01"),
                true,
            ),
            ("MAC=01:00:00:00:00:01", None, false),
            ("MAC=nope", None, false),
            ("garbage", None, false),
        ];
        for (text, mac, ok) in cases {
            let got = parse_cni_args(text);
            assert_eq!(got.is_ok(), *ok, "{text}");
            if let Ok(args) = got {
                assert_eq!(args.mac.map(|m| m.to_string()).as_deref(), *mac, "{text}");
            } else {
                assert_eq!(got.unwrap_err().code(), portgroup::error::code::INVALID_ENV);
            }
        }
    }
}
