//! `netlab exec NS -- CMD...`: run a command inside a lab namespace, as
//! `ip netns exec` does (including a private /sys that shows the namespace's
//! own interfaces).

use std::{
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Command, ExitStatus},
};

use anyhow::{Context, Result};

use crate::{netns, topology::Place};

pub fn exec(namespace: &str, argv: &[String]) -> Result<ExitStatus> {
    let Some((program, args)) = argv.split_first() else {
        anyhow::bail!("exec needs a command: netlab exec {namespace} -- CMD [ARGS...]");
    };
    let fd = netns::open(&Place::Netns(namespace.to_owned()))?;
    let raw = fd.as_raw_fd();
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: the closure only makes async-signal-safe syscalls with
    // arguments prepared before fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Best effort, as `ip netns exec`: a private mount namespace whose
            // /sys belongs to the new network namespace.
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                let root = c"/";
                let sys = c"/sys";
                let sysfs = c"sysfs";
                let none = c"none";
                if libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                ) == 0
                    && libc::umount2(sys.as_ptr(), libc::MNT_DETACH) == 0
                {
                    libc::mount(
                        sysfs.as_ptr(),
                        sys.as_ptr(),
                        sysfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
            }
            Ok(())
        });
    }
    let status = command
        .status()
        .with_context(|| format!("running {program} in namespace {namespace}"))?;
    drop(fd);
    Ok(status)
}
