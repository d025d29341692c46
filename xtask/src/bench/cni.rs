//! `cargo xtask bench cni`: what a pod's ADD and DEL cost with netlab's
//! CNI plugin against what container users run today, Debian's reference
//! plugins chained as a runtime chains them (`bridge` with `host-local`
//! IPAM and masquerade, then `portmap`, whose DNAT is iptables rules), at
//! 1, 100 and 1,000 pods present. Each pod has one port mapping, so
//! `portmap`'s rules grow with the pods as Docker's do.
//!
//! Inside a private mount and network namespace (`xtask
//! bench-cni-sandboxed`): the node is netlab's `docs/cni/node.toml` widened
//! to a /20, the plugins run as a runtime runs them (environment and
//! stdin), and each figure is the median of timed ADD + DEL pairs of one
//! more pod at that count, the two plugin sets interleaved.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{sandbox, stats::median_min_max};
use crate::{
    build::{self, Profile},
    process::Cmd,
};

/// Pod counts the figures are taken at.
const COUNTS: [usize; 3] = [1, 100, 1000];
/// Timed ADD + DEL pairs per count and plugin set.
const PAIRS: usize = 7;
/// The reference plugins (Debian's containernetworking-plugins).
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// Prefixes of the pods' namespaces and container ids, per plugin set.
const NETLAB_NS: &str = "bn";
const REFERENCE_NS: &str = "br";

#[derive(Serialize, Deserialize)]
pub struct Plan {
    netlab: PathBuf,
    dir: PathBuf,
}

/// ADD and DEL times (ms) by (plugin set, pod count).
#[derive(Default, Serialize, Deserialize)]
struct Samples {
    add_ms: BTreeMap<String, Vec<f64>>,
    del_ms: BTreeMap<String, Vec<f64>>,
}

fn key(set: &str, count: usize) -> String {
    format!("{set}/{count}")
}

pub fn bench_cni(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench cni creates namespaces and iptables rules: run it as root");
    }
    crate::toolchain::ensure(&[crate::toolchain::BENCH_TOOLS, crate::toolchain::TEST_TOOLS])?;
    let netlab = build::build(workspace, Profile::Release)?;
    let dir = super::output_dir(workspace).join("cni");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan = Plan {
        netlab,
        dir: dir.clone(),
    };
    let plan_file = dir.join("plan.json");
    fs::write(&plan_file, serde_json::to_string_pretty(&plan)?)?;
    let samples_file = dir.join("samples.json");
    let _ = fs::remove_file(&samples_file);
    eprintln!(
        "xtask: bench cni: ADD + DEL of one pod at {COUNTS:?} pods, netlab against bridge + \
         host-local + portmap, {PAIRS} pairs each"
    );
    let me = std::env::current_exe().context("locating xtask's own binary")?;
    Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private"])
        .arg(me)
        .arg("bench-cni-sandboxed")
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
    let plan: Plan = serde_json::from_str(&fs::read_to_string(plan_file)?)?;
    sandbox::enter()?;
    let mut samples = Samples::default();
    let result = measure(&plan, &mut samples);
    fs::write(
        plan.dir.join("samples.json"),
        serde_json::to_string_pretty(&samples)?,
    )?;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The node, widened to 10.77.0.0/20 for a thousand pods and more.
fn node_topology() -> String {
    include_str!("../../../docs/cni/node.toml")
        .replace("10.77.0.1/24", "10.77.0.1/20")
        .replace("10.77.0.0/24", "10.77.0.0/20")
        .replace("10.77.0.10-10.77.0.250", "10.77.0.10-10.77.15.250")
}

/// One plugin set, as a runtime runs it.
trait Plugins {
    fn name(&self) -> &'static str;
    fn add(&self, pod: usize) -> Result<()>;
    fn del(&self, pod: usize) -> Result<()>;
}

/// Runs a plugin binary with the CNI environment and `config` on stdin.
/// Each set's pods live in namespaces of their own (`ns` is the set's
/// prefix), so the two sets never meet.
fn plugin(binary: &Path, command: &str, ns: &str, pod: usize, config: &str) -> Result<String> {
    let mut child = Command::new(binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("{ns}{pod}"))
        .env("CNI_NETNS", format!("/run/netns/{ns}{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} {command} for pod {pod} failed: {}{}",
            binary.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod's port mapping: host port 20000 + its number.
fn mapping(pod: usize) -> serde_json::Value {
    serde_json::json!({"portMappings": [
        {"hostPort": 20000 + pod, "containerPort": 80, "protocol": "tcp"}]})
}

struct Netlab(PathBuf);

impl Plugins for Netlab {
    fn name(&self) -> &'static str {
        "netlab"
    }
    fn add(&self, pod: usize) -> Result<()> {
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "netlab", "type": "netlab",
            "lab": "node", "runtimeConfig": mapping(pod)});
        plugin(&self.0, "ADD", NETLAB_NS, pod, &conf.to_string()).map(|_| ())
    }
    fn del(&self, pod: usize) -> Result<()> {
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "netlab", "type": "netlab",
            "lab": "node", "runtimeConfig": mapping(pod)});
        plugin(&self.0, "DEL", NETLAB_NS, pod, &conf.to_string()).map(|_| ())
    }
}

/// `bridge` (with `host-local`, masquerade) then `portmap`, as a conflist
/// of the two runs them: each plugin gets the previous one's result.
struct Reference;

impl Reference {
    fn bridge() -> serde_json::Value {
        serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
            "bridge": "cni-ref0", "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/20"}]],
                     "dataDir": "/run/cni-ref"}})
    }
    fn portmap(pod: usize, prev: Option<serde_json::Value>) -> serde_json::Value {
        let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "type": "portmap",
            "capabilities": {"portMappings": true}, "snat": true,
            "runtimeConfig": mapping(pod)});
        if let Some(prev) = prev {
            conf["prevResult"] = prev;
        }
        conf
    }
}

impl Plugins for Reference {
    fn name(&self) -> &'static str {
        "bridge + portmap"
    }
    fn add(&self, pod: usize) -> Result<()> {
        let dir = Path::new(REFERENCE_DIR);
        let result = plugin(
            &dir.join("bridge"),
            "ADD",
            REFERENCE_NS,
            pod,
            &Self::bridge().to_string(),
        )?;
        let prev: serde_json::Value = serde_json::from_str(&result)?;
        plugin(
            &dir.join("portmap"),
            "ADD",
            REFERENCE_NS,
            pod,
            &Self::portmap(pod, Some(prev)).to_string(),
        )
        .map(|_| ())
    }
    fn del(&self, pod: usize) -> Result<()> {
        let dir = Path::new(REFERENCE_DIR);
        plugin(
            &dir.join("portmap"),
            "DEL",
            REFERENCE_NS,
            pod,
            &Self::portmap(pod, None).to_string(),
        )?;
        plugin(
            &dir.join("bridge"),
            "DEL",
            REFERENCE_NS,
            pod,
            &Self::bridge().to_string(),
        )
        .map(|_| ())
    }
}

fn measure(plan: &Plan, samples: &mut Samples) -> Result<()> {
    let topology = plan.dir.join("node.toml");
    fs::write(&topology, node_topology())?;
    sandbox::output(Command::new(&plan.netlab).args(["up", "-f"]).arg(&topology))?;
    let sets: [Box<dyn Plugins>; 2] = [Box::new(Netlab(plan.netlab.clone())), Box::new(Reference)];
    let largest = COUNTS.iter().copied().max().unwrap_or(1);
    // Namespaces for every pod, the timed ones included.
    for pod in 0..largest + PAIRS {
        for ns in [NETLAB_NS, REFERENCE_NS] {
            sandbox::sh(&["ip", "netns", "add", &format!("{ns}{pod}")])?;
        }
    }
    // `present` pods of each set exist; the timed ones come after them.
    let mut present = 0;
    for count in COUNTS {
        for set in &sets {
            for pod in present..count {
                set.add(pod)?;
            }
        }
        present = count;
        for pair in 0..PAIRS {
            for set in &sets {
                let pod = largest + pair;
                let start = Instant::now();
                set.add(pod)?;
                let added = start.elapsed();
                let start = Instant::now();
                set.del(pod)?;
                let deleted = start.elapsed();
                samples
                    .add_ms
                    .entry(key(set.name(), count))
                    .or_default()
                    .push(added.as_secs_f64() * 1e3);
                samples
                    .del_ms
                    .entry(key(set.name(), count))
                    .or_default()
                    .push(deleted.as_secs_f64() * 1e3);
            }
        }
    }
    Ok(())
}

fn report(samples: &Samples) -> String {
    let mut table = String::from(
        "| pods present | operation | netlab (median, min–max) | bridge + portmap (median, min–max) | ratio |\n|---|---|---|---|---|\n",
    );
    for count in COUNTS {
        for (op, map) in [("ADD", &samples.add_ms), ("DEL", &samples.del_ms)] {
            let of =
                |set: &str| median_min_max(map.get(&key(set, count)).cloned().unwrap_or_default());
            let (n, nlo, nhi) = of("netlab");
            let (r, rlo, rhi) = of("bridge + portmap");
            let _ = writeln!(
                table,
                "| {count} | {op} | {n:.1} ms ({nlo:.1}–{nhi:.1}) | {r:.1} ms ({rlo:.1}–{rhi:.1}) | {:.2}× |",
                n / r
            );
        }
    }
    let _ = writeln!(
        table,
        "\nEach pod has one port mapping; a figure is the time of one plugin process (netlab) or \
         of the chain's two (bridge, then portmap), as a runtime runs them, for one more pod at \
         that count, median of {PAIRS}."
    );
    table
}
