//! Network namespaces. `setns` changes the calling thread only, so every switch
//! happens on a dedicated short-lived thread; the caller's threads never move.
//! What crosses back is a socket, which stays bound to the namespace it was made in.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// `NSFS_MAGIC` from linux/magic.h: what statfs says of a namespace file.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `PROC_SUPER_MAGIC`: /proc/<pid>/ns/net before it is resolved on old kernels.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{path}: no such network namespace")]
    NotFound { path: String },
    #[error("{path} is not a network namespace")]
    NotANamespace { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens a namespace file such as /var/run/netns/NAME or /proc/PID/ns/net.
pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => NetnsError::NotFound {
            path: shown.clone(),
        },
        _ => NetnsError::Io {
            path: shown.clone(),
            source,
        },
    })?;
    let stat = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Io {
        path: shown.clone(),
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)]
    let fs_type = stat.filesystem_type().0 as i64;
    if fs_type != NSFS_MAGIC && fs_type != PROC_SUPER_MAGIC {
        return Err(NetnsError::NotANamespace { path: shown });
    }
    Ok(file.into())
}

/// Runs `work` on a fresh thread that has entered `netns`, and returns its result.
pub fn run_in<T, F>(netns: &OwnedFd, work: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let ns = netns.try_clone()?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::other(format!("setns: {e}")))?;
            work()
        })?
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// A netlink route socket that lives in `netns`.
pub fn route_socket_in(netns: &OwnedFd) -> std::io::Result<netlink_sys::Socket> {
    run_in(netns, || {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(socket)
    })
}
