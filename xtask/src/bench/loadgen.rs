//! Driving `netlab-loadgen` inside the sandbox's namespaces: its server, a
//! client run, and the address a server sees. Shared by `bench` and
//! `bench cni`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use super::sandbox::{output, sh};

pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;
pub const SERVER_PORT: u16 = 80;

/// What a client run prints (one JSON line).
#[derive(Debug, Deserialize)]
pub struct Outcome {
    pub count: u64,
    pub seconds: f64,
    pub rate: f64,
    pub cpu_busy_seconds: f64,
}

/// A child process we started, killed (by its pid) and reaped when dropped.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server in `ns` on [`SERVER_PORT`] of every IPv4 address, pinned to
/// [`SERVER_CPU`], for at most `lifetime` seconds.
pub fn serve(loadgen: &Path, ns: &str, lifetime: u64) -> Result<Spawned> {
    serve_on(loadgen, ns, "0.0.0.0", lifetime)
}

/// The same on `bind` only (an IPv6 address of `ns`, for the IPv6 paths).
pub fn serve_on(loadgen: &Path, ns: &str, bind: &str, lifetime: u64) -> Result<Spawned> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(loadgen)
        .args(["serve", "--port", &SERVER_PORT.to_string()])
        .args(["--bind", bind])
        .args(["--seconds", &lifetime.to_string()])
        .args(["--cpu", &SERVER_CPU.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Ok(Spawned(cmd.spawn().with_context(|| {
        format!("starting the load generator's server in {ns}")
    })?))
}

/// One client run of `metric` (a `netlab-loadgen run` name) from `ns` to
/// `target`, pinned to [`CLIENT_CPU`].
pub fn run(
    loadgen: &Path,
    ns: &str,
    metric: &str,
    target: &str,
    seconds: f64,
    max_count: u64,
) -> Result<Outcome> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(loadgen)
        .args(["run", metric, "--to", target])
        .args(["--seconds", &seconds.to_string()])
        .args(["--max-count", &max_count.to_string()])
        .args(["--cpu", &CLIENT_CPU.to_string()]);
    let out = output(&mut cmd)?;
    serde_json::from_str(out.trim())
        .with_context(|| format!("parsing the load generator's output `{}`", out.trim()))
}

/// The source address the server at `target` sees for a client in `ns`.
pub fn whoami(loadgen: &Path, ns: &str, target: &str, udp: bool) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(loadgen)
        .args(["whoami", "--to", target]);
    if udp {
        cmd.arg("--udp");
    }
    Ok(output(&mut cmd)
        .with_context(|| format!("whoami from {ns} to {target}"))?
        .trim()
        .to_owned())
}

/// Waits until the server at `target` answers `ns`: tries for 5 s (one
/// try that hangs takes at most the load generator's own 5 s timeout).
pub fn wait_for_server(loadgen: &Path, ns: &str, target: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match whoami(loadgen, ns, target, false) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(
                    err.context(format!("the server at {target} did not answer within 5 s"))
                );
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// TIME_WAIT: the client closes first, so its namespace keeps them; there,
/// reuse them for new outgoing connections and use the widest port range.
pub fn client_sysctls(ns: &str) -> Result<()> {
    for setting in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ] {
        sh(&["ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting])?;
    }
    Ok(())
}
