//! The host's kernel interfaces that are neither namespaces nor netlink:
//! sysctls, mounts (bpffs, tracefs), clocks, the cgroup2 root, socket
//! options. Thin wrappers, one place per syscall.

pub mod ethtool;
pub mod fault;
pub mod host;
pub mod privileges;
pub mod sysctl;

use std::{
    ffi::{CStr, CString},
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Where bpffs is mounted (see [`crate::pins::Pins`] for netlab's layout in it).
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where tracefs is mounted; tracepoints are found through it.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// `mount(2)` without data: the one place netlab calls it.
pub fn mount(source: &CStr, target: &Path, fstype: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    let target = cstring(target);
    // SAFETY: plain syscall on NUL-terminated strings.
    if unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where the kernel publishes its BTF (`vmlinux`, and one file per module).
pub const KERNEL_BTF_DIR: &str = "/sys/kernel/btf";

/// Gives the calling thread a mount namespace of its own in which
/// [`KERNEL_BTF_DIR`] is an empty directory (a tmpfs over it). Nothing else
/// sees the change: not the process's other threads, not the host; the
/// namespace ends with the thread. Files the thread makes elsewhere (bpffs
/// pins) are the same files for everyone.
pub fn hide_kernel_btf_from_this_thread() -> io::Result<()> {
    // SAFETY: plain syscall; CLONE_FS (which CLONE_NEWNS implies) detaches
    // only this thread's root, cwd and umask from the others'.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Private first, so the tmpfs propagates to no other namespace.
    mount(
        c"none",
        Path::new("/"),
        c"",
        libc::MS_REC | libc::MS_PRIVATE,
    )?;
    mount(
        c"none",
        Path::new(KERNEL_BTF_DIR),
        c"tmpfs",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
}

pub fn cstring(path: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    // Paths netlab builds never hold NUL; an empty string fails the syscall cleanly.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there yet.
pub fn ensure_bpffs() -> Result<()> {
    let dir = cstring(Path::new(BPFFS));
    // SAFETY: statfs fills the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(dir.as_ptr(), &mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    mount(c"bpf", Path::new(BPFFS), c"bpf", 0).context("mounting bpffs on /sys/fs/bpf")?;
    log::info!("mounted bpffs on {BPFFS}");
    Ok(())
}

/// Mounts tracefs on /sys/kernel/tracing when it is not there (a fresh
/// mount namespace, a minimal host).
pub fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    mount(c"tracefs", Path::new(TRACEFS), c"tracefs", 0)
        .with_context(|| format!("mounting tracefs on {TRACEFS}"))?;
    log::info!("mounted tracefs on {TRACEFS}");
    Ok(())
}

/// Where a tracepoint's record keeps `field` on this kernel (from its
/// tracefs `format` file), e.g. `("skb", "kfree_skb", "reason")`.
pub fn tracepoint_field_offset(category: &str, event: &str, field: &str) -> Option<u32> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let format = fs::read_to_string(path).ok()?;
    let needle = format!(" {field};");
    let line = format.lines().find(|l| l.contains(&needle))?;
    let offset = line.split("offset:").nth(1)?.split(';').next()?;
    offset.trim().parse().ok()
}

/// The mount point of the cgroup2 hierarchy (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    // SAFETY: clock_gettime fills the zeroed struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock `bpf_ktime_get_coarse_ns`
/// reads (conntrack's).
pub fn monotonic_coarse_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC_COARSE)).unwrap_or(0)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns: turns the programs' timestamps
/// into wall-clock time.
pub fn realtime_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// The cookie of the network namespace netlab runs in (the lab's host), as
/// `bpf_get_netns_cookie` reports it.
pub fn host_netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a socket")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the namespace cookie");
    }
    Ok(cookie)
}

/// What [`widen_pipe`] asks for: a megabyte is `fs.pipe-max-size`'s
/// default, so an unprivileged reader gets it too.
pub const PIPE_BYTES: libc::c_int = 1 << 20;

/// Grows the pipe behind `fd` to at least [`PIPE_BYTES`] (`F_SETPIPE_SZ`,
/// never shrinking it); the pipe's size, or `None` when `fd` is no pipe.
/// A 64 KiB pipe makes a fast writer block and wake its reader every 64
/// KiB: measured with `netlab trace --json` into a pipe, those wakeups
/// cost more than formatting the events.
pub fn widen_pipe(fd: std::os::fd::BorrowedFd<'_>) -> Option<usize> {
    use std::os::fd::AsRawFd as _;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor; both commands fail (EBADF,
    // EINVAL) on anything that is not a pipe, and touch no memory.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if size >= PIPE_BYTES {
        return usize::try_from(size).ok();
    }
    // SAFETY: as above. Refused (EPERM past the user's pipe quota): the
    // pipe keeps its size.
    let grown = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
    usize::try_from(grown.max(size)).ok()
}
