//! ADD results: one internal shape, read from any supported version's
//! `prevResult` or IPAM output, written in the version the runtime asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::CniVersion;
use portgroup::error::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Fields we do not interpret (socketPath, pciID, ...) pass through untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Value>,
}

/// 0.3.x and 0.4.0 add `version`; we derive it from the address instead.
#[derive(Deserialize)]
struct WireIp {
    address: IpNetwork,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

impl CniResult {
    /// Reads a result of any supported version (a `prevResult`, or an IPAM plugin's output).
    pub fn from_value(value: &Value, what: &'static str) -> Result<Self, Error> {
        let wire: Wire = serde_json::from_value(value.clone()).map_err(|e| Error::Decode {
            what,
            why: e.to_string(),
        })?;
        Ok(CniResult {
            interfaces: wire.interfaces,
            ips: wire
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: wire.routes,
            dns: wire.dns.filter(|d| !d.is_null()),
        })
    }

    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            out.insert(
                "interfaces".into(),
                serde_json::to_value(&self.interfaces).unwrap_or_default(),
            );
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = serde_json::to_value(ip).unwrap_or_default();
                    if version.result_has_ip_version() {
                        let family = if ip.address.is_ipv4() { "4" } else { "6" };
                        v["version"] = family.into();
                    }
                    v
                })
                .collect::<Vec<_>>();
            out.insert("ips".into(), ips.into());
        }
        if !self.routes.is_empty() {
            out.insert(
                "routes".into(),
                serde_json::to_value(&self.routes).unwrap_or_default(),
            );
        }
        // 0.3.x decoders choke on a null dns; an empty object is what libcni writes.
        out.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "pg0123456789ab".into(),
                    mac: Some("fe:00:00:00:00:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "net1".into(),
                    mac: Some("00:50:56:aa:bb:01".into()),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.10.100.21/24".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
                IpConfig {
                    address: "2001:db8::21/64".parse().unwrap(),
                    gateway: Some("2001:db8::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![],
            dns: None,
        }
    }

    #[test]
    fn ip_version_per_cni_version() {
        let cases = [
            (CniVersion::V0_3_0, true),
            (CniVersion::V0_3_1, true),
            (CniVersion::V0_4_0, true),
            (CniVersion::V1_0_0, false),
            (CniVersion::V1_1_0, false),
        ];
        for (version, has) in cases {
            let v = sample().to_json(version);
            assert_eq!(v["cniVersion"], version.as_str());
            assert_eq!(v["ips"][0].get("version").is_some(), has, "{version:?}");
            if has {
                assert_eq!(v["ips"][0]["version"], "4");
                assert_eq!(v["ips"][1]["version"], "6");
            }
            assert_eq!(v["ips"][1]["interface"], 1);
        }
    }

    #[test]
    fn reads_any_version_and_keeps_unknown_fields() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/x", "pciID": "0000:00:01.0"}],
            "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let r = CniResult::from_value(&prev, "prevResult").unwrap();
        assert_eq!(r.ips[0].interface, Some(0));
        let out = r.to_json(CniVersion::V1_0_0);
        assert_eq!(out["interfaces"][0]["pciID"], "0000:00:01.0");
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["routes"][0]["gw"], "10.1.0.1");
        assert_eq!(out["dns"]["nameservers"][0], "10.1.0.1");
    }

    #[test]
    fn bad_prev_result_is_a_decode_error() {
        let err = CniResult::from_value(&json!({"ips": [{"address": "nope"}]}), "prevResult")
            .unwrap_err();
        assert_eq!(err.code(), portgroup::error::code::DECODE);
    }
}
