//! `portgroup`: the CNI plugin. Reads the network config on stdin and the CNI_*
//! environment, writes a result or an error object on stdout, logs to stderr.
//! `portgroup install <dir>` (no CNI_COMMAND) copies the plugin into a CNI
//! directory; see install.rs.

mod add;
mod bridge;
mod check;
mod del;
mod effects;
mod env;
mod fault;
mod gc;
mod install;
mod ipam;
mod log;
mod spec;
mod status;
mod teardown;
mod version;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;

use portgroup::Error;
use portgroup_plugin::cni::error_json;
use portgroup_plugin::cni::netconf::{error_version, NetConf, TeardownConf};
use serde_json::Value;

use env::{Call, Invocation};

fn main() {
    // Not part of the CNI protocol (runtimes pass no arguments): a check of a
    // written network configuration for operators and the manifest validation.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "--check-config") {
        std::process::exit(check_config(args.next(), args.next()));
    }
    // `portgroup install <dir>` for the DaemonSet's init container. A runtime
    // always sets CNI_COMMAND (and passes no arguments), so a CNI call never
    // lands here.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("CNI_COMMAND").is_none()
        && args.first().map(String::as_str) == Some("install")
    {
        std::process::exit(install::main(&args[1..]));
    }
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => {
            log::init(&stdin);
            dispatch(&stdin)
        }
        Err(e) => Err(Error::Stdin(e)),
    };
    let (output, status) = match outcome {
        Ok(Some(value)) => (Some(value), 0),
        Ok(None) => (None, 0),
        Err(err) => {
            tracing::error!("{err}");
            (Some(error_json(&error_version(&stdin), &err)), 1)
        }
    };
    if let Some(value) = output {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &value);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    std::process::exit(status);
}

fn dispatch(stdin: &[u8]) -> Result<Option<Value>, Error> {
    let invocation = Invocation::from_env()?;
    if let Invocation::Version = invocation {
        return Ok(Some(version::version(stdin)));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::system("starting the runtime", e))?;
    // The config is validated before the log file it names is opened.
    if let Invocation::Del(env) = invocation {
        let conf = TeardownConf::parse(stdin)?;
        if let Some(name) = &conf.log_file {
            log::open_file(name);
        }
        let call = Call { env, conf, stdin };
        return runtime.block_on(del::del(&call)).map(|_| None);
    }
    let conf = NetConf::parse(stdin)?;
    if let Some(name) = &conf.log_file {
        log::open_file(name);
    }
    runtime.block_on(async {
        match invocation {
            Invocation::Add(env) => add::add(&Call { env, conf, stdin }).await.map(Some),
            Invocation::Check(env) => check::check(&Call { env, conf, stdin }).await.map(|_| None),
            Invocation::Status(env) => status::status(&Call { env, conf, stdin })
                .await
                .map(|_| None),
            Invocation::Gc(env) => gc::gc(&Call { env, conf, stdin }).await.map(|_| None),
            Invocation::Del(_) | Invocation::Version => Ok(None),
        }
    })
}

/// `portgroup --check-config FILE`: FILE ("-": stdin) holds a network configuration
/// as a NetworkAttachmentDefinition's `spec.config` does. Prints every problem the
/// plugin would refuse it for ("FILE: field: what is wrong", one a line) and exits 1
/// on any; "FILE: ok" and 0 when valid; 2 on a usage error.
fn check_config(file: Option<OsString>, extra: Option<OsString>) -> i32 {
    let (Some(file), None) = (file, extra) else {
        eprintln!("usage: portgroup --check-config FILE   (FILE \"-\" reads stdin)");
        return 2;
    };
    let (label, read) = portgroup::check::read_input(&PathBuf::from(&file));
    let problems = match read {
        Ok(bytes) => portgroup_plugin::cni::netconf_check::check(&bytes),
        Err(e) => vec![format!("reading {label}: {e}")],
    };
    portgroup::check::report(&label, &problems)
}
