//! The reference datapath (`datapath = "iptables"`): the same NAT as the eBPF
//! datapath, built from iptables rules modelled on Docker's bridge rule set,
//! so a benchmark can compare the two and tests can replay the same traffic
//! through both. This is the one place netlab drives iptables.
//!
//! # What it installs
//!
//! Three chains of the lab's own, and jumps into them from the built-in chains:
//!
//! - `nat` `NL-<lab>-DNAT`, entered from `PREROUTING` (traffic arriving from
//!   the uplink or a lab namespace) and from `OUTPUT` (the host's own
//!   connections, as Docker without its userland proxy). Each jump carries
//!   `-d ADDR/32 -m addrtype --dst-type LOCAL`, one jump per host address of
//!   the lab (bridges and host-side veth ends, like the eBPF datapath's
//!   `LOCAL_ADDRS`), so the host's own interfaces are never published. The
//!   chain holds one `DNAT` per published port, to [`nat::backend_addr`].
//! - `nat` `NL-<lab>-POST`, entered from `POSTROUTING`: per masquerade subnet,
//!   Docker's `-s SUBNET ! -o BRIDGE -j MASQUERADE` (separate tcp and udp rules
//!   for `--to-ports` with the topology's `port_range`, and one for icmp; none
//!   when the lab has no uplink, as the eBPF datapath); then Docker's hairpin
//!   rule `-s BACKEND -d BACKEND -p PROTO --dport PORT -j MASQUERADE` per
//!   published port, so a namespace reaching its own published port gets the
//!   replies back through the host.
//! - `filter` `NL-<lab>-FWD`, entered from `FORWARD`: accepts replies to the
//!   lab's subnets, new connections DNATed to a published backend, and
//!   everything from the lab's subnets, so the lab works where `FORWARD`'s
//!   policy is DROP. The uplink's subnet is not a lab subnet: the "world"
//!   reaches the lab only through published ports.
//!
//! One difference from the eBPF datapath, kept because it is Docker's rule:
//! the eBPF NAT masquerades only what leaves through the uplink, while
//! `! -o BRIDGE` also masquerades lab traffic leaving through any other host
//! interface. Traffic between the lab and its uplink, which is what netlab's
//! tests and benchmarks send, is translated the same way by both.
//!
//! # How it is applied
//!
//! Every change is `iptables-restore --noflush` input fed on stdin: one
//! transaction per table (`nat`, then `filter`). Declaring a lab chain in that
//! input creates it, or empties it if it exists, so the chain's whole contents
//! are rewritten each time and rerunning converges. Built-in chains are never
//! flushed: the jumps are inserted at their top (`-I`) only when
//! `iptables-save` does not already show them, and stale or duplicate jumps
//! into the lab's chains are deleted one by one (`-D` with the saved rule), so
//! no other rule is touched. Rewriting a chain resets its counters.
//!
//! [`Backend::Nft`] runs `iptables-nft-restore`, `iptables-nft-save` and
//! `iptables-nft`; [`Backend::Legacy`] their `-legacy` twins (Debian package
//! `iptables`). Keep a lab's rules in one backend: [`install`] refuses a lab
//! whose chains exist in the other one. Only `-save` reads the other backend,
//! and without `-t` it lists existing tables without creating any.
//!
//! # Chain names
//!
//! iptables allows 28 characters. `NL-<lab>-DNAT` fits for labs of up to 20
//! characters; a longer name becomes `NL-<first 11 characters>.<FNV-1a hash of
//! the whole name, 8 hex digits>`, e.g. `NL-abcdefghijk.89abcdef-DNAT`. Lab
//! names never contain `.`, so a hashed name never equals a plain one.
//!
//! # br_netfilter
//!
//! With `net.bridge.bridge-nf-call-iptables=1` (on in the host, see
//! BENCHMARKING.md; the setting is per network namespace) frames bridged
//! between namespaces of the lab also walk `nat` PREROUTING/POSTROUTING,
//! `filter` FORWARD and conntrack, with the bridge as their in and out
//! interface. What that means here (each point checked by tests/tests/nat.rs):
//! - masquerade is `-o UPLINK` only, so bridged traffic is never
//!   masqueraded; `NL-<lab>-FWD` accepts lab traffic out of the lab's own
//!   interfaces (bridged traffic included) even under a DROP policy, and
//!   drops the rest: the lab is closed, as with the eBPF datapaths;
//! - every bridged flow costs a conntrack entry and a walk of these chains,
//!   which the eBPF datapath does not pay: benchmarks must state the setting;
//! - a namespace reaching *another* namespace's published port on the same
//!   bridge (red → 203.0.113.1:8080 → blue) works only with it: blue's reply
//!   is bridged straight to red, and only br_netfilter lets conntrack undo
//!   the DNAT on it (Docker loads br_netfilter for this reason);
//! - hairpin (blue → 203.0.113.1:8080 → blue) needs the bridge port's
//!   hairpin mode with it: the DNAT happens while the frame is being
//!   bridged, and the frame must leave by the port it came in on
//!   (`ip link set dev veth-blue-br type bridge_slave hairpin on`; Docker
//!   sets it when its userland proxy is off). This module leaves links
//!   alone: the lab's link setup sets hairpin mode on bridge ports for this
//!   datapath. With br_netfilter off, hairpin works without it.
//!
//! # Testing
//!
//! The unit tests here are pure. The live behaviour (published ports from
//! outside, the host and hairpin; masquerade; removal leaving iptables as it
//! was) is checked through the CLI by `tests/tests/nat.rs`, which runs every
//! NAT scenario on this datapath too.

use std::{
    collections::BTreeSet,
    env, fmt,
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    nat,
    state::PublishRecord,
    topology::{Ipv4Net, Place, Topology},
};

/// Chooses the iptables backend: `nft` (the default) or `legacy`.
pub const BACKEND_ENV: &str = "NETLAB_IPTABLES";

/// iptables' limit on a chain name.
pub const MAX_CHAIN_NAME: usize = 28;

/// `-w`: how long to wait for the xtables lock another iptables holds.
const LOCK_WAIT_SECONDS: &str = "10";

/// Which kernel interface the iptables binaries drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// nf_tables, through `iptables-nft*` (Debian's default `iptables`).
    Nft,
    /// The x_tables interface, through `iptables-legacy*`.
    Legacy,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// Reads [`BACKEND_ENV`]; unset or empty means [`Backend::Nft`].
    pub fn from_env() -> Result<Backend> {
        match env::var(BACKEND_ENV) {
            Ok(value) if !value.is_empty() => Backend::parse(&value),
            Ok(_) | Err(env::VarError::NotPresent) => Ok(Backend::Nft),
            Err(env::VarError::NotUnicode(_)) => {
                bail!("{BACKEND_ENV} is not valid UTF-8; set it to `nft` or `legacy`")
            }
        }
    }

    pub fn parse(name: &str) -> Result<Backend> {
        match name {
            "nft" => Ok(Backend::Nft),
            "legacy" => Ok(Backend::Legacy),
            other => {
                bail!("{BACKEND_ENV}=`{other}` is not an iptables backend; use `nft` or `legacy`")
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn other(self) -> Backend {
        match self {
            Backend::Nft => Backend::Legacy,
            Backend::Legacy => Backend::Nft,
        }
    }

    /// `iptables-nft`, `iptables-legacy-restore`, ...
    fn binary_name(self, tool: Tool) -> String {
        format!("iptables-{}{}", self.as_str(), tool.suffix())
    }

    /// The binary's path, when it is installed.
    fn find(self, tool: Tool) -> Option<PathBuf> {
        let name = self.binary_name(tool);
        // Root's PATH has the sbin directories, but not every caller's does.
        let path = env::var_os("PATH").unwrap_or_default();
        env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
    }

    fn require(self, tool: Tool) -> Result<PathBuf> {
        self.find(tool).with_context(|| {
            format!(
                "{} is not installed: the iptables datapath with backend `{self}` needs it \
                 (Debian: `apt-get install iptables`; or choose the other backend with {BACKEND_ENV}=nft|legacy)",
                self.binary_name(tool)
            )
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Iptables,
    Save,
    Restore,
}

impl Tool {
    fn suffix(self) -> &'static str {
        match self {
            Tool::Iptables => "",
            Tool::Save => "-save",
            Tool::Restore => "-restore",
        }
    }
}

/// The lab's own chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chains {
    /// `nat`: published ports.
    pub dnat: String,
    /// `nat`: masquerade and hairpin.
    pub post: String,
    /// `filter`: forwarding for the lab.
    pub fwd: String,
}

impl Chains {
    fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("nat", self.dnat.as_str()),
            ("nat", self.post.as_str()),
            ("filter", self.fwd.as_str()),
        ]
    }

    fn contains(&self, chain: &str) -> bool {
        self.all().iter().any(|(_, c)| *c == chain)
    }
}

/// The lab's chain names (see the module doc for the rule on long names).
pub fn chains(lab: &str) -> Chains {
    const PREFIX: &str = "NL-";
    const LONGEST_SUFFIX: &str = "-DNAT";
    const KEPT: usize = 11;
    let plain_fits = PREFIX.len() + lab.len() + LONGEST_SUFFIX.len() <= MAX_CHAIN_NAME;
    let plain_chars = !lab.is_empty()
        && lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let base = if plain_fits && plain_chars {
        format!("{PREFIX}{lab}")
    } else {
        let kept: String = lab
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(KEPT)
            .collect();
        format!("{PREFIX}{kept}.{:08x}", fnv1a(lab))
    };
    Chains {
        dnat: format!("{base}-DNAT"),
        post: format!("{base}-POST"),
        fwd: format!("{base}-FWD"),
    }
}

/// 32-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash: u32, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One rule: `-A chain spec` in iptables-save form.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    chain: String,
    spec: String,
}

impl Rule {
    fn new(chain: &str, spec: impl Into<String>) -> Rule {
        Rule {
            chain: chain.to_owned(),
            spec: spec.into(),
        }
    }

    /// The chain this rule jumps or goes to, if any.
    fn target(&self) -> Option<&str> {
        let mut words = self.spec.split_whitespace();
        while let Some(word) = words.next() {
            if matches!(word, "-j" | "--jump" | "-g" | "--goto") {
                return words.next();
            }
        }
        None
    }
}

/// What the lab wants in one table.
#[derive(Debug)]
struct TablePlan {
    table: &'static str,
    chains: Vec<String>,
    /// Into the lab's chains, from built-in ones.
    jumps: Vec<Rule>,
    /// The lab's chains' contents.
    body: Vec<Rule>,
}

/// A published port, resolved against the topology.
struct Published {
    proto: &'static str,
    host_port: u16,
    backend: Ipv4Addr,
    port: u16,
}

fn proto(name: &str) -> Option<&'static str> {
    match name {
        "tcp" => Some("tcp"),
        "udp" => Some("udp"),
        _ => None,
    }
}

/// The records that make rules; a record `ruleset` cannot resolve is left out
/// (`install` and `sync_published` refuse it first, see [`check_published`]).
fn resolve(topo: &Topology, published: &[PublishRecord]) -> Vec<Published> {
    let mut seen = BTreeSet::new();
    published
        .iter()
        .filter_map(|r| {
            Some(Published {
                proto: proto(&r.proto)?,
                host_port: r.host_port,
                backend: nat::backend_addr(topo, &r.namespace)?,
                port: r.port,
            })
        })
        .filter(|p| seen.insert((p.proto, p.host_port)))
        .collect()
}

fn check_published(topo: &Topology, published: &[PublishRecord]) -> Result<()> {
    for r in published {
        if proto(&r.proto).is_none() {
            bail!(
                "published port {r}: unknown protocol `{}`; use tcp or udp",
                r.proto
            );
        }
        if nat::backend_addr(topo, &r.namespace).is_none() {
            bail!(
                "published port {r}: namespace `{}` has no address in lab `{}` to forward to",
                r.namespace,
                topo.name
            );
        }
    }
    Ok(())
}

/// The lab's interfaces in the host namespace (bridges, then host-side veth
/// ends) with their addresses, in declaration order.
fn host_ifaces(topo: &Topology) -> Vec<(&str, Ipv4Net)> {
    topo.bridges
        .iter()
        .flat_map(|b| b.addresses.iter().map(move |a| (b.name.as_str(), a.net)))
        .chain(
            topo.veth_ends()
                .filter(|e| e.place == Place::Host)
                .flat_map(|e| e.addresses.iter().map(move |a| (e.name.as_str(), a.net))),
        )
        .collect()
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn plan(lab: &str, topo: &Topology, published: &[PublishRecord]) -> [TablePlan; 2] {
    let names = chains(lab);
    let published = resolve(topo, published);
    let ifaces = host_ifaces(topo);
    let uplink = topo.nat.uplink.as_deref();

    let mut local = Vec::new();
    for (_, net) in &ifaces {
        push_unique(&mut local, net.addr);
    }
    // The lab's side of the host: every interface but the uplink.
    let lab_ifaces: Vec<(&str, Ipv4Net)> = ifaces
        .iter()
        .filter(|(name, _)| Some(*name) != uplink)
        .copied()
        .collect();
    let mut lab_subnets = Vec::new();
    for net in lab_ifaces
        .iter()
        .map(|(_, net)| *net)
        .chain(topo.nat.masquerade.iter().copied())
    {
        push_unique(&mut lab_subnets, net.network());
    }

    let mut nat_jumps = Vec::new();
    for builtin in ["PREROUTING", "OUTPUT"] {
        for addr in &local {
            nat_jumps.push(Rule::new(
                builtin,
                format!(
                    "-d {addr}/32 -m addrtype --dst-type LOCAL -j {}",
                    names.dnat
                ),
            ));
        }
    }
    // `localhost:PORT` from the host, as Docker without its userland proxy:
    // DNAT from OUTPUT, `route_localnet` on the lab's bridges (set by `up`)
    // so a 127/8 source may be routed there, and masquerade of that source.
    nat_jumps.push(Rule::new(
        "OUTPUT",
        format!("-d 127.0.0.0/8 -j {}", names.dnat),
    ));
    nat_jumps.push(Rule::new("POSTROUTING", format!("-j {}", names.post)));

    let mut nat_body = Vec::new();
    for p in &published {
        nat_body.push(Rule::new(
            &names.dnat,
            format!(
                "-p {proto} -m {proto} --dport {host_port} -j DNAT --to-destination {backend}:{port}",
                proto = p.proto,
                host_port = p.host_port,
                backend = p.backend,
                port = p.port
            ),
        ));
    }
    if !published.is_empty() {
        nat_body.push(Rule::new(
            &names.post,
            "-s 127.0.0.0/8 ! -o lo -j MASQUERADE".to_owned(),
        ));
    }
    // Masquerade out of the uplink only (Docker writes `! -o BRIDGE`, which
    // would also cover the host's own interfaces; the lab is closed).
    if let (Some(uplink), Some(_)) = (topo.nat.uplink.as_deref(), nat::uplink_addr(topo)) {
        let (port_min, port_max) = topo.nat.port_range;
        for subnet in topo.nat.masquerade.iter().map(|n| n.network()) {
            for proto in ["tcp", "udp"] {
                nat_body.push(Rule::new(
                    &names.post,
                    format!(
                        "-s {subnet} -o {uplink} -p {proto} -j MASQUERADE --to-ports {port_min}-{port_max}"
                    ),
                ));
            }
            nat_body.push(Rule::new(
                &names.post,
                format!("-s {subnet} -o {uplink} -p icmp -j MASQUERADE"),
            ));
        }
    }
    let mut hairpins = Vec::new();
    for p in &published {
        push_unique(&mut hairpins, (p.backend, p.proto, p.port));
    }
    for (backend, proto, port) in &hairpins {
        nat_body.push(Rule::new(
            &names.post,
            format!(
                "-s {backend}/32 -d {backend}/32 -p {proto} -m {proto} --dport {port} -j MASQUERADE"
            ),
        ));
    }

    let mut fwd_body = Vec::new();
    // conntrack marks what it cannot track (malformed L4, ICMP errors about
    // no flow) INVALID, MASQUERADE skips it, and it would leave the uplink
    // with its lab source (kube-proxy drops INVALID for the same leak).
    if let Some(uplink) = topo.nat.uplink.as_deref() {
        for subnet in topo.nat.masquerade.iter().map(|n| n.network()) {
            fwd_body.push(Rule::new(
                &names.fwd,
                format!("-s {subnet} -o {uplink} -m conntrack --ctstate INVALID -j DROP"),
            ));
        }
    }
    for subnet in &lab_subnets {
        fwd_body.push(Rule::new(
            &names.fwd,
            format!("-d {subnet} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ));
    }
    for (backend, proto, port) in &hairpins {
        fwd_body.push(Rule::new(
            &names.fwd,
            format!(
                "-d {backend}/32 -p {proto} -m conntrack --ctstate DNAT -m {proto} --dport {port} -j ACCEPT"
            ),
        ));
    }
    // The lab is closed, as in the eBPF datapaths: its namespaces reach the
    // lab's own interfaces and the uplink, and nothing the host could
    // forward them to beyond.
    let mut lab_outputs: Vec<&str> = Vec::new();
    for name in topo
        .bridges
        .iter()
        .map(|b| b.name.as_str())
        .chain(ifaces.iter().map(|(name, _)| *name))
    {
        push_unique(&mut lab_outputs, name);
    }
    for subnet in &lab_subnets {
        for name in &lab_outputs {
            fwd_body.push(Rule::new(
                &names.fwd,
                format!("-s {subnet} -o {name} -j ACCEPT"),
            ));
        }
        fwd_body.push(Rule::new(&names.fwd, format!("-s {subnet} -j DROP")));
    }

    [
        TablePlan {
            table: "nat",
            chains: vec![names.dnat.clone(), names.post.clone()],
            jumps: nat_jumps,
            body: nat_body,
        },
        TablePlan {
            table: "filter",
            chains: vec![names.fwd.clone()],
            jumps: vec![Rule::new("FORWARD", format!("-j {}", names.fwd))],
            body: fwd_body,
        },
    ]
}

/// Jump changes for one table: rules to delete (as saved) and to insert.
#[derive(Default)]
struct JumpEdits<'a> {
    delete: Vec<Rule>,
    insert: Vec<&'a Rule>,
}

fn render(plans: &[TablePlan], edits: &[JumpEdits<'_>]) -> String {
    let mut out = String::new();
    for (i, plan) in plans.iter().enumerate() {
        let edit = edits.get(i);
        out.push_str(&format!("*{}\n", plan.table));
        // Declaring a chain under --noflush creates it or empties it.
        for chain in &plan.chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in edit.map(|e| e.delete.as_slice()).unwrap_or_default() {
            out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
        }
        for rule in edit.map(|e| e.insert.as_slice()).unwrap_or_default() {
            out.push_str(&format!("-I {} {}\n", rule.chain, rule.spec));
        }
        for rule in &plan.body {
            out.push_str(&format!("-A {} {}\n", rule.chain, rule.spec));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The `iptables-restore --noflush` input that [`install`] feeds on a host
/// without the lab's jumps (on a rerun it leaves out the jumps already there).
/// Published records it cannot resolve are left out; `install` refuses them.
pub fn ruleset(lab: &str, topo: &Topology, published: &[PublishRecord]) -> String {
    let plans = plan(lab, topo, published);
    let edits: Vec<JumpEdits<'_>> = plans
        .iter()
        .map(|p| JumpEdits {
            delete: Vec::new(),
            insert: p.jumps.iter().collect(),
        })
        .collect();
    render(&plans, &edits)
}

/// One table of `iptables-save` output.
#[derive(Debug, Default)]
struct SavedTable {
    name: String,
    chains: Vec<String>,
    rules: Vec<Rule>,
}

fn parse_save(text: &str) -> Vec<SavedTable> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.to_owned(),
                ..SavedTable::default()
            });
        } else if let Some(table) = tables.last_mut() {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(chain) = decl.split_whitespace().next() {
                    table.chains.push(chain.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                table.rules.push(Rule::new(chain, spec.trim()));
            }
        }
    }
    tables
}

fn saved_table<'a>(saved: &'a [SavedTable], name: &str) -> Option<&'a SavedTable> {
    saved.iter().find(|t| t.name == name)
}

/// Rules outside the lab's chains that jump into them.
fn jumps_into<'a>(table: &'a SavedTable, ours: &'a Chains) -> impl Iterator<Item = &'a Rule> {
    table
        .rules
        .iter()
        .filter(|r| !ours.contains(&r.chain) && r.target().is_some_and(|t| ours.contains(t)))
}

/// Keeps one of each wanted jump, deletes the rest, inserts what is missing.
fn jump_edits<'a>(
    plans: &'a [TablePlan],
    saved: &[SavedTable],
    ours: &Chains,
) -> Vec<JumpEdits<'a>> {
    plans
        .iter()
        .map(|plan| {
            let mut edits = JumpEdits::default();
            let mut kept: Vec<&Rule> = Vec::new();
            if let Some(table) = saved_table(saved, plan.table) {
                for rule in jumps_into(table, ours) {
                    if plan.jumps.contains(rule) && !kept.contains(&rule) {
                        kept.push(rule);
                    } else {
                        edits.delete.push(rule.clone());
                    }
                }
            }
            edits.insert = plan.jumps.iter().filter(|j| !kept.contains(j)).collect();
            edits
        })
        .collect()
}

/// Runs a tool of `backend`, feeding `input` on stdin; returns stdout.
fn run(backend: Backend, tool: Tool, args: &[&str], input: Option<&str>) -> Result<String> {
    let binary = backend.require(tool)?;
    let shown = || format!("{} {}", binary.display(), args.join(" "));
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", shown()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing the rules to {}", shown()))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", shown()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failed_line = input.and_then(|text| failed_input_line(&stderr, text));
        bail!(
            "{} failed ({}): {}{}",
            shown(),
            output.status,
            stderr.trim(),
            failed_line
                .map(|l| format!("\n  the failing input line: {l}"))
                .unwrap_or_default()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{} printed non-UTF-8", shown()))
}

/// iptables-restore names the input line it rejected (`line 5 failed`).
fn failed_input_line<'a>(stderr: &str, input: &'a str) -> Option<&'a str> {
    let after = stderr.split("line ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let number: usize = digits.parse().ok()?;
    input.lines().nth(number.checked_sub(1)?)
}

fn save(backend: Backend) -> Result<Vec<SavedTable>> {
    // No `-t`: listing only the tables that exist creates none.
    Ok(parse_save(&run(backend, Tool::Save, &[], None)?))
}

fn restore(backend: Backend, text: &str) -> Result<()> {
    log::debug!("iptables-{backend}-restore --noflush:\n{text}");
    run(
        backend,
        Tool::Restore,
        &["--noflush", "-w", LOCK_WAIT_SECONDS],
        Some(text),
    )
    .map(drop)
}

/// The lab's chains that exist in a saved rule set.
fn present<'a>(saved: &[SavedTable], ours: &'a Chains) -> Vec<&'a str> {
    ours.all()
        .into_iter()
        .filter(|(table, chain)| {
            saved_table(saved, table).is_some_and(|t| t.chains.iter().any(|c| c == chain))
        })
        .map(|(_, chain)| chain)
        .collect()
}

/// Installs (idempotently: rerunning converges, no duplicate rules) the lab's
/// chains and the jumps into them.
pub fn install(
    lab: &str,
    topo: &Topology,
    published: &[PublishRecord],
    backend: Backend,
) -> Result<()> {
    check_published(topo, published)?;
    let ours = chains(lab);
    let other = backend.other();
    if other.find(Tool::Save).is_some() {
        let found = present(&save(other)?, &ours);
        if !found.is_empty() {
            bail!(
                "lab `{lab}` already has iptables chains in the {other} backend ({}); \
                 run `netlab down --lab {lab}` first, or set {BACKEND_ENV}={other}",
                found.join(", ")
            );
        }
    }
    let saved = save(backend)?;
    let plans = plan(lab, topo, published);
    let edits = jump_edits(&plans, &saved, &ours);
    restore(backend, &render(&plans, &edits))
        .with_context(|| format!("installing lab `{lab}`'s iptables rules ({backend} backend)"))
}

/// Replaces the DNAT rules so they are exactly `published` (with the hairpin
/// and forwarding rules that follow them), rewriting only the lab's chains.
pub fn sync_published(
    lab: &str,
    topo: &Topology,
    published: &[PublishRecord],
    backend: Backend,
) -> Result<()> {
    check_published(topo, published)?;
    let ours = chains(lab);
    let found = present(&save(backend)?, &ours);
    let missing: Vec<&str> = ours
        .all()
        .into_iter()
        .map(|(_, chain)| chain)
        .filter(|chain| !found.contains(chain))
        .collect();
    if !missing.is_empty() {
        bail!(
            "lab `{lab}` has no iptables chain {} in the {backend} backend: is it up with \
             datapath `iptables` (and {BACKEND_ENV} as it was at `up`)? `netlab up` reinstalls them",
            missing.join(", ")
        );
    }
    let plans = plan(lab, topo, published);
    restore(backend, &render(&plans, &[]))
        .with_context(|| format!("updating lab `{lab}`'s published ports ({backend} backend)"))
}

/// The restore input that deletes the lab's jumps and chains, if any exist.
fn removal(saved: &[SavedTable], ours: &Chains) -> Option<String> {
    let mut out = String::new();
    for table in saved {
        let jumps: Vec<&Rule> = jumps_into(table, ours).collect();
        let chains: Vec<&String> = table.chains.iter().filter(|c| ours.contains(c)).collect();
        if jumps.is_empty() && chains.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n", table.name));
        for rule in jumps {
            out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
        }
        for chain in &chains {
            out.push_str(&format!("-F {chain}\n"));
        }
        for chain in &chains {
            out.push_str(&format!("-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// Removes the jumps and the lab's chains from every backend whose binaries
/// are installed; fine if they are already gone (`down` after a crash).
pub fn remove(lab: &str) -> Result<()> {
    let ours = chains(lab);
    let mut errors = Vec::new();
    for backend in Backend::ALL {
        if backend.find(Tool::Save).is_none() || backend.find(Tool::Restore).is_none() {
            continue;
        }
        let result = save(backend).and_then(|saved| match removal(&saved, &ours) {
            Some(text) => restore(backend, &text),
            None => Ok(()),
        });
        if let Err(e) = result {
            errors.push(format!("{backend} backend: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!(
            "removing lab `{lab}`'s iptables rules: {}",
            errors.join("; ")
        );
    }
    Ok(())
}

/// The lab's chains as `iptables -t TABLE -L CHAIN -v -n -x` lists them, with
/// packet and byte counters, one listing after another.
pub fn rules(lab: &str, backend: Backend) -> Result<Vec<String>> {
    let ours = chains(lab);
    // Check first: listing a missing chain can create its table.
    let saved = save(backend)?;
    let found = present(&saved, &ours);
    let mut lines = Vec::new();
    for (table, chain) in ours.all() {
        if !found.contains(&chain) {
            bail!(
                "lab `{lab}` has no iptables chain {chain} in the {backend} backend's {table} table: \
                 is it up with datapath `iptables` (and {BACKEND_ENV} as it was at `up`)?"
            );
        }
        let listing = run(
            backend,
            Tool::Iptables,
            &[
                "-w",
                LOCK_WAIT_SECONDS,
                "-t",
                table,
                "-L",
                chain,
                "-v",
                "-n",
                "-x",
            ],
            None,
        )?;
        lines.extend(
            listing
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn record(host_port: u16, proto: &str, namespace: &str, port: u16) -> PublishRecord {
        PublishRecord {
            host_port,
            proto: proto.into(),
            namespace: namespace.into(),
            port,
        }
    }

    pub(super) fn default_published() -> Vec<PublishRecord> {
        vec![
            record(8080, "tcp", "blue", 80),
            record(5353, "udp", "blue", 53),
        ]
    }

    const DEFAULT_RULESET: &str = "\
*nat
:NL-default-DNAT - [0:0]
:NL-default-POST - [0:0]
-I PREROUTING -d 192.168.15.5/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I PREROUTING -d 203.0.113.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I OUTPUT -d 192.168.15.5/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I OUTPUT -d 203.0.113.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I OUTPUT -d 127.0.0.0/8 -j NL-default-DNAT
-I POSTROUTING -j NL-default-POST
-A NL-default-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.15.2:80
-A NL-default-DNAT -p udp -m udp --dport 5353 -j DNAT --to-destination 192.168.15.2:53
-A NL-default-POST -s 127.0.0.0/8 ! -o lo -j MASQUERADE
-A NL-default-POST -s 192.168.15.0/24 -o nl-uplink -p tcp -j MASQUERADE --to-ports 32768-60999
-A NL-default-POST -s 192.168.15.0/24 -o nl-uplink -p udp -j MASQUERADE --to-ports 32768-60999
-A NL-default-POST -s 192.168.15.0/24 -o nl-uplink -p icmp -j MASQUERADE
-A NL-default-POST -s 192.168.15.2/32 -d 192.168.15.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A NL-default-POST -s 192.168.15.2/32 -d 192.168.15.2/32 -p udp -m udp --dport 53 -j MASQUERADE
COMMIT
*filter
:NL-default-FWD - [0:0]
-I FORWARD -j NL-default-FWD
-A NL-default-FWD -s 192.168.15.0/24 -o nl-uplink -m conntrack --ctstate INVALID -j DROP
-A NL-default-FWD -d 192.168.15.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NL-default-FWD -d 192.168.15.2/32 -p tcp -m conntrack --ctstate DNAT -m tcp --dport 80 -j ACCEPT
-A NL-default-FWD -d 192.168.15.2/32 -p udp -m conntrack --ctstate DNAT -m udp --dport 53 -j ACCEPT
-A NL-default-FWD -s 192.168.15.0/24 -o v-net-0 -j ACCEPT
-A NL-default-FWD -s 192.168.15.0/24 -o nl-uplink -j ACCEPT
-A NL-default-FWD -s 192.168.15.0/24 -j DROP
COMMIT
";

    #[test]
    fn default_lab_ruleset_is_exactly_dockers_model() {
        let topo = crate::topology::default_lab().unwrap();
        let text = ruleset("default", &topo, &default_published());
        assert_eq!(text, DEFAULT_RULESET, "got:\n{text}");
    }

    #[test]
    fn host_interfaces_are_never_matched() {
        let topo = crate::topology::default_lab().unwrap();
        let text = ruleset("default", &topo, &default_published());
        assert!(!text.contains("192.0.2."), "{text}");
        // Every DNAT entry is bound to one of the lab's host addresses.
        for line in text.lines().filter(|l| l.contains("addrtype")) {
            assert!(
                line.contains("-d 192.168.15.5/32") || line.contains("-d 203.0.113.1/32"),
                "{line}"
            );
        }
    }

    #[test]
    fn chain_names_fit_and_stay_distinct() {
        let long = "abcdefghijklmnopqrstuvwxyz012345";
        assert_eq!(long.len(), 32);
        for lab in [
            long,
            "a",
            "default",
            "abcdefghijklmnopqrst",
            "abcdefghijklmnopqrstu",
        ] {
            let c = chains(lab);
            for name in [&c.dnat, &c.post, &c.fwd] {
                assert!(
                    name.len() <= MAX_CHAIN_NAME,
                    "{name} is {} bytes",
                    name.len()
                );
            }
        }
        assert_eq!(chains("default").dnat, "NL-default-DNAT");
        assert_eq!(
            chains("abcdefghijklmnopqrst").fwd,
            "NL-abcdefghijklmnopqrst-FWD"
        );
        let hashed = chains(long);
        assert!(
            hashed.dnat.starts_with("NL-abcdefghijk."),
            "{}",
            hashed.dnat
        );
        assert_eq!(hashed, chains(long), "names are stable");
        let sibling = chains("abcdefghijklmnopqrstuvwxyz012346");
        assert_ne!(hashed.dnat, sibling.dnat);
        // A hashed name cannot be mistaken for a short lab's.
        assert!(hashed.dnat.contains('.') && !chains("abcdefghijk").dnat.contains('.'));
    }

    #[test]
    fn ruleset_leaves_out_what_install_refuses() {
        let topo = crate::topology::default_lab().unwrap();
        let bad = vec![
            record(9000, "sctp", "blue", 9000),
            record(9001, "tcp", "nosuch", 1),
        ];
        assert!(check_published(&topo, &bad[..1]).is_err());
        assert!(check_published(&topo, &bad[1..]).is_err());
        let text = ruleset("default", &topo, &bad);
        assert!(!text.contains("9000") && !text.contains("9001"), "{text}");
        check_published(&topo, &default_published()).unwrap();
    }

    #[test]
    fn no_uplink_means_no_masquerade() {
        let mut topo = crate::topology::default_lab().unwrap();
        topo.nat.uplink = None;
        let text = ruleset("default", &topo, &[]);
        assert!(!text.contains("MASQUERADE"), "{text}");
        assert!(text.contains("-A NL-default-FWD -s 192.168.15.0/24 -o v-net-0 -j ACCEPT"));
        assert!(text.contains("-A NL-default-FWD -s 192.168.15.0/24 -j DROP"));
    }

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:NL-default-DNAT - [0:0]
:NL-default-POST - [0:0]
-A PREROUTING -d 203.0.113.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -d 10.9.9.9/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-A POSTROUTING -j NL-default-POST
-A POSTROUTING -j NL-default-POST
-A NL-default-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.15.2:80
COMMIT
*filter
:FORWARD DROP [3:180]
:NL-other-FWD - [0:0]
-A FORWARD -j NL-other-FWD
COMMIT
";

    #[test]
    fn rerun_inserts_only_missing_jumps_and_drops_strays() {
        let topo = crate::topology::default_lab().unwrap();
        let plans = plan("default", &topo, &default_published());
        let saved = parse_save(SAVED);
        let edits = jump_edits(&plans, &saved, &chains("default"));
        let text = render(&plans, &edits);
        let jump_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-I ") || l.starts_with("-D "))
            .collect();
        assert_eq!(
            jump_lines,
            [
                "-D PREROUTING -d 10.9.9.9/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT",
                "-D POSTROUTING -j NL-default-POST",
                "-I PREROUTING -d 192.168.15.5/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT",
                "-I OUTPUT -d 192.168.15.5/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT",
                "-I OUTPUT -d 203.0.113.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT",
                "-I OUTPUT -d 127.0.0.0/8 -j NL-default-DNAT",
                "-I FORWARD -j NL-default-FWD",
            ]
        );
        // Built-in chains are never declared (which would flush them).
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(":PREROUTING") || l.starts_with(":FORWARD"))
        );
    }

    #[test]
    fn removal_touches_only_the_labs_rules() {
        let text = removal(&parse_save(SAVED), &chains("default")).unwrap();
        assert_eq!(
            text,
            "\
*nat
-D PREROUTING -d 203.0.113.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-D PREROUTING -d 10.9.9.9/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-D POSTROUTING -j NL-default-POST
-D POSTROUTING -j NL-default-POST
-F NL-default-DNAT
-F NL-default-POST
-X NL-default-DNAT
-X NL-default-POST
COMMIT
"
        );
        assert_eq!(removal(&parse_save(SAVED), &chains("gone")), None);
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!(Backend::parse("nft").unwrap(), Backend::Nft);
        assert_eq!(Backend::parse("legacy").unwrap(), Backend::Legacy);
        let err = Backend::parse("nftables").unwrap_err().to_string();
        assert!(err.contains("use `nft` or `legacy`"), "{err}");
        assert_eq!(
            Backend::Legacy.binary_name(Tool::Restore),
            "iptables-legacy-restore"
        );
        assert_eq!(Backend::Nft.binary_name(Tool::Iptables), "iptables-nft");
    }

    #[test]
    fn failed_line_is_quoted_back() {
        let input = "*nat\n:X - [0:0]\n-A X -j BOGUS\nCOMMIT\n";
        assert_eq!(
            failed_input_line("iptables-restore: line 3 failed", input),
            Some("-A X -j BOGUS")
        );
        assert_eq!(failed_input_line("something else", input), None);
    }
}
