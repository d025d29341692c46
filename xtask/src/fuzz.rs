//! `cargo xtask fuzz`: the differential fuzzer's long run (issue 9).
//!
//! Builds netlab with its eBPF object, then runs the fuzzer
//! (`tests/src/bin/netlab-fuzz.rs`) against every datapath at once, each in
//! its own sandbox; it prints probes tried, differences from the `iptables`
//! reference by class, and broken invariants. The CI-sized run is the
//! `fuzz_ci` test of `tests/tests/conformance.rs`, part of `cargo xtask test`.

use std::{path::Path, process::ExitCode};

use anyhow::{Result, bail};

use crate::{
    build::{self, Profile},
    process::{self, Cmd},
    toolchain,
};

#[derive(Debug, clap::Args)]
pub struct FuzzOptions {
    /// The seed: the same seed sends the same probes.
    #[arg(long, default_value_t = 9)]
    seed: u64,
    /// At most this many probes per datapath.
    #[arg(long, default_value_t = 2000)]
    packets: u64,
    /// At most this many seconds of sending per datapath.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Probes per compared batch.
    #[arg(long, default_value_t = 20)]
    batch: u64,
    /// Check the harness instead: run the iptables reference twice and
    /// compare (any difference is noise, not a datapath bug).
    #[arg(long)]
    self_check: bool,
}

pub fn run(workspace: &Path, options: &FuzzOptions) -> Result<ExitCode> {
    if !process::is_root()? {
        bail!(
            "`cargo xtask fuzz` creates namespaces and loads eBPF programs: run it as root, \
             e.g.\n  sudo -E env \"PATH=$PATH\" cargo xtask fuzz"
        );
    }
    toolchain::ensure(&[toolchain::EBPF_TOOLCHAIN, toolchain::TEST_TOOLS])?;
    let netlab = build::build(workspace, Profile::Debug)?;
    let cmd = Cmd::cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "netlab-tests",
            "--bin",
            "netlab-fuzz",
            "--",
        ])
        .args(["--seed", &options.seed.to_string()])
        .args(["--packets", &options.packets.to_string()])
        .args(["--seconds", &options.seconds.to_string()])
        .args(["--batch", &options.batch.to_string()])
        .args(options.self_check.then_some("--self-check"))
        .env("NETLAB_BIN", &netlab)
        .current_dir(workspace);
    eprintln!("xtask: fuzzing: {cmd}");
    Ok(process::exit_code(cmd.status()?))
}
