//! `cargo xtask bench services`: connections per second to a ClusterIP
//! with 1, 1,000 and 10,000 Services present, netlab's eBPF datapaths
//! against the kube-proxy-style iptables rules of its `iptables` datapath
//! (one rule per Service in the Services chain, which every new flow
//! walks), and the time to change one Service's endpoints with 10,000
//! present.
//!
//! Inside a private mount and network namespace (`xtask
//! bench-services-sandboxed`): the default lab plus a client namespace
//! `green` on the bridge, a service range of 10.96.0.0/18, and N Services
//! over red:80 and blue:80, where the load generator serves. The client
//! targets the Service in the middle of the list (kube-proxy's chain is
//! walked in order: the middle is its average). Each lab gets a fresh host
//! namespace; rounds interleave the datapaths.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    loadgen, sandbox,
    stats::{median_min_max, paired_ratios},
};
use crate::{
    build::{self, Profile},
    process::Cmd,
};

/// Service counts the figures are taken at.
const COUNTS: [u32; 3] = [1, 1000, 10_000];
/// Timed rounds after one warm-up round, and seconds per run.
const ROUNDS: usize = 5;
const SECONDS: f64 = 1.0;
/// The datapaths, the reference last.
const DATAPATHS: [&str; 3] = ["bridge", "redirect", "iptables"];
const REFERENCE: &str = "iptables";
/// The saturating metrics (`netlab-loadgen run` names), their labels and
/// the most a run may count.
const METRICS: [(&str, &str, u64); 1] = [(
    "crr-par",
    "TCP connect/request/close, 16 in parallel (conn/s)",
    60_000,
)];

#[derive(Serialize, Deserialize)]
pub struct Plan {
    netlab: PathBuf,
    loadgen: PathBuf,
    dir: PathBuf,
}

/// Rates by (datapath, count, metric) and endpoint-update times (µs) by
/// datapath, as (round, value).
#[derive(Default, Serialize, Deserialize)]
struct Samples {
    rate: BTreeMap<String, Vec<(usize, f64)>>,
    update_us: BTreeMap<String, Vec<(usize, f64)>>,
}

fn key(datapath: &str, count: u32, metric: &str) -> String {
    format!("{datapath}/{count}/{metric}")
}

pub fn bench_services(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench services creates namespaces and iptables rules: run it as root");
    }
    crate::toolchain::ensure(&[crate::toolchain::BENCH_TOOLS, crate::toolchain::TEST_TOOLS])?;
    let netlab = build::build(workspace, Profile::Release)?;
    let loadgen = super::build_loadgen(workspace, Profile::Release)?;
    let dir = super::output_dir(workspace).join("services");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan = Plan {
        netlab,
        loadgen,
        dir: dir.clone(),
    };
    let plan_file = dir.join("plan.json");
    fs::write(&plan_file, serde_json::to_string_pretty(&plan)?)?;
    let samples_file = dir.join("samples.json");
    let _ = fs::remove_file(&samples_file);
    eprintln!(
        "xtask: bench services: a ClusterIP with {COUNTS:?} Services, {DATAPATHS:?}, {ROUNDS} rounds"
    );
    let me = std::env::current_exe().context("locating xtask's own binary")?;
    Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private"])
        .arg(me)
        .arg("bench-services-sandboxed")
        .arg(&plan_file)
        .run()
        .context("running the benchmark in a private namespace")?;
    let samples: Samples = serde_json::from_str(
        &fs::read_to_string(&samples_file)
            .with_context(|| format!("reading {}", samples_file.display()))?,
    )?;
    let table = report(&samples);
    println!("{table}");
    fs::write(dir.join("report.md"), &table)?;
    Ok(ExitCode::SUCCESS)
}

/// Inside the sandbox: measures, and writes samples.json (also after a
/// failure, with what was measured).
pub fn run_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    sandbox::measure_into(plan_file, |plan: &Plan| plan.dir.clone(), measure)
}

/// Service `i`'s ClusterIP: 10.96.0.1 onwards.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)
}

/// The Service the client targets: the middle one.
fn measured(count: u32) -> u32 {
    count / 2
}

/// The default lab, a client `green` on its bridge, and `count` Services
/// over red and blue.
fn topology(count: u32) -> String {
    let mut text = include_str!("../../../netlab/src/topology/default.toml").to_owned();
    // `[nat]` is the file's last table: the range goes in it.
    text += "service_range = \"10.96.0.0/18\"\n";
    text += "\n[[namespace]]\nname = \"green\"\n\n[[veth]]\nname = \"veth-green\"\nnetns = \"green\"\n\
             addresses = [\"192.168.15.3/24\"]\npeer = { name = \"veth-green-br\", bridge = \"v-net-0\" }\n\n\
             [[route]]\nnetns = \"green\"\nto = \"default\"\nvia = \"192.168.15.5\"\n";
    for i in 0..count {
        let _ = write!(
            text,
            "\n[[service]]\nname = \"svc-{i}\"\naddress = \"{}\"\nport = 80\nbackends = [\"red:80\", \"blue:80\"]\n",
            vip(i)
        );
    }
    text
}

/// The netlab command `args` with its stdout.
fn netlab(plan: &Plan, args: &[&str]) -> Result<String> {
    sandbox::output(Command::new(&plan.netlab).args(args))
}

fn measure(plan: &Plan, samples: &mut Samples) -> Result<()> {
    for count in COUNTS {
        let file = plan.dir.join(format!("services-{count}.toml"));
        fs::write(&file, topology(count))?;
        let file = file.to_string_lossy().into_owned();
        let target = format!("{}:{}", vip(measured(count)), loadgen::SERVER_PORT);
        for round in 0..=ROUNDS {
            for datapath in DATAPATHS {
                sandbox::fresh_host_namespace()?;
                netlab(plan, &["up", "-f", &file, "--datapath", datapath])
                    .with_context(|| format!("{datapath} with {count} Services: up"))?;
                let result = (|| -> Result<()> {
                    loadgen::client_sysctls("green")?;
                    let _servers = [
                        loadgen::serve(&plan.loadgen, "red", 120)?,
                        loadgen::serve(&plan.loadgen, "blue", 120)?,
                    ];
                    loadgen::wait_for_server(&plan.loadgen, "green", "192.168.15.1:80")?;
                    loadgen::wait_for_server(&plan.loadgen, "green", "192.168.15.2:80")?;
                    // The ClusterIP answers, with the client's own address.
                    let seen = loadgen::whoami(&plan.loadgen, "green", &target, false)?;
                    if !seen.starts_with("192.168.15.3") {
                        bail!("{datapath}: the backend saw {seen}, not green's address");
                    }
                    for (metric, _, max_count) in METRICS {
                        let outcome = loadgen::run(
                            &plan.loadgen,
                            "green",
                            metric,
                            &target,
                            SECONDS,
                            max_count,
                        )?;
                        eprintln!(
                            "bench services: {count} Services, round {round}: {datapath} {metric}: {:.0}",
                            outcome.rate
                        );
                        if round > 0 {
                            samples
                                .rate
                                .entry(key(datapath, count, metric))
                                .or_default()
                                .push((round, outcome.rate));
                        }
                    }
                    if count == *COUNTS.last().unwrap_or(&0) {
                        // One endpoint leaves the measured Service.
                        let name = format!("svc-{}", measured(count));
                        let address = format!("{}:80", vip(measured(count)));
                        let out = netlab(
                            plan,
                            &["service", "add", &name, &address, "blue:80", "--json"],
                        )?;
                        let outcome: serde_json::Value = serde_json::from_str(out.trim())?;
                        let us = outcome["datapath_update_us"]
                            .as_f64()
                            .context("no datapath_update_us")?;
                        eprintln!("bench services: {datapath}: one endpoint removed in {us:.0} µs");
                        if round > 0 {
                            samples
                                .update_us
                                .entry(datapath.to_owned())
                                .or_default()
                                .push((round, us));
                        }
                    }
                    Ok(())
                })();
                let down = netlab(plan, &["down"]);
                result.with_context(|| format!("{datapath} with {count} Services"))?;
                down?;
            }
        }
    }
    Ok(())
}

fn report(samples: &Samples) -> String {
    let mut table = String::from(
        "| Services | metric | datapath | rate (median, min–max) | / iptables (kube-proxy rules), paired by round (median, min–max) |\n|---|---|---|---|---|\n",
    );
    let rates = |v: &[(usize, f64)]| median_min_max(v.iter().map(|s| s.1).collect());
    for count in COUNTS {
        for (metric, label, _) in METRICS {
            let reference = samples
                .rate
                .get(&key(REFERENCE, count, metric))
                .cloned()
                .unwrap_or_default();
            for datapath in DATAPATHS {
                let series = samples
                    .rate
                    .get(&key(datapath, count, metric))
                    .cloned()
                    .unwrap_or_default();
                let (m, lo, hi) = rates(&series);
                let ratio = if datapath == REFERENCE {
                    "—".to_owned()
                } else {
                    let (q, qlo, qhi) = median_min_max(paired_ratios(&series, &reference));
                    format!("{q:.2}× ({qlo:.2}–{qhi:.2})")
                };
                let _ = writeln!(
                    table,
                    "| {count} | {label} | {datapath} | {m:.0} ({lo:.0}–{hi:.0}) | {ratio} |"
                );
            }
        }
    }
    let _ = writeln!(
        table,
        "\n| datapath | one endpoint removed, {} Services present (µs, median, min–max) |\n|---|---|",
        COUNTS.last().unwrap_or(&0)
    );
    for datapath in DATAPATHS {
        let (m, lo, hi) = rates(&samples.update_us.get(datapath).cloned().unwrap_or_default());
        let _ = writeln!(table, "| {datapath} | {m:.0} ({lo:.0}–{hi:.0}) |");
    }
    let _ = writeln!(
        table,
        "\nEach count has that many Services, each over red:80 and blue:80; the client (`green`, on the bridge) targets the middle one. {ROUNDS} \
         rounds after a warm-up, the datapaths interleaved, each lab in a fresh host \
         namespace, {SECONDS} s per run, client pinned to CPU 0 and servers to CPU 1. The \
         update time is the datapath's (`service add --json`'s `datapath_update_us`): map \
         writes for eBPF, an `iptables-restore` of the lab's chains for the reference."
    );
    table
}
