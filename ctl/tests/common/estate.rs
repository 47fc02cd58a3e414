//! Synthetic RVTools exports, written as a real xlsx workbook (rust_xlsxwriter)
//! and as "Export all to CSV" files, for the tests and the benchmark.
#![allow(dead_code)]

use std::path::Path;

/// A cell as RVTools writes it: text, or a number (xlsx keeps numbers as numbers).
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    Num(f64),
}

impl Cell {
    pub fn text(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            Cell::Num(n) if n.fract() == 0.0 => format!("{}", *n as i64),
            Cell::Num(n) => n.to_string(),
        }
    }
}

impl From<&str> for Cell {
    fn from(t: &str) -> Self {
        Cell::Text(t.to_string())
    }
}

impl From<String> for Cell {
    fn from(t: String) -> Self {
        Cell::Text(t)
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    pub sheet: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(sheet: &str, headers: &[&str]) -> Self {
        Table {
            sheet: sheet.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row given as (header, cell) pairs; other columns stay empty.
    pub fn push(&mut self, cells: &[(&str, Cell)]) {
        let mut row = vec![Cell::Text(String::new()); self.headers.len()];
        for (h, c) in cells {
            let i = self
                .headers
                .iter()
                .position(|x| x == h)
                .unwrap_or_else(|| panic!("{}: no column {h}", self.sheet));
            row[i] = c.clone();
        }
        self.rows.push(row);
    }
}

#[derive(Debug, Clone, Default)]
pub struct Estate {
    pub tables: Vec<Table>,
}

impl Estate {
    pub fn table_mut(&mut self, sheet: &str) -> &mut Table {
        self.tables
            .iter_mut()
            .find(|t| t.sheet == sheet)
            .expect("sheet")
    }

    pub fn write_xlsx(&self, path: &Path) {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        for table in &self.tables {
            let ws = workbook.add_worksheet();
            ws.set_name(&table.sheet).expect("sheet name");
            for (c, h) in table.headers.iter().enumerate() {
                ws.write_string(0, c as u16, h).expect("header");
            }
            for (r, row) in table.rows.iter().enumerate() {
                for (c, cell) in row.iter().enumerate() {
                    let (r, c) = (r as u32 + 1, c as u16);
                    match cell {
                        Cell::Text(t) if t.is_empty() => {}
                        Cell::Text(t) => {
                            ws.write_string(r, c, t).expect("cell");
                        }
                        Cell::Num(n) => {
                            ws.write_number(r, c, *n).expect("cell");
                        }
                    }
                }
            }
        }
        workbook.save(path).expect("save xlsx");
    }

    /// RVTools_tab<Sheet>.csv files: a UTF-8 BOM, `delimiter` between cells,
    /// every cell quoted as RVTools does.
    pub fn write_csv_dir(&self, dir: &Path, delimiter: char) {
        std::fs::create_dir_all(dir).expect("csv dir");
        for table in &self.tables {
            let mut out = String::from("\u{feff}");
            let line = |cells: Vec<String>| -> String {
                cells
                    .iter()
                    .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(&delimiter.to_string())
                    + "\r\n"
            };
            out.push_str(&line(table.headers.clone()));
            for row in &table.rows {
                out.push_str(&line(row.iter().map(Cell::text).collect()));
            }
            std::fs::write(dir.join(format!("RVTools_tab{}.csv", table.sheet)), out).expect("csv");
        }
    }
}

pub const VNETWORK: &[&str] = &[
    "VM",
    "Powerstate",
    "Template",
    "SRM Placeholder",
    "NIC label",
    "Adapter",
    "Network",
    "Switch",
    "Connected",
    "Starts Connected",
    "Mac Address",
    "Type",
    "IPv4 Address",
    "IPv6 Address",
    "Direct Path IO",
    "Internal Sort Column",
    "Annotation",
    "Application",
    "Owner",
    "Backup Policy",
    "Datacenter",
    "Cluster",
    "Host",
    "Folder",
    "OS according to the configuration file",
    "OS according to the VMware Tools",
    "VM ID",
    "VM UUID",
    "VI SDK Server",
    "VI SDK UUID",
];

pub const VINFO: &[&str] = &[
    "VM",
    "Powerstate",
    "Template",
    "SRM Placeholder",
    "Config status",
    "DNS Name",
    "Connection state",
    "Guest state",
    "Heartbeat",
    "CPUs",
    "Memory",
    "NICs",
    "Disks",
    "Primary IP Address",
    "Network #1",
    "Network #2",
    "Annotation",
    "Application",
    "Owner",
    "Backup Policy",
    "Datacenter",
    "Cluster",
    "Host",
    "OS according to the configuration file",
    "VM ID",
    "VM UUID",
    "VI SDK Server",
    "VI SDK UUID",
];

pub const VPORT: &[&str] = &[
    "Host",
    "Datacenter",
    "Cluster",
    "Port Group",
    "Switch",
    "VLAN",
    "Promiscuous Mode",
    "Mac Changes",
    "Forged Transmits",
    "Traffic Shaping",
    "Width",
    "Peak",
    "Burst",
    "Policy",
    "Reverse Policy",
    "Notify Switch",
    "Rolling Order",
    "Offload",
    "TSO",
    "Zero Copy Xmit",
    "VI SDK Server",
    "VI SDK UUID",
];

pub const DVPORT: &[&str] = &[
    "Port",
    "Switch",
    "Type",
    "# Ports",
    "VLAN",
    "Speed",
    "Full Duplex",
    "Blocked",
    "Allow Promiscuous",
    "Mac Changes",
    "Active Uplink",
    "Standby Uplink",
    "Policy",
    "Forged Transmits",
    "In Traffic Shaping",
    "Out Traffic Shaping",
    "Reverse Policy",
    "Notify Switch",
    "Rolling Order",
    "Object ID",
    "VI SDK Server",
    "VI SDK UUID",
];

pub const VCENTER: &str = "vc01.example.com";

pub fn empty_estate() -> Estate {
    Estate {
        tables: vec![
            Table::new("vInfo", VINFO),
            Table::new("vNetwork", VNETWORK),
            Table::new("vPort", VPORT),
            Table::new("dvPort", DVPORT),
        ],
    }
}

fn b(v: bool) -> Cell {
    Cell::from(if v { "True" } else { "False" })
}

/// One NIC as vNetwork describes it.
#[derive(Debug, Clone)]
pub struct NicRow {
    pub network: String,
    pub mac: String,
    pub kind: &'static str,
    pub ipv4: String,
    pub ipv6: String,
    pub connected: bool,
    pub starts_connected: bool,
}

impl NicRow {
    pub fn new(network: &str, mac: &str, ipv4: &str) -> Self {
        NicRow {
            network: network.into(),
            mac: mac.into(),
            kind: "assigned",
            ipv4: ipv4.into(),
            ipv6: String::new(),
            connected: true,
            starts_connected: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VmRow {
    pub name: String,
    pub cluster: &'static str,
    pub host: String,
    pub powered_on: bool,
    pub template: bool,
    pub nics: Vec<NicRow>,
}

pub fn add_vm(estate: &mut Estate, vm: &VmRow) {
    let power = if vm.powered_on {
        "poweredOn"
    } else {
        "poweredOff"
    };
    let uuid = format!("4210{:028x}", fnv(&vm.name));
    for (i, nic) in vm.nics.iter().enumerate() {
        let switch = if nic.network.starts_with("DV") {
            "dvSwitch-Prod"
        } else {
            "vSwitch0"
        };
        estate.table_mut("vNetwork").push(&[
            ("VM", vm.name.as_str().into()),
            ("Powerstate", power.into()),
            ("Template", b(vm.template)),
            ("SRM Placeholder", b(false)),
            ("NIC label", format!("Network adapter {}", i + 1).into()),
            ("Adapter", "Vmxnet3".into()),
            ("Network", nic.network.as_str().into()),
            (
                "Switch",
                if nic.network.is_empty() { "" } else { switch }.into(),
            ),
            ("Connected", b(nic.connected)),
            ("Starts Connected", b(nic.starts_connected)),
            ("Mac Address", nic.mac.as_str().into()),
            ("Type", nic.kind.into()),
            ("IPv4 Address", nic.ipv4.as_str().into()),
            ("IPv6 Address", nic.ipv6.as_str().into()),
            ("Direct Path IO", b(false)),
            ("Internal Sort Column", Cell::Num(i as f64)),
            ("Application", "shop".into()),
            ("Owner", "team-a; ops".into()),
            ("Backup Policy", "gold, daily".into()),
            ("Datacenter", "DC1".into()),
            ("Cluster", vm.cluster.into()),
            ("Host", vm.host.as_str().into()),
            ("Folder", "/Prod".into()),
            ("VM ID", format!("vm-{}", fnv(&vm.name) % 100_000).into()),
            ("VM UUID", uuid.as_str().into()),
            ("VI SDK Server", VCENTER.into()),
            ("VI SDK UUID", "6e2a1c2e-0000-4000-8000-000000000001".into()),
        ]);
    }
    estate.table_mut("vInfo").push(&[
        ("VM", vm.name.as_str().into()),
        ("Powerstate", power.into()),
        ("Template", b(vm.template)),
        ("SRM Placeholder", b(false)),
        ("CPUs", Cell::Num(2.0)),
        ("Memory", Cell::Num(4096.0)),
        ("NICs", Cell::Num(vm.nics.len() as f64)),
        ("Datacenter", "DC1".into()),
        ("Cluster", vm.cluster.into()),
        ("Host", vm.host.as_str().into()),
        ("VM UUID", uuid.as_str().into()),
        ("VI SDK Server", VCENTER.into()),
    ]);
}

pub struct PortRow<'a> {
    pub name: &'a str,
    pub vlan: Cell,
    pub promiscuous: bool,
    pub mac_changes: bool,
    pub forged: bool,
}

pub fn add_vport(estate: &mut Estate, host: &str, cluster: &str, pg: &PortRow) {
    estate.table_mut("vPort").push(&[
        ("Host", host.into()),
        ("Datacenter", "DC1".into()),
        ("Cluster", cluster.into()),
        ("Port Group", pg.name.into()),
        ("Switch", "vSwitch0".into()),
        ("VLAN", pg.vlan.clone()),
        ("Promiscuous Mode", b(pg.promiscuous)),
        ("Mac Changes", b(pg.mac_changes)),
        ("Forged Transmits", b(pg.forged)),
        ("VI SDK Server", VCENTER.into()),
    ]);
}

pub fn add_dvport(estate: &mut Estate, pg: &PortRow, object_id: &str) {
    estate.table_mut("dvPort").push(&[
        ("Port", pg.name.into()),
        ("Switch", "dvSwitch-Prod".into()),
        ("Type", "earlyBinding".into()),
        ("# Ports", Cell::Num(128.0)),
        ("VLAN", pg.vlan.clone()),
        ("Allow Promiscuous", b(pg.promiscuous)),
        ("Mac Changes", b(pg.mac_changes)),
        ("Forged Transmits", b(pg.forged)),
        ("Object ID", object_id.into()),
        ("VI SDK Server", VCENTER.into()),
    ]);
}

pub fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A big estate for the benchmark: `vms` VMs, `nics` NICs, `portgroups`
/// access port groups (half standard on every host, half distributed).
pub fn big(vms: usize, nics: usize, portgroups: usize) -> Estate {
    let mut estate = empty_estate();
    let hosts: Vec<(String, &'static str)> = (0..16)
        .map(|h| {
            (
                format!("esx{h:02}.example.com"),
                if h < 8 { "Cluster-A" } else { "Cluster-B" },
            )
        })
        .collect();
    let pg_name = |i: usize| {
        if i.is_multiple_of(2) {
            format!("PG-{i:04}")
        } else {
            format!("DV-PG-{i:04}")
        }
    };
    for i in 0..portgroups {
        let row = PortRow {
            name: &pg_name(i),
            vlan: Cell::Num((100 + i) as f64),
            promiscuous: false,
            mac_changes: false,
            forged: false,
        };
        if i % 2 == 0 {
            for (host, cluster) in &hosts {
                add_vport(&mut estate, host, cluster, &row);
            }
        } else {
            add_dvport(&mut estate, &row, &format!("dvportgroup-{}", 1000 + i));
        }
    }
    let mut nic_no = 0usize;
    for v in 0..vms {
        // Spread the NICs: every VM gets nics/vms, the first nics%vms one more.
        let count = nics / vms + usize::from(v < nics % vms);
        let (host, cluster) = &hosts[v % hosts.len()];
        let mut rows = Vec::new();
        for _ in 0..count {
            let pg = nic_no % portgroups;
            let ip = format!(
                "10.{}.{}.{}",
                (nic_no >> 16) & 0xff,
                (nic_no >> 8) & 0xff,
                nic_no & 0xff
            );
            let mac = format!(
                "00:50:56:{:02x}:{:02x}:{:02x}",
                0x80 | ((nic_no >> 16) & 0x3f),
                (nic_no >> 8) & 0xff,
                nic_no & 0xff
            );
            let mut nic = NicRow::new(&pg_name(pg), &mac, &ip);
            nic.ipv6 = format!(
                "fe80::250:56ff:fe00:{:x}, 2001:db8::{:x}",
                nic_no & 0xffff,
                nic_no
            );
            rows.push(nic);
            nic_no += 1;
        }
        add_vm(
            &mut estate,
            &VmRow {
                name: format!("vm-{v:05}"),
                cluster,
                host: host.clone(),
                powered_on: true,
                template: false,
                nics: rows,
            },
        );
    }
    estate
}
