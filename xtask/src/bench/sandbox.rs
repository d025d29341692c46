//! The benchmarks' sandbox: what every sandboxed driver does first (a
//! private `/run` and bpffs, loopback up) and how it runs commands.
//! `unshare --mount --net --propagation private` made the namespaces; the
//! host's `/run`, bpffs and network stay untouched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde::{Serialize, de::DeserializeOwned};

/// Mounts a private `/run` and bpffs, and brings loopback up.
pub fn enter() -> Result<()> {
    sh(&["mount", "-t", "tmpfs", "none", "/run"])?;
    sh(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    sh(&["ip", "link", "set", "lo", "up"])
}

/// The body of a sandboxed driver (`xtask bench-*-sandboxed PLAN`): reads
/// the plan, enters the sandbox, measures, and writes the samples to
/// `samples.json` in the plan's directory, also what was measured before
/// a failure.
pub fn measure_into<P, S>(
    plan_file: &Path,
    dir: impl FnOnce(&P) -> PathBuf,
    measure: impl FnOnce(&P, &mut S) -> Result<()>,
) -> Result<ExitCode>
where
    P: DeserializeOwned,
    S: Default + Serialize,
{
    let text = fs::read_to_string(plan_file)
        .with_context(|| format!("reading {}", plan_file.display()))?;
    let plan: P = serde_json::from_str(&text).context("parsing the bench plan")?;
    enter()?;
    let mut samples = S::default();
    let result = measure(&plan, &mut samples);
    fs::write(
        dir(&plan).join("samples.json"),
        serde_json::to_string_pretty(&samples)?,
    )?;
    result?;
    Ok(ExitCode::SUCCESS)
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

/// Moves this thread (and what it starts from now on) into a new network
/// namespace with its loopback up: the host side of the next lab, so what
/// an earlier lab left there (iptables' tables, with the conntrack they
/// keep active) never taxes a later one.
pub fn fresh_host_namespace() -> Result<()> {
    // SAFETY: unshare has no memory preconditions; it affects this thread
    // (the bench's main thread, which starts every command).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    sh(&["ip", "link", "set", "lo", "up"])
}
