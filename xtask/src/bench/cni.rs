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
//!
//! Then, at 100 and 1,000 pods, traffic through the pods each set made:
//! the world to a pod's mapped port (netlab's eBPF DNAT on its uplink;
//! portmap's iptables DNAT on the reference's node, a network namespace of
//! its own with its own uplink) and pod to pod on each set's bridge, with the
//! saturating metrics of `bench` (UDP datagrams, parallel connections) in
//! interleaved rounds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
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

/// Pod counts the figures are taken at.
const COUNTS: [usize; 3] = [1, 100, 1000];
/// Timed ADD + DEL pairs per count and plugin set.
const PAIRS: usize = 7;
/// Pod counts traffic is measured at.
const TRAFFIC_AT: [usize; 2] = [100, 1000];
/// Timed traffic rounds (after one warm-up round), and seconds per run.
const ROUNDS: usize = 5;
const SECONDS: f64 = 1.0;
/// The reference's own uplink: the host's end, and the world's namespace
/// and address beyond it.
const REFERENCE_UPLINK: &str = "ref-uplink";
/// The reference's node (see [`reference_node`]).
const REFERENCE_NODE: &str = "ref-node";
const REFERENCE_HOST: &str = "198.19.1.1";
const REFERENCE_WORLD_NS: &str = "ref-outside";
const REFERENCE_WORLD: &str = "198.19.1.2";
/// The reference plugins (Debian's containernetworking-plugins).
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// Prefixes of the pods' namespaces and container ids, per plugin set.
const NETLAB_NS: &str = "bn";
const REFERENCE_NS: &str = "br";

#[derive(Serialize, Deserialize)]
pub struct Plan {
    netlab: PathBuf,
    loadgen: PathBuf,
    dir: PathBuf,
}

/// ADD and DEL times (ms) by (plugin set, pod count); traffic rates by
/// (plugin set, pod count, path, metric), as (round, rate) pairs.
#[derive(Default, Serialize, Deserialize)]
struct Samples {
    add_ms: BTreeMap<String, Vec<f64>>,
    del_ms: BTreeMap<String, Vec<f64>>,
    traffic: BTreeMap<String, Vec<(usize, f64)>>,
}

/// A traffic path through a set's pods.
#[derive(Clone, Copy)]
enum Traffic {
    /// The world to pod 0's mapped port.
    Published,
    /// Pod 1 to pod 0, on the set's bridge.
    PodToPod,
}

/// The saturating metrics (`netlab-loadgen run` names), with their units.
const METRICS: [(&str, &str, u64); 2] = [
    ("udp", "UDP 18-byte packets received (pkt/s)", 50_000_000),
    (
        "crr-par",
        "TCP connect/request/close, 16 in parallel (conn/s)",
        60_000,
    ),
];

impl Traffic {
    const ALL: [Traffic; 2] = [Traffic::Published, Traffic::PodToPod];

    fn label(self) -> &'static str {
        match self {
            Traffic::Published => "world → a pod's mapped port",
            Traffic::PodToPod => "pod → pod",
        }
    }
}

fn traffic_key(set: &str, count: usize, path: Traffic, metric: &str) -> String {
    format!("{set}/{count}/{}/{metric}", path.label())
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
    let loadgen = super::build_loadgen(workspace, Profile::Release)?;
    let dir = super::output_dir(workspace).join("cni");
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
    sandbox::measure_into(plan_file, |plan: &Plan| plan.dir.clone(), measure)
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
    /// The prefix of its pods' namespaces and container ids.
    fn ns(&self) -> &'static str;
    /// Attaches `pod`; its address.
    fn add(&self, pod: usize) -> Result<Ipv4Addr>;
    fn del(&self, pod: usize) -> Result<()>;
    /// Where the world's client runs, and the address and port it sends to
    /// for pod 0's mapping.
    fn world(&self) -> (&'static str, String);
    /// The address a pod's server sees for the world's client.
    fn world_source(&self) -> &'static str;
}

/// Runs a plugin binary with the CNI environment and `config` on stdin.
/// Each set's pods live in namespaces of their own (`ns` is the set's
/// prefix), so the two sets never meet.
fn plugin(
    node: Option<&str>,
    binary: &Path,
    command: &str,
    ns: &str,
    pod: usize,
    config: &str,
) -> Result<String> {
    let mut cmd = match node {
        Some(node) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{node}")).arg(binary);
            cmd
        }
        None => Command::new(binary),
    };
    let mut child = cmd
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

/// The first address of an ADD result (`ips[0].address`, CIDR notation).
fn result_address(result: &str) -> Result<Ipv4Addr> {
    let value: serde_json::Value = serde_json::from_str(result)?;
    let cidr = value["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no address in the result {result}"))?;
    let addr = cidr.split('/').next().unwrap_or(cidr);
    addr.parse()
        .with_context(|| format!("the result's address {cidr}"))
}

/// A pod's port mapping: host port `base` + its number, to port 80.
fn mapping(base: usize, pod: usize) -> serde_json::Value {
    serde_json::json!({"portMappings": [
        {"hostPort": base + pod, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": base + pod, "containerPort": 80, "protocol": "udp"}]})
}

/// Host ports of netlab's pods and of the reference's, apart: portmap's
/// rules match any local address, so the same port would meet both.
const NETLAB_PORTS: usize = 20000;
const REFERENCE_PORTS: usize = 40000;

struct Netlab(PathBuf);

impl Netlab {
    fn conf(pod: usize) -> String {
        serde_json::json!({"cniVersion": "1.0.0", "name": "netlab", "type": "netlab",
            "lab": "node", "runtimeConfig": mapping(NETLAB_PORTS, pod)})
        .to_string()
    }
}

impl Plugins for Netlab {
    fn name(&self) -> &'static str {
        "netlab"
    }
    fn ns(&self) -> &'static str {
        NETLAB_NS
    }
    fn add(&self, pod: usize) -> Result<Ipv4Addr> {
        result_address(&plugin(
            None,
            &self.0,
            "ADD",
            NETLAB_NS,
            pod,
            &Self::conf(pod),
        )?)
    }
    fn del(&self, pod: usize) -> Result<()> {
        plugin(None, &self.0, "DEL", NETLAB_NS, pod, &Self::conf(pod)).map(|_| ())
    }
    fn world(&self) -> (&'static str, String) {
        ("outside", format!("198.18.0.1:{NETLAB_PORTS}"))
    }
    fn world_source(&self) -> &'static str {
        "198.18.0.2"
    }
}

/// `bridge` (with `host-local`, masquerade) then `portmap`, as a conflist
/// of the two runs them: each plugin gets the previous one's result.
struct Reference;

impl Reference {
    fn bridge() -> String {
        serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
            "bridge": "cni-ref0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/20"}]],
                     "dataDir": "/run/cni-ref"}})
        .to_string()
    }
    fn portmap(pod: usize, prev: Option<serde_json::Value>) -> String {
        let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ref", "type": "portmap",
            "capabilities": {"portMappings": true}, "snat": true,
            "runtimeConfig": mapping(REFERENCE_PORTS, pod)});
        if let Some(prev) = prev {
            conf["prevResult"] = prev;
        }
        conf.to_string()
    }
}

impl Plugins for Reference {
    fn name(&self) -> &'static str {
        "bridge + portmap"
    }
    fn ns(&self) -> &'static str {
        REFERENCE_NS
    }
    fn add(&self, pod: usize) -> Result<Ipv4Addr> {
        let dir = Path::new(REFERENCE_DIR);
        let result = plugin(
            Some(REFERENCE_NODE),
            &dir.join("bridge"),
            "ADD",
            REFERENCE_NS,
            pod,
            &Self::bridge(),
        )?;
        let prev: serde_json::Value = serde_json::from_str(&result)?;
        plugin(
            Some(REFERENCE_NODE),
            &dir.join("portmap"),
            "ADD",
            REFERENCE_NS,
            pod,
            &Self::portmap(pod, Some(prev)),
        )?;
        result_address(&result)
    }
    fn del(&self, pod: usize) -> Result<()> {
        let dir = Path::new(REFERENCE_DIR);
        plugin(
            Some(REFERENCE_NODE),
            &dir.join("portmap"),
            "DEL",
            REFERENCE_NS,
            pod,
            &Self::portmap(pod, None),
        )?;
        plugin(
            Some(REFERENCE_NODE),
            &dir.join("bridge"),
            "DEL",
            REFERENCE_NS,
            pod,
            &Self::bridge(),
        )
        .map(|_| ())
    }
    fn world(&self) -> (&'static str, String) {
        (
            REFERENCE_WORLD_NS,
            format!("{REFERENCE_HOST}:{REFERENCE_PORTS}"),
        )
    }
    fn world_source(&self) -> &'static str {
        REFERENCE_WORLD
    }
}

/// The reference's node: a network namespace of its own (as a machine
/// running the reference plugins would be), so neither set's host pays
/// for the other's rules or programs: netfilter's hooks and conntrack,
/// which portmap's rules load, run only on the reference's node, and
/// netlab's programs only on netlab's. Its world is a namespace beyond an
/// uplink of its own.
fn reference_node() -> Result<()> {
    for ns in [REFERENCE_NODE, REFERENCE_WORLD_NS] {
        sandbox::sh(&["ip", "netns", "add", ns])?;
    }
    sandbox::sh(&[
        "ip",
        "link",
        "add",
        REFERENCE_UPLINK,
        "netns",
        REFERENCE_NODE,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        REFERENCE_WORLD_NS,
    ])?;
    let host = format!("{REFERENCE_HOST}/24");
    let world = format!("{REFERENCE_WORLD}/24");
    for (ns, args) in [
        (
            REFERENCE_NODE,
            &["addr", "add", &host, "dev", REFERENCE_UPLINK][..],
        ),
        (REFERENCE_NODE, &["link", "set", REFERENCE_UPLINK, "up"]),
        (REFERENCE_NODE, &["link", "set", "lo", "up"]),
        (REFERENCE_WORLD_NS, &["addr", "add", &world, "dev", "eth0"]),
        (REFERENCE_WORLD_NS, &["link", "set", "eth0", "up"]),
        (REFERENCE_WORLD_NS, &["link", "set", "lo", "up"]),
    ] {
        sandbox::sh(&[&["ip", "-n", ns][..], args].concat())?;
    }
    sandbox::sh(&[
        "ip",
        "netns",
        "exec",
        REFERENCE_NODE,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ])
}

fn measure(plan: &Plan, samples: &mut Samples) -> Result<()> {
    let topology = plan.dir.join("node.toml");
    fs::write(&topology, node_topology())?;
    sandbox::output(Command::new(&plan.netlab).args(["up", "-f"]).arg(&topology))?;
    reference_node()?;
    let sets: [Box<dyn Plugins>; 2] = [Box::new(Netlab(plan.netlab.clone())), Box::new(Reference)];
    let largest = COUNTS.iter().copied().max().unwrap_or(1);
    // Namespaces for every pod, the timed ones included.
    for pod in 0..largest + PAIRS {
        for set in &sets {
            sandbox::sh(&["ip", "netns", "add", &format!("{}{pod}", set.ns())])?;
        }
    }
    // `present` pods of each set exist; the timed ones come after them.
    let mut present = 0;
    let mut addrs: Vec<Vec<Ipv4Addr>> = vec![Vec::new(); sets.len()];
    for count in COUNTS {
        for (set, addrs) in sets.iter().zip(&mut addrs) {
            for pod in present..count {
                addrs.push(set.add(pod)?);
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
        if TRAFFIC_AT.contains(&count) {
            traffic(plan, &sets, &addrs, count, samples)?;
        }
    }
    Ok(())
}

/// Traffic through pods 0 and 1 of each set, `count` pods present: the
/// paths are checked first (the server sees the expected source; netlab's
/// flows hold its pod), then timed in interleaved rounds.
fn traffic(
    plan: &Plan,
    sets: &[Box<dyn Plugins>],
    addrs: &[Vec<Ipv4Addr>],
    count: usize,
    samples: &mut Samples,
) -> Result<()> {
    let lifetime = 600;
    let mut servers = Vec::new();
    for set in sets {
        servers.push(loadgen::serve(
            &plan.loadgen,
            &format!("{}0", set.ns()),
            lifetime,
        )?);
        let client = format!("{}1", set.ns());
        loadgen::client_sysctls(&client)?;
        loadgen::client_sysctls(set.world().0)?;
    }
    let route = |set: &dyn Plugins, addrs: &[Ipv4Addr], traffic: Traffic| -> (String, String) {
        match traffic {
            Traffic::Published => {
                let (ns, target) = set.world();
                (ns.to_owned(), target)
            }
            Traffic::PodToPod => (format!("{}1", set.ns()), format!("{}:80", addrs[0])),
        }
    };
    for (set, addrs) in sets.iter().zip(addrs) {
        for traffic in Traffic::ALL {
            let (ns, target) = route(set.as_ref(), addrs, traffic);
            loadgen::wait_for_server(&plan.loadgen, &ns, &target)?;
            let expected = match traffic {
                Traffic::Published => set.world_source().to_owned(),
                Traffic::PodToPod => addrs[1].to_string(),
            };
            for udp in [false, true] {
                let seen = loadgen::whoami(&plan.loadgen, &ns, &target, udp)?;
                if !seen.starts_with(&expected) {
                    bail!(
                        "{} {}: the server saw {seen}, not {expected}",
                        set.name(),
                        traffic.label()
                    );
                }
            }
        }
    }
    // netlab's own conntrack holds the world's flow to its pod: its eBPF
    // translated it (no iptables rule of netlab's exists to do it).
    let flows = sandbox::output(Command::new(&plan.netlab).args(["conntrack", "--lab", "node"]))?;
    if !flows.contains(&addrs[0][0].to_string()) {
        bail!(
            "netlab's conntrack has no flow to its pod {}:\n{flows}",
            addrs[0][0]
        );
    }
    for round in 0..=ROUNDS {
        for (set, addrs) in sets.iter().zip(addrs) {
            for traffic in Traffic::ALL {
                for (metric, _, max_count) in METRICS {
                    // Both nodes' kernel conntrack (fails harmlessly
                    // where no rule loaded it) and netlab's.
                    let _ = Command::new("conntrack").arg("-F").output();
                    let _ = Command::new("ip")
                        .args(["netns", "exec", REFERENCE_NODE, "conntrack", "-F"])
                        .output();
                    netlab::datapath::flush_flows("node")?;
                    let (ns, target) = route(set.as_ref(), addrs, traffic);
                    let outcome =
                        loadgen::run(&plan.loadgen, &ns, metric, &target, SECONDS, max_count)
                            .with_context(|| {
                                format!("{} {} {metric}", set.name(), traffic.label())
                            })?;
                    eprintln!(
                        "bench cni: {count} pods, round {round}: {} {} {metric}: {:.0}",
                        set.name(),
                        traffic.label(),
                        outcome.rate
                    );
                    // Round 0 warms up.
                    if round > 0 {
                        samples
                            .traffic
                            .entry(traffic_key(set.name(), count, traffic, metric))
                            .or_default()
                            .push((round, outcome.rate));
                    }
                }
            }
        }
    }
    drop(servers);
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
        "\nEach pod has two port mappings (TCP and UDP); a figure is the time of one plugin process (netlab) or \
         of the chain's two (bridge, then portmap), as a runtime runs them, for one more pod at \
         that count, median of {PAIRS}.\n"
    );
    let _ = writeln!(
        table,
        "| pods present | path | metric | netlab (median, min–max) | bridge + portmap (median, min–max) | netlab / reference, paired by round (median, min–max) |\n|---|---|---|---|---|---|"
    );
    for count in TRAFFIC_AT {
        for traffic in Traffic::ALL {
            for (metric, label, _) in METRICS {
                let of = |set: &str| {
                    samples
                        .traffic
                        .get(&traffic_key(set, count, traffic, metric))
                        .cloned()
                        .unwrap_or_default()
                };
                let (netlab, reference) = (of("netlab"), of("bridge + portmap"));
                let rates = |v: &[(usize, f64)]| median_min_max(v.iter().map(|s| s.1).collect());
                let (n, nlo, nhi) = rates(&netlab);
                let (r, rlo, rhi) = rates(&reference);
                let (q, qlo, qhi) = median_min_max(paired_ratios(&netlab, &reference));
                let _ = writeln!(
                    table,
                    "| {count} | {} | {label} | {n:.0} ({nlo:.0}–{nhi:.0}) | {r:.0} ({rlo:.0}–{rhi:.0}) | {q:.2}× ({qlo:.2}–{qhi:.2}) |",
                    traffic.label()
                );
            }
        }
    }
    let _ = writeln!(
        table,
        "\nTraffic: {ROUNDS} interleaved rounds after a warm-up, {SECONDS} s per run, client \
         pinned to CPU 0 and server to CPU 1, both conntrack tables flushed before every run. \
         Each set has a node of its own (netlab's: the sandbox's namespace; the reference's: \
         a network namespace): netlab's pods are reached from `outside` through netlab's \
         uplink (eBPF DNAT), the reference's from a namespace beyond its node's uplink \
         (portmap's iptables DNAT). Netfilter's conntrack runs on the reference's node \
         (portmap's rules load it) and not on netlab's; br_netfilter is on in both, as on \
         the host."
    );
    table
}
