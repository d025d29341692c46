//! The benchmarks' sandbox: what every sandboxed driver does first (a
//! private `/run` and bpffs, loopback up) and how it runs commands.
//! `unshare --mount --net --propagation private` made the namespaces; the
//! host's `/run`, bpffs and network stay untouched.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Mounts a private `/run` and bpffs, and brings loopback up.
pub fn enter() -> Result<()> {
    sh(&["mount", "-t", "tmpfs", "none", "/run"])?;
    sh(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    sh(&["ip", "link", "set", "lo", "up"])
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv`, its output thrown away.
pub fn sh(argv: &[&str]) -> Result<()> {
    let (program, args) = argv.split_first().context("empty command")?;
    output(Command::new(program).args(args)).map(|_| ())
}
