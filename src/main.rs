//! portgroupd: the portgroup node daemon. Only the command line lives here; the
//! daemon itself is `portgroup::daemon`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use portgroup::daemon::run::{run, Options};
use portgroup::nodeconfig::{check, check_file};
use portgroup::paths::{RunDir, DEFAULT_RUN_DIR, RUN_DIR_ENV};

/// Keeps this node's portgroup bridges and VLAN interfaces in shape.
///
/// For every portgroup in the node network config, portgroupd makes a VLAN
/// sub-interface of the uplink and a bridge with that sub-interface as its only
/// uplink port, both marked with an interface alias beginning "portgroup:". It
/// never changes or deletes an interface without that mark, and never touches the
/// uplink beyond bringing it up. It repairs drift within about 100 ms of a netlink
/// event, reloads the config when its directory changes (ConfigMap updates
/// included), writes the node state to <run-dir>/state.json and, for the CNI
/// plugin, one file per portgroup to <run-dir>/portgroups/<name>.json, and
/// removes attachments whose pod is gone (their host veth went with its netns).
/// As a kubelet device plugin it offers one resource portgroup.io/<portgroup>
/// per portgroup, Healthy while the portgroup is ready, so VMs are scheduled
/// only where theirs is.
///
/// An invalid config is refused whole, every problem is logged and listed in the
/// state's "configErrors", and the last good config stays in force.
///
/// SIGTERM and SIGINT stop the daemon and leave the host topology in place, so
/// running VMs keep their network during an upgrade.
///
/// Examples:
///   portgroupd --dry-run                   show what would change, change nothing
///   portgroupd --once                      reconcile once and exit (2 = config invalid)
///   portgroupd --node-name worker-3 --listen 0.0.0.0:9750
///   portgroupd --check-config config.json  list the config's problems (exit 1 on any)
///   portgroupd --uninstall                 remove everything portgroup put on this node
#[derive(Debug, Parser)]
#[command(name = "portgroupd", version, verbatim_doc_comment)]
struct Cli {
    /// Node network config (JSON), normally the ConfigMap mounted by the DaemonSet.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/portgroup/config.json"
    )]
    config: PathBuf,

    /// This node's name: selects the uplink in "nodeUplinks" and is published in the state. [default: the host name]
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,

    /// Address for /healthz, /readyz and /metrics (Prometheus).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9750")]
    listen: SocketAddr,

    /// Validate FILE ("-": stdin) as the daemon validates its config, print every
    /// problem it would log (one a line, "FILE: field.path: what is wrong") and exit 1
    /// on any; "FILE: ok" and 0 when valid. Touches nothing else.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["once", "dry_run"])]
    check_config: Option<PathBuf>,

    /// Reconcile once, write the state and exit: 0, or 2 when the config is invalid.
    #[arg(long)]
    once: bool,

    /// Print the operations a reconcile would run and the resulting portgroup status; change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Seconds between full reconciles (and attachment garbage collections) when nothing happens.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    resync: u64,

    /// Directory for state.json and the plugin's attachments/. [default: $PORTGROUP_RUN_DIR, else /run/portgroup]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,

    /// Remove everything portgroup put on this node and exit: its marked bridges and
    /// VLAN interfaces, the nftables table bridge portgroup, the CNI plugin in
    /// --cni-bin-dir and the run directory. Refuses (exit 3) while VM ports are attached.
    #[arg(long, conflicts_with_all = ["once", "dry_run"])]
    uninstall: bool,

    /// With --uninstall: go ahead although VM ports are attached (their host veths are deleted, the VMs lose their network).
    #[arg(long, requires = "uninstall")]
    force: bool,

    /// With --uninstall: the host's CNI plugin directory.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as "portgroup=debug".
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        env = "PORTGROUPD_LOG"
    )]
    log_level: String,

    /// Kubelet device-plugin directory: serve one resource portgroup.io/<portgroup> per
    /// portgroup, registered at DIR/kubelet.sock, its socket in DIR. "" turns it off.
    #[arg(
        long,
        value_name = "DIR",
        default_value = portgroup::daemon::deviceplugin::DEFAULT_DIR,
        // Clap refuses an empty path; here it means "off".
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    device_plugin_dir: PathBuf,

    /// Devices each portgroup.io/<portgroup> resource advertises: how many VM
    /// interfaces on that portgroup this node may take.
    #[arg(
        long,
        value_name = "N",
        default_value_t = portgroup::daemon::deviceplugin::DEFAULT_DEVICES,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(portgroup::daemon::deviceplugin::MAX_DEVICES))
    )]
    device_plugin_devices: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(file) = &cli.check_config {
        std::process::exit(check_config(file));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("--log-level {:?}", cli.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let node = match cli.node_name.filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("no --node-name or NODE_NAME, and the host name is unreadable")?
            .to_string_lossy()
            .into_owned(),
    };
    let run_dir = match cli.run_dir {
        Some(dir) => RunDir(dir),
        None => match std::env::var_os(RUN_DIR_ENV) {
            Some(dir) => RunDir(dir.into()),
            None => RunDir(DEFAULT_RUN_DIR.into()),
        },
    };
    if cli.uninstall {
        return uninstall(run_dir, cli.cni_bin_dir, cli.force);
    }
    let opts = Options {
        config: cli.config,
        node,
        listen: Some(cli.listen),
        once: cli.once,
        dry_run: cli.dry_run,
        resync: Duration::from_secs(cli.resync),
        run_dir,
        device_plugin: (!cli.device_plugin_dir.as_os_str().is_empty()).then_some(
            portgroup::daemon::deviceplugin::Settings {
                dir: cli.device_plugin_dir,
                devices: cli.device_plugin_devices,
            },
        ),
    };
    // One thread: the work is netlink round trips and file writes, and the
    // node's cores belong to its VMs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime
        .block_on(run(opts))
        .map_err(|e| anyhow::anyhow!(e))?;
    std::process::exit(code);
}

/// `--check-config`: the daemon's own validation, its problems on stdout.
fn check_config(file: &Path) -> i32 {
    let (label, problems) = match portgroup::check::read_input(file) {
        (label, Ok(bytes)) if file == Path::new("-") => (label, check(&bytes)),
        (label, Err(e)) if file == Path::new("-") => (label, vec![format!("reading stdin: {e}")]),
        // A file: the daemon's own wording for one it cannot read.
        (label, _) => (label, check_file(file)),
    };
    portgroup::check::report(&label, &problems)
}

fn uninstall(run_dir: RunDir, cni_bin_dir: PathBuf, force: bool) -> anyhow::Result<()> {
    use portgroup::daemon::uninstall::{uninstall, Options, EXIT_REFUSED};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = Options {
        run_dir: run_dir.0,
        cni_bin_dir,
        force,
    };
    let report = runtime.block_on(async {
        let links = portgroup::netlink::Netlink::connect()
            .map(|netlink| portgroup::daemon::rtlinks::RtLinks { netlink })
            .context("opening a route netlink socket")?;
        anyhow::Ok(uninstall(&links, &opts).await)
    })?;
    if let Some(why) = report.refused {
        eprintln!("portgroupd --uninstall: refusing: {why}");
        std::process::exit(EXIT_REFUSED);
    }
    for line in &report.removed {
        println!("removed {line}");
    }
    if report.removed.is_empty() {
        println!("nothing of portgroup's found on this node");
    }
    for e in &report.errors {
        eprintln!("portgroupd --uninstall: {e}");
    }
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
