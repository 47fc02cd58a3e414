//! Where state lives. Everything is under one run directory (default
//! /run/portgroup), which `PORTGROUP_RUN_DIR` moves: tests give each case its own.

use std::path::PathBuf;

pub const DEFAULT_RUN_DIR: &str = "/run/portgroup";
pub const RUN_DIR_ENV: &str = "PORTGROUP_RUN_DIR";

#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn from_env() -> Self {
        RunDir(
            std::env::var_os(RUN_DIR_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
        )
    }

    pub fn state_file(&self) -> PathBuf {
        self.0.join("state.json")
    }

    pub fn attachments_dir(&self) -> PathBuf {
        self.0.join("attachments")
    }

    /// One file per portgroup, for the plugin: see [`crate::state::NodeState::write`].
    pub fn portgroups_dir(&self) -> PathBuf {
        self.0.join("portgroups")
    }

    /// Which portgroups reserve a MAC, one file per reserved MAC: see
    /// [`crate::state::MacOwner`].
    pub fn reserved_macs_dir(&self) -> PathBuf {
        self.0.join("reserved-macs")
    }

    pub fn reserved_mac_file(&self, mac: crate::mac::MacAddr) -> PathBuf {
        self.reserved_macs_dir()
            .join(format!("{}.json", mac.to_string().replace(':', "-")))
    }

    pub fn portgroup_file(&self, name: &str) -> PathBuf {
        self.portgroups_dir().join(format!("{name}.json"))
    }
}

/// Writes through a temporary file and a rename, so a reader sees the old or the new
/// file, never half of one. No fsync: everything we write lives under /run, which a
/// reboot empties anyway, and the rename alone is what readers need.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `write`, through a buffer: a
/// large file (the node state of thousands of portgroups) is never whole in memory.
pub fn write_atomic_with(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        file.flush()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// RFC 3339 UTC time with seconds, without pulling in a calendar crate.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_known_instants() {
        let cases = [
            (0u64, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_795_428_000, "2026-11-23T10:00:00Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("pg-atomic-{}", std::process::id()));
        let path = dir.join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
