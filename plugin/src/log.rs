//! Plugin logs: always stderr (Multus and kubelet keep it), and a file when the
//! network config names one. The config names only the file; the node chooses the
//! directory, so a config can neither create nor append to a file anywhere else.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::OFlag;
use portgroup_plugin::cni::netconf::log_file_name;
use serde_json::Value;

/// Where `logFile` names a file: set in the runtime's environment (containerd's,
/// CRI-O's), which every plugin it runs inherits.
pub const LOG_DIR_ENV: &str = "PORTGROUP_LOG_DIR";
/// Used when the environment names no (absolute) directory.
pub const DEFAULT_LOG_DIR: &str = "/var/log/portgroup";

static FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// Logging to stderr, at the config's `logLevel` (a plain level only), else
/// PORTGROUP_LOG, else warn. No file yet: see [`open_file`].
pub fn init(stdin: &[u8]) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::fmt;
    use tracing_subscriber::prelude::*;
    // A plain level, not a directive filter: the plugin runs for every pod, and
    // a directive filter would bring a regex engine into each start.
    let from_config = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|conf| {
            conf.get("logLevel")
                .and_then(Value::as_str)
                .and_then(|level| level.trim().parse::<LevelFilter>().ok())
        });
    let filter = from_config
        .or_else(|| {
            std::env::var("PORTGROUP_LOG")
                .ok()
                .and_then(|level| level.trim().parse::<LevelFilter>().ok())
        })
        .unwrap_or(LevelFilter::WARN);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(|| Escaping(std::io::stderr()))
                .with_ansi(false)
                .with_target(false),
        )
        .with(
            fmt::layer()
                .with_writer(|| Escaping(FileWriter))
                .with_ansi(false),
        )
        .try_init();
}

/// Sends logs to `name` in the node's log directory too. Called only once the config
/// has been validated; `name` is already a bare file name (see `log_file_name`).
pub fn open_file(name: &str) {
    let dir = log_dir();
    match open_in(&dir, name) {
        Ok(file) => {
            let _ = FILE.set(Mutex::new(file));
        }
        Err(why) => tracing::warn!(
            "log file {name:?} in {}: {why}; logging to stderr only",
            dir.display()
        ),
    }
}

fn log_dir() -> PathBuf {
    std::env::var_os(LOG_DIR_ENV)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR))
}

/// Opens (creating) `dir/name` for appending: never through a symlink, never blocking
/// on a FIFO, never kept across exec, and only if it is a regular file.
pub fn open_in(dir: &Path, name: &str) -> Result<File, String> {
    if log_file_name(name).ok().as_deref() != Some(name) {
        return Err("not a bare file name".into());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| format!("creating the directory: {e}"))?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(dir.join(name))
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    Ok(file)
}

/// Writes to the log file once one is open; until then, nowhere.
struct FileWriter;

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(file) = FILE.get() {
            if let Ok(mut file) = file.lock() {
                file.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One log line per event, whatever the logged values hold: control characters
/// (newlines, escape sequences) are written escaped, only the final newline stays.
struct Escaping<W: Write>(W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(escape_line(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub fn escape_line(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let (body, newline) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (&*text, ""),
    };
    let mut out = String::with_capacity(text.len() + 8);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str(newline);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let cases: &[(&str, &str)] = &[
            ("plain\n", "plain\n"),
            ("a\nssh-ed25519 AAAA\n", "a\\nssh-ed25519 AAAA\n"),
            ("\u{1b}[31mred\r\n", "\\u{1b}[31mred\\r\n"),
            ("tab\there", "tab\\there"),
            ("nul\0", "nul\\u{0}"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_line(input.as_bytes()), *want, "{input:?}");
        }
    }
}
