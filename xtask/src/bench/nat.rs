//! `cargo xtask bench`: netlab's datapaths side by side with iptables NAT.
//!
//! This part runs inside the sandbox (a private mount + network namespace
//! made by `unshare`, see `super::run_nat`): it builds the default lab with
//! each datapath in turn, verifies that the datapath carries the traffic,
//! then drives `netlab-loadgen` (client pinned to CPU 0, server to CPU 1)
//! over each path, and records every sample.
//!
//! One round is every datapath once (A B C D, then again), and each
//! datapath is brought up afresh for every port count: a new lab means new
//! namespaces (no TIME_WAIT sockets left), new netlab maps and new rules.
//! Between runs on the same lab, the kernel's conntrack (`conntrack -F`) and
//! netlab's (its pinned conntrack tables) are flushed.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use netlab::{publish::PublishOutcome, status::LabStatus};
use netlab_common::nat::{RedirectReason, Stat};
use serde::{Deserialize, Serialize};

use super::results::{
    Datapath, Meta, Metric, ProgramCost, Results, Sample, Skipped, TrafficPath, Verification,
};
use super::{
    loadgen::{self, CLIENT_CPU, SERVER_CPU, Spawned},
    sandbox::{self, output, sh},
};

/// The lab every datapath builds: netlab's default lab, with more published
/// ports (see `topology`).
const DEFAULT_LAB: &str = netlab::topology::DEFAULT_LAB;
/// The lab of the IPv6 paths: the dual-stack default lab (`up
/// --dual-stack`), whose IPv4 part is the default lab's.
const DUAL_STACK_LAB: &str = netlab::topology::DEFAULT_LAB_DUAL_STACK;
const DEFAULT_PUBLISH: &str = "publish = [\"8080:80/tcp\"]";
/// The ports the traffic uses, published after the fillers: last in any list.
const USED_PORTS: [&str; 3] = ["8080:80/tcp", "8080:80/udp", "5201:5201/tcp"];
/// Filler ports start here, below the masquerade range (32768-60999).
const FILLER_BASE: u32 = 1100;
/// The port `publish add`/`rm` times with N present.
const EDIT_PORT: u32 = 32000;

const IPERF_PORT: u16 = 5201;

/// The direct veth pair, the limit: no bridge, no NAT, no program.
const DIRECT_CLIENT_NS: &str = "nlb-direct-a";
const DIRECT_SERVER_NS: &str = "nlb-direct-b";
const DIRECT_CLIENT: &str = "198.19.0.1";
const DIRECT_SERVER: &str = "198.19.0.2";
const DIRECT_CLIENT6: &str = "fd00:19::1";
const DIRECT_SERVER6: &str = "fd00:19::2";
/// The IPv6 servers of the dual-stack lab (a server binds one address).
const BLUE6: &str = "fd00:15::2";
const OUTSIDE6: &str = "2001:2::2";

/// What the outer xtask asks the sandboxed one to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub quick: bool,
    pub netlab: PathBuf,
    pub loadgen: PathBuf,
    pub results: PathBuf,
    pub work_dir: PathBuf,
    pub repetitions: usize,
    pub warmup_rounds: usize,
    pub seconds: f64,
    pub port_counts: Vec<u32>,
    pub datapaths: Vec<Datapath>,
    /// `publish add` + `rm` pairs timed per lab.
    pub edits: usize,
    pub command: String,
}

/// One end-to-end path through the lab.
struct Route {
    path: TrafficPath,
    client_ns: &'static str,
    target: &'static str,
    /// The source address the server must see.
    seen_as: &'static str,
}

fn route(path: TrafficPath) -> Route {
    match path {
        TrafficPath::Dnat => Route {
            path,
            client_ns: "outside",
            target: "198.18.0.1:8080",
            seen_as: "198.18.0.2",
        },
        TrafficPath::Masquerade => Route {
            path,
            client_ns: "red",
            target: "198.18.0.2:80",
            seen_as: "198.18.0.1",
        },
        TrafficPath::EastWest => Route {
            path,
            client_ns: "red",
            target: "192.168.15.2:80",
            seen_as: "192.168.15.1",
        },
        TrafficPath::Direct => Route {
            path,
            client_ns: DIRECT_CLIENT_NS,
            target: "198.19.0.2:80",
            seen_as: DIRECT_CLIENT,
        },
        TrafficPath::Dnat6 => Route {
            path,
            client_ns: "outside",
            target: "[2001:2::1]:8080",
            seen_as: OUTSIDE6,
        },
        TrafficPath::Masquerade6 => Route {
            path,
            client_ns: "red",
            target: "[2001:2::2]:80",
            seen_as: "2001:2::1",
        },
        TrafficPath::EastWest6 => Route {
            path,
            client_ns: "red",
            target: "[fd00:15::2]:80",
            seen_as: "fd00:15::1",
        },
        TrafficPath::Direct6 => Route {
            path,
            client_ns: DIRECT_CLIENT_NS,
            target: "[fd00:19::2]:80",
            seen_as: DIRECT_CLIENT6,
        },
    }
}

const TIMED_METRICS: [Metric; 5] = [
    Metric::Rr,
    Metric::Crr,
    Metric::CrrPar,
    Metric::Stream,
    Metric::Udp,
];

/// The rule that makes the kernel's conntrack active in a lab's namespace
/// for the `*-host-ct` datapaths, as Docker's rules make it on any host
/// that runs it: a masquerade for a subnet nothing in the lab uses.
const HOST_CONNTRACK_RULE: [&str; 10] = [
    "iptables-nft",
    "-w",
    "-t",
    "nat",
    "-A",
    "POSTROUTING",
    "-s",
    "198.19.255.0/24",
    "-j",
    "MASQUERADE",
];

/// `lab` (the default lab or its dual-stack twin) with `ports` published
/// ports: fillers first, then the ones the traffic uses, so a linear rule
/// list walks all the fillers.
fn topology_of(lab: &str, ports: u32) -> Result<String> {
    let fillers = ports.saturating_sub(USED_PORTS.len() as u32);
    let mut list: Vec<String> = (FILLER_BASE..)
        .filter(|p| *p != 8080 && *p != u32::from(IPERF_PORT))
        .take(fillers as usize)
        .map(|p| format!("\"{p}:80/tcp\""))
        .collect();
    list.extend(USED_PORTS.iter().map(|p| format!("\"{p}\"")));
    if lab.matches(DEFAULT_PUBLISH).count() != 1 {
        bail!("netlab's default lab no longer has the line `{DEFAULT_PUBLISH}` the bench extends");
    }
    Ok(lab.replace(DEFAULT_PUBLISH, &format!("publish = [{}]", list.join(", "))))
}

/// Runs the plan; called inside the sandbox.
pub fn run_sandboxed(plan: &Plan) -> Result<()> {
    setup_sandbox()?;
    let mut bench = Bench::new(plan.clone())?;
    let result = bench.run();
    bench.results.write(&plan.results)?;
    result
}

fn setup_sandbox() -> Result<()> {
    sandbox::enter()?;
    for ns in [DIRECT_CLIENT_NS, DIRECT_SERVER_NS] {
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    sh(&[
        "ip",
        "link",
        "add",
        "d-a",
        "netns",
        DIRECT_CLIENT_NS,
        "type",
        "veth",
        "peer",
        "name",
        "d-b",
        "netns",
        DIRECT_SERVER_NS,
    ])?;
    for (ns, dev, addr, addr6) in [
        (DIRECT_CLIENT_NS, "d-a", DIRECT_CLIENT, DIRECT_CLIENT6),
        (DIRECT_SERVER_NS, "d-b", DIRECT_SERVER, DIRECT_SERVER6),
    ] {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev,
        ])?;
        // No duplicate address detection: usable at once, as netlab's.
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            dev,
            "nodad",
        ])?;
        sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
    }
    Ok(())
}

struct Bench {
    plan: Plan,
    results: Results,
    started: Instant,
}

impl Bench {
    fn new(plan: Plan) -> Result<Bench> {
        let meta = meta(&plan)?;
        Ok(Bench {
            results: Results {
                meta,
                skipped: Vec::new(),
                verifications: Vec::new(),
                samples: Vec::new(),
                program_costs: Vec::new(),
            },
            plan,
            started: Instant::now(),
        })
    }

    fn rounds(&self) -> usize {
        self.plan.warmup_rounds + self.plan.repetitions
    }

    fn progress(&self, round: usize, what: &str) {
        let t = self.started.elapsed().as_secs();
        let warm = if round < self.plan.warmup_rounds {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "bench [{:02}:{:02}] round {}/{}{warm}: {what}",
            t / 60,
            t % 60,
            round + 1,
            self.rounds()
        );
    }

    fn run(&mut self) -> Result<()> {
        let mut datapaths = self.plan.datapaths.clone();
        for round in 0..self.rounds() {
            let warmup = round < self.plan.warmup_rounds;
            let counts = if warmup {
                vec![self.plan.port_counts[0]]
            } else {
                self.plan.port_counts.clone()
            };
            for (i, &ports) in counts.iter().enumerate() {
                let mut still = Vec::new();
                for &datapath in &datapaths {
                    // The sweep over port counts is the plain datapaths'.
                    if i > 0 && datapath.host_conntrack() {
                        still.push(datapath);
                        continue;
                    }
                    let outcome = if datapath == Datapath::Direct {
                        if i == 0 {
                            self.measure_direct(round)
                        } else {
                            Ok(())
                        }
                    } else {
                        self.measure_lab(round, datapath, ports).and_then(|()| {
                            if i == 0 && datapath.ipv6_rows() {
                                self.measure_lab6(round, datapath, ports)
                            } else {
                                Ok(())
                            }
                        })
                    };
                    match outcome {
                        Ok(()) => still.push(datapath),
                        Err(err) if is_unavailable(&err) => {
                            let reason = format!("{err:#}");
                            eprintln!("bench: skipping {}: {reason}", datapath.label());
                            self.results.skipped.push(Skipped { datapath, reason });
                        }
                        Err(err) => {
                            return Err(err.context(format!(
                                "{} with {ports} published ports, round {}",
                                datapath.label(),
                                round + 1
                            )));
                        }
                    }
                }
                datapaths = still;
                // A partial run still leaves its samples behind.
                self.results.write(&self.plan.results)?;
            }
        }
        Ok(())
    }

    fn seconds(&self, round: usize) -> f64 {
        if round < self.plan.warmup_rounds {
            self.plan.seconds.min(0.3)
        } else {
            self.plan.seconds
        }
    }

    /// The limit of both families: the bare veth pair over IPv4, then
    /// over IPv6.
    fn measure_direct(&mut self, round: usize) -> Result<()> {
        let lifetime = self.server_lifetime();
        let _server = loadgen::serve(&self.plan.loadgen, DIRECT_SERVER_NS, lifetime)?;
        let _server6 = loadgen::serve_on(
            &self.plan.loadgen,
            DIRECT_SERVER_NS,
            DIRECT_SERVER6,
            lifetime,
        )?;
        loadgen::client_sysctls(DIRECT_CLIENT_NS)?;
        for path in [TrafficPath::Direct, TrafficPath::Direct6] {
            let route = route(path);
            self.wait_for_server(route.client_ns, route.target)?;
            offloads(&direct_ifaces(), false)?;
            let seen = whoami(&self.plan.loadgen, &route, false)?;
            offloads(&direct_ifaces(), true)?;
            if seen != route.seen_as {
                bail!(
                    "{}: the server saw {seen}, expected {}",
                    path_id(path),
                    route.seen_as
                );
            }
            self.results.verifications.push(Verification {
                round,
                datapath: Datapath::Direct,
                ports: 0,
                checks: vec![format!("{} tcp: server saw {seen}", path_id(path))],
            });
            for metric in TIMED_METRICS {
                self.measure(round, Datapath::Direct, &route, metric, 0)?;
            }
        }
        Ok(())
    }

    fn server_lifetime(&self) -> u64 {
        // Bounded: every metric of every path, with room for setup.
        (self.plan.seconds * 20.0) as u64 + 300
    }

    fn measure_lab(&mut self, round: usize, datapath: Datapath, ports: u32) -> Result<()> {
        // Every lab gets a network namespace of its own for its host side:
        // what an earlier datapath left there (iptables' tables, with the
        // conntrack they keep active) never taxes a later one.
        sandbox::fresh_host_namespace()?;
        if datapath.host_conntrack() {
            sh(&HOST_CONNTRACK_RULE)?;
        }
        let (lab, install_ms) = self.bring_up(round, datapath, ports, DEFAULT_LAB)?;
        self.push(Sample {
            round,
            warmup: round < self.plan.warmup_rounds,
            datapath,
            path: TrafficPath::Dnat,
            metric: Metric::Install,
            ports,
            value: install_ms,
            count: None,
            seconds: None,
            cpu_us_per_tx: None,
            whole_ms: None,
        });
        for ns in ["outside", "red"] {
            loadgen::client_sysctls(ns)?;
        }
        let lifetime = self.server_lifetime();
        let _blue = loadgen::serve(&self.plan.loadgen, "blue", lifetime)?;
        let _outside = loadgen::serve(&self.plan.loadgen, "outside", lifetime)?;
        // Straight to each server, without NAT, so readiness moves no counter.
        self.wait_for_server("red", "192.168.15.2:80")?;
        self.wait_for_server("outside", "198.18.0.2:80")?;

        let verification = self.verify(round, datapath, ports, TrafficPath::LAB)?;
        self.progress(
            round,
            &format!(
                "{} verified: {}",
                datapath.label(),
                verification.checks.join("; ")
            ),
        );
        self.results.verifications.push(verification);

        // The XDP entry sees only what the world sends: the DNAT path.
        let paths: &[TrafficPath] = if ports == self.plan.port_counts[0] && !datapath.xdp_entry() {
            &TrafficPath::LAB
        } else {
            &[TrafficPath::Dnat]
        };
        for &path in paths {
            let route = route(path);
            for metric in TIMED_METRICS {
                self.measure(round, datapath, &route, metric, ports)?;
            }
            if datapath.is_ebpf() && ports == self.plan.port_counts[0] {
                for load in ProgramLoad::ALL {
                    self.program_costs(round, datapath, &route, load)?;
                }
            }
            if path == TrafficPath::Dnat && ports == self.plan.port_counts[0] {
                self.iperf3(round, datapath, ports)?;
                if datapath.is_ebpf() {
                    self.dropped_flood(round, datapath, ports)?;
                }
            }
        }
        for _ in 0..self.plan.edits {
            self.edit(round, datapath, ports)?;
        }
        drop(lab);
        Ok(())
    }

    /// The IPv6 rows: the dual-stack lab with the same published ports, and
    /// its three paths over IPv6 (the timed metrics and the programs'
    /// cost; bulk's iperf3 cross-check, the dropped flood and the port
    /// edits are IPv4's only).
    fn measure_lab6(&mut self, round: usize, datapath: Datapath, ports: u32) -> Result<()> {
        sandbox::fresh_host_namespace()?;
        let (lab, _) = self.bring_up(round, datapath, ports, DUAL_STACK_LAB)?;
        for ns in ["outside", "red"] {
            loadgen::client_sysctls(ns)?;
        }
        let lifetime = self.server_lifetime();
        let _blue = loadgen::serve_on(&self.plan.loadgen, "blue", BLUE6, lifetime)?;
        let _outside = loadgen::serve_on(&self.plan.loadgen, "outside", OUTSIDE6, lifetime)?;
        self.wait_for_server("red", &format!("[{BLUE6}]:80"))?;
        self.wait_for_server("outside", &format!("[{OUTSIDE6}]:80"))?;
        let verification = self.verify(round, datapath, ports, TrafficPath::LAB6)?;
        self.progress(
            round,
            &format!(
                "{} verified over IPv6: {}",
                datapath.label(),
                verification.checks.join("; ")
            ),
        );
        self.results.verifications.push(verification);
        for path in TrafficPath::LAB6 {
            let route = route(path);
            for metric in TIMED_METRICS {
                self.measure(round, datapath, &route, metric, ports)?;
            }
            if datapath.is_ebpf() {
                for load in ProgramLoad::ALL {
                    self.program_costs(round, datapath, &route, load)?;
                }
            }
        }
        drop(lab);
        Ok(())
    }

    /// `netlab up` of `lab` with `ports` published ports on `datapath`: the
    /// lab's owner, and how long `up` took (ms).
    fn bring_up(
        &self,
        round: usize,
        datapath: Datapath,
        ports: u32,
        lab: &str,
    ) -> Result<(Lab, f64)> {
        // Written every time: a file left by an earlier run may describe
        // another lab (an older default, say).
        let stack = if lab == DUAL_STACK_LAB { "-dual" } else { "" };
        let file = self.plan.work_dir.join(format!("lab{stack}-{ports}.toml"));
        fs::write(&file, topology_of(lab, ports)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let (name, backend) = datapath.netlab_args().context("not a netlab datapath")?;
        self.progress(
            round,
            &format!(
                "{} with {ports} ports: netlab up {}",
                datapath.label(),
                file.display()
            ),
        );
        let mut up = Command::new(&self.plan.netlab);
        up.args(["up", "-f"]).arg(&file).args(["--datapath", name]);
        if datapath.xdp_entry() {
            up.args(["--entry", "xdp"]);
        }
        if let Some(backend) = backend {
            up.env("NETLAB_IPTABLES", backend);
        }
        let begun = Instant::now();
        let outcome = output(&mut up);
        let install_ms = begun.elapsed().as_secs_f64() * 1e3;
        let lab = Lab {
            netlab: self.plan.netlab.clone(),
        };
        if let Err(err) = outcome {
            drop(lab);
            if matches!(
                datapath,
                Datapath::Redirect | Datapath::RedirectHostCt | Datapath::RedirectXdp
            ) || datapath.xdp_entry()
            {
                return Err(err.context(Unavailable));
            }
            return Err(err);
        }
        Ok((lab, install_ms))
    }

    fn wait_for_server(&self, client_ns: &str, target: &str) -> Result<()> {
        loadgen::wait_for_server(&self.plan.loadgen, client_ns, target)
    }

    /// Proves the datapath under test carries the traffic: every path's
    /// server sees the expected source, and the datapath's own counters
    /// moved (netlab's NAT counters; the iptables rules' packet counters in
    /// the expected backend). Done with checksum offload off, so a wrong L4
    /// checksum after NAT fails here instead of "working".
    /// `paths` are the lab's three of one family (DNAT, masquerade,
    /// east-west).
    fn verify(
        &self,
        round: usize,
        datapath: Datapath,
        ports: u32,
        paths: [TrafficPath; 3],
    ) -> Result<Verification> {
        let ipv6 = paths[0].is_ipv6();
        offloads(&lab_ifaces(), false)?;
        let before = self.counters(datapath, ipv6)?;
        let mut checks = Vec::new();
        let [dnat, masquerade, east_west] = paths;
        for (path, udp) in [
            (dnat, false),
            (dnat, true),
            (masquerade, false),
            (masquerade, true),
            (east_west, false),
        ] {
            let route = route(path);
            let seen = whoami(&self.plan.loadgen, &route, udp)?;
            let proto = if udp { "udp" } else { "tcp" };
            if seen != route.seen_as {
                bail!(
                    "{} {proto} through {}: the server saw {seen}, expected {} — the datapath \
                     does not do what it should",
                    path_id(path),
                    datapath.label(),
                    route.seen_as
                );
            }
            checks.push(format!("{} {proto}: server saw {seen}", path_id(path)));
        }
        let after = self.counters(datapath, ipv6)?;
        let dnat = after.dnat.saturating_sub(before.dnat);
        let snat = after.snat.saturating_sub(before.snat);
        if dnat < 2 || snat < 2 {
            bail!(
                "{}: the servers saw translated addresses but its counters moved by {dnat} \
                 (DNAT) and {snat} (SNAT), expected at least 2 each: another path carried \
                 the traffic",
                datapath.label()
            );
        }
        checks.push(format!("{} DNAT +{dnat}, SNAT +{snat}", after.source));
        if matches!(
            datapath,
            Datapath::Redirect | Datapath::RedirectHostCt | Datapath::RedirectXdp
        ) {
            // Each probe's packets must be redirected, not left to the
            // bridge and the host stack (a silent fallback to `bridge`).
            let redirected = after.redirected.saturating_sub(before.redirected);
            if redirected < 5 {
                bail!(
                    "{}: only {redirected} packets were redirected (redirect_peer + \
                     redirect_uplink) during 5 probes: the traffic fell back to the stack",
                    datapath.label()
                );
            }
            checks.push(format!("redirected +{redirected}"));
        }
        // Back to the veth default, but for what the XDP entry needs off:
        // transmit checksum offload on the uplink's peer (netlab set it).
        let timed: Vec<Iface> = lab_ifaces()
            .into_iter()
            .filter(|(_, dev)| !(datapath.xdp_entry() && *dev == "veth-outside"))
            .collect();
        offloads(&timed, true)?;
        if datapath.xdp_entry() {
            sh(&[
                "ip",
                "netns",
                "exec",
                "outside",
                "ethtool",
                "-K",
                "veth-outside",
                "rx",
                "on",
            ])?;
        }
        Ok(Verification {
            round,
            datapath,
            ports,
            checks,
        })
    }

    /// The datapath's DNAT and SNAT counts: netlab's counters (both
    /// families), or the rule counters of iptables (`ipv6`: ip6tables).
    fn counters(&self, datapath: Datapath, ipv6: bool) -> Result<Counters> {
        let status = output(Command::new(&self.plan.netlab).args(["status", "--json"]))?;
        let status: LabStatus =
            serde_json::from_str(&status).context("parsing `netlab status --json`")?;
        let (expected, _) = datapath.netlab_args().context("not a netlab datapath")?;
        if status.datapath.as_str() != expected {
            bail!(
                "`netlab status` reports datapath {}, expected {expected}",
                status.datapath
            );
        }
        match datapath {
            Datapath::IptablesNft | Datapath::IptablesLegacy => {
                let tool = match (datapath == Datapath::IptablesNft, ipv6) {
                    (true, false) => "iptables-nft",
                    (false, false) => "iptables-legacy",
                    (true, true) => "ip6tables-nft",
                    (false, true) => "ip6tables-legacy",
                };
                let chain_packets = |chain: &str| -> Result<u64> {
                    let listing = output(
                        Command::new(tool).args(["-w", "-t", "nat", "-L", chain, "-n", "-v", "-x"]),
                    )
                    .with_context(|| format!("listing {chain} with {tool}"))?;
                    Ok(rule_packets(&listing))
                };
                Ok(Counters {
                    dnat: chain_packets("NL-default-DNAT")?,
                    snat: chain_packets("NL-default-POST")?,
                    redirected: 0,
                    source: format!("{tool} rule counters:"),
                })
            }
            _ => {
                let counter = |name: &str| -> Result<u64> {
                    status
                        .nat
                        .as_ref()
                        .and_then(|nat| nat.counters.get(name).copied())
                        .with_context(|| format!("no NAT counter `{name}` in `netlab status`"))
                };
                Ok(Counters {
                    dnat: counter(Stat::DnatNew.name())?,
                    snat: counter(Stat::SnatNew.name())?,
                    redirected: redirected_packets(&status),
                    source: "netlab NAT counters:".to_owned(),
                })
            }
        }
    }

    /// Empties the kernel's conntrack and netlab's, so a run inherits no flow.
    fn flush(&self) -> Result<()> {
        // Fails harmlessly when no rule ever loaded conntrack here.
        let _ = output(Command::new("conntrack").arg("-F"));
        netlab::datapath::flush_flows("default")?;
        Ok(())
    }

    fn measure(
        &mut self,
        round: usize,
        datapath: Datapath,
        route: &Route,
        metric: Metric,
        ports: u32,
    ) -> Result<()> {
        self.flush()?;
        let (name, max_count) = match metric {
            Metric::Rr => ("rr", 20_000_000u64),
            // Below the client's port range, so no run reuses a port.
            Metric::Crr => ("crr", 60_000),
            Metric::CrrPar => ("crr-par", 60_000),
            Metric::Stream => ("stream", 200_000_000_000),
            Metric::Udp => ("udp", 50_000_000),
            _ => bail!("{metric:?} is not a load"),
        };
        let seconds = self.seconds(round);
        let outcome = loadgen::run(
            &self.plan.loadgen,
            route.client_ns,
            name,
            route.target,
            seconds,
            max_count,
        )
        .with_context(|| {
            format!(
                "{} {name} through {}",
                path_id(route.path),
                datapath.label()
            )
        })?;
        if outcome.count == 0 {
            bail!(
                "{} {name} through {}: no transaction completed",
                path_id(route.path),
                datapath.label()
            );
        }
        let value = match metric {
            Metric::Stream => outcome.count as f64 * 8.0 / outcome.seconds / 1e9,
            _ => outcome.rate,
        };
        // Bulk: per megabyte (so µs per MB, which is ms per GB).
        let per = if metric == Metric::Stream {
            outcome.count as f64 / 1e6
        } else {
            outcome.count as f64
        };
        let cpu_us_per_tx = Some(outcome.cpu_busy_seconds * 1e6 / per);
        self.progress(
            round,
            &format!(
                "{} {ports} ports · {} {name}: {} {}",
                datapath.label(),
                path_id(route.path),
                super::stats::human(value),
                metric.unit()
            ),
        );
        self.push(Sample {
            round,
            warmup: round < self.plan.warmup_rounds,
            datapath,
            path: route.path,
            metric,
            ports,
            value,
            count: Some(outcome.count),
            seconds: Some(outcome.seconds),
            cpu_us_per_tx,
            whole_ms: None,
        });
        Ok(())
    }

    /// A UDP flood from the world routed into the lab (`outside` routes the
    /// lab's subnet via the uplink, as a world host could), which netlab
    /// drops on the uplink (`routed_into_lab`): the TC entry's cost of a
    /// drop against the XDP entry's.
    fn dropped_flood(&mut self, round: usize, datapath: Datapath, ports: u32) -> Result<()> {
        self.flush()?;
        let route = [
            "ip",
            "-n",
            "outside",
            "route",
            "replace",
            "192.168.15.0/24",
            "via",
            "198.18.0.1",
        ];
        sh(&route)?;
        let seconds = self.seconds(round);
        let outcome = loadgen::run(
            &self.plan.loadgen,
            "outside",
            "flood",
            "192.168.15.2:9",
            seconds,
            50_000_000,
        );
        sh(&["ip", "-n", "outside", "route", "del", "192.168.15.0/24"])?;
        let outcome =
            outcome.with_context(|| format!("the dropped flood through {}", datapath.label()))?;
        self.progress(
            round,
            &format!(
                "{} {ports} ports · dropped flood: {} pkt/s sent",
                datapath.label(),
                super::stats::human(outcome.rate)
            ),
        );
        self.push(Sample {
            round,
            warmup: round < self.plan.warmup_rounds,
            datapath,
            path: TrafficPath::Dnat,
            metric: Metric::Drop,
            ports,
            value: outcome.rate,
            count: Some(outcome.count),
            seconds: Some(outcome.seconds),
            cpu_us_per_tx: Some(outcome.cpu_busy_seconds * 1e6 / outcome.count.max(1) as f64),
            whole_ms: None,
        });
        Ok(())
    }

    /// iperf3 over the DNAT path: the cross-check of the bulk figure.
    fn iperf3(&mut self, round: usize, datapath: Datapath, ports: u32) -> Result<()> {
        self.flush()?;
        let seconds = self.seconds(round).ceil().max(1.0) as u64;
        let mut server = Command::new("ip");
        server
            .args(["netns", "exec", "blue", "iperf3", "-s", "-1"])
            .args(["-p", &IPERF_PORT.to_string(), "-A", &SERVER_CPU.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _server = Spawned(server.spawn().context("starting iperf3 -s in blue")?);
        let mut last = None;
        for _ in 0..50 {
            thread::sleep(Duration::from_millis(100));
            let mut client = Command::new("ip");
            client
                .args([
                    "netns",
                    "exec",
                    "outside",
                    "iperf3",
                    "-J",
                    "-c",
                    "198.18.0.1",
                ])
                .args(["-p", &IPERF_PORT.to_string(), "-A", &CLIENT_CPU.to_string()])
                .args(["-t", &seconds.to_string()]);
            match output(&mut client) {
                Ok(json) => {
                    let report: serde_json::Value =
                        serde_json::from_str(&json).context("parsing iperf3 -J")?;
                    let bps = report["end"]["sum_received"]["bits_per_second"]
                        .as_f64()
                        .context("no end.sum_received.bits_per_second in iperf3's report")?;
                    let value = bps / 1e9;
                    self.progress(
                        round,
                        &format!(
                            "{} {ports} ports · dnat iperf3: {value:.2} Gbit/s",
                            datapath.label()
                        ),
                    );
                    self.push(Sample {
                        round,
                        warmup: round < self.plan.warmup_rounds,
                        datapath,
                        path: TrafficPath::Dnat,
                        metric: Metric::Iperf3,
                        ports,
                        value,
                        count: None,
                        seconds: Some(seconds as f64),
                        cpu_us_per_tx: None,
                        whole_ms: None,
                    });
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
            .context("iperf3 through the published port"))
    }

    /// `publish add` and `rm` of one more port with `ports` present.
    fn edit(&mut self, round: usize, datapath: Datapath, ports: u32) -> Result<()> {
        let add = format!("{EDIT_PORT}:80/tcp");
        let rm = format!("{EDIT_PORT}/tcp");
        for (metric, args) in [
            (
                Metric::Add,
                vec!["publish", "add", "blue", add.as_str(), "--json"],
            ),
            (Metric::Rm, vec!["publish", "rm", rm.as_str(), "--json"]),
        ] {
            let mut cmd = Command::new(&self.plan.netlab);
            cmd.args(&args);
            let begun = Instant::now();
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running netlab {}", args.join(" ")))?;
            let whole_ms = begun.elapsed().as_secs_f64() * 1e3;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                bail!("`netlab {}` failed: {}", args.join(" "), stderr.trim());
            }
            let outcome: PublishOutcome = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("parsing the output of `netlab {}`", args.join(" ")))?;
            let update_us = outcome.datapath_update_us as f64;
            self.push(Sample {
                round,
                warmup: round < self.plan.warmup_rounds,
                datapath,
                path: TrafficPath::Dnat,
                metric,
                ports,
                value: update_us,
                count: None,
                seconds: None,
                cpu_us_per_tx: None,
                whole_ms: Some(whole_ms),
            });
        }
        Ok(())
    }

    /// One more run with the kernel's program accounting on (apart from
    /// the timed runs, whose figures it would tax): each program's ns per
    /// packet on this path under `load`.
    fn program_costs(
        &mut self,
        round: usize,
        datapath: Datapath,
        route: &Route,
        load: ProgramLoad,
    ) -> Result<()> {
        self.flush()?;
        let pins = netlab::pins::Pins::of("default");
        let seconds = (self.seconds(round) / 2.0).max(0.2);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", route.client_ns]);
        match load {
            ProgramLoad::Rr | ProgramLoad::Udp => {
                let metric = if load == ProgramLoad::Rr { "rr" } else { "udp" };
                cmd.arg(&self.plan.loadgen)
                    .args(["run", metric, "--to", route.target])
                    .args(["--seconds", &seconds.to_string()])
                    .args(["--max-count", "20000000"])
                    .args(["--cpu", &CLIENT_CPU.to_string()]);
            }
            ProgramLoad::Ping => {
                let target: std::net::SocketAddr = route
                    .target
                    .parse()
                    .with_context(|| format!("the target {}", route.target))?;
                let host = target.ip().to_string();
                // Bounded in count and time: `-c` packets, `-w` seconds.
                cmd.args(["ping", "-q", "-f", "-c", "20000", "-w", "5", &host]);
            }
        }
        let (before, after) = {
            let _stats = super::progcost::StatsOn::new()?;
            let before = super::progcost::Snapshot::take(&pins)?;
            output(&mut cmd).with_context(|| {
                format!(
                    "{} {} with bpf_stats through {}",
                    path_id(route.path),
                    load.id(),
                    datapath.label()
                )
            })?;
            (before, super::progcost::Snapshot::take(&pins)?)
        };
        for (program, ns_per_run, runs) in before.per_run(&after) {
            self.progress(
                round,
                &format!(
                    "{} · {} {} {program}: {ns_per_run:.0} ns/packet over {runs} runs",
                    datapath.label(),
                    path_id(route.path),
                    load.id()
                ),
            );
            self.results.program_costs.push(ProgramCost {
                round,
                warmup: round < self.plan.warmup_rounds,
                datapath,
                path: route.path,
                load: load.id().to_owned(),
                program: program.to_owned(),
                ns_per_run,
                runs,
            });
        }
        Ok(())
    }

    fn push(&mut self, sample: Sample) {
        self.results.samples.push(sample);
    }
}

/// What runs while the kernel accounts the programs' time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ProgramLoad {
    /// TCP request/response: every packet finds cold caches.
    Rr,
    /// The UDP flood: warm.
    Udp,
    /// `ping -f`: ICMP echo, one packet in flight.
    Ping,
}

impl ProgramLoad {
    pub const ALL: [ProgramLoad; 3] = [ProgramLoad::Rr, ProgramLoad::Udp, ProgramLoad::Ping];

    pub fn id(self) -> &'static str {
        match self {
            ProgramLoad::Rr => "rr",
            ProgramLoad::Udp => "udp",
            ProgramLoad::Ping => "ping",
        }
    }
}

/// The error context that marks a datapath netlab cannot build yet.
#[derive(Debug)]
struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("`netlab up` refused this datapath")
    }
}

fn is_unavailable(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Unavailable>().is_some()
}

struct Counters {
    dnat: u64,
    snat: u64,
    /// Packets the redirect datapath sent past the bridge and host stack.
    redirected: u64,
    source: String,
}

/// Sum of `redirect_peer` and `redirect_uplink` over the lab's links in
/// `netlab status`.
pub fn redirected_packets(status: &LabStatus) -> u64 {
    status
        .places
        .iter()
        .flat_map(|place| &place.links)
        .map(|link| {
            [RedirectReason::Peer.name(), RedirectReason::Uplink.name()]
                .iter()
                .filter_map(|reason| link.redirect.get(*reason))
                .sum::<u64>()
        })
        .sum()
}

fn path_id(path: TrafficPath) -> &'static str {
    match path {
        TrafficPath::Dnat => "dnat",
        TrafficPath::Masquerade => "masquerade",
        TrafficPath::EastWest => "east-west",
        TrafficPath::Direct => "direct",
        TrafficPath::Dnat6 => "dnat6",
        TrafficPath::Masquerade6 => "masquerade6",
        TrafficPath::EastWest6 => "east-west6",
        TrafficPath::Direct6 => "direct6",
    }
}

/// The sum of the packet counters of an `iptables -L -v -x` listing.
pub fn rule_packets(listing: &str) -> u64 {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn whoami(loadgen: &Path, route: &Route, udp: bool) -> Result<String> {
    loadgen::whoami(loadgen, route.client_ns, route.target, udp)
        .with_context(|| path_id(route.path).to_owned())
}

/// (namespace, interface): None is the sandbox's own namespace.
type Iface = (Option<&'static str>, &'static str);

fn lab_ifaces() -> Vec<Iface> {
    vec![
        (None, "veth-red-br"),
        (None, "veth-blue-br"),
        (None, "nl-uplink"),
        (Some("red"), "veth-red"),
        (Some("blue"), "veth-blue"),
        (Some("outside"), "veth-outside"),
    ]
}

fn direct_ifaces() -> Vec<Iface> {
    vec![
        (Some(DIRECT_CLIENT_NS), "d-a"),
        (Some(DIRECT_SERVER_NS), "d-b"),
    ]
}

/// Checksum offload off for verification (BENCHMARKING.md), back on (the
/// veth default) for timing, the same for every datapath (but what the
/// XDP entry needs: see `verify`).
fn offloads(ifaces: &[Iface], on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    for (ns, dev) in ifaces {
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            argv.extend(["ip", "netns", "exec", ns]);
        }
        argv.extend(["ethtool", "-K", dev, "tx", state, "rx", state]);
        sh(&argv)?;
    }
    Ok(())
}

/// The lab's owner: `netlab down` when dropped, whatever happened.
struct Lab {
    netlab: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(err) = output(Command::new(&self.netlab).arg("down")) {
            eprintln!("bench: netlab down: {err:#}");
        }
    }
}

fn meta(plan: &Plan) -> Result<Meta> {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let br_nf = read("/proc/sys/net/bridge/bridge-nf-call-iptables");
    let br_netfilter = match br_nf.trim() {
        "1" => "br_netfilter: net.bridge.bridge-nf-call-iptables=1 (the machine's setting, \
                unchanged), so with the iptables datapaths bridged red→blue traffic also walks \
                iptables FORWARD and conntrack, as with Docker."
            .to_owned(),
        "0" => "br_netfilter: net.bridge.bridge-nf-call-iptables=0 (unchanged): bridged \
                traffic skips iptables."
            .to_owned(),
        _ => "br_netfilter: not loaded.".to_owned(),
    };
    let mut notes = vec![format!(
        "N = 1 means only the ports the traffic uses ({}); N > 1 adds {} fillers before them.",
        USED_PORTS.join(", "),
        "N - 3"
    )];
    let _ = write!(
        notes[0],
        " Paths other than DNAT are measured at N = {} only.",
        plan.port_counts[0]
    );
    notes.push(format!(
        "IPv6 rows: the dual-stack default lab (`netlab up --dual-stack`'s topology, the \
         same N = {} published ports), brought up after the IPv4 lab in every round for {}; \
         `iptables` is ip6tables there (NAT66 as Docker's ip6tables rules), and `redirect` \
         takes IPv6's peer and uplink redirects after the same NAT66 as `bridge`. The IPv6 \
         limit is the bare veth pair over IPv6.",
        plan.port_counts[0],
        plan.datapaths
            .iter()
            .filter(|d| d.ipv6_rows())
            .map(|d| d.label())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Meta {
        mode: if plan.quick { "quick" } else { "full" }.to_owned(),
        started_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu_model,
        cpus,
        memory_gib,
        command: plan.command.clone(),
        repetitions: plan.repetitions,
        warmup_rounds: plan.warmup_rounds,
        seconds_per_run: plan.seconds,
        port_counts: plan.port_counts.clone(),
        datapaths: plan.datapaths.clone(),
        br_netfilter,
        offloads: "Checksum offload off (ethtool -K tx off rx off) on every lab veth while \
                   verifying, back on (the veth default) while timing, for every datapath."
            .to_owned(),
        pinning: format!(
            "Client pinned to CPU {CLIENT_CPU}, server to CPU {SERVER_CPU} (sched_setaffinity; \
             iperf3 -A), for every datapath."
        ),
        time_wait: "Connection rate: the client closes first, so TIME_WAIT stays in the client's \
                    namespace, which has net.ipv4.tcp_tw_reuse=1 and ports 1024–65535; at most \
                    60,000 connections per run, and every lab is new per datapath and port count."
            .to_owned(),
        flush: "`conntrack -F` and netlab's conntrack tables emptied before every run.".to_owned(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_ports_come_last_after_the_fillers() {
        let text = topology_of(DEFAULT_LAB, 1000).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("publish = "))
            .unwrap_or_default();
        let ports: Vec<&str> = line
            .trim_start_matches("publish = [")
            .trim_end_matches(']')
            .split(", ")
            .collect();
        assert_eq!(ports.len(), 1000);
        assert_eq!(ports[0], "\"1100:80/tcp\"");
        assert_eq!(
            &ports[997..],
            ["\"8080:80/tcp\"", "\"8080:80/udp\"", "\"5201:5201/tcp\""]
        );
        assert!(
            !ports[..997]
                .iter()
                .any(|p| p.starts_with("\"8080:") || p.starts_with("\"5201:"))
        );
        let one = topology_of(DEFAULT_LAB, 1).unwrap_or_default();
        assert!(one.contains("publish = [\"8080:80/tcp\", \"8080:80/udp\", \"5201:5201/tcp\"]"));
        // The largest sweep stays below the masquerade port range.
        let most = topology_of(DEFAULT_LAB, 30_000).unwrap_or_default();
        assert!(!most.contains("\"32768:"));
        assert!(!most.contains(&format!("\"{EDIT_PORT}:")));
        // The IPv6 rows' lab: the dual-stack twin, the same ports.
        let dual = topology_of(DUAL_STACK_LAB, 1).unwrap_or_default();
        assert!(dual.contains("publish = [\"8080:80/tcp\", \"8080:80/udp\", \"5201:5201/tcp\"]"));
        assert!(dual.contains("fd00:15::/64"));
    }

    #[test]
    fn reads_rule_counters_and_update_times() {
        let listing = "Chain NL-default-DNAT (5 references)\n    pkts      bytes target     prot opt in     out     source               destination\n       3      180 DNAT       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp dpt:8080 to:192.168.15.2:80\n       2       60 DNAT       17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:8080 to:192.168.15.2:80\n";
        assert_eq!(rule_packets(listing), 5);
        let outcome: PublishOutcome = serde_json::from_str(
            r#"{"lab":"default","action":"add","datapath_update_us":75,
            "port":{"host_port":32000,"proto":"tcp","namespace":"blue","port":80}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(outcome.datapath_update_us, 75);
        let link = |redirect: serde_json::Value| {
            serde_json::json!({"name": "v", "index": 1, "kind": "veth", "up": true,
                "master": null, "addresses": [], "hooks": [], "redirect": redirect})
        };
        let place = |links: Vec<serde_json::Value>| serde_json::json!({"place": "host", "present": true, "routes": [], "links": links});
        let status: LabStatus = serde_json::from_value(serde_json::json!({
            "lab": "default", "datapath": "redirect", "origin": "x", "complete": true,
            "namespaces": [], "nat": null, "places": [
                place(vec![link(serde_json::json!({"redirect_peer": 4, "fallback_local": 9})),
                           link(serde_json::json!({}))]),
                place(vec![link(serde_json::json!({"redirect_uplink": 3}))]),
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(redirected_packets(&status), 7);
    }
}
