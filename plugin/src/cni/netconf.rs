//! The plugin's network configuration (stdin), parsed and validated before any
//! side effect. Every complaint names the field it is about.

use std::collections::BTreeSet;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use super::result::CniResult;
use super::{CniVersion, LATEST_VERSION};
use crate::probe::ProbeConfig;
use portgroup::error::Error;
use portgroup::mac::MacAddr;
use portgroup::nodeconfig::{parse_cidr, validate_portgroup_name, MTU_MAX, MTU_MIN};

/// Probe bounds: at most (5 - 1) × 500 ms + 1000 ms = 3 s of listening per ADD,
/// however many addresses, so a config cannot make an ADD slow.
pub const PROBE_COUNT_MAX: u64 = 5;
pub const PROBE_INTERVAL_MS_MAX: u64 = 500;
pub const PROBE_WAIT_MS_MAX: u64 = 1000;

/// Addresses one attachment may declare (each list: `runtimeConfig.ips`,
/// `args.cni.ips`, `CNI_ARGS IP=`) or receive from IPAM.
pub const MAX_ADDRESSES: usize = 256;

/// Where the VM's port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A portgroup, resolved to its bridge through the node state.
    Portgroup(String),
    /// A bridge the admin manages; no daemon needed.
    Bridge(String),
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub target: Target,
    pub mtu: Option<u32>,
    pub link_down: bool,
    pub spoof_check: bool,
    pub conflict_probe: bool,
    pub probe: ProbeConfig,
    /// The delegated IPAM section; its `type` is a plugin in CNI_PATH.
    pub ipam: Option<Value>,
    pub runtime_mac: Option<MacAddr>,
    /// Requested addresses, as given. With an `ipam` section they may be bare (the
    /// IPAM plugin's to honour); without one each carries its prefix length.
    pub runtime_ips: Option<Vec<IpNetwork>>,
    pub args_mac: Option<MacAddr>,
    pub args_ips: Option<Vec<IpNetwork>>,
    pub prev_result: Option<CniResult>,
    /// GC: the attachments still valid, as (container ID, ifname).
    pub valid_attachments: Option<BTreeSet<(String, String)>>,
    /// `logFile` reduced to a bare file name: the file lives in the node's log
    /// directory, never where the config says (see [`log_file_name`]).
    pub log_file: Option<String>,
    pub log_level: Option<String>,
    /// `deviceID`: the device the kubelet allocated for the NAD's resourceName,
    /// added by Multus; kept in the attachment record.
    pub device_id: Option<String>,
}

/// Just enough of the config to take an attachment down: DEL must succeed even when
/// the config has since gone bad, as long as it is JSON.
#[derive(Debug, Clone)]
pub struct TeardownConf {
    pub cni_version: CniVersion,
    pub name: String,
    /// The config's IPAM section, only when it passes the same validation as ADD's.
    pub ipam: Option<Value>,
    /// Why the config's IPAM section was set aside, when it was: never executed.
    pub ignored_ipam: Option<String>,
    /// `logFile` reduced as for ADD; one that cannot be reduced is dropped.
    pub log_file: Option<String>,
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, Error> {
        let root = decode(bytes)?;
        let cni_version = version_of(&root)?;
        let name = network_name(&root)?;
        let get = Fields(&root);

        reject_unsupported(&root)?;

        let portgroup = get.opt_str("portgroup")?;
        let bridge = get.opt_str("bridge")?;
        let target = match (portgroup, bridge) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_config(
                    "portgroup/bridge",
                    "set exactly one of portgroup and bridge, not both",
                ))
            }
            (None, None) => {
                return Err(Error::invalid_config(
                    "portgroup/bridge",
                    "set exactly one of portgroup (resolved through portgroupd) and bridge (an existing bridge)",
                ))
            }
            (Some(pg), None) => {
                validate_portgroup_name(&pg).map_err(|why| Error::invalid_config("portgroup", why))?;
                Target::Portgroup(pg)
            }
            (None, Some(br)) => {
                portgroup::naming::validate_ifname(&br).map_err(|why| Error::invalid_config("bridge", why))?;
                Target::Bridge(br)
            }
        };

        let mtu = match get.opt_u64("mtu")? {
            None => None,
            Some(m) if (u64::from(MTU_MIN)..=u64::from(MTU_MAX)).contains(&m) => Some(m as u32),
            Some(m) => {
                return Err(Error::invalid_config(
                    "mtu",
                    format!("must be from {MTU_MIN} to {MTU_MAX}, got {m}"),
                ))
            }
        };

        let ipam = ipam_section(root.get("ipam"))?;

        // With a delegated IPAM requested IPs are the IPAM plugin's to honour (static
        // and host-local read runtimeConfig.ips, bare addresses included); without
        // one we configure them ourselves, so they need a prefix length. Whose they
        // are is decided once, by the attachment spec.
        let own_ips = ipam.is_none();
        let runtime = Fields::section(&root, "runtimeConfig")?;
        let runtime_mac = runtime.opt_mac("runtimeConfig.mac", "mac")?;
        let runtime_ips = runtime.opt_ips("runtimeConfig.ips", "ips", own_ips)?;
        let args_cni = Fields::section(&root, "args")?.subsection("args", "cni")?;
        let args_mac = args_cni.opt_mac("args.cni.mac", "mac")?;
        let args_ips = args_cni.opt_ips("args.cni.ips", "ips", own_ips)?;

        let probe_section = Fields::section(&root, "probe")?;
        let defaults = ProbeConfig::default();
        let probe = ProbeConfig {
            count: probe_section
                .bounded_u64("probe.count", "count", PROBE_COUNT_MAX)?
                .map(|c| c as u32)
                .unwrap_or(defaults.count),
            interval: probe_section
                .bounded_u64("probe.intervalMs", "intervalMs", PROBE_INTERVAL_MS_MAX)?
                .map(Duration::from_millis)
                .unwrap_or(defaults.interval),
            wait: probe_section
                .bounded_u64("probe.waitMs", "waitMs", PROBE_WAIT_MS_MAX)?
                .map(Duration::from_millis)
                .unwrap_or(defaults.wait),
        };
        if probe.count == 0 {
            return Err(Error::invalid_config(
                "probe.count",
                "must be at least 1; set conflictProbe to false to probe nothing",
            ));
        }

        let prev_result = match root.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_value(v, "prevResult")?),
        };

        Ok(NetConf {
            cni_version,
            name,
            target,
            mtu,
            link_down: get.opt_bool("linkDown")?.unwrap_or(false),
            spoof_check: get.opt_bool("spoofCheck")?.unwrap_or(true),
            conflict_probe: get.opt_bool("conflictProbe")?.unwrap_or(true),
            probe,
            ipam,
            runtime_mac,
            runtime_ips,
            args_mac,
            args_ips,
            prev_result,
            valid_attachments: valid_attachments(&root)?,
            log_file: get
                .opt_str("logFile")?
                .map(|path| log_file_name(&path))
                .transpose()?,
            log_level: get.opt_str("logLevel")?,
            device_id: device_id(get.opt_str("deviceID")?)?,
        })
    }
}

/// Longest `deviceID` taken: the kubelet's own IDs (portgroupd's
/// `<portgroup>-<n>`) stay within 63 characters; other device plugins' (PCI
/// addresses, UUIDs, paths) fit this bound with room to spare.
const DEVICE_ID_MAX: usize = 255;

/// `deviceID` as it is recorded: any printable text of bounded length; an
/// empty one is no device.
fn device_id(id: Option<String>) -> Result<Option<String>, Error> {
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        return Ok(None);
    };
    if id.len() > DEVICE_ID_MAX {
        return Err(Error::invalid_config(
            "deviceID",
            format!("must be at most {DEVICE_ID_MAX} bytes, got {}", id.len()),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid_config(
            "deviceID",
            format!("must hold no control characters, got {id:?}"),
        ));
    }
    Ok(Some(id))
}

impl TeardownConf {
    /// Lenient: DEL must go through for a config ADD refused (duplicate keys
    /// included), as long as it is JSON.
    pub fn parse(bytes: &[u8]) -> Result<TeardownConf, Error> {
        let root = decode_with(serde_json::from_slice(bytes))?;
        let (ipam, ignored_ipam) = match ipam_section(root.get("ipam")) {
            Ok(ipam) => (ipam, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(TeardownConf {
            cni_version: version_of(&root)?,
            name: network_name(&root)?,
            ipam,
            ignored_ipam,
            log_file: root
                .get("logFile")
                .and_then(Value::as_str)
                .and_then(|path| log_file_name(path).ok()),
        })
    }
}

/// The version to write an error in: the config's when it has a usable one.
pub fn error_version(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| CniVersion::parse(v).is_ok())
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

/// The config as a JSON object, refusing duplicate keys (see `strict_json`).
fn decode(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    decode_with(crate::cni::strict_json::from_slice(bytes))
}

fn decode_with(parsed: serde_json::Result<Value>) -> Result<Map<String, Value>, Error> {
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Decode {
            what: "network configuration",
            why: "must be a JSON object".into(),
        }),
        Err(e) => Err(Error::Decode {
            what: "network configuration",
            why: e.to_string(),
        }),
    }
}

fn version_of(root: &Map<String, Value>) -> Result<CniVersion, Error> {
    match root.get("cniVersion") {
        Some(Value::String(v)) => CniVersion::parse(v),
        Some(_) => Err(Error::invalid_config(
            "cniVersion",
            "must be a string such as \"1.0.0\"",
        )),
        None => Err(Error::invalid_config("cniVersion", "required")),
    }
}

fn network_name(root: &Map<String, Value>) -> Result<String, Error> {
    let name = match root.get("name") {
        Some(Value::String(n)) => n.clone(),
        Some(_) => return Err(Error::invalid_config("name", "must be a string")),
        None => return Err(Error::invalid_config("name", "required")),
    };
    // Spec section 1: alphanumeric first, then alphanumerics, '_', '.', '-'.
    portgroup::naming::validate_container_id(&name)
        .map_err(|why| Error::invalid_config("name", why))?;
    Ok(name)
}

/// The binary this plugin is installed as: never a delegated IPAM plugin, which
/// would run this same config again, and again.
const OWN_PLUGIN_NAME: &str = "portgroup";

/// Longest plugin or log file name accepted (NAME_MAX).
const FILE_NAME_MAX: usize = 255;

/// A bare file name: letters, digits, '-', '_', '.'; not "." or "..". So never a
/// path, never a control character: joined onto a directory it stays inside it.
pub fn is_bare_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= FILE_NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The delegated IPAM section, validated. Its `type` is executed from CNI_PATH, so it
/// must be a bare plugin name. Every command that runs an IPAM plugin goes through here.
pub fn ipam_section(value: Option<&Value>) -> Result<Option<Value>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(section)) if section.is_empty() => Ok(None),
        Some(Value::Object(section)) => match section.get("type") {
            Some(Value::String(t)) if t == OWN_PLUGIN_NAME => Err(Error::invalid_config(
                "ipam.type",
                format!("{t:?} is this plugin, not an IPAM plugin"),
            )),
            Some(Value::String(t)) if is_bare_file_name(t) => {
                Ok(Some(Value::Object(section.clone())))
            }
            Some(Value::String(t)) => Err(Error::invalid_config(
                "ipam.type",
                format!(
                    "{t:?} is not a plugin name: a bare file name in CNI_PATH (letters, digits, '-', '_', '.'), never a path"
                ),
            )),
            _ => Err(Error::invalid_config(
                "ipam.type",
                "required, the IPAM plugin's name",
            )),
        },
        Some(_) => Err(Error::invalid_config("ipam", "must be an object")),
    }
}

/// `logFile` reduced to its last path component: the node, not the config, chooses
/// the directory plugin logs go to. A value with no usable file name is refused.
pub fn log_file_name(path: &str) -> Result<String, Error> {
    let name = path.rsplit('/').next().unwrap_or("");
    if is_bare_file_name(name) && !name.starts_with('.') {
        Ok(name.to_string())
    } else {
        Err(Error::UnsupportedField {
            field: "logFile",
            value: format!("{path:?}"),
            why: "must end in a file name (letters, digits, '-', '_', '.'); the file is created in the node's log directory",
        })
    }
}

/// Bridge-plugin fields that would silently not do what their owner expects here.
fn reject_unsupported(root: &Map<String, Value>) -> Result<(), Error> {
    let truthy = |v: &Value| !(v.is_null() || v == &Value::Bool(false) || v == &Value::from(0));
    for (field, why) in [
        (
            "vlan",
            "the portgroup carries the VLAN; name it with \"portgroup\"",
        ),
        (
            "ipMasq",
            "a migrated VM keeps its own addresses; portgroup does no NAT",
        ),
        (
            "isGateway",
            "portgroup bridges are plain L2; the VLAN's router stays the gateway",
        ),
        (
            "isDefaultGateway",
            "portgroup bridges are plain L2; the VLAN's router stays the gateway",
        ),
        ("vlanTrunk", "a VM port is an access port on one portgroup"),
        (
            "allowRouterAdvertisements",
            "port-security opt-ins are the admin's: set it on the portgroup in the node config",
        ),
        (
            "allowDhcpServer",
            "port-security opt-ins are the admin's: set it on the portgroup in the node config",
        ),
    ] {
        if let Some(value) = root.get(field).filter(|v| truthy(v)) {
            return Err(Error::UnsupportedField {
                field,
                value: value.to_string(),
                why,
            });
        }
    }
    Ok(())
}

fn valid_attachments(
    root: &Map<String, Value>,
) -> Result<Option<BTreeSet<(String, String)>>, Error> {
    let (field, value) = match (
        root.get("cni.dev/valid-attachments"),
        root.get("cni.dev/attachments"),
    ) {
        (Some(v), _) => ("cni.dev/valid-attachments", v),
        (None, Some(v)) => ("cni.dev/attachments", v),
        (None, None) => return Ok(None),
    };
    let items = value
        .as_array()
        .ok_or_else(|| Error::invalid_config(field, "must be an array"))?;
    let mut set = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let id = item.get("containerID").and_then(Value::as_str);
        let ifname = item.get("ifname").and_then(Value::as_str);
        match (id, ifname) {
            (Some(id), Some(ifname)) => {
                set.insert((id.to_string(), ifname.to_string()));
            }
            _ => {
                return Err(Error::invalid_config(
                    format!("{field}[{i}]"),
                    "needs string containerID and ifname",
                ))
            }
        }
    }
    Ok(Some(set))
}

/// Typed access to one object's optional fields, with the errors naming them.
struct Fields<'a>(&'a Map<String, Value>);

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl<'a> Fields<'a> {
    fn section(root: &'a Map<String, Value>, key: &str) -> Result<Fields<'a>, Error> {
        match root.get(key) {
            None | Some(Value::Null) => Ok(Fields(EMPTY.get_or_init(Map::new))),
            Some(Value::Object(map)) => Ok(Fields(map)),
            Some(_) => Err(Error::invalid_config(key, "must be an object")),
        }
    }

    fn subsection(&self, parent: &str, key: &str) -> Result<Fields<'a>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Fields(EMPTY.get_or_init(Map::new))),
            Some(Value::Object(map)) => Ok(Fields(map)),
            Some(_) => Err(Error::invalid_config(
                format!("{parent}.{key}"),
                "must be an object",
            )),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::invalid_config(
                key,
                format!("must be a string, got {other}"),
            )),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Error::invalid_config(
                key,
                format!("must be true or false, got {other}"),
            )),
        }
    }

    fn bounded_u64(&self, field: &str, key: &str, max: u64) -> Result<Option<u64>, Error> {
        match self.opt_u64_named(field, key)? {
            Some(v) if v > max => Err(Error::invalid_config(
                field,
                format!("must be at most {max}, got {v}"),
            )),
            other => Ok(other),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, Error> {
        self.opt_u64_named(key, key)
    }

    fn opt_u64_named(&self, field: &str, key: &str) -> Result<Option<u64>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Error::invalid_config(field, format!("must be a whole number, got {v}"))
            }),
        }
    }

    fn opt_mac(&self, field: &str, key: &str) -> Result<Option<MacAddr>, Error> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => MacAddr::parse_unicast(s)
                .map(Some)
                .map_err(|e| Error::invalid_config(field, e.to_string())),
            Some(other) => Err(Error::invalid_config(
                field,
                format!("must be a MAC address string, got {other}"),
            )),
        }
    }

    /// Addresses, deduplicated (podman repeats them on `network reload`). With
    /// `need_prefix` each must carry its prefix length; otherwise bare addresses
    /// are accepted too, as host prefixes.
    fn opt_ips(
        &self,
        field: &str,
        key: &str,
        need_prefix: bool,
    ) -> Result<Option<Vec<IpNetwork>>, Error> {
        let items = match self.0.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) if items.is_empty() => return Ok(None),
            Some(Value::Array(items)) if items.len() > MAX_ADDRESSES => {
                return Err(Error::invalid_config(
                    field,
                    format!(
                        "{} addresses; an attachment may have at most {MAX_ADDRESSES}",
                        items.len()
                    ),
                ))
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(Error::invalid_config(
                    field,
                    format!("must be an array of addresses, got {other}"),
                ))
            }
        };
        let mut ips: Vec<IpNetwork> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let text = item.as_str().ok_or_else(|| {
                Error::invalid_config(format!("{field}[{i}]"), "must be a string like 10.0.0.5/24")
            })?;
            let ip = if need_prefix || text.contains('/') {
                parse_cidr(text)
            } else {
                text.parse::<std::net::IpAddr>()
                    .map(IpNetwork::from)
                    .map_err(|_| format!("{text:?} is not an IP address"))
            }
            .map_err(|why| Error::invalid_config(format!("{field}[{i}]"), why))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(Some(ips))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portgroup::error::code;
    use serde_json::json;

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "prod-web", "type": "portgroup", "portgroup": "prod-web"})
    }

    fn with(patch: Value) -> Vec<u8> {
        let mut v = base();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let conf = NetConf::parse(&with(
            json!({"capabilities": {"mac": true, "ips": true}, "mtu": 1500}),
        ))
        .unwrap();
        assert_eq!(conf.target, Target::Portgroup("prod-web".into()));
        assert!(conf.spoof_check && conf.conflict_probe && !conf.link_down);
        assert_eq!(conf.mtu, Some(1500));
        assert!(conf.ipam.is_none());
    }

    #[test]
    fn runtime_and_args_sources() {
        let conf = NetConf::parse(&with(json!({
            "runtimeConfig": {"mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24", "2001:db8::21/64"]},
            "args": {"cni": {"mac": "00:50:56:aa:bb:02"}}
        })))
        .unwrap();
        assert_eq!(conf.runtime_mac.unwrap().to_string(), "00:50:56:aa:bb:01");
        assert_eq!(conf.args_mac.unwrap().to_string(), "00:50:56:aa:bb:02");
        assert_eq!(conf.runtime_ips.unwrap().len(), 2);
    }

    #[test]
    fn bad_configs_name_their_field() {
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (b"{".to_vec(), code::DECODE, "network configuration"),
            (b"[]".to_vec(), code::DECODE, "JSON object"),
            (
                with(json!({"cniVersion": "0.2.0"})),
                code::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                with(json!({"cniVersion": 1})),
                code::INVALID_CONFIG,
                "cniVersion",
            ),
            (
                with(json!({"cniVersion": null})),
                code::INVALID_CONFIG,
                "cniVersion",
            ),
            (with(json!({"name": null})), code::INVALID_CONFIG, "name"),
            (with(json!({"name": "-bad"})), code::INVALID_CONFIG, "name"),
            (
                with(json!({"bridge": "br0"})),
                code::INVALID_CONFIG,
                "not both",
            ),
            (
                with(json!({"portgroup": null})),
                code::INVALID_CONFIG,
                "exactly one",
            ),
            (
                with(json!({"portgroup": "Bad_Name"})),
                code::INVALID_CONFIG,
                "portgroup",
            ),
            (
                with(json!({"portgroup": 5})),
                code::INVALID_CONFIG,
                "portgroup",
            ),
            (
                with(json!({"portgroup": null, "bridge": "much-too-long-bridge"})),
                code::INVALID_CONFIG,
                "bridge",
            ),
            (with(json!({"mtu": 10})), code::INVALID_CONFIG, "mtu"),
            (with(json!({"mtu": 100000})), code::INVALID_CONFIG, "mtu"),
            (with(json!({"mtu": "1500"})), code::INVALID_CONFIG, "mtu"),
            (
                with(json!({"linkDown": "yes"})),
                code::INVALID_CONFIG,
                "linkDown",
            ),
            (
                with(json!({"spoofCheck": 1})),
                code::INVALID_CONFIG,
                "spoofCheck",
            ),
            (
                with(json!({"ipam": "static"})),
                code::INVALID_CONFIG,
                "ipam",
            ),
            (
                with(json!({"ipam": {"type": "../../bin/sh"}})),
                code::INVALID_CONFIG,
                "ipam.type",
            ),
            (
                with(json!({"ipam": {"routes": []}})),
                code::INVALID_CONFIG,
                "ipam.type",
            ),
            (
                with(json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}})),
                code::INVALID_CONFIG,
                "runtimeConfig.mac",
            ),
            (
                with(json!({"runtimeConfig": {"mac": "00:50:56"}})),
                code::INVALID_CONFIG,
                "runtimeConfig.mac",
            ),
            (
                with(json!({"runtimeConfig": {"ips": ["10.0.0.300/24"]}})),
                code::INVALID_CONFIG,
                "runtimeConfig.ips[0]",
            ),
            (
                with(json!({"runtimeConfig": {"ips": ["10.0.0.3"]}})),
                code::INVALID_CONFIG,
                "prefix length",
            ),
            (
                with(json!({"runtimeConfig": {"ips": "10.0.0.3/24"}})),
                code::INVALID_CONFIG,
                "runtimeConfig.ips",
            ),
            (
                with(json!({"runtimeConfig": []})),
                code::INVALID_CONFIG,
                "runtimeConfig",
            ),
            (
                with(json!({"args": {"cni": {"mac": 7}}})),
                code::INVALID_CONFIG,
                "args.cni.mac",
            ),
            (
                with(json!({"vlan": 100})),
                code::UNSUPPORTED_FIELD,
                "vlan = 100",
            ),
            (
                with(json!({"ipMasq": true})),
                code::UNSUPPORTED_FIELD,
                "ipMasq",
            ),
            (
                with(json!({"allowRouterAdvertisements": true})),
                code::UNSUPPORTED_FIELD,
                "node config",
            ),
            (
                with(json!({"allowDhcpServer": true})),
                code::UNSUPPORTED_FIELD,
                "allowDhcpServer",
            ),
            (
                with(json!({"prevResult": {"ips": [{"address": "x"}]}})),
                code::DECODE,
                "prevResult",
            ),
            (
                with(json!({"cni.dev/valid-attachments": [{"containerID": 1}]})),
                code::INVALID_CONFIG,
                "valid-attachments",
            ),
        ];
        for (input, want_code, want_text) in cases {
            let shown = String::from_utf8_lossy(&input).into_owned();
            let err = NetConf::parse(&input).expect_err(&shown);
            assert_eq!(err.code(), want_code, "{shown}: {err}");
            assert!(err.to_string().contains(want_text), "{shown}: {err}");
        }
    }

    #[test]
    fn requested_ips_go_to_ipam_when_there_is_one() {
        let with_ipam = NetConf::parse(&with(json!({
            "ipam": {"type": "host-local"},
            "runtimeConfig": {"ips": ["10.10.100.21", "10.10.100.21"]}
        })))
        .unwrap();
        // Parsed (bare addresses accepted); whose they are is the attachment spec's call.
        assert_eq!(with_ipam.runtime_ips.unwrap().len(), 1);
        let bad = NetConf::parse(&with(
            json!({"ipam": {"type": "host-local"}, "runtimeConfig": {"ips": ["nope"]}}),
        ));
        assert_eq!(bad.unwrap_err().code(), code::INVALID_CONFIG);
        let own = NetConf::parse(&with(
            json!({"runtimeConfig": {"ips": ["10.0.0.1/24", "10.0.0.1/24", "10.0.0.2/24"]}}),
        ))
        .unwrap();
        assert_eq!(own.runtime_ips.unwrap().len(), 2, "duplicates dropped");
    }

    #[test]
    fn false_and_zero_unsupported_fields_are_fine() {
        assert!(NetConf::parse(&with(
            json!({"ipMasq": false, "vlan": 0, "isGateway": false})
        ))
        .is_ok());
    }

    #[test]
    fn attachments_for_gc() {
        let conf = NetConf::parse(&with(
            json!({"cni.dev/attachments": [{"containerID": "a", "ifname": "net1"}]}),
        ))
        .unwrap();
        assert!(conf
            .valid_attachments
            .unwrap()
            .contains(&("a".into(), "net1".into())));
    }

    /// Multus adds the device the kubelet allocated for the NAD's
    /// `k8s.v1.cni.cncf.io/resourceName` (portgroupd's `portgroup.io/<name>`) as
    /// `deviceID`; ADD, CHECK, DEL and GC must take it as it comes.
    #[test]
    fn multus_device_id_is_accepted() {
        let conf = with(json!({"deviceID": "prod-web-17"}));
        let parsed = NetConf::parse(&conf).expect("deviceID accepted");
        assert_eq!(parsed.target, Target::Portgroup("prod-web".into()));
        assert_eq!(parsed.device_id.as_deref(), Some("prod-web-17"));
        assert!(TeardownConf::parse(&conf).is_ok());
        // Whatever shape another device plugin's ID takes.
        let pci = NetConf::parse(&with(json!({"deviceID": "0000:3b:00.1"}))).unwrap();
        assert_eq!(pci.device_id.as_deref(), Some("0000:3b:00.1"));
        // None given, or an empty one: no device.
        assert_eq!(NetConf::parse(&with(json!({}))).unwrap().device_id, None);
        assert_eq!(
            NetConf::parse(&with(json!({"deviceID": ""})))
                .unwrap()
                .device_id,
            None
        );
    }

    #[test]
    fn bad_device_id_is_refused_naming_the_field() {
        for (bad, why) in [
            (json!(17), "must be a string"),
            (json!("x".repeat(256)), "at most 255 bytes"),
            (json!("prod-web-1\n"), "control characters"),
        ] {
            let err = NetConf::parse(&with(json!({ "deviceID": bad }))).unwrap_err();
            let shown = format!("{err}");
            assert!(shown.contains("deviceID") && shown.contains(why), "{shown}");
        }
        // DEL takes the config as it comes.
        assert!(TeardownConf::parse(&with(json!({"deviceID": 17}))).is_ok());
    }

    #[test]
    fn teardown_is_lenient() {
        let conf = TeardownConf::parse(&with(json!({"mtu": 1, "bridge": "x"}))).unwrap();
        assert_eq!(conf.name, "prod-web");
        assert!(TeardownConf::parse(b"{").is_err());
    }

    #[test]
    fn error_version_falls_back() {
        assert_eq!(
            error_version(&with(json!({"cniVersion": "0.4.0"}))),
            "0.4.0"
        );
        assert_eq!(error_version(b"{"), "1.1.0");
        assert_eq!(
            error_version(&with(json!({"cniVersion": "9.9.9"}))),
            "1.1.0"
        );
    }
}
