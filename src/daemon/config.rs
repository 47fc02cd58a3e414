//! The node network config as the daemon holds it: the last good one, the problems
//! of the newest one when it was refused, and a watch on its directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc::UnboundedSender;

use crate::nodeconfig::{read_problem, NodeConfig};

#[derive(Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    last_bytes: Option<Vec<u8>>,
    /// The config in force: the newest one that passed validation.
    pub good: Option<NodeConfig>,
    /// Why the newest one was refused; empty when it is the one in force.
    pub errors: Vec<String>,
    /// Valid configs loaded so far.
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded,
    Refused,
}

impl ConfigSource {
    pub fn new(path: PathBuf) -> Self {
        ConfigSource {
            path,
            last_bytes: None,
            good: None,
            errors: Vec::new(),
            generation: 0,
        }
    }

    /// Reads the file again; only different bytes count as a change.
    pub fn reload(&mut self) -> Reload {
        match std::fs::read(&self.path) {
            Ok(bytes) => self.offer(bytes),
            Err(e) => {
                let problem = read_problem(&self.path, &e);
                self.last_bytes = None;
                if self.errors == [problem.clone()] {
                    return Reload::Unchanged;
                }
                self.refuse(vec![problem]);
                Reload::Refused
            }
        }
    }

    pub fn offer(&mut self, bytes: Vec<u8>) -> Reload {
        if self.last_bytes.as_ref() == Some(&bytes) {
            return Reload::Unchanged;
        }
        let parsed = NodeConfig::parse(&bytes);
        self.last_bytes = Some(bytes);
        match parsed {
            Ok(config) => {
                self.errors.clear();
                self.generation += 1;
                tracing::info!(
                    generation = self.generation,
                    portgroups = config.portgroups.len(),
                    "loaded config {}",
                    self.path.display()
                );
                self.good = Some(config);
                Reload::Loaded
            }
            Err(problems) => {
                self.refuse(problems);
                Reload::Refused
            }
        }
    }

    fn refuse(&mut self, problems: Vec<String>) {
        for problem in &problems {
            tracing::error!("config {} refused: {problem}", self.path.display());
        }
        if self.good.is_some() {
            tracing::warn!(
                generation = self.generation,
                "keeping the last good config in force"
            );
        } else {
            tracing::warn!("no valid config yet: nothing is reconciled until one arrives");
        }
        self.errors = problems;
    }
}

/// Sends a unit for every change in the config's directory. Kubelet updates a
/// ConfigMap volume by writing a new timestamped directory and swapping the
/// `..data` symlink: the file itself never sees a write, its directory does.
pub async fn watch(path: &Path, tx: UnboundedSender<()>) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut warned = false;
    loop {
        match watch_once(&dir, path.file_name(), &tx).await {
            Ok(()) => tracing::info!(
                "config directory {} changed identity; watching it again",
                dir.display()
            ),
            // Said once: a missing directory would otherwise be logged every two seconds.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    "cannot watch config directory {}: {e}; relying on the periodic resync until it can",
                    dir.display()
                );
            }
            Err(e) => tracing::debug!("watching {}: {e}", dir.display()),
        }
        if tx.is_closed() {
            return;
        }
        // The directory may be recreated (a volume remount): tell the loop, then watch anew.
        let _ = tx.send(());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether a change to `name` in the config's directory may change the config:
/// the file itself, kubelet's `..data` swap and `..<timestamp>` directories, or
/// the directory itself (no name). Anything else there (a log file next to it)
/// would only wake a reconcile for nothing.
fn concerns_config(name: Option<&std::ffi::OsStr>, file: Option<&std::ffi::OsStr>) -> bool {
    match name {
        None => true,
        Some(name) => Some(name) == file || name.as_encoded_bytes().starts_with(b".."),
    }
}

async fn watch_once(
    dir: &Path,
    file: Option<&std::ffi::OsStr>,
    tx: &UnboundedSender<()>,
) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CREATE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    while let Some(event) = events.next().await {
        let event = event?;
        if !concerns_config(event.name.as_deref(), file) {
            continue;
        }
        if tx.send(()).is_err() {
            return Ok(());
        }
        if event.mask.intersects(
            inotify::EventMask::DELETE_SELF
                | inotify::EventMask::MOVE_SELF
                | inotify::EventMask::IGNORED,
        ) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_may_change_the_config_count() {
        let file = Some(std::ffi::OsStr::new("config.json"));
        for (name, counts) in [
            (None, true),
            (Some("config.json"), true),
            (Some("..data"), true),
            (Some("..data_tmp"), true),
            (Some("..2026_11_23_1"), true),
            (Some("portgroupd.log"), false),
            (Some("config.json.swp"), false),
        ] {
            assert_eq!(
                concerns_config(name.map(std::ffi::OsStr::new), file),
                counts,
                "{name:?}"
            );
        }
    }

    #[test]
    fn refused_config_keeps_the_last_good_one() {
        let mut source = ConfigSource::new(PathBuf::from("/nonexistent/config.json"));
        let good = br#"{"uplink": "eth1", "portgroups": [{"name": "web", "vlan": 100}]}"#.to_vec();
        let bad = br#"{"uplink": "eth1", "portgroups": [{"name": "Web", "vlan": 5000}]}"#.to_vec();
        assert_eq!(source.offer(bad.clone()), Reload::Refused);
        assert!(source.good.is_none());
        assert_eq!(source.errors.len(), 2, "{:?}", source.errors);
        assert_eq!(source.offer(good.clone()), Reload::Loaded);
        assert_eq!(source.generation, 1);
        assert!(source.errors.is_empty());
        assert_eq!(source.offer(good), Reload::Unchanged);
        assert_eq!(source.offer(bad), Reload::Refused);
        assert_eq!(
            source.good.as_ref().and_then(|c| c.portgroups[0].vlan()),
            Some(100)
        );
        assert!(source
            .errors
            .iter()
            .any(|e| e.contains("portgroups[0].vlan")));
        assert_eq!(source.reload(), Reload::Refused);
        assert!(source.errors[0].contains("reading /nonexistent/config.json"));
        assert_eq!(source.reload(), Reload::Unchanged);
        assert_eq!(source.generation, 1);
    }
}
