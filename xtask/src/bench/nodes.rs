//! `cargo xtask bench nodes`: pod to pod across two nodes, with the peers'
//! pod subnets routed over the underlay against reached through a VXLAN
//! overlay (`[pod_network.vxlan]`).
//!
//! Inside a private mount and network namespace (`xtask
//! bench-nodes-sandboxed`), two pairs of nodes run at once, one pair per
//! mode, so their rounds interleave. A node is what `tests/tests/nodes.rs`
//! makes: a network namespace, and a mount namespace held by a process
//! with its own bpffs and `/run/netlab`; its lab is `docs/cni/node.toml`
//! with the node's pod subnet, the `bridge` datapath, and its pair's other
//! node as its peer. Each node has one pod, attached by netlab's CNI
//! plugin; the load runs from node A's pod to node B's with the saturating
//! metrics of `bench`, and the machine's busy CPU time per delivered
//! packet or connection is read over each run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    loadgen::{self, Spawned},
    sandbox,
    stats::{median_min_max, paired_ratios},
};
use crate::{
    build::{self, Profile},
    process::Cmd,
};

/// Timed rounds (after one warm-up round), and seconds per run.
const ROUNDS: usize = 5;
const SECONDS: f64 = 1.0;

/// The saturating metrics (`netlab-loadgen run` names), their labels, the
/// unit a CPU figure is per, and the most a run may count.
const METRICS: [(&str, &str, &str, u64); 2] = [
    (
        "udp",
        "UDP 18-byte packets received (pkt/s)",
        "packet received",
        50_000_000,
    ),
    (
        "crr-par",
        "TCP connect/request/close, 16 in parallel (conn/s)",
        "connection",
        60_000,
    ),
];

/// How one pair of nodes reaches the other's pods.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Routes,
    Vxlan,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Routes, Mode::Vxlan];

    fn label(self) -> &'static str {
        match self {
            Mode::Routes => "routes",
            Mode::Vxlan => "VXLAN",
        }
    }

    /// The pair's nodes, and their pod subnets' third octets (inside
    /// 10.77.0.0/20, which the load generator may target).
    fn nodes(self) -> [(&'static str, u8); 2] {
        match self {
            Mode::Routes => [("rt-a", 1), ("rt-b", 2)],
            Mode::Vxlan => [("vx-a", 3), ("vx-b", 4)],
        }
    }
}

/// The underlay addresses of a pair's nodes A and B.
const UNDERLAY: [&str; 2] = ["198.18.1.1", "198.18.1.2"];

#[derive(Serialize, Deserialize)]
pub struct Plan {
    netlab: PathBuf,
    loadgen: PathBuf,
    dir: PathBuf,
}

/// Per (mode, metric): (round, rate) and (round, busy CPU ns per unit).
#[derive(Default, Serialize, Deserialize)]
struct Samples {
    rate: BTreeMap<String, Vec<(usize, f64)>>,
    cpu_ns: BTreeMap<String, Vec<(usize, f64)>>,
}

fn key(mode: Mode, metric: &str) -> String {
    format!("{}/{metric}", mode.label())
}

pub fn bench_nodes(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench nodes creates namespaces and loads eBPF programs: run it as root");
    }
    crate::toolchain::ensure(&[crate::toolchain::BENCH_TOOLS, crate::toolchain::TEST_TOOLS])?;
    let netlab = build::build(workspace, Profile::Release)?;
    let loadgen = super::build_loadgen(workspace, Profile::Release)?;
    let dir = super::output_dir(workspace).join("nodes");
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
        "xtask: bench nodes: pod to pod across two nodes, routes against VXLAN, {ROUNDS} rounds"
    );
    let me = std::env::current_exe().context("locating xtask's own binary")?;
    Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private"])
        .arg(me)
        .arg("bench-nodes-sandboxed")
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

/// One node: its network namespace, and the process holding its mount
/// namespace (killed, by its pid, when dropped).
struct Node {
    name: &'static str,
    third: u8,
    _holder: Spawned,
    pid: u32,
}

impl Node {
    /// The node's namespaces. Its pod's network namespace is made first,
    /// in the sandbox, so both the node (whose plugin attaches it) and the
    /// load generator (run from the sandbox) see it.
    fn new(name: &'static str, third: u8) -> Result<Node> {
        sandbox::sh(&["ip", "netns", "add", name])?;
        sandbox::sh(&["ip", "netns", "add", &format!("pod-{name}")])?;
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t bpf bpf /sys/fs/bpf && mkdir -p /run/netlab && \
                 mount -t tmpfs node /run/netlab && echo ready && exec sleep 3600",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a node's mount namespace")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let pid = child.id();
        let holder = Spawned(child);
        if line.trim() != "ready" {
            bail!("node {name}: its mount namespace did not come up");
        }
        Ok(Node {
            name,
            third,
            _holder: holder,
            pid,
        })
    }

    /// `argv` inside the node: its mount namespace, then its network
    /// namespace.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-m"])
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .args(argv);
        cmd
    }

    fn pods(&self) -> String {
        format!("10.77.{}.0/24", self.third)
    }

    fn pod_ns(&self) -> String {
        format!("pod-{}", self.name)
    }

    /// The node's lab: `docs/cni/node.toml` with its names and pod subnet,
    /// `peer` (at `via`) as its one peer, through `nl-vx` for VXLAN.
    fn topology(&self, peer: &Node, via: &str, mode: Mode) -> String {
        let third = self.third.to_string();
        let mut text = include_str!("../../../docs/cni/node.toml")
            .replace("name = \"node\"", &format!("name = \"{}\"", self.name))
            .replace("\"outside\"", &format!("\"out-{}\"", self.name))
            .replace("10.77.0.", &format!("10.77.{third}."))
            + &format!(
                "\n[[pod_network.peer]]\nsubnet = \"{}\"\nvia = \"{via}\"\n",
                peer.pods()
            );
        if mode == Mode::Vxlan {
            text += "\n[pod_network.vxlan]\nname = \"nl-vx\"\nvni = 42\n";
        }
        text
    }

    /// Brings up the node's lab from `file`, then attaches its pod with
    /// the plugin; the pod's address.
    fn up(&self, netlab: &Path, file: &Path) -> Result<Ipv4Addr> {
        let netlab = netlab.to_string_lossy();
        let file = file.to_string_lossy();
        sandbox::output(&mut self.command(&[&netlab, "up", "-f", &file]))?;
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "pods",
            "type": "netlab", "lab": self.name})
        .to_string();
        let mut child = self
            .command(&[&netlab])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", self.pod_ns())
            .env("CNI_NETNS", format!("/run/netns/{}", self.pod_ns()))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "node {}: ADD failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let cidr = result["ips"][0]["address"]
            .as_str()
            .context("no address in the ADD result")?;
        Ok(cidr.split('/').next().unwrap_or(cidr).parse()?)
    }
}

/// A pair of nodes, A and B, joined by a veth `ul` in 198.18.1.0/24; B's
/// pod's address.
fn pair(plan: &Plan, mode: Mode) -> Result<([Node; 2], Ipv4Addr)> {
    let [(a, a3), (b, b3)] = mode.nodes();
    let nodes = [Node::new(a, a3)?, Node::new(b, b3)?];
    sandbox::sh(&[
        "ip", "link", "add", "ul", "netns", a, "type", "veth", "peer", "name", "ul", "netns", b,
    ])?;
    for (node, addr) in nodes.iter().zip(UNDERLAY) {
        let cidr = format!("{addr}/24");
        for args in [
            &["addr", "add", &cidr, "dev", "ul"][..],
            &["link", "set", "ul", "up"],
            &["link", "set", "lo", "up"],
        ] {
            sandbox::sh(&[&["ip", "-n", node.name][..], args].concat())?;
        }
    }
    let mut addrs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let peer = &nodes[1 - i];
        let file = plan.dir.join(format!("{}.toml", node.name));
        fs::write(&file, node.topology(peer, UNDERLAY[1 - i], mode))?;
        addrs.push(node.up(&plan.netlab, &file)?);
    }
    Ok((nodes, addrs[1]))
}

fn measure(plan: &Plan, samples: &mut Samples) -> Result<()> {
    let lifetime = 600;
    let mut pairs = Vec::new();
    let mut servers = Vec::new();
    for mode in Mode::ALL {
        let (nodes, server) = pair(plan, mode)?;
        servers.push(loadgen::serve(&plan.loadgen, &nodes[1].pod_ns(), lifetime)?);
        loadgen::client_sysctls(&nodes[0].pod_ns())?;
        pairs.push((mode, nodes, format!("{server}:{}", loadgen::SERVER_PORT)));
    }
    // Each path is checked first: the server sees the client pod's own
    // address (no masquerade between nodes).
    for (mode, nodes, target) in &pairs {
        let client = nodes[0].pod_ns();
        loadgen::wait_for_server(&plan.loadgen, &client, target)?;
        let expected = format!("10.77.{}.", nodes[0].third);
        for udp in [false, true] {
            let seen = loadgen::whoami(&plan.loadgen, &client, target, udp)?;
            if !seen.starts_with(&expected) {
                bail!(
                    "{}: the server saw {seen}, not the pod's {expected}*",
                    mode.label()
                );
            }
        }
    }
    for round in 0..=ROUNDS {
        for (mode, nodes, target) in &pairs {
            for (metric, _, _, max_count) in METRICS {
                let outcome = loadgen::run(
                    &plan.loadgen,
                    &nodes[0].pod_ns(),
                    metric,
                    target,
                    SECONDS,
                    max_count,
                )
                .with_context(|| format!("{} {metric}", mode.label()))?;
                let cpu_ns = outcome.cpu_busy_seconds * 1e9 / outcome.count.max(1) as f64;
                eprintln!(
                    "bench nodes: round {round}: {} {metric}: {:.0}/s, {cpu_ns:.0} ns CPU each",
                    mode.label(),
                    outcome.rate
                );
                // Round 0 warms up.
                if round > 0 {
                    let k = key(*mode, metric);
                    samples
                        .rate
                        .entry(k.clone())
                        .or_default()
                        .push((round, outcome.rate));
                    samples.cpu_ns.entry(k).or_default().push((round, cpu_ns));
                }
            }
        }
    }
    drop(servers);
    // The sandbox's namespaces go when it ends; the nodes' holders when
    // dropped here.
    for (_, nodes, _) in &pairs {
        for node in nodes {
            let _ = sandbox::output(&mut node.command(&[&plan.netlab.to_string_lossy(), "down"]));
        }
    }
    Ok(())
}

fn report(samples: &Samples) -> String {
    let mut table = String::from(
        "| metric | routes (median, min–max) | VXLAN (median, min–max) | VXLAN / routes, paired by round (median, min–max) |\n|---|---|---|---|\n",
    );
    let series = |map: &BTreeMap<String, Vec<(usize, f64)>>, mode: Mode, metric: &str| {
        map.get(&key(mode, metric)).cloned().unwrap_or_default()
    };
    let values = |v: &[(usize, f64)]| median_min_max(v.iter().map(|s| s.1).collect());
    for (metric, label, unit, _) in METRICS {
        for (map, what) in [
            (&samples.rate, label.to_owned()),
            (
                &samples.cpu_ns,
                format!("busy CPU per {unit} (ns), `{metric}`"),
            ),
        ] {
            let routes = series(map, Mode::Routes, metric);
            let vxlan = series(map, Mode::Vxlan, metric);
            let (r, rlo, rhi) = values(&routes);
            let (v, vlo, vhi) = values(&vxlan);
            let (q, qlo, qhi) = median_min_max(paired_ratios(&vxlan, &routes));
            let _ = writeln!(
                table,
                "| {what} | {r:.0} ({rlo:.0}–{rhi:.0}) | {v:.0} ({vlo:.0}–{vhi:.0}) | {q:.2}× ({qlo:.2}–{qhi:.2}) |"
            );
        }
    }
    let _ = writeln!(
        table,
        "\nPod on node A to pod on node B, both nodes `bridge`, one pod each, attached by \
         netlab's CNI plugin. {ROUNDS} interleaved rounds after a warm-up, {SECONDS} s per run, \
         client pinned to CPU 0 and server to CPU 1. Busy CPU is the whole machine's \
         (/proc/stat) over the run, divided by what was received: both nodes, the underlay and \
         the encapsulation included."
    );
    table
}
