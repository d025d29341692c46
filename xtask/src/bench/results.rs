//! What a `bench` run records: every sample, what was verified, what was
//! skipped and the conditions, written to `target/bench/results.json`.

use std::{fmt, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// The datapaths compared, in the order of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datapath {
    /// netlab's iptables reference mode, nft backend (the default iptables).
    IptablesNft,
    /// The same rules through iptables-legacy.
    IptablesLegacy,
    /// netlab's eBPF NAT on the bridge.
    Bridge,
    /// netlab's eBPF NAT with redirects past the bridge and host stack.
    Redirect,
    /// `bridge` on a host whose own conntrack is active in the lab's
    /// namespace (as on any machine running Docker): one unrelated
    /// masquerade rule there.
    BridgeHostCt,
    /// `redirect` on such a host.
    RedirectHostCt,
    /// `bridge` with the XDP entry on the uplink (`up --entry xdp`).
    BridgeXdp,
    /// `redirect` with the XDP entry.
    RedirectXdp,
    /// The limit: a veth pair between two namespaces; no bridge, NAT or program.
    Direct,
}

impl Datapath {
    pub const ALL: [Datapath; 9] = [
        Datapath::IptablesNft,
        Datapath::IptablesLegacy,
        Datapath::Bridge,
        Datapath::Redirect,
        Datapath::BridgeXdp,
        Datapath::RedirectXdp,
        Datapath::BridgeHostCt,
        Datapath::RedirectHostCt,
        Datapath::Direct,
    ];

    /// netlab's eBPF datapaths (whatever the host's conntrack does).
    pub fn is_ebpf(self) -> bool {
        matches!(
            self,
            Datapath::Bridge
                | Datapath::Redirect
                | Datapath::BridgeHostCt
                | Datapath::RedirectHostCt
                | Datapath::BridgeXdp
                | Datapath::RedirectXdp
        )
    }

    /// Whether the bench measures this datapath over IPv6 too (the
    /// dual-stack lab): the plain datapaths, not their host-conntrack or
    /// XDP-entry variants.
    pub fn ipv6_rows(self) -> bool {
        matches!(
            self,
            Datapath::IptablesNft
                | Datapath::IptablesLegacy
                | Datapath::Bridge
                | Datapath::Redirect
        )
    }

    /// Whether the world enters through the XDP entry (`--entry xdp`).
    pub fn xdp_entry(self) -> bool {
        matches!(self, Datapath::BridgeXdp | Datapath::RedirectXdp)
    }

    /// The same datapath with the TC entry: what the XDP entry is
    /// compared with.
    pub fn tc_entry(self) -> Datapath {
        match self {
            Datapath::BridgeXdp => Datapath::Bridge,
            Datapath::RedirectXdp => Datapath::Redirect,
            other => other,
        }
    }

    /// Whether the host's conntrack is made active in the lab's namespace.
    pub fn host_conntrack(self) -> bool {
        matches!(self, Datapath::BridgeHostCt | Datapath::RedirectHostCt)
    }

    pub fn id(self) -> &'static str {
        match self {
            Datapath::IptablesNft => "iptables-nft",
            Datapath::IptablesLegacy => "iptables-legacy",
            Datapath::Bridge => "bridge",
            Datapath::Redirect => "redirect",
            Datapath::BridgeHostCt => "bridge-host-ct",
            Datapath::RedirectHostCt => "redirect-host-ct",
            Datapath::BridgeXdp => "bridge-xdp",
            Datapath::RedirectXdp => "redirect-xdp",
            Datapath::Direct => "direct",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Datapath::IptablesNft => "iptables (nft)",
            Datapath::IptablesLegacy => "iptables (legacy)",
            Datapath::Bridge => "netlab bridge",
            Datapath::Redirect => "netlab redirect",
            Datapath::BridgeHostCt => "netlab bridge, host conntrack on",
            Datapath::RedirectHostCt => "netlab redirect, host conntrack on",
            Datapath::BridgeXdp => "netlab bridge, XDP entry",
            Datapath::RedirectXdp => "netlab redirect, XDP entry",
            Datapath::Direct => "direct veth (limit)",
        }
    }

    pub fn parse(id: &str) -> Option<Datapath> {
        Self::ALL.into_iter().find(|d| d.id() == id)
    }

    /// `netlab up --datapath` and `NETLAB_IPTABLES`; None for `direct`.
    pub fn netlab_args(self) -> Option<(&'static str, Option<&'static str>)> {
        match self {
            Datapath::IptablesNft => Some(("iptables", Some("nft"))),
            Datapath::IptablesLegacy => Some(("iptables", Some("legacy"))),
            Datapath::Bridge | Datapath::BridgeHostCt | Datapath::BridgeXdp => {
                Some(("bridge", None))
            }
            Datapath::Redirect | Datapath::RedirectHostCt | Datapath::RedirectXdp => {
                Some(("redirect", None))
            }
            Datapath::Direct => None,
        }
    }
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Where the traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficPath {
    /// outside → 198.18.0.1:8080 → blue:80 (DNAT).
    Dnat,
    /// red → 198.18.0.2 (masquerade behind 198.18.0.1).
    Masquerade,
    /// red → blue over the bridge.
    EastWest,
    /// One namespace to the other over a bare veth pair (datapath `direct`).
    Direct,
    /// The same four over IPv6, on the dual-stack default lab: outside →
    /// [2001:2::1]:8080 → blue:80 (DNAT over IPv6).
    Dnat6,
    /// red → 2001:2::2 (NAT66 behind 2001:2::1).
    Masquerade6,
    /// red → blue over the bridge, fd00:15::/64.
    EastWest6,
    /// The bare veth pair over IPv6 (fd00:19::/64).
    Direct6,
}

impl TrafficPath {
    pub const LAB: [TrafficPath; 3] = [
        TrafficPath::Dnat,
        TrafficPath::Masquerade,
        TrafficPath::EastWest,
    ];

    /// The lab's paths over IPv6 (the dual-stack lab).
    pub const LAB6: [TrafficPath; 3] = [
        TrafficPath::Dnat6,
        TrafficPath::Masquerade6,
        TrafficPath::EastWest6,
    ];

    /// Every lab path, IPv4's then IPv6's.
    pub fn lab() -> impl Iterator<Item = TrafficPath> {
        Self::LAB.into_iter().chain(Self::LAB6)
    }

    pub fn is_ipv6(self) -> bool {
        matches!(
            self,
            TrafficPath::Dnat6
                | TrafficPath::Masquerade6
                | TrafficPath::EastWest6
                | TrafficPath::Direct6
        )
    }

    /// The limit this path is compared with: the bare veth pair of its
    /// family.
    pub fn direct(self) -> TrafficPath {
        if self.is_ipv6() {
            TrafficPath::Direct6
        } else {
            TrafficPath::Direct
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TrafficPath::Dnat => {
                "outside → published port (DNAT: 198.18.0.2 → 198.18.0.1:8080 → blue:80)"
            }
            TrafficPath::Masquerade => {
                "lab namespace → outside (masquerade: red → 198.18.0.2, seen as 198.18.0.1)"
            }
            TrafficPath::EastWest => "namespace → namespace (red → blue, 192.168.15.0/24)",
            TrafficPath::Direct => "direct veth pair (198.19.0.1 → 198.19.0.2)",
            TrafficPath::Dnat6 => {
                "IPv6: outside → published port (DNAT: 2001:2::2 → [2001:2::1]:8080 → blue:80)"
            }
            TrafficPath::Masquerade6 => {
                "IPv6: lab namespace → outside (NAT66: red → 2001:2::2, seen as 2001:2::1)"
            }
            TrafficPath::EastWest6 => "IPv6: namespace → namespace (red → blue, fd00:15::/64)",
            TrafficPath::Direct6 => "IPv6: direct veth pair (fd00:19::1 → fd00:19::2)",
        }
    }
}

/// What a sample measures, and its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// 1-byte TCP request/response on one connection, transactions/s.
    Rr,
    /// TCP connect/request/close, connections/s.
    Crr,
    /// The same with 16 connections in flight, connections/s: the sender's
    /// CPU saturates.
    CrrPar,
    /// TCP bulk, Gbit/s (netlab-loadgen).
    Stream,
    /// iperf3's TCP bulk over the same path, Gbit/s (the cross-check).
    Iperf3,
    /// 18-byte UDP datagrams received, packets/s.
    Udp,
    /// The same flood from the world routed into the lab, which netlab
    /// drops on the uplink: datagrams sent per second (the sender's CPU
    /// also runs the drop).
    Drop,
    /// `netlab up` with N published ports, ms.
    Install,
    /// Publish one more port with N present: the datapath update, µs.
    Add,
    /// Remove it again: the datapath update, µs.
    Rm,
}

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Rr => "tx/s",
            Metric::Crr | Metric::CrrPar => "conn/s",
            Metric::Stream | Metric::Iperf3 => "Gbit/s",
            Metric::Udp | Metric::Drop => "pkt/s",
            Metric::Install => "ms",
            Metric::Add | Metric::Rm => "µs",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::Rr => "TCP request/response (1 byte, one connection)",
            Metric::Crr => "TCP connect/request/close, one at a time",
            Metric::CrrPar => "TCP connect/request/close, 16 in parallel",
            Metric::Stream => "TCP bulk (loadgen)",
            Metric::Iperf3 => "TCP bulk (iperf3 cross-check)",
            Metric::Udp => "UDP 18-byte packets received (64 per sendmmsg)",
            Metric::Drop => "UDP flood routed into the lab, dropped: packets sent",
            Metric::Install => "`netlab up` with N published ports",
            Metric::Add => "add 1 port with N present (datapath update)",
            Metric::Rm => "remove 1 port with N present (datapath update)",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub round: usize,
    /// Warm-up samples are recorded but left out of every summary.
    pub warmup: bool,
    pub datapath: Datapath,
    pub path: TrafficPath,
    pub metric: Metric,
    /// Published ports installed (the ones used included).
    pub ports: u32,
    /// In `metric.unit()`.
    pub value: f64,
    /// Transactions, datagrams or bytes the value is made of.
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Busy CPU time of the machine (both ends and the datapath) per
    /// transaction, from /proc/stat.
    #[serde(default)]
    pub cpu_us_per_tx: Option<f64>,
    /// The whole command (`publish add`/`rm`), ms.
    #[serde(default)]
    pub whole_ms: Option<f64>,
}

/// A check made before timing a datapath.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub round: usize,
    pub datapath: Datapath,
    pub ports: u32,
    /// What was checked and what was seen, e.g. "dnat tcp: server saw 198.18.0.2".
    pub checks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub datapath: Datapath,
    pub reason: String,
}

/// The conditions of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub mode: String,
    pub started_unix: u64,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub command: String,
    pub repetitions: usize,
    pub warmup_rounds: usize,
    pub seconds_per_run: f64,
    pub port_counts: Vec<u32>,
    /// The datapaths asked for, in round order.
    pub datapaths: Vec<Datapath>,
    pub br_netfilter: String,
    pub offloads: String,
    pub pinning: String,
    pub time_wait: String,
    pub flush: String,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub skipped: Vec<Skipped>,
    pub verifications: Vec<Verification>,
    pub samples: Vec<Sample>,
    /// What each eBPF program cost per packet during a request/response run.
    #[serde(default)]
    pub program_costs: Vec<ProgramCost>,
}

/// One program's cost over one measured run, from the kernel's accounting
/// (`run_time_ns / run_cnt` while `kernel.bpf_stats_enabled=1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub round: usize,
    pub warmup: bool,
    pub datapath: Datapath,
    pub path: TrafficPath,
    /// The load it was measured under: request/response (`rr`, cold
    /// caches), the UDP flood (`udp`, warm), `ping -f` (`ping`).
    #[serde(default = "rr")]
    pub load: String,
    pub program: String,
    pub ns_per_run: f64,
    pub runs: u64,
}

fn rr() -> String {
    "rr".to_owned()
}

impl Results {
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<Results> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The datapaths that have samples, in round order.
    pub fn datapaths(&self) -> Vec<Datapath> {
        let mut seen: Vec<Datapath> = self.samples.iter().map(|s| s.datapath).collect();
        seen.sort();
        seen.dedup();
        seen
    }

    /// The lab paths a report shows: IPv4's always, IPv6's when the run
    /// measured any (a run from before them has none).
    pub fn lab_paths(&self) -> Vec<TrafficPath> {
        let ipv6 = self
            .samples
            .iter()
            .any(|s| s.path.is_ipv6() && s.datapath != Datapath::Direct);
        TrafficPath::lab()
            .filter(|p| ipv6 || !p.is_ipv6())
            .collect()
    }

    /// (round, value) of the timed samples of one series.
    pub fn series(
        &self,
        datapath: Datapath,
        path: TrafficPath,
        metric: Metric,
        ports: u32,
    ) -> Vec<(usize, f64)> {
        self.samples
            .iter()
            .filter(|s| {
                !s.warmup
                    && s.datapath == datapath
                    && s.path == path
                    && s.metric == metric
                    && s.ports == ports
            })
            .map(|s| (s.round, s.value))
            .collect()
    }

    /// CPU µs per transaction of one series.
    pub fn cpu_series(
        &self,
        datapath: Datapath,
        path: TrafficPath,
        metric: Metric,
        ports: u32,
    ) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| {
                !s.warmup
                    && s.datapath == datapath
                    && s.path == path
                    && s.metric == metric
                    && s.ports == ports
            })
            .filter_map(|s| s.cpu_us_per_tx)
            .collect()
    }
}
