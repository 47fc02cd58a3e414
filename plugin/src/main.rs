//! `portgroup`: the CNI plugin. Reads the network config on stdin and the CNI_*
//! environment, writes a result or an error object on stdout, logs to stderr.

mod add;
mod bridge;
mod check;
mod del;
mod env;
mod fault;
mod gc;
mod ipam;
mod status;
mod teardown;
mod version;

use std::io::{Read, Write};

use portgroup::Error;
use portgroup_plugin::cni::error_json;
use portgroup_plugin::cni::netconf::{error_version, NetConf};
use serde_json::Value;

use env::{Command, Env};

fn main() {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => {
            init_logging(&stdin);
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
    let command = Env::command_from_env()?;
    if command == Command::Version {
        return Ok(Some(version::version(stdin)));
    }
    let env = Env::from_env(command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::system("starting the runtime", e))?;
    runtime.block_on(async {
        match command {
            Command::Add => {
                let conf = NetConf::parse(stdin)?;
                add::add(&env, &conf, stdin).await.map(Some)
            }
            Command::Del => del::del(&env, stdin).await.map(|_| None),
            Command::Check => {
                let conf = NetConf::parse(stdin)?;
                check::check(&env, &conf, stdin).await.map(|_| None)
            }
            Command::Status => {
                let conf = NetConf::parse(stdin)?;
                status::status(&env, &conf, stdin).await.map(|_| None)
            }
            Command::Gc => {
                let conf = NetConf::parse(stdin)?;
                gc::gc(&env, &conf, stdin).await.map(|_| None)
            }
            Command::Version => Ok(Some(version::version(stdin))),
        }
    })
}

/// Logs go to stderr and, when the config names a `logFile`, to that file too.
/// Level: `logLevel` in the config, else PORTGROUP_LOG, else warn. A plain level
/// (error, warn, info, debug, trace, off): the plugin runs for every pod, and a
/// directive filter would bring a regex engine into each start.
fn init_logging(stdin: &[u8]) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::fmt;
    use tracing_subscriber::prelude::*;
    let conf: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
    let level = conf
        .get("logLevel")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| std::env::var("PORTGROUP_LOG").ok());
    let filter = level
        .and_then(|level| level.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let file = conf
        .get("logFile")
        .and_then(Value::as_str)
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map(|f| {
            fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
        });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false),
        )
        .with(file)
        .try_init();
}
