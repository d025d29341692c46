//! `cargo xtask bench`: benchmarks of netlab's labs.
//!
//! - `bench` (or `bench nat`): netlab's datapaths side by side with iptables
//!   NAT on the default lab — request/response, connection rate, bulk and
//!   UDP rate over each path, and the same with up to 30,000 published
//!   ports (`nat`, run inside the sandbox; `report` and `plot` afterwards).
//! - `bench up`, `bench publish`: the cost of building a lab and of changing
//!   its published ports (`lab`).
//! - `bench trace`, `bench cni`, `bench nodes`, `bench services`: what
//!   tracing costs, the CNI plugin against the reference plugins, pod to
//!   pod across nodes over routes against VXLAN, and ClusterIPs against
//!   kube-proxy's iptables rules.
//!
//! Every benchmark runs inside a private mount + network namespace
//! (`unshare`), so it never touches the host's network, iptables or a user's
//! lab; its loads target only the addresses of the namespaces it made.

mod cni;
mod lab;
mod loadgen;
mod nat;
mod nodes;
mod plot;
mod progcost;
mod report;
mod results;
mod sandbox;
mod services;
mod stats;
mod trace;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

pub use nat::Plan;
use results::{Datapath, Results};

use crate::{
    build::{self, Profile},
    process::{self, Cmd},
    toolchain,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchKind {
    /// netlab's datapaths side by side with iptables NAT (the default).
    Nat,
    /// Time to bring a lab up and down: netlab vs a script of `ip` commands.
    Up,
    /// Time to add and remove one published port with 10,000 present:
    /// netlab's eBPF datapath vs its iptables reference mode.
    Publish,
    /// What `netlab trace` costs the datapath, and its reader's decode rate.
    Trace,
    /// A pod's ADD and DEL with netlab's CNI plugin against the reference
    /// bridge + portmap plugins, at 1, 100 and 1,000 pods.
    Cni,
    /// Pod to pod across two nodes: routes against a VXLAN overlay.
    Nodes,
    /// Connections to a ClusterIP with 1, 1,000 and 10,000 Services, against
    /// kube-proxy-style iptables rules; one endpoint's update time.
    Services,
}

/// Options of `bench nat`.
#[derive(Clone, Debug, Default, Args)]
pub struct NatOptions {
    /// CI smoke: tiny runs (0.2 s), 1 round, 1 and 1,000 ports; a few seconds
    /// per datapath.
    #[arg(long)]
    pub quick: bool,
    /// Use this netlab binary instead of building netlab release.
    #[arg(long)]
    pub netlab: Option<PathBuf>,
    /// Datapaths, comma-separated, in round order (default: all of
    /// iptables-nft, iptables-legacy, bridge, redirect, bridge-xdp,
    /// redirect-xdp, bridge-host-ct, redirect-host-ct, direct).
    #[arg(long, value_delimiter = ',')]
    pub datapaths: Vec<String>,
    /// Timed rounds (default 5; quick 1).
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Seconds per run (default 1; quick 0.2).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Published-port counts of the scaling sweep, comma-separated
    /// (default 1,1000,10000,30000; quick 1,1000).
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<u32>,
    /// `bench up`: namespace counts of the scale rows, comma-separated
    /// (default 1,50,250,1000; 4000 if the machine has the memory and time).
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<u32>,
}

pub fn run(kind: BenchKind, options: &NatOptions, workspace: &Path) -> Result<ExitCode> {
    match kind {
        BenchKind::Nat => {
            let netlab = match &options.netlab {
                Some(path) => path.clone(),
                None => build::build(workspace, Profile::Release)?,
            };
            let results = run_nat(workspace, options, &netlab, Profile::Release)?;
            check_outputs(workspace, &results)?;
            println!("{}", report::markdown(&results));
            Ok(ExitCode::SUCCESS)
        }
        BenchKind::Up => {
            let counts = if options.namespaces.is_empty() {
                lab::SCALE_COUNTS.to_vec()
            } else {
                options.namespaces.clone()
            };
            if counts.iter().any(|&n| n == 0 || n > 10_000) {
                bail!("--namespaces takes counts from 1 to 10,000 (one namespace_group's limit)");
            }
            lab::bench_up(workspace, &counts)
        }
        BenchKind::Publish => lab::bench_publish(workspace),
        BenchKind::Trace => trace::bench_trace(workspace),
        BenchKind::Cni => cni::bench_cni(workspace),
        BenchKind::Nodes => nodes::bench_nodes(workspace),
        BenchKind::Services => services::bench_services(workspace),
    }
}

/// Where `bench` writes.
pub fn output_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("bench")
}

/// The plan of a run from the user's options.
fn plan(options: &NatOptions, netlab: &Path, loadgen: &Path, dir: &Path) -> Result<Plan> {
    let quick = options.quick;
    let datapaths = if options.datapaths.is_empty() {
        Datapath::ALL.to_vec()
    } else {
        options
            .datapaths
            .iter()
            .map(|id| {
                Datapath::parse(id).with_context(|| {
                    let known: Vec<&str> = Datapath::ALL.iter().map(|d| d.id()).collect();
                    format!("unknown datapath `{id}`; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let mut port_counts = if options.ports.is_empty() {
        if quick {
            vec![1, 1000]
        } else {
            vec![1, 1000, 10_000, 30_000]
        }
    } else {
        options.ports.clone()
    };
    port_counts.sort_unstable();
    port_counts.dedup();
    if port_counts.iter().any(|&n| n == 0 || n > 30_000) {
        bail!("--ports takes counts from 1 to 30,000 (the fillers stay below port 32768)");
    }
    let seconds = options.seconds.unwrap_or(if quick { 0.2 } else { 1.0 });
    if !(0.05..=30.0).contains(&seconds) {
        bail!("--seconds must be between 0.05 and 30");
    }
    let mut command = String::from("cargo xtask bench");
    if quick {
        command.push_str(" --quick");
    }
    Ok(Plan {
        quick,
        netlab: netlab.to_owned(),
        loadgen: loadgen.to_owned(),
        results: dir.join("results.json"),
        work_dir: dir.to_owned(),
        repetitions: options
            .repetitions
            .unwrap_or(if quick { 1 } else { 5 })
            .max(1),
        warmup_rounds: if quick { 0 } else { 1 },
        seconds,
        port_counts,
        datapaths,
        edits: if quick { 1 } else { 3 },
        command,
    })
}

/// Builds the load generator (a second binary of this package).
pub(super) fn build_loadgen(workspace: &Path, profile: Profile) -> Result<PathBuf> {
    let mut cmd = Cmd::cargo()
        .args([
            "build",
            "-p",
            "xtask",
            "--bin",
            "netlab-loadgen",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace);
    if let Profile::Release = profile {
        cmd = cmd.arg("--release");
    }
    eprintln!("xtask: building the load generator: {cmd}");
    let messages = cmd.run_capturing_stdout()?;
    build::executable(&messages, "netlab-loadgen")
        .with_context(|| format!("`{cmd}` reported no `netlab-loadgen` executable"))
}

/// Runs the NAT comparison in a sandbox; writes results.json and scaling.svg
/// and returns the results.
pub fn run_nat(
    workspace: &Path,
    options: &NatOptions,
    netlab: &Path,
    profile: Profile,
) -> Result<Results> {
    if !process::is_root()? {
        bail!(
            "bench creates namespaces, iptables rules and eBPF programs in a sandbox: run it as root"
        );
    }
    toolchain::ensure(&[toolchain::BENCH_TOOLS])?;
    let loadgen = build_loadgen(workspace, profile)?;
    let dir = output_dir(workspace);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan = plan(options, netlab, &loadgen, &dir)?;
    let _ = fs::remove_file(&plan.results);
    let plan_file = dir.join("plan.json");
    fs::write(&plan_file, serde_json::to_string_pretty(&plan)?)
        .with_context(|| format!("writing {}", plan_file.display()))?;
    let me = std::env::current_exe().context("locating xtask's own binary")?;
    let sandbox = Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private"])
        .arg(me)
        .arg("bench-sandboxed")
        .arg(&plan_file);
    eprintln!(
        "xtask: bench: {} round(s) of {} datapath(s), {} s per run, ports {:?}: {sandbox}",
        plan.repetitions + plan.warmup_rounds,
        plan.datapaths.len(),
        plan.seconds,
        plan.port_counts
    );
    let outcome = sandbox.run();
    let results = Results::read(&plan.results);
    outcome.context("the benchmark failed (samples so far are in target/bench/results.json)")?;
    let results = results?;
    let svg = dir.join("scaling.svg");
    plot::scaling_svg(&results, &svg)?;
    eprintln!(
        "xtask: bench: every sample in {}, the scaling plot in {}",
        plan.results.display(),
        svg.display()
    );
    Ok(results)
}

/// Inside the sandbox (`xtask bench-sandboxed PLAN`).
pub fn run_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    let text = fs::read_to_string(plan_file)
        .with_context(|| format!("reading {}", plan_file.display()))?;
    let plan: Plan = serde_json::from_str(&text).context("parsing the bench plan")?;
    nat::run_sandboxed(&plan)?;
    Ok(ExitCode::SUCCESS)
}

/// Inside the sandbox of `bench cni` (`xtask bench-cni-sandboxed PLAN`).
pub fn run_cni_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    cni::run_sandboxed(plan_file)
}

/// Inside the sandbox of `bench services` (`xtask bench-services-sandboxed PLAN`).
pub fn run_services_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    services::run_sandboxed(plan_file)
}

/// Inside the sandbox of `bench nodes` (`xtask bench-nodes-sandboxed PLAN`).
pub fn run_nodes_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    nodes::run_sandboxed(plan_file)
}

/// Inside the sandbox of `bench trace` (`xtask bench-trace-sandboxed PLAN`).
pub fn run_trace_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    trace::run_sandboxed(plan_file)
}

/// `cargo xtask test`'s last step: a quick run with the given netlab, then
/// checks that what it wrote is well formed.
pub fn quick_smoke(workspace: &Path, netlab: &Path) -> Result<()> {
    let options = NatOptions {
        quick: true,
        ..NatOptions::default()
    };
    let results = run_nat(workspace, &options, netlab, Profile::Debug)?;
    check_outputs(workspace, &results)?;
    eprintln!("{}", report::markdown(&results));
    Ok(())
}

/// What a run wrote reads back as it was measured: results.json with a
/// sample (or a reason to skip) for every datapath, and a well-formed SVG.
fn check_outputs(workspace: &Path, results: &Results) -> Result<()> {
    let dir = output_dir(workspace);
    let written = Results::read(&dir.join("results.json"))?;
    if written != *results {
        bail!("results.json does not read back as written");
    }
    for &datapath in &written.meta.datapaths {
        let measured = written.samples.iter().any(|s| s.datapath == datapath);
        let skipped = written.skipped.iter().any(|s| s.datapath == datapath);
        if !measured && !skipped {
            bail!(
                "the bench has no sample of {} and did not skip it",
                datapath.label()
            );
        }
    }
    let svg = dir.join("scaling.svg");
    let text = fs::read_to_string(&svg).with_context(|| format!("reading {}", svg.display()))?;
    plot::check_svg(&text).with_context(|| format!("{} is not well formed", svg.display()))?;
    Ok(())
}
