//! `portgroup install <dir>`: puts this very binary into the host's CNI directory,
//! for the DaemonSet's init container, which has no shell.
//!
//! The container runtime may exec `<dir>/portgroup` at any moment, so the file
//! there is always whole: the copy is written under a temporary name in the same
//! directory (same filesystem, so the rename is atomic), fsynced, renamed over
//! the old one, and the directory is fsynced so the rename survives a crash. A
//! plugin that is already identical is left alone (same inode, no rename): a
//! rerun, or every pod restart, changes nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The plugin's name in the CNI directory: the `type` in network configs.
pub const PLUGIN_FILE: &str = "portgroup";
/// Temporary files are `.portgroup.tmp.<pid>.<nanos>`; leftovers of an
/// interrupted install carry this prefix and are removed by the next one.
const TMP_PREFIX: &str = ".portgroup.tmp.";

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Installed(PathBuf),
    Replaced(PathBuf),
    Unchanged(PathBuf),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Installed(p) => write!(f, "installed {}", p.display()),
            Outcome::Replaced(p) => write!(f, "replaced {} (it differed)", p.display()),
            Outcome::Unchanged(p) => write!(f, "{} is already this plugin; unchanged", p.display()),
        }
    }
}

fn context(what: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Installs the file `source` as `<dir>/portgroup`.
pub fn install(source: &Path, dir: &Path) -> std::io::Result<Outcome> {
    let meta = std::fs::metadata(dir).map_err(context(format!("{}", dir.display())))?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let new = std::fs::read(source).map_err(context(format!("reading {}", source.display())))?;
    let target = dir.join(PLUGIN_FILE);
    remove_leftovers(dir);
    let existed = match same_as(&target, &new) {
        Ok(true) => return Ok(Outcome::Unchanged(target)),
        Ok(false) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(context(format!("reading {}", target.display()))(e)),
    };

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!("{TMP_PREFIX}{}.{nanos}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        file.write_all(&new)?;
        // The umask may have narrowed the mode given to open.
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(context(format!("writing {}", target.display()))(e));
    }
    Ok(if existed {
        Outcome::Replaced(target)
    } else {
        Outcome::Installed(target)
    })
}

/// Whether `path` holds exactly `bytes` and is executable by everyone.
fn same_as(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file()
        || meta.len() != bytes.len() as u64
        || meta.permissions().mode() & 0o555 != 0o555
    {
        return Ok(false);
    }
    let mut old = Vec::with_capacity(bytes.len());
    file.read_to_end(&mut old)?;
    Ok(old == bytes)
}

fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `portgroup install <dir>` from the command line: 0 on success, 1 on failure
/// (said on stderr), 2 on a usage error.
pub fn main(args: &[String]) -> i32 {
    let [dir] = args else {
        eprintln!("usage: portgroup install <cni-bin-dir>   (for example /host/opt/cni/bin)");
        return 2;
    };
    match install(Path::new("/proc/self/exe"), Path::new(dir)) {
        Ok(outcome) => {
            println!("{outcome}");
            0
        }
        Err(e) => {
            eprintln!("portgroup install: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pg-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("scratch dir");
        dir
    }

    #[test]
    fn installs_then_leaves_an_identical_plugin_alone_then_replaces_a_different_one() {
        let dir = scratch("cycle");
        let bin = dir.join("bin");
        let source = dir.join("source");
        std::fs::write(&source, b"plugin v1").expect("source");
        std::fs::write(bin.join(".portgroup.tmp.1.2"), b"half").expect("leftover");
        std::fs::write(bin.join("bridge"), b"other plugin").expect("neighbour");

        let target = bin.join(PLUGIN_FILE);
        assert_eq!(
            install(&source, &bin).expect("install"),
            Outcome::Installed(target.clone())
        );
        let first = std::fs::metadata(&target).expect("installed");
        assert_eq!(first.permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read(&target).expect("read"), b"plugin v1");

        assert_eq!(
            install(&source, &bin).expect("rerun"),
            Outcome::Unchanged(target.clone())
        );
        assert_eq!(
            std::fs::metadata(&target).expect("still").ino(),
            first.ino(),
            "not rewritten"
        );

        std::fs::write(&source, b"plugin v2").expect("source v2");
        assert_eq!(
            install(&source, &bin).expect("upgrade"),
            Outcome::Replaced(target.clone())
        );
        assert_eq!(std::fs::read(&target).expect("read"), b"plugin v2");
        assert_ne!(
            std::fs::metadata(&target).expect("new").ino(),
            first.ino(),
            "renamed over"
        );

        // Same bytes but not executable: replaced, so the runtime can exec it.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            install(&source, &bin).expect("fix mode"),
            Outcome::Replaced(target.clone())
        );
        assert_eq!(
            std::fs::metadata(&target)
                .expect("mode")
                .permissions()
                .mode()
                & 0o777,
            0o755
        );

        let mut names: Vec<_> = std::fs::read_dir(&bin)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["bridge", "portgroup"],
            "no temporary file left, neighbour kept"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_missing_or_non_directory_target_is_an_error_naming_it() {
        let dir = scratch("bad");
        let source = dir.join("source");
        std::fs::write(&source, b"plugin").expect("source");
        let missing = dir.join("nope");
        let e = install(&source, &missing).expect_err("missing dir");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = install(&source, &source).expect_err("a file");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = install(&dir.join("no-source"), &dir.join("bin")).expect_err("no source");
        assert!(e.to_string().contains("reading"), "{e}");
        assert_eq!(std::fs::read_dir(dir.join("bin")).expect("list").count(), 0);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn usage() {
        assert_eq!(main(&[]), 2);
        assert_eq!(main(&["a".into(), "b".into()]), 2);
    }
}
