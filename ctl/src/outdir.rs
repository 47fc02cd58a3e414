//! Writing the plan: all of it or nothing. Files are written into a fresh
//! directory next to DIR and renamed into place, so an error (or a crash)
//! never leaves a half-written plan, and a previous plan is replaced whole.

use std::fs;
use std::path::{Path, PathBuf};

use crate::render::Files;

/// The file that marks a directory as a plan (a previous plan may be replaced;
/// any other non-empty directory is refused).
pub const MARKER: &str = "node-config.json";

fn sibling(dir: &Path, tag: &str) -> Result<PathBuf, String> {
    let name = dir
        .file_name()
        .ok_or_else(|| format!("{}: not a directory name", dir.display()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(
        ".{}.{tag}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

pub fn write(dir: &Path, files: &Files) -> Result<(), String> {
    let existing = match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let empty = entries.next().is_none();
            if !empty && !dir.join(MARKER).exists() {
                return Err(format!(
                    "{}: exists, is not empty and holds no previous plan ({MARKER}); choose a new directory",
                    dir.display()
                ));
            }
            true
        }
        Ok(_) => return Err(format!("{}: exists and is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let staging = sibling(dir, "portgroupctl-new")?;
    let _ = fs::remove_dir_all(&staging);
    let result = (|| -> Result<(), String> {
        fs::create_dir(&staging)
            .map_err(|e| format!("{}: cannot create: {e}", staging.display()))?;
        for (rel, bytes) in files {
            let path = staging.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if existing {
            let old = sibling(dir, "portgroupctl-old")?;
            let _ = fs::remove_dir_all(&old);
            fs::rename(dir, &old)
                .map_err(|e| format!("{}: cannot move aside: {e}", dir.display()))?;
            if let Err(e) = fs::rename(&staging, dir) {
                let _ = fs::rename(&old, dir);
                return Err(format!("{}: {e}", dir.display()));
            }
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&staging, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}
