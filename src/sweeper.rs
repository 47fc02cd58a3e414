//! Whether portgroupd sweeps this node's port security now: the contract that
//! lets a DEL leave its port's nftables elements to portgroupd.
//!
//! portgroupd holds an exclusive `flock` on `<run dir>/portgroupd.lock` for as
//! long as it runs, taken once it watches the attachment records (a record
//! removed wakes its port-security sweep, which removes the elements of ports
//! no record owns and whose interface is gone). The file names the network
//! namespace portgroupd runs in: a daemon sweeping another namespace's table
//! is no daemon for this one. The kernel lets go of the lock when the process
//! dies, however it dies, so a plugin never trusts a dead daemon.
//!
//! A daemon that dies after a DEL looked leaves the elements to the next
//! daemon's first pass (a resync sweeps orphans), or to CNI GC.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::paths::RunDir;

pub const LOCK_FILE: &str = "portgroupd.lock";

pub fn lock_path(run: &RunDir) -> PathBuf {
    run.0.join(LOCK_FILE)
}

/// The calling thread's network namespace, as `dev:inode` of its nsfs file
/// (the thread's: a thread may have entered another namespace than its process).
fn netns_id() -> std::io::Result<String> {
    let m = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(format!("{}:{}", m.dev(), m.ino()))
}

/// The lock, while portgroupd runs.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Flock<std::fs::File>);

/// Takes the lock (portgroupd). None: another process holds it (another
/// portgroupd, still running: it sweeps, and this one may take over later).
pub fn hold(run: &RunDir) -> std::io::Result<Option<Held>> {
    let path = lock_path(run);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(e.into()),
    };
    // Written under the lock: a plugin reading a half-written name sees no
    // daemon of its namespace and removes its elements itself.
    locked.set_len(0)?;
    locked.write_all(format!("{}\n", netns_id()?).as_bytes())?;
    Ok(Some(Held(locked)))
}

/// Whether a live portgroupd of this network namespace holds the lock (the
/// plugin): one open, one read, one `flock` attempt. Any doubt is "no".
pub fn sweeping(run: &RunDir) -> bool {
    sweeping_at(&lock_path(run))
}

fn sweeping_at(path: &Path) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut named = String::new();
    if file.read_to_string(&mut named).is_err() {
        return false;
    }
    if netns_id().ok().as_deref() != Some(named.trim()) {
        return false;
    }
    // A shared lock granted means nobody holds the exclusive one: no daemon.
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_of_this_namespace_means_sweeping_and_nothing_else_does() {
        let dir = std::env::temp_dir().join(format!("pg-sweeper-{}", std::process::id()));
        let run = RunDir(dir.join("run"));
        assert!(!sweeping(&run), "no file: no daemon");
        let held = hold(&run).unwrap().expect("first holder");
        assert!(sweeping(&run));
        assert!(hold(&run).unwrap().is_none(), "a second daemon waits");
        drop(held);
        assert!(!sweeping(&run), "a daemon gone lets go of the lock");

        // Held, but naming another namespace.
        let held = hold(&run).unwrap().expect("holder again");
        std::fs::write(lock_path(&run), "0:1\n").unwrap();
        assert!(!sweeping(&run), "another namespace's daemon");
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
