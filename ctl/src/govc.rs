//! govc JSON: `govc vm.info -json`, `govc host.portgroup.info -json` and
//! `govc dvs.portgroup.info -json`, each recognised by its shape. govc writes
//! govmomi types with Go's encoding/json: lowerCamel keys, no type
//! discriminator on interface values (the backing kind is known by its keys).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::InputError;
use crate::model::{Inventory, NetworkObservation, Nic, Vm};
use crate::values::{parse_addr, parse_mac, Addr, Vlan};

pub enum GovcFile {
    Vms(Vec<Vm>),
    Networks(Vec<NetworkObservation>),
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// `{"value": true}` (dvs BoolPolicy) or a plain boolean (host policy).
fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(obj @ Value::Object(_)) => obj.get("value").and_then(Value::as_bool).unwrap_or(false),
        _ => false,
    }
}

pub fn read(path: &Path) -> Result<GovcFile, InputError> {
    let bytes =
        std::fs::read(path).map_err(|e| InputError::file(path, format!("cannot read: {e}")))?;
    let root: Value = serde_json::from_slice(&bytes).map_err(|e| {
        InputError::file(
            path,
            format!("not JSON (govc ... -json output expected): {e}"),
        )
    })?;
    if let Some(vms) = root
        .get("virtualMachines")
        .or_else(|| root.get("VirtualMachines"))
    {
        let items = vms.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut out = Vec::new();
        for (i, vm) in items.iter().enumerate() {
            out.push(read_vm(path, i, vm)?);
        }
        return Ok(GovcFile::Vms(out));
    }
    if let Some(pgs) = root
        .get("portgroup")
        .or_else(|| root.get("Portgroup"))
        .and_then(Value::as_array)
    {
        return Ok(GovcFile::Networks(
            pgs.iter().filter_map(read_host_portgroup).collect(),
        ));
    }
    if let Some(ports) = root
        .get("port")
        .or_else(|| root.get("Port"))
        .and_then(Value::as_array)
    {
        return Ok(GovcFile::Networks(read_dv_ports(ports)));
    }
    Err(InputError::file(
        path,
        "not govc vm.info, host.portgroup.info or dvs.portgroup.info JSON (none of virtualMachines, portgroup, port at the top)",
    ))
}

fn read_vm(path: &Path, index: usize, vm: &Value) -> Result<Vm, InputError> {
    let at = |what: &str| format!("virtualMachines[{index}]{what}");
    let name = text(vm, &["name"])
        .or_else(|| text(vm, &["config", "name"]))
        .ok_or_else(|| InputError::file(path, format!("{}: no name", at(""))))?
        .to_string();
    // Guest NICs by device key: the addresses with their prefix lengths.
    let mut guest: BTreeMap<i64, (Option<String>, Vec<Addr>)> = BTreeMap::new();
    for g in get(vm, &["guest", "net"])
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(key) = g.get("deviceConfigId").and_then(Value::as_i64) else {
            continue;
        };
        let mut addrs = Vec::new();
        let with_prefix = get(g, &["ipConfig", "ipAddress"]).and_then(Value::as_array);
        if let Some(list) = with_prefix {
            for a in list {
                let Some(ip) = a.get("ipAddress").and_then(Value::as_str) else {
                    continue;
                };
                let token = match a.get("prefixLength").and_then(Value::as_u64) {
                    Some(p) => format!("{ip}/{p}"),
                    None => ip.to_string(),
                };
                addrs.push(
                    parse_addr(&token).map_err(|m| {
                        InputError::file(path, format!("{}: {m}", at(".guest.net")))
                    })?,
                );
            }
        } else if let Some(list) = g.get("ipAddress").and_then(Value::as_array) {
            for ip in list.iter().filter_map(Value::as_str) {
                addrs.push(
                    parse_addr(ip).map_err(|m| {
                        InputError::file(path, format!("{}: {m}", at(".guest.net")))
                    })?,
                );
            }
        }
        let network = g.get("network").and_then(Value::as_str).map(str::to_string);
        guest.insert(key, (network, addrs));
    }
    let mut nics = Vec::new();
    let devices = get(vm, &["config", "hardware", "device"]).and_then(Value::as_array);
    for (d, dev) in devices
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(mac_text) = dev.get("macAddress").and_then(Value::as_str) else {
            continue;
        };
        let mac = parse_mac(mac_text).map_err(|m| {
            InputError::file(
                path,
                format!(
                    "{}: {m}",
                    at(&format!(".config.hardware.device[{d}].macAddress"))
                ),
            )
        })?;
        let key = dev.get("key").and_then(Value::as_i64).unwrap_or(-1);
        let backing = dev.get("backing");
        let (mut network, network_id) = match backing {
            Some(b) if b.get("port").is_some() => {
                (None, text(b, &["port", "portgroupKey"]).map(str::to_string))
            }
            Some(b) if b.get("opaqueNetworkId").is_some() => {
                (None, text(b, &["opaqueNetworkId"]).map(str::to_string))
            }
            Some(b) => (
                text(b, &["deviceName"])
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
                text(b, &["network", "value"]).map(str::to_string),
            ),
            None => (None, None),
        };
        let (guest_network, addrs) = guest.remove(&key).unwrap_or_default();
        if network.is_none() && network_id.is_some() {
            network = guest_network;
        }
        nics.push(Nic {
            label: text(dev, &["deviceInfo", "label"])
                .unwrap_or("")
                .to_string(),
            mac,
            address_type: dev
                .get("addressType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase(),
            network,
            network_id,
            switch: None,
            connected: get(dev, &["connectable", "connected"])
                .and_then(Value::as_bool)
                .unwrap_or(false),
            starts_connected: get(dev, &["connectable", "startConnected"])
                .and_then(Value::as_bool)
                .unwrap_or(false),
            addrs,
        });
    }
    Ok(Vm {
        name,
        vcenter: String::new(),
        datacenter: String::new(),
        cluster: String::new(),
        host: text(vm, &["runtime", "host", "value"])
            .unwrap_or("")
            .to_string(),
        template: get(vm, &["config", "template"])
            .and_then(Value::as_bool)
            .unwrap_or(false),
        srm_placeholder: false,
        powered_on: text(vm, &["runtime", "powerState"]) == Some("poweredOn"),
        nics,
        source: path.display().to_string(),
    })
}

fn read_host_portgroup(pg: &Value) -> Option<NetworkObservation> {
    let name = text(pg, &["spec", "name"])?.to_string();
    let vlan = match get(pg, &["spec", "vlanId"]).and_then(Value::as_u64) {
        Some(0) | None => Vlan::None,
        Some(v @ 1..=4094) => Vlan::Access(v as u16),
        Some(4095) => Vlan::Trunk("4095".into()),
        Some(other) => Vlan::Unknown(other.to_string()),
    };
    // computedPolicy is what applies (the port group's own policy may inherit).
    let security = get(pg, &["computedPolicy", "security"])
        .or_else(|| get(pg, &["spec", "policy", "security"]));
    Some(NetworkObservation {
        name: Some(name),
        id: None,
        vcenter: String::new(),
        datacenter: String::new(),
        cluster: String::new(),
        host: None,
        switch: text(pg, &["spec", "vswitchName"]).unwrap_or("").to_string(),
        distributed: false,
        uplink: false,
        vlan,
        promiscuous: flag(security.and_then(|s| s.get("allowPromiscuous"))),
        mac_changes: flag(security.and_then(|s| s.get("macChanges"))),
        forged_transmits: flag(security.and_then(|s| s.get("forgedTransmits"))),
    })
}

/// One entry per port; the port group is the port's `portgroupKey`.
fn read_dv_ports(ports: &[Value]) -> Vec<NetworkObservation> {
    let mut by_key: BTreeMap<String, NetworkObservation> = BTreeMap::new();
    for port in ports {
        let Some(key) = port.get("portgroupKey").and_then(Value::as_str) else {
            continue;
        };
        if by_key.contains_key(key) {
            continue;
        }
        let setting = get(port, &["config", "setting"]);
        let vlan_spec = setting.and_then(|s| s.get("vlan"));
        let vlan = match vlan_spec {
            Some(v) if v.get("pvlanId").is_some() => match v.get("pvlanId").and_then(Value::as_u64)
            {
                Some(id) => Vlan::Pvlan(id as u16),
                None => Vlan::Unknown(v.to_string()),
            },
            Some(v) => match v.get("vlanId") {
                Some(Value::Number(n)) => crate::values::parse_vlan(&n.to_string()),
                Some(Value::Array(ranges)) => {
                    let spec = ranges
                        .iter()
                        .map(|r| {
                            let a = r.get("start").and_then(Value::as_u64).unwrap_or(0);
                            let b = r.get("end").and_then(Value::as_u64).unwrap_or(a);
                            format!("{a}-{b}")
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    crate::values::parse_vlan(&spec)
                }
                _ => Vlan::None,
            },
            None => Vlan::None,
        };
        let security = setting.and_then(|s| s.get("securityPolicy"));
        by_key.insert(
            key.to_string(),
            NetworkObservation {
                name: None,
                id: Some(key.to_string()),
                vcenter: String::new(),
                datacenter: String::new(),
                cluster: String::new(),
                host: None,
                switch: port
                    .get("dvsUuid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                distributed: true,
                uplink: get(port, &["config", "uplink"])
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                vlan,
                promiscuous: flag(security.and_then(|s| s.get("allowPromiscuous"))),
                mac_changes: flag(security.and_then(|s| s.get("macChanges"))),
                forged_transmits: flag(security.and_then(|s| s.get("forgedTransmits"))),
            },
        );
    }
    by_key.into_values().collect()
}

/// Merges govc data into the inventory. A VM that RVTools also describes keeps
/// RVTools' placement (cluster, host) and takes govc's guest addresses (which
/// carry prefix lengths) and network IDs, NIC by NIC (matched by MAC).
pub fn merge(inventory: &mut Inventory, file: GovcFile) {
    match file {
        GovcFile::Networks(networks) => inventory.networks.extend(networks),
        GovcFile::Vms(vms) => {
            for govc_vm in vms {
                let existing = inventory.vms.iter_mut().find(|vm| vm.name == govc_vm.name);
                match existing {
                    None => inventory.vms.push(Vm {
                        vcenter: "govc".into(),
                        ..govc_vm
                    }),
                    Some(vm) => {
                        let mut took = false;
                        for g in &govc_vm.nics {
                            if let Some(nic) = vm.nics.iter_mut().find(|n| n.mac == g.mac) {
                                if !g.addrs.is_empty() {
                                    nic.addrs = g.addrs.clone();
                                    took = true;
                                }
                                if nic.network_id.is_none() {
                                    nic.network_id = g.network_id.clone();
                                }
                            }
                        }
                        if took {
                            inventory.govc_guest_overrides.push(vm.name.clone());
                        }
                    }
                }
            }
        }
    }
}
