//! portgroupctl: the operator's CLI. `plan` turns a vSphere inventory (RVTools
//! exports, govc JSON) into portgroup's node config, NADs, KubeVirt network
//! stanzas, a Forklift NetworkMap and a scoping report; `check-config` runs the
//! daemon's own validation on a node config. No root, network or cluster access.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use portgroupctl::model::Inventory;
use portgroupctl::plan::{plan, Options};
use portgroupctl::render::{render, ReportFormats};
use portgroupctl::{csvdir, govc, outdir, rvtools, xlsx, InputError};

#[derive(Parser)]
#[command(
    name = "portgroupctl",
    version,
    about = "Plan a vSphere migration's network for portgroup"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan node config, NADs, VM network stanzas, a NetworkMap and a report.
    Plan(Box<PlanArgs>),
    /// Validate a node network config with the daemon's own validation.
    CheckConfig {
        /// node-config.json (the JSON in the ConfigMap's config.json).
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct PlanArgs {
    /// An RVTools export: an .xlsx workbook or a directory of its
    /// RVTools_tab*.csv files. Repeat for several vCenters.
    #[arg(long = "rvtools", value_name = "PATH")]
    rvtools: Vec<PathBuf>,
    /// JSON from `govc vm.info -json`, `govc host.portgroup.info -json` or
    /// `govc dvs.portgroup.info -json`. Repeatable.
    #[arg(long = "govc", value_name = "FILE")]
    govc: Vec<PathBuf>,
    /// Output directory (created; a previous plan in it is replaced whole).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Namespace of the NADs and the VMs.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The node interface that carries the VLAN trunk.
    #[arg(long, default_value = "eth1")]
    uplink: String,
    /// The node interface of the untagged portgroup (vSphere's VLAN 0), when it
    /// is not --uplink. portgroupd makes that uplink a bridge port and refuses
    /// while it holds IP addresses: give untagged traffic a NIC of its own.
    #[arg(long, value_name = "IFACE")]
    untagged_uplink: Option<String>,
    /// Reports to write: any of md, html, json (comma separated), or all.
    #[arg(long, default_value = "all")]
    format: String,
    /// Namespace of portgroup's ConfigMap (where portgroupd runs).
    #[arg(long, default_value = "portgroup-system")]
    config_namespace: String,
    /// Namespace of the Forklift NetworkMap and providers.
    #[arg(long, default_value = "openshift-mtv")]
    forklift_namespace: String,
    /// Forklift's vSphere provider.
    #[arg(long, default_value = "vsphere")]
    source_provider: String,
    /// Forklift's destination (OpenShift/Kubernetes) provider.
    #[arg(long, default_value = "host")]
    destination_provider: String,
    /// Leave `k8s.v1.cni.cncf.io/resourceName: portgroup.io/<name>` off the NADs:
    /// for clusters whose portgroupd runs with `--device-plugin-dir ""` (no
    /// device plugin, so no resource a VM could request).
    #[arg(long)]
    no_resource_name_annotation: bool,
}

fn read_inventory(args: &PlanArgs) -> Result<Inventory, InputError> {
    let mut inventory = Inventory::default();
    for path in &args.rvtools {
        let export = if path.is_dir() {
            csvdir::read(path)?
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            return Err(InputError::file(
                path,
                "a single CSV file: pass the directory that holds all the RVTools_tab*.csv files of the export",
            ));
        } else {
            xlsx::read(path)?
        };
        rvtools::read_export(&export, &mut inventory)?;
    }
    for path in &args.govc {
        let file = govc::read(path)?;
        govc::merge(&mut inventory, file);
    }
    Ok(inventory)
}

fn run_plan(args: &PlanArgs) -> Result<String, String> {
    if args.rvtools.is_empty() && args.govc.is_empty() {
        return Err("nothing to plan: give --rvtools PATH and/or --govc FILE".into());
    }
    let formats = ReportFormats::parse(&args.format).map_err(|e| format!("--format: {e}"))?;
    portgroup::naming::validate_ifname(&args.uplink).map_err(|e| format!("--uplink: {e}"))?;
    if let Some(uplink) = &args.untagged_uplink {
        portgroup::naming::validate_ifname(uplink)
            .map_err(|e| format!("--untagged-uplink: {e}"))?;
    }
    for (flag, ns) in [
        ("--namespace", &args.namespace),
        ("--config-namespace", &args.config_namespace),
        ("--forklift-namespace", &args.forklift_namespace),
    ] {
        portgroup::nodeconfig::validate_portgroup_name(ns).map_err(|e| format!("{flag}: {e}"))?;
    }
    let inventory = read_inventory(args).map_err(|e| e.to_string())?;
    let options = Options {
        namespace: args.namespace.clone(),
        uplink: args.uplink.clone(),
        untagged_uplink: args.untagged_uplink.clone(),
        config_namespace: args.config_namespace.clone(),
        forklift_namespace: args.forklift_namespace.clone(),
        source_provider: args.source_provider.clone(),
        destination_provider: args.destination_provider.clone(),
        resource_name_annotation: !args.no_resource_name_annotation,
    };
    let plan = plan(&inventory, &options);
    let files = render(&plan, formats);
    // The daemon's own validation, before anything is written: a plan the
    // daemon would refuse is a bug here, never a file on disk.
    let config = files
        .get("node-config.json")
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Err(problems) = portgroup::nodeconfig::NodeConfig::parse(config) {
        return Err(format!(
            "internal error: the planned node config fails validation ({}); nothing written",
            problems.join("; ")
        ));
    }
    outdir::write(&args.out, &files)?;
    Ok(format!(
        "planned {} VMs, {} NICs: {} portgroups, {} VM stanzas, {} findings; wrote {} files to {}",
        plan.vms,
        plan.nics,
        plan.portgroups.len(),
        plan.planned_vms.len(),
        plan.findings.len(),
        files.len(),
        args.out.display()
    ))
}

/// The daemon's own validation (`portgroup::nodeconfig::check_file`), printed as
/// `portgroupd --check-config` prints it: one `FILE: problem` line each on stdout.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(args) => match run_plan(&args) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portgroupctl: {e}");
                ExitCode::FAILURE
            }
        },
        // The daemon's own validation, printed as `portgroupd --check-config` prints it.
        Command::CheckConfig { file } => {
            let problems = portgroup::nodeconfig::check_file(&file);
            match portgroup::check::report(&file.display().to_string(), &problems) {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
    }
}
