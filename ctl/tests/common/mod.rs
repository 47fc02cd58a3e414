//! The test estate: a realistic vSphere inventory with every case the planner
//! must handle planted in it, and helpers to run the binary.
#![allow(dead_code)]

pub mod estate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use estate::{add_dvport, add_vm, add_vport, empty_estate, Cell, Estate, NicRow, PortRow, VmRow};

pub const PROD: &str = "Prod-Cluster";
pub const DMZ: &str = "DMZ-Cluster";

fn vm(name: &str, cluster: &'static str, host: &str, nics: Vec<NicRow>) -> VmRow {
    VmRow {
        name: name.into(),
        cluster,
        host: host.into(),
        powered_on: true,
        template: false,
        nics,
    }
}

fn pg(name: &str, vlan: Cell) -> PortRow<'_> {
    PortRow {
        name,
        vlan,
        promiscuous: false,
        mac_changes: false,
        forged: false,
    }
}

/// 54 VMs (one a template) over two clusters; see the comments for what each
/// planted case is.
pub fn realistic() -> Estate {
    let mut e = empty_estate();
    let prod_hosts = ["esx01.example.com", "esx02.example.com"];
    let dmz_hosts = ["esx11.example.com", "esx12.example.com"];
    // Standard port groups, one vPort row per host.
    for h in prod_hosts {
        add_vport(&mut e, h, PROD, &pg("Prod-Web", Cell::Num(100.0)));
        add_vport(&mut e, h, PROD, &pg("Guest-Trunk", Cell::Num(4095.0)));
    }
    for h in dmz_hosts {
        // Normalises like "Prod-Web": both must get distinct names.
        add_vport(&mut e, h, DMZ, &pg("Prod Web", Cell::Num(101.0)));
        // Forged transmits and MAC changes accepted (VRRP): spoofCheck off.
        let mut vrrp = pg("DMZ-VRRP", Cell::Num(120.0));
        vrrp.mac_changes = true;
        vrrp.forged = true;
        add_vport(&mut e, h, DMZ, &vrrp);
    }
    for h in prod_hosts.iter().chain(dmz_hosts.iter()) {
        let cluster = if h.starts_with("esx0") { PROD } else { DMZ };
        add_vport(&mut e, h, cluster, &pg("VM Network", Cell::Num(0.0)));
    }
    // Same standard port group, different VLAN per host.
    add_vport(
        &mut e,
        prod_hosts[0],
        PROD,
        &pg("Legacy-App", Cell::from("300")),
    );
    add_vport(
        &mut e,
        prod_hosts[1],
        PROD,
        &pg("Legacy-App", Cell::from("301")),
    );
    // Not used by any VM: no finding.
    add_vport(
        &mut e,
        dmz_hosts[0],
        DMZ,
        &pg("Unused-PG", Cell::Num(999.0)),
    );
    // Distributed port groups.
    add_dvport(&mut e, &pg("DV-App", Cell::Num(200.0)), "dvportgroup-101");
    add_dvport(&mut e, &pg("DV-DB", Cell::from("210")), "dvportgroup-102");
    add_dvport(
        &mut e,
        &pg("DV-Trunk", Cell::from("100-199,300")),
        "dvportgroup-103",
    );
    add_dvport(
        &mut e,
        &pg("DV-PVLAN", Cell::from("Private VLAN 500")),
        "dvportgroup-104",
    );
    let mut promisc = pg("DV-Promisc", Cell::Num(220.0));
    promisc.promiscuous = true;
    add_dvport(&mut e, &promisc, "dvportgroup-105");
    add_dvport(
        &mut e,
        &pg("dvSwitch-Prod-DVUplinks-11", Cell::from("0-4094")),
        "dvportgroup-11",
    );

    let mac = |n: u32| format!("00:50:56:81:{:02x}:{:02x}", n >> 8, n & 0xff);
    let mut vms: Vec<VmRow> = Vec::new();
    // web01-web12: Prod-Web (VLAN 100). Upper-case MACs on web01-04;
    // web05's cell holds IPv4, link-local IPv6 and global IPv6.
    for i in 1..=12u32 {
        let mut nic = NicRow::new("Prod-Web", &mac(0x100 + i), &format!("10.1.100.{}", 10 + i));
        if i <= 4 {
            nic.mac = nic.mac.to_uppercase();
        }
        if i == 5 {
            nic.ipv4 = "10.1.100.15, fe80::250:56ff:fe81:105, 2001:db8:100::15".into();
        }
        if i == 12 {
            // Planted duplicate IP (also on app08).
            nic.ipv4 = "10.1.100.99".into();
        }
        let mut nics = vec![nic];
        if i == 6 {
            nics.push(NicRow::new("DV-App", &mac(0x1ff), "10.1.200.106"));
        }
        vms.push(vm(
            &format!("web{i:02}"),
            PROD,
            prod_hosts[(i % 2) as usize],
            nics,
        ));
    }
    // dmz01-dmz08: "Prod Web" (VLAN 101).
    for i in 1..=8u32 {
        let mut nic = NicRow::new("Prod Web", &mac(0x200 + i), &format!("10.1.101.{}", 10 + i));
        nic.ipv6 = format!("2001:db8:101::{i}");
        vms.push(vm(
            &format!("dmz{i:02}"),
            DMZ,
            dmz_hosts[(i % 2) as usize],
            vec![nic],
        ));
    }
    // app01-app10: DV-App (VLAN 200) in both clusters. app03 has an IPv4
    // link-local next to its address; app04's MAC is in dotted form;
    // app09 and app10 share a MAC (planted, one in upper case).
    for i in 1..=10u32 {
        let (cluster, host) = if i % 2 == 0 {
            (PROD, prod_hosts[0])
        } else {
            (DMZ, dmz_hosts[1])
        };
        let mut nic = NicRow::new("DV-App", &mac(0x300 + i), &format!("10.1.200.{}", 10 + i));
        match i {
            3 => nic.ipv4 = "169.254.10.3, 10.1.200.13".into(),
            4 => nic.mac = "0050.5681.0304".into(),
            8 => nic.ipv4 = "10.1.200.18, 10.1.100.99".into(),
            9 => nic.mac = "00:50:56:81:aa:aa".into(),
            10 => nic.mac = "00:50:56:81:AA:AA".into(),
            _ => {}
        }
        vms.push(vm(&format!("app{i:02}"), cluster, host, vec![nic]));
    }
    // db01-db06: DV-DB (VLAN 210); db01 also on DV-App.
    for i in 1..=6u32 {
        let mut nics = vec![NicRow::new(
            "DV-DB",
            &mac(0x400 + i),
            &format!("10.1.210.{}", 10 + i),
        )];
        if i == 1 {
            nics.push(NicRow::new("DV-App", &mac(0x4ff), "10.1.200.201"));
        }
        vms.push(vm(
            &format!("db{i:02}"),
            PROD,
            prod_hosts[(i % 2) as usize],
            nics,
        ));
    }
    // legacy01 on esx01 (VLAN 300), legacy02 on esx02 (VLAN 301).
    vms.push(vm(
        "legacy01",
        PROD,
        prod_hosts[0],
        vec![NicRow::new("Legacy-App", &mac(0x501), "10.3.0.1")],
    ));
    vms.push(vm(
        "legacy02",
        PROD,
        prod_hosts[1],
        vec![NicRow::new("Legacy-App", &mac(0x502), "10.3.1.1")],
    ));
    // DMZ-VRRP pair, and an IDS on the promiscuous port group.
    vms.push(vm(
        "vrrp01",
        DMZ,
        dmz_hosts[0],
        vec![NicRow::new("DMZ-VRRP", &mac(0x601), "10.1.120.11")],
    ));
    vms.push(vm(
        "vrrp02",
        DMZ,
        dmz_hosts[1],
        vec![NicRow::new("DMZ-VRRP", &mac(0x602), "10.1.120.12")],
    ));
    vms.push(vm(
        "ids01",
        DMZ,
        dmz_hosts[0],
        vec![NicRow::new("DV-Promisc", &mac(0x701), "10.1.220.11")],
    ));
    // VLAN 0, 4095 and a trunk range (planned as untagged and trunk
    // portgroups) and a private VLAN (not planned).
    vms.push(vm(
        "untagged01",
        PROD,
        prod_hosts[0],
        vec![NicRow::new("VM Network", &mac(0x801), "192.168.1.10")],
    ));
    vms.push(vm(
        "vgt01",
        PROD,
        prod_hosts[1],
        vec![NicRow::new("Guest-Trunk", &mac(0x802), "10.40.0.10")],
    ));
    vms.push(vm(
        "trunk01",
        PROD,
        prod_hosts[0],
        vec![NicRow::new("DV-Trunk", &mac(0x803), "10.41.0.10")],
    ));
    vms.push(vm(
        "pvlan01",
        DMZ,
        dmz_hosts[0],
        vec![NicRow::new("DV-PVLAN", &mac(0x804), "10.50.0.10")],
    ));
    // A template (reported, never planned; its MAC duplicates web07's to
    // prove templates are out of the duplicate check).
    let mut tmpl = vm(
        "tmpl-rhel9",
        PROD,
        prod_hosts[0],
        vec![NicRow::new("Prod-Web", &mac(0x107), "unknown")],
    );
    tmpl.template = true;
    tmpl.powered_on = false;
    vms.push(tmpl);
    // Powered off: "unknown" address, NIC not connected now (but starts connected).
    let mut off = vm(
        "off01",
        PROD,
        prod_hosts[0],
        vec![NicRow::new("DV-App", &mac(0x901), "unknown")],
    );
    off.powered_on = false;
    off.nics[0].connected = false;
    vms.push(off);
    // Powered on, DHCP without Tools data.
    vms.push(vm(
        "dhcp01",
        DMZ,
        dmz_hosts[1],
        vec![NicRow::new("DV-App", &mac(0x902), "")],
    ));
    // Disconnected NICs (second NIC starts disconnected).
    for (i, name) in ["disc01", "disc02"].iter().enumerate() {
        let mut second = NicRow::new("DV-DB", &mac(0xa10 + i as u32), "");
        second.connected = false;
        second.starts_connected = false;
        let first = NicRow::new(
            "Prod-Web",
            &mac(0xa00 + i as u32),
            &format!("10.1.100.{}", 200 + i),
        );
        vms.push(vm(name, PROD, prod_hosts[i], vec![first, second]));
    }
    // A NIC with no network.
    vms.push(vm(
        "nonet01",
        PROD,
        prod_hosts[0],
        vec![
            NicRow::new("DV-App", &mac(0xb01), "10.1.200.151"),
            NicRow::new("", &mac(0xb02), ""),
        ],
    ));
    // Host-generated and non-VMware MACs.
    let mut gen = NicRow::new("DV-App", "00:0C:29:12:34:56", "10.1.200.161");
    gen.kind = "generated";
    vms.push(vm("gen01", DMZ, dmz_hosts[0], vec![gen]));
    let mut manual = NicRow::new("DV-App", "52-54-00-AB-CD-EF", "10.1.200.162");
    manual.kind = "manual";
    vms.push(vm("nonvm01", DMZ, dmz_hosts[1], vec![manual]));
    // A VM without NICs (vInfo only): in scope, nothing to plan.
    vms.push(vm("nonic01", DMZ, dmz_hosts[0], vec![]));
    for v in &vms {
        add_vm(&mut e, v);
    }
    e
}

/// Every finding the realistic estate must produce, as (kind, identifying field).
pub const EXPECTED_FINDINGS: &[(&str, &str)] = &[
    ("duplicate-mac", "00:50:56:81:aa:aa"),
    ("duplicate-ip", "10.1.100.99"),
    ("no-ip", "off01"),
    ("no-ip", "dhcp01"),
    ("host-generated-mac", "00:0c:29:12:34:56"),
    ("non-vmware-mac", "52:54:00:ab:cd:ef"),
    ("disconnected-nic", "00:50:56:81:0a:10"),
    ("disconnected-nic", "00:50:56:81:0a:11"),
    ("nic-without-network", "nonet01"),
    ("template", "tmpl-rhel9"),
    ("unsupported-portgroup", "DV-PVLAN"),
    ("trunk-vlans", "Guest-Trunk"),
    ("insecure-portgroup", "DMZ-VRRP"),
    ("insecure-portgroup", "DV-Promisc"),
    ("inconsistent-vlan", "Legacy-App"),
];

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portgroupctl"))
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run portgroupctl")
}

pub fn run_path(args: &[&Path]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run portgroupctl")
}

/// A fresh scratch directory under the target dir (removed by the caller's
/// drop guard).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            estate::fnv(&format!("{:?}", std::time::SystemTime::now())) % 1_000_000
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        Scratch(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Every file under `dir`, relative path -> bytes.
pub fn read_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}
