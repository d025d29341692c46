//! netlab's automation: `cargo xtask build-ebpf | build | run | test | bench | fuzz`.
//!
//! Each command installs the tools it needs (see `toolchain`), prints every
//! command it runs, and prints its result path on stdout (progress goes to
//! stderr), so `$(cargo xtask build)` is the netlab binary.

mod bench;
mod build;
mod ebpf;
mod fuzz;
mod process;
mod run;
mod test;
mod toolchain;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{bench::BenchKind, build::Profile};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test netlab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (nightly + bpf-linker, installed if missing); print its path.
    BuildEbpf,
    /// Build the eBPF object, then netlab with it embedded; print netlab's path.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run netlab as root (through `sudo -E` if needed) with ARGS.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for netlab.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// As root: install the test tools, check fmt and clippy, build, and run
    /// every test, privileged ones included.
    Test {
        /// Extra `cargo test` arguments; after a further `--`, test-binary arguments.
        #[arg(last = true)]
        cargo_args: Vec<OsString>,
    },
    /// Benchmarks: `bench` (netlab's datapaths side by side with iptables
    /// NAT), `bench up`, `bench publish`.
    Bench {
        #[arg(default_value = "nat")]
        what: BenchKind,
        #[command(flatten)]
        options: bench::NatOptions,
    },
    /// The differential fuzzer's long run: seeded probes through every
    /// datapath, compared with the iptables reference (as root).
    Fuzz {
        #[command(flatten)]
        options: fuzz::FuzzOptions,
    },
    /// Internal: the part of `bench` that runs inside its sandbox.
    #[command(hide = true)]
    BenchSandboxed { plan: PathBuf },
    /// Internal: the part of `bench trace` that runs inside its sandbox.
    #[command(hide = true)]
    BenchTraceSandboxed { plan: PathBuf },
    /// Internal: the part of `bench cni` that runs inside its sandbox.
    #[command(hide = true)]
    BenchCniSandboxed { plan: PathBuf },
    /// Internal: the part of `bench nodes` that runs inside its sandbox.
    #[command(hide = true)]
    BenchNodesSandboxed { plan: PathBuf },
    /// Internal: the part of `bench services` that runs inside its sandbox.
    #[command(hide = true)]
    BenchServicesSandboxed { plan: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<ExitCode> {
    let workspace = workspace_root()?;
    match command {
        Command::BuildEbpf => {
            let object = ebpf::build(&workspace)?;
            println!("{}", object.display());
        }
        Command::Build { release } => {
            let netlab = build::build(&workspace, Profile::from_release_flag(release))?;
            println!("{}", netlab.display());
        }
        Command::Run { release, args } => {
            return run::run(&workspace, Profile::from_release_flag(release), &args);
        }
        Command::Test { cargo_args } => test::run(&workspace, &cargo_args)?,
        Command::Bench { what, options } => return bench::run(what, &options, &workspace),
        Command::BenchSandboxed { plan } => return bench::run_sandboxed(&plan),
        Command::BenchTraceSandboxed { plan } => return bench::run_trace_sandboxed(&plan),
        Command::BenchCniSandboxed { plan } => return bench::run_cni_sandboxed(&plan),
        Command::BenchNodesSandboxed { plan } => return bench::run_nodes_sandboxed(&plan),
        Command::BenchServicesSandboxed { plan } => return bench::run_services_sandboxed(&plan),
        Command::Fuzz { options } => return fuzz::run(&workspace, &options),
    }
    Ok(ExitCode::SUCCESS)
}

/// The workspace is xtask's parent directory.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}
