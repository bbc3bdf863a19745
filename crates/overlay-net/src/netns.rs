//! Named network namespaces: a new namespace kept alive by a bind mount of its nsfs file (as
//! `ip netns add` does), and code run inside one on a thread of its own.

use crate::NetError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Creates a network namespace kept at `path` (a bind mount), with its loopback up.
pub fn create(path: &Path) -> Result<(), NetError> {
    if is_mounted(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(NetError::io(format!("creating {}", dir.display())))?;
    }
    std::fs::File::create(path).map_err(NetError::io(format!("creating {}", path.display())))?;
    let target = path.to_owned();
    // unshare(CLONE_NEWNET) moves the calling thread only: a thread of its own, which ends
    // once the namespace is bound to the file.
    std::thread::spawn(move || -> Result<(), NetError> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::io("unshare(CLONE_NEWNET)")(e.into()))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            NetError::io(format!("binding the namespace to {}", target.display()))(e.into())
        })
    })
    .join()
    .map_err(|_| NetError::io("namespace thread")(std::io::Error::other("panicked")))??;
    run_in(path, |h| async move { crate::link::set_up(&h, "lo").await })
}

/// Removes a namespace made by [`create`] (nothing if it is gone). Interfaces inside go with it.
pub fn remove(path: &Path) -> Result<(), NetError> {
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| NetError::io(format!("unmounting {}", path.display()))(e.into()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io(format!("removing {}", path.display()))(e)),
    }
}

/// True when `path` is a mount point (a namespace is bound there).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    text.lines()
        .any(|l| l.split_whitespace().nth(4).is_some_and(|m| m == p))
}

/// The namespace files under `dir` (those still bound).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs `f` with a netlink handle inside the namespace at `path`, on a thread of its own with
/// its own single-threaded runtime: a netlink socket belongs to the namespace it was opened in.
pub fn run_in<F, Fut, T>(path: &Path, f: F) -> Result<T, NetError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetError>>,
    T: Send + 'static,
{
    let path = path.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)
            .map_err(NetError::io(format!("opening {}", path.display())))?;
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::io(format!("entering {}", path.display()))(e.into()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetError::io("a runtime for netlink"))?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(NetError::io("opening netlink"))?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .map_err(|_| NetError::io("netlink thread")(std::io::Error::other("panicked")))?
}

/// Runs the blocking `f` inside the namespace at `path`, on a thread of its own (to open a
/// socket there, or start a program there).
pub fn blocking_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetError> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)
            .map_err(NetError::io(format!("opening {}", path.display())))?;
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::io(format!("entering {}", path.display()))(e.into()))?;
        f().map_err(NetError::io(format!("inside {}", path.display())))
    })
    .join()
    .map_err(|_| NetError::io("namespace thread")(std::io::Error::other("panicked")))?
}
