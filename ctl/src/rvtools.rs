//! RVTools sheets to the inventory: vNetwork (one row per VM NIC), vPort
//! (standard port groups, one row per host), dvPort (distributed port groups)
//! and, when present, vInfo (VMs, including those without NICs).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::InputError;
use crate::model::{Inventory, NetworkObservation, Nic, Vm};
use crate::sheet::{Col, Sheet};
use crate::values::{parse_addrs, parse_bool, parse_mac, parse_vlan};

/// The sheets of one export.
pub struct Export {
    pub source: std::path::PathBuf,
    pub vnetwork: Sheet,
    pub vport: Sheet,
    pub dvport: Sheet,
    pub vinfo: Option<Sheet>,
}

/// The sheets an export must have, and those read when present.
pub const REQUIRED_SHEETS: [&str; 3] = ["vNetwork", "vPort", "dvPort"];
pub const OPTIONAL_SHEETS: [&str; 1] = ["vInfo"];

const VCENTER: &[&str] = &["VI SDK Server", "vCenter", "VI SDK Server Name"];

fn boolean(
    sheet: &Sheet,
    row: usize,
    cells: &[String],
    col: Option<Col>,
    name: &str,
) -> Result<Option<bool>, InputError> {
    parse_bool(sheet.opt_cell(cells, col)).map_err(|m| sheet.error(Some(row), name, m))
}

fn vcenter_of(sheet: &Sheet, cells: &[String], col: Option<Col>, fallback: &str) -> String {
    let v = sheet.opt_cell(cells, col);
    if v.is_empty() {
        fallback.to_string()
    } else {
        v.to_string()
    }
}

fn export_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads one export into `inventory` (several exports merge: VMs are keyed by
/// vCenter and name, so one vCenter exported twice does not double its VMs).
pub fn read_export(export: &Export, inventory: &mut Inventory) -> Result<(), InputError> {
    let fallback = export_label(&export.source);
    let mut vms = read_vnetwork(&export.vnetwork, &fallback)?;
    if let Some(vinfo) = &export.vinfo {
        read_vinfo(vinfo, &fallback, &mut vms)?;
    }
    let known: std::collections::HashSet<(String, String)> = inventory
        .vms
        .iter()
        .map(|vm| (vm.vcenter.clone(), vm.name.clone()))
        .collect();
    inventory.vms.extend(
        vms.into_values()
            .filter(|vm| !known.contains(&(vm.vcenter.clone(), vm.name.clone()))),
    );
    read_vport(&export.vport, &fallback, inventory)?;
    read_dvport(&export.dvport, &fallback, inventory)?;
    Ok(())
}

/// "Network adapter 10" sorts after "Network adapter 9".
fn natural_key(label: &str) -> (String, u64) {
    let digits: String = label
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let number: String = digits.chars().rev().collect();
    let stem = label[..label.len() - number.len()].to_string();
    (stem, number.parse().unwrap_or(0))
}

fn read_vnetwork(
    sheet: &Sheet,
    fallback: &str,
) -> Result<BTreeMap<(String, String), Vm>, InputError> {
    let vm_col = sheet.col(&["VM"])?;
    let power = sheet.col(&["Powerstate", "Power state"])?;
    let template = sheet.col(&["Template"])?;
    let srm = sheet.opt_col(&["SRM Placeholder"]);
    let label = sheet.opt_col(&["NIC label", "Network adapter", "Adapter label"]);
    let network = sheet.col(&["Network", "Portgroup", "Port Group"])?;
    let switch = sheet.opt_col(&["Switch"]);
    // Old exports may lack these: a NIC then counts as connected, and as
    // starting the way it is now.
    let connected = sheet.opt_col(&["Connected"]);
    let starts = sheet.opt_col(&["Starts Connected", "Start Connected"]);
    let mac = sheet.col(&["Mac Address", "MAC"])?;
    let addr_type = sheet.opt_col(&["Type"]);
    let ipv4 = sheet.col(&["IPv4 Address", "IP Address", "IPv4 Addresses"])?;
    let ipv6 = sheet.opt_col(&["IPv6 Address", "IPv6 Addresses"]);
    let datacenter = sheet.opt_col(&["Datacenter"]);
    let cluster = sheet.col(&["Cluster"])?;
    let host = sheet.col(&["Host"])?;
    let vcenter = sheet.opt_col(VCENTER);

    let mut vms: BTreeMap<(String, String), Vm> = BTreeMap::new();
    for (row, cells) in &sheet.rows {
        let row = *row;
        let name = sheet.cell(cells, vm_col);
        if name.is_empty() {
            return Err(sheet.error(Some(row), "VM", "empty VM name"));
        }
        let key = (
            vcenter_of(sheet, cells, vcenter, fallback),
            name.to_string(),
        );
        let mac_text = sheet.cell(cells, mac);
        let mac_addr =
            parse_mac(mac_text).map_err(|m| sheet.error(Some(row), sheet.header(mac), m))?;
        let mut addrs = parse_addrs(sheet.cell(cells, ipv4))
            .map_err(|m| sheet.error(Some(row), sheet.header(ipv4), m))?;
        if let Some(c) = ipv6 {
            addrs.extend(
                parse_addrs(sheet.cell(cells, c))
                    .map_err(|m| sheet.error(Some(row), sheet.header(c), m))?,
            );
        }
        let network_name = sheet.cell(cells, network);
        let is_connected = boolean(sheet, row, cells, connected, "Connected")?.unwrap_or(true);
        let switch_name = sheet.opt_cell(cells, switch);
        let nic = Nic {
            label: sheet.opt_cell(cells, label).to_string(),
            mac: mac_addr,
            address_type: sheet.opt_cell(cells, addr_type).to_ascii_lowercase(),
            network: (!network_name.is_empty()).then(|| network_name.to_string()),
            network_id: None,
            switch: (!switch_name.is_empty()).then(|| switch_name.to_string()),
            connected: is_connected,
            starts_connected: boolean(sheet, row, cells, starts, "Starts Connected")?
                .unwrap_or(is_connected),
            addrs,
        };
        let is_template = boolean(sheet, row, cells, Some(template), "Template")?.unwrap_or(false);
        let is_srm = boolean(sheet, row, cells, srm, "SRM Placeholder")?.unwrap_or(false);
        let vm = vms.entry(key.clone()).or_insert_with(|| Vm {
            name: key.1.clone(),
            vcenter: key.0.clone(),
            datacenter: sheet.opt_cell(cells, datacenter).to_string(),
            cluster: sheet.cell(cells, cluster).to_string(),
            host: sheet.cell(cells, host).to_string(),
            template: is_template,
            srm_placeholder: is_srm,
            powered_on: sheet.cell(cells, power).eq_ignore_ascii_case("poweredOn"),
            nics: Vec::new(),
            source: sheet.file.display().to_string(),
        });
        vm.nics.push(nic);
    }
    for vm in vms.values_mut() {
        // Stable: rows with the same label keep the export's order.
        vm.nics.sort_by_cached_key(|n| natural_key(&n.label));
        for (i, nic) in vm.nics.iter_mut().enumerate() {
            if nic.label.is_empty() {
                nic.label = format!("Network adapter {}", i + 1);
            }
        }
    }
    Ok(vms)
}

fn read_vinfo(
    sheet: &Sheet,
    fallback: &str,
    vms: &mut BTreeMap<(String, String), Vm>,
) -> Result<(), InputError> {
    let vm_col = sheet.col(&["VM"])?;
    let power = sheet.col(&["Powerstate", "Power state"])?;
    let template = sheet.col(&["Template"])?;
    let srm = sheet.opt_col(&["SRM Placeholder"]);
    let datacenter = sheet.opt_col(&["Datacenter"]);
    let cluster = sheet.col(&["Cluster"])?;
    let host = sheet.col(&["Host"])?;
    let vcenter = sheet.opt_col(VCENTER);
    for (row, cells) in &sheet.rows {
        let row = *row;
        let name = sheet.cell(cells, vm_col);
        if name.is_empty() {
            return Err(sheet.error(Some(row), "VM", "empty VM name"));
        }
        let key = (
            vcenter_of(sheet, cells, vcenter, fallback),
            name.to_string(),
        );
        let is_template = boolean(sheet, row, cells, Some(template), "Template")?.unwrap_or(false);
        let is_srm = boolean(sheet, row, cells, srm, "SRM Placeholder")?.unwrap_or(false);
        vms.entry(key.clone()).or_insert_with(|| Vm {
            name: key.1.clone(),
            vcenter: key.0.clone(),
            datacenter: sheet.opt_cell(cells, datacenter).to_string(),
            cluster: sheet.cell(cells, cluster).to_string(),
            host: sheet.cell(cells, host).to_string(),
            template: is_template,
            srm_placeholder: is_srm,
            powered_on: sheet.cell(cells, power).eq_ignore_ascii_case("poweredOn"),
            nics: Vec::new(),
            source: sheet.file.display().to_string(),
        });
    }
    Ok(())
}

fn read_vport(sheet: &Sheet, fallback: &str, inventory: &mut Inventory) -> Result<(), InputError> {
    let host = sheet.col(&["Host"])?;
    let datacenter = sheet.opt_col(&["Datacenter"]);
    let cluster = sheet.col(&["Cluster"])?;
    let name = sheet.col(&["Port Group", "Portgroup"])?;
    let switch = sheet.col(&["Switch", "vSwitch"])?;
    let vlan = sheet.col(&["VLAN", "VLAN ID"])?;
    let promiscuous = sheet.col(&["Promiscuous Mode", "Allow Promiscuous"])?;
    let mac_changes = sheet.col(&["Mac Changes"])?;
    let forged = sheet.col(&["Forged Transmits"])?;
    let vcenter = sheet.opt_col(VCENTER);
    for (row, cells) in &sheet.rows {
        let row = *row;
        let pg = sheet.cell(cells, name);
        if pg.is_empty() {
            return Err(sheet.error(Some(row), "Port Group", "empty port group name"));
        }
        inventory.networks.push(NetworkObservation {
            name: Some(pg.to_string()),
            id: None,
            vcenter: vcenter_of(sheet, cells, vcenter, fallback),
            datacenter: sheet.opt_cell(cells, datacenter).to_string(),
            cluster: sheet.cell(cells, cluster).to_string(),
            host: Some(sheet.cell(cells, host).to_string()),
            switch: sheet.cell(cells, switch).to_string(),
            distributed: false,
            uplink: false,
            vlan: parse_vlan(sheet.cell(cells, vlan)),
            promiscuous: boolean(sheet, row, cells, Some(promiscuous), "Promiscuous Mode")?
                .unwrap_or(false),
            mac_changes: boolean(sheet, row, cells, Some(mac_changes), "Mac Changes")?
                .unwrap_or(false),
            forged_transmits: boolean(sheet, row, cells, Some(forged), "Forged Transmits")?
                .unwrap_or(false),
        });
    }
    Ok(())
}

fn read_dvport(sheet: &Sheet, fallback: &str, inventory: &mut Inventory) -> Result<(), InputError> {
    let name = sheet.col(&["Port", "Port Group", "Portgroup"])?;
    let switch = sheet.col(&["Switch"])?;
    let vlan = sheet.col(&["VLAN"])?;
    let promiscuous = sheet.col(&["Allow Promiscuous", "Promiscuous Mode"])?;
    let mac_changes = sheet.col(&["Mac Changes"])?;
    let forged = sheet.col(&["Forged Transmits"])?;
    let object_id = sheet.opt_col(&["Object ID"]);
    let uplink = sheet.opt_col(&["Uplink"]);
    let datacenter = sheet.opt_col(&["Datacenter"]);
    let vcenter = sheet.opt_col(VCENTER);
    for (row, cells) in &sheet.rows {
        let row = *row;
        let pg = sheet.cell(cells, name);
        if pg.is_empty() {
            return Err(sheet.error(Some(row), "Port", "empty port group name"));
        }
        let id = sheet.opt_cell(cells, object_id);
        // RVTools has no uplink flag on dvPort; vCenter names the uplink port
        // group "<switch>-DVUplinks-<n>" and gives it a trunk of all VLANs.
        let is_uplink = boolean(sheet, row, cells, uplink, "Uplink")?
            .unwrap_or_else(|| pg.to_ascii_lowercase().contains("dvuplinks"));
        inventory.networks.push(NetworkObservation {
            name: Some(pg.to_string()),
            id: (!id.is_empty()).then(|| id.to_string()),
            vcenter: vcenter_of(sheet, cells, vcenter, fallback),
            datacenter: sheet.opt_cell(cells, datacenter).to_string(),
            cluster: String::new(),
            host: None,
            switch: sheet.cell(cells, switch).to_string(),
            distributed: true,
            uplink: is_uplink,
            vlan: parse_vlan(sheet.cell(cells, vlan)),
            promiscuous: boolean(sheet, row, cells, Some(promiscuous), "Allow Promiscuous")?
                .unwrap_or(false),
            mac_changes: boolean(sheet, row, cells, Some(mac_changes), "Mac Changes")?
                .unwrap_or(false),
            forged_transmits: boolean(sheet, row, cells, Some(forged), "Forged Transmits")?
                .unwrap_or(false),
        });
    }
    Ok(())
}
