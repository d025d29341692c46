//! Named network namespaces, compatible with `ip netns`.
//!
//! A namespace is kept alive by a bind mount of its nsfs inode on
//! `/run/netns/NAME`, exactly as iproute2 does, so `ip netns exec red ...`
//! works on the labs netlab builds.
//!
//! Namespace membership is per thread in Linux. Work inside a namespace always
//! happens on a dedicated OS thread that enters it with `setns` and runs its
//! own current-thread tokio runtime ([`on_thread`], and
//! [`crate::netlink::run_in`] for netlink work); the caller's threads never
//! change namespace.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{
    sys::{cstring, mount},
    topology::Place,
};

pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("namespace `{name}`: {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("namespace `{0}` already exists")]
    Exists(String),
    #[error("namespace `{0}` does not exist")]
    Missing(String),
    #[error("the thread working in namespace `{0}` panicked")]
    ThreadPanicked(String),
}

fn io_err(name: &str, op: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    let name = name.to_owned();
    move |source| NetnsError::Io { name, op, source }
}

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of every namespace mounted under `/run/netns` (what `ip netns list` shows).
pub fn list() -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Opens the namespace of a place, for `setns` or `IFLA_NET_NS_FD`.
pub fn open(place: &Place) -> Result<OwnedFd, NetnsError> {
    match place {
        Place::Host => File::open("/proc/self/ns/net")
            .map(OwnedFd::from)
            .map_err(io_err("host", "open /proc/self/ns/net")),
        Place::Netns(name) => {
            File::open(path(name))
                .map(OwnedFd::from)
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound => NetnsError::Missing(name.clone()),
                    _ => io_err(name, "open")(source),
                })
        }
        Place::Path(path) => {
            let name = path.display().to_string();
            File::open(path)
                .map(OwnedFd::from)
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound => NetnsError::Missing(name),
                    _ => io_err(&name, "open")(source),
                })
        }
    }
}

/// Creates `/run/netns/NAME` holding a fresh network namespace (`ip netns add`).
pub fn create(name: &str) -> Result<(), NetnsError> {
    ensure_run_dir().map_err(io_err(name, "prepare /run/netns"))?;
    let target = path(name);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o0)
        .open(&target)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(name.to_owned()));
        }
        Err(e) => return Err(io_err(name, "create mount point")(e)),
    }
    let mounted = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: plain syscall; only this short-lived thread changes namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            bind_mount(Path::new("/proc/thread-self/ns/net"), &target)
        })
        .join()
    });
    let result = match mounted {
        Ok(result) => result.map_err(io_err(name, "mount")),
        Err(_) => Err(NetnsError::ThreadPanicked(name.to_owned())),
    };
    if result.is_err() {
        let _ = fs::remove_file(&target);
    }
    result
}

/// Removes `/run/netns/NAME` (`ip netns del`). The namespace itself goes away
/// with its last user; its veth ends go with it, taking their peers along.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    let target = path(name);
    let c_target = cstring(&target);
    // SAFETY: plain syscall on a NUL-terminated path.
    if unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (a half-made namespace); ENOENT: gone.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(io_err(name, "unmount")(err));
        }
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(name, "remove mount point")(e)),
    }
}

/// Enters the namespace of `place` on the calling thread. Only for threads
/// that netlab owns and that never go back (see [`on_thread`], `exec`).
pub fn enter(place: &Place) -> Result<(), NetnsError> {
    let fd = open(place)?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io_err(&place.to_string(), "setns")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs `work` on a dedicated thread that has entered the namespace of
/// `place`, and returns its result.
pub fn on_thread<T, F>(place: &Place, work: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T, NetnsError> {
            if *place != Place::Host {
                enter(place)?;
            }
            Ok(work())
        })
        .join()
        .map_err(|_| NetnsError::ThreadPanicked(place.to_string()))?
    })
}

/// Makes `/run/netns` a shared mount point as iproute2 does, so the namespace
/// mounts propagate to every mount namespace (and `ip netns` sees them).
fn ensure_run_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let dir = Path::new(NETNS_RUN_DIR);
    let shared = libc::MS_SHARED | libc::MS_REC;
    match mount(c"none", dir, c"none", shared) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(&cstring(dir), dir, c"none", libc::MS_BIND | libc::MS_REC)?;
            mount(c"none", dir, c"none", shared)
        }
        other => other,
    }
}

fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    mount(&cstring(source), target, c"none", libc::MS_BIND)
}
