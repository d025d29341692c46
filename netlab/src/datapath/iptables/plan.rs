//! Pure planning: the rules a lab wants, the edits that bring a saved rule
//! set there, and the `iptables-restore` input that applies them. No
//! process runs here; [`super::exec`] feeds the result to iptables.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr};

use anyhow::{Result, bail};

use super::naming::{Chains, chains};
use crate::topology::{InForce, Ipv4Net, Proto, PublishedPort, Service, Topology};

/// One rule: `-A chain spec` in iptables-save form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rule {
    pub chain: String,
    pub spec: String,
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
pub(super) struct TablePlan {
    table: &'static str,
    chains: Vec<String>,
    /// Into the lab's chains, from built-in ones.
    jumps: Vec<Rule>,
    /// The lab's chains' contents.
    body: Vec<Rule>,
    /// Chains of the lab's that exist and are no longer wanted (a removed
    /// Service's), emptied and deleted after the body.
    pub stale: Vec<String>,
}

impl TablePlan {
    /// Marks the lab's chains of `saved` this plan no longer has as stale.
    pub(super) fn find_stale(&mut self, saved: &[SavedTable], ours: &Chains) {
        if let Some(table) = saved_table(saved, self.table) {
            self.stale = table
                .chains
                .iter()
                .filter(|c| ours.is_service_chain(c) && !self.chains.contains(c))
                .cloned()
                .collect();
        }
    }
}

/// A published port, resolved against the topology to a backend address
/// of one family.
struct Published<A = Ipv4Addr> {
    proto: Proto,
    host_port: u16,
    backend: A,
    port: u16,
}

/// The ports that make rules, each once, to the backend address `backend`
/// finds; a port it finds none for is left out (for IPv4, `install` and
/// `sync_published` refuse it first, see [`check_published`]).
fn resolve<A>(
    published: &[PublishedPort],
    backend: impl Fn(&PublishedPort) -> Option<A>,
) -> Vec<Published<A>> {
    let mut seen = BTreeSet::new();
    published
        .iter()
        .filter_map(|r| {
            Some(Published {
                proto: r.proto,
                host_port: r.host_port,
                backend: backend(r)?,
                port: r.port,
            })
        })
        .filter(|p| seen.insert((p.proto, p.host_port)))
        .collect()
}

pub(super) fn check_published(topo: &Topology, published: &[PublishedPort]) -> Result<()> {
    for r in published {
        if r.backend(topo).is_none() {
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
    topo.host_addresses()
        .map(|(name, a)| (name, a.net))
        .collect()
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

pub(super) fn plan(lab: &str, topo: &Topology, in_force: &InForce<'_>) -> [TablePlan; 2] {
    let names = chains(lab);
    let published = resolve(in_force.published, |r| r.backend(topo));
    let services = in_force.services;
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

    let mut nat_jumps = dnat_jumps(Ip::V4, &local, &names.dnat);
    // `localhost:PORT` from the host, as Docker without its userland proxy:
    // DNAT from OUTPUT, `route_localnet` on the lab's bridges (set by `up`)
    // so a 127/8 source may be routed there, and masquerade of that source.
    nat_jumps.push(Rule::new(
        "OUTPUT",
        format!("-d 127.0.0.0/8 -j {}", names.dnat),
    ));
    nat_jumps.push(Rule::new("POSTROUTING", format!("-j {}", names.post)));
    if let Some(range) = topo.nat.service_range {
        for builtin in ["PREROUTING", "OUTPUT"] {
            nat_jumps.push(Rule::new(builtin, format!("-d {range} -j {}", names.svc)));
        }
    }

    let mut nat_body: Vec<Rule> = published
        .iter()
        .map(|p| dnat_rule(Ip::V4, &names.dnat, p))
        .collect();
    let mut service_chains = Vec::new();
    service_rules(topo, &names, services, &mut nat_body, &mut service_chains);
    if !published.is_empty() {
        nat_body.push(Rule::new(
            &names.post,
            "-s 127.0.0.0/8 ! -o lo -j MASQUERADE".to_owned(),
        ));
    }
    if let (Some(uplink), Some(_)) = (topo.nat.uplink.as_deref(), topo.uplink_addr()) {
        for subnet in topo.nat.masquerade.iter().map(|n| n.network()) {
            nat_body.extend(masquerade_rules(
                Ip::V4,
                &names.post,
                subnet,
                uplink,
                topo.nat.port_range,
            ));
        }
    }
    let mut hairpins = Vec::new();
    for p in &published {
        push_unique(&mut hairpins, (p.backend, p.proto, p.port));
    }
    // A Service's backends on this node, as published ports' backends:
    // reached from the world (a NodePort) and from themselves.
    for service in services {
        for (_, backend) in topo.local_backends(service) {
            push_unique(
                &mut hairpins,
                (*backend.ip(), service.proto, backend.port()),
            );
        }
    }
    for (backend, proto, port) in &hairpins {
        nat_body.push(hairpin_rule(Ip::V4, &names.post, backend, *proto, *port));
    }

    let mut fwd_body = Vec::new();
    // ClusterIPs serve the lab, not the world (which has NodePorts); and a
    // ClusterIP no backend took is nobody's (kube-proxy rejects it).
    if let Some(range) = topo.nat.service_range {
        if let Some(uplink) = topo.nat.uplink.as_deref() {
            fwd_body.push(Rule::new(
                &names.fwd,
                format!("-i {uplink} -m conntrack --ctstate DNAT --ctorigdst {range} -j DROP"),
            ));
        }
        fwd_body.push(Rule::new(&names.fwd, format!("-d {range} -j DROP")));
    }
    if let Some(uplink) = topo.nat.uplink.as_deref() {
        for subnet in topo.nat.masquerade.iter().map(|n| n.network()) {
            fwd_body.push(invalid_drop(&names.fwd, subnet, uplink));
        }
    }
    for subnet in &lab_subnets {
        fwd_body.push(replies_accept(&names.fwd, subnet));
    }
    for (backend, proto, port) in &hairpins {
        fwd_body.push(dnat_accept(Ip::V4, &names.fwd, backend, *proto, *port));
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
    // Closed inbound too, as the eBPF datapaths (and Docker 28 for routed
    // access to a NAT network's unpublished ports): what the world routes
    // through the uplink reaches a lab subnet only as a flow the lab
    // opened or a published port's (accepted above), unless the subnet is
    // routed as it is (not masqueraded); and nothing transits the host.
    if let Some(uplink) = uplink {
        let masqueraded: Vec<Ipv4Net> = topo.nat.masquerade.iter().map(|n| n.network()).collect();
        for subnet in &lab_subnets {
            let verdict = if masqueraded.contains(subnet) {
                "DROP"
            } else {
                "ACCEPT"
            };
            fwd_body.push(Rule::new(
                &names.fwd,
                format!("-i {uplink} -d {subnet} -j {verdict}"),
            ));
        }
        fwd_body.push(Rule::new(&names.fwd, format!("-i {uplink} -j DROP")));
    }

    let mut nat_chains = vec![names.dnat.clone(), names.post.clone(), names.svc.clone()];
    nat_chains.extend(service_chains);
    [
        TablePlan {
            table: "nat",
            chains: nat_chains,
            jumps: nat_jumps,
            body: nat_body,
            stale: Vec::new(),
        },
        TablePlan {
            table: "filter",
            chains: vec![names.fwd.clone()],
            jumps: vec![Rule::new("FORWARD", format!("-j {}", names.fwd))],
            body: fwd_body,
            stale: Vec::new(),
        },
    ]
}

/// The family a rule is written for: what iptables and ip6tables spell
/// differently in rules that mean the same.
#[derive(Clone, Copy)]
enum Ip {
    V4,
    V6,
}

impl Ip {
    /// One host's prefix length.
    fn host(self) -> u8 {
        match self {
            Ip::V4 => 32,
            Ip::V6 => 128,
        }
    }

    /// ICMP's protocol name.
    fn icmp(self) -> &'static str {
        match self {
            Ip::V4 => "icmp",
            Ip::V6 => "ipv6-icmp",
        }
    }

    /// `ADDR:PORT`, the address bracketed for IPv6.
    fn socket(self, addr: impl fmt::Display, port: u16) -> String {
        match self {
            Ip::V4 => format!("{addr}:{port}"),
            Ip::V6 => format!("[{addr}]:{port}"),
        }
    }
}

/// From PREROUTING and OUTPUT into the DNAT chain, for packets to one of
/// the lab's host addresses `local`.
fn dnat_jumps(ip: Ip, local: &[impl fmt::Display], dnat: &str) -> Vec<Rule> {
    let host = ip.host();
    ["PREROUTING", "OUTPUT"]
        .into_iter()
        .flat_map(|builtin| {
            local.iter().map(move |addr| {
                Rule::new(
                    builtin,
                    format!("-d {addr}/{host} -m addrtype --dst-type LOCAL -j {dnat}"),
                )
            })
        })
        .collect()
}

/// A published port's DNAT to its backend.
fn dnat_rule<A: fmt::Display + Copy>(ip: Ip, chain: &str, p: &Published<A>) -> Rule {
    Rule::new(
        chain,
        format!(
            "-p {proto} -m {proto} --dport {host_port} -j DNAT --to-destination {to}",
            proto = p.proto,
            host_port = p.host_port,
            to = ip.socket(p.backend, p.port)
        ),
    )
}

/// Masquerade of `subnet` out of the uplink only (Docker writes `! -o
/// BRIDGE`, which would also cover the host's own interfaces; the lab is
/// closed): TCP and UDP from `ports`, and ICMP.
fn masquerade_rules(
    ip: Ip,
    chain: &str,
    subnet: impl fmt::Display,
    uplink: &str,
    (port_min, port_max): (u16, u16),
) -> [Rule; 3] {
    let to_ports = |proto: &str| {
        Rule::new(
            chain,
            format!(
                "-s {subnet} -o {uplink} -p {proto} -j MASQUERADE --to-ports {port_min}-{port_max}"
            ),
        )
    };
    [
        to_ports("tcp"),
        to_ports("udp"),
        Rule::new(
            chain,
            format!("-s {subnet} -o {uplink} -p {} -j MASQUERADE", ip.icmp()),
        ),
    ]
}

/// A backend reaching itself through a published port: its source
/// masqueraded (hairpin NAT, as Docker does).
fn hairpin_rule(ip: Ip, chain: &str, backend: impl fmt::Display, proto: Proto, port: u16) -> Rule {
    let host = ip.host();
    Rule::new(
        chain,
        format!(
            "-s {backend}/{host} -d {backend}/{host} -p {proto} -m {proto} --dport {port} -j MASQUERADE"
        ),
    )
}

/// conntrack marks what it cannot track (malformed L4, ICMP errors about
/// no flow) INVALID, MASQUERADE skips it, and it would leave the uplink
/// with its lab source (kube-proxy drops INVALID for the same leak).
fn invalid_drop(chain: &str, subnet: impl fmt::Display, uplink: &str) -> Rule {
    Rule::new(
        chain,
        format!("-s {subnet} -o {uplink} -m conntrack --ctstate INVALID -j DROP"),
    )
}

/// Replies (and related ICMP errors) to the lab's flows.
fn replies_accept(chain: &str, subnet: impl fmt::Display) -> Rule {
    Rule::new(
        chain,
        format!("-d {subnet} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    )
}

/// A new flow to a published port's backend, DNATed to it.
fn dnat_accept(ip: Ip, chain: &str, backend: impl fmt::Display, proto: Proto, port: u16) -> Rule {
    let host = ip.host();
    Rule::new(
        chain,
        format!(
            "-d {backend}/{host} -p {proto} -m conntrack --ctstate DNAT -m {proto} --dport {port} -j ACCEPT"
        ),
    )
}

/// The Services as kube-proxy's iptables mode writes them: one rule per
/// ClusterIP in the Services chain (so a new flow's cost grows with the
/// Services), one chain per backend table choosing a backend with
/// `statistic --mode random` (each with the probability that leaves the
/// rest an even share), one chain per backend doing its DNAT, `recent`
/// for session affinity (kube-proxy's default timeout, 3 hours), and a
/// NodePort's chain over this node's backends only. The chains they use
/// go to `chains`.
fn service_rules(
    topo: &Topology,
    names: &Chains,
    services: &[Service],
    body: &mut Vec<Rule>,
    chains: &mut Vec<String>,
) {
    const AFFINITY_SECONDS: u32 = 10800;
    for service in services {
        let proto = service.proto;
        body.push(Rule::new(
            &names.svc,
            format!(
                "-d {}/32 -p {proto} -m {proto} --dport {} -j {}",
                service.vip,
                service.port,
                names.table(service.ids.cluster)
            ),
        ));
        if let Some(node_port) = service.node_port {
            body.push(Rule::new(
                &names.dnat,
                format!(
                    "-p {proto} -m {proto} --dport {node_port} -j {}",
                    names.table(service.ids.node)
                ),
            ));
        }
        let all: Vec<(u16, std::net::SocketAddrV4)> = service
            .ids
            .backends
            .iter()
            .copied()
            .zip(service.backends.iter().copied())
            .collect();
        let local: Vec<_> = topo.local_backends(service).collect();
        let mut tables = vec![(service.ids.cluster, all.as_slice())];
        if service.node_port.is_some() {
            tables.push((service.ids.node, local.as_slice()));
        }
        for (table, backends) in tables {
            let chain = names.table(table);
            chains.push(chain.clone());
            if service.affinity {
                for (id, _) in backends {
                    let backend = names.backend(*id);
                    body.push(Rule::new(
                        &chain,
                        format!(
                            "-m recent --rcheck --seconds {AFFINITY_SECONDS} --reap --name {backend} --mask 255.255.255.255 --rsource -j {backend}"
                        ),
                    ));
                }
            }
            let n = backends.len();
            for (i, (id, _)) in backends.iter().enumerate() {
                let backend = names.backend(*id);
                let spec = if i + 1 == n {
                    format!("-j {backend}")
                } else {
                    format!(
                        "-m statistic --mode random --probability {:.11} -j {backend}",
                        1.0 / (n - i) as f64
                    )
                };
                body.push(Rule::new(&chain, spec));
            }
        }
        for (id, addr) in &all {
            let chain = names.backend(*id);
            chains.push(chain.clone());
            if service.affinity {
                body.push(Rule::new(
                    &chain,
                    format!("-m recent --set --name {chain} --mask 255.255.255.255 --rsource"),
                ));
            }
            body.push(Rule::new(
                &chain,
                format!("-p {proto} -m {proto} -j DNAT --to-destination {addr}"),
            ));
        }
    }
}

/// What the lab wants of ip6tables, `filter` then `nat`. The lab is closed
/// for IPv6 as the eBPF datapaths close it: nothing is forwarded into or
/// out of the lab's interfaces (bridged traffic included, through
/// br_netfilter; the chain is jumped to for those interfaces only) but
/// what stays on its link (link-local unicast and
/// multicast: neighbour discovery), what goes from one of the lab's IPv6
/// subnets to another, and, for the subnets `[nat] masquerade` lists,
/// what Docker's ip6tables rules let through: the subnet's own flows out
/// of the uplink (masqueraded to the uplink's IPv6 address), their
/// replies, and published ports to its namespaces (DNAT to their address
/// there). Nothing from one of the lab's subnets passes the uplink
/// otherwise, either way.
pub(super) fn plan6(lab: &str, topo: &Topology, published: &[PublishedPort]) -> [TablePlan; 2] {
    let names = chains(lab);
    let fwd6 = names.fwd6.as_str();
    let uplink = topo.nat.uplink.as_deref();
    let subnets = topo.internal_subnets6();
    let masqueraded = &topo.nat.masquerade6;
    // Over IPv6 to a namespace's address in a subnet the lab masquerades;
    // a port published to an explicit IPv4 address stays IPv4's.
    let published = resolve(published, |r| {
        r.addr
            .is_none()
            .then(|| topo.backend_addr6(&r.namespace))
            .flatten()
    });
    let rule = |spec: String| Rule::new(fwd6, spec);

    let mut fwd = vec![
        rule("-d fe80::/10 -j ACCEPT".to_owned()),
        rule("-d ff00::/8 -j ACCEPT".to_owned()),
    ];
    if let Some(uplink) = uplink {
        for from in &subnets {
            fwd.push(rule(format!("-i {uplink} -s {from} -j DROP")));
        }
        for from in masqueraded {
            fwd.push(invalid_drop(fwd6, from, uplink));
        }
        for to in masqueraded {
            fwd.push(replies_accept(fwd6, to));
        }
        for p in &published {
            fwd.push(dnat_accept(Ip::V6, fwd6, p.backend, p.proto, p.port));
        }
        for from in masqueraded {
            fwd.push(rule(format!("-s {from} -o {uplink} -j ACCEPT")));
        }
        for from in &subnets {
            fwd.push(rule(format!("-s {from} -o {uplink} -j DROP")));
        }
    }
    for from in &subnets {
        for to in &subnets {
            fwd.push(rule(format!("-s {from} -d {to} -j ACCEPT")));
        }
    }
    let mut ifaces: Vec<&str> = Vec::new();
    for name in topo
        .bridges
        .iter()
        .map(|b| b.name.as_str())
        .chain(topo.host_ends().map(|e| e.name.as_str()))
        .filter(|name| Some(*name) != uplink)
    {
        push_unique(&mut ifaces, name);
    }
    for name in &ifaces {
        fwd.push(rule(format!("-i {name} -j DROP")));
        fwd.push(rule(format!("-o {name} -j DROP")));
    }
    // The chain sees only what crosses one of the lab's interfaces or its
    // uplink, so its ACCEPTs never match a packet between other interfaces
    // of the host; the uplink's traffic to elsewhere returns to FORWARD.
    let mut fwd_jumps = Vec::new();
    for name in ifaces.into_iter().chain(uplink) {
        fwd_jumps.push(Rule::new("FORWARD", format!("-i {name} -j {fwd6}")));
        fwd_jumps.push(Rule::new("FORWARD", format!("-o {name} -j {fwd6}")));
    }

    // NAT66 only where the lab masquerades an IPv6 subnet (and so has an
    // uplink with an IPv6 address: `validate` sees to it).
    let mut nat_chains = Vec::new();
    let mut nat_jumps = Vec::new();
    let mut nat_body = Vec::new();
    if let (Some(uplink), false) = (uplink, masqueraded.is_empty()) {
        nat_chains = vec![names.dnat.clone(), names.post.clone()];
        let mut local = Vec::new();
        for (_, a) in topo.host_addresses6() {
            push_unique(&mut local, a.net.addr);
        }
        nat_jumps = dnat_jumps(Ip::V6, &local, &names.dnat);
        nat_jumps.push(Rule::new("POSTROUTING", format!("-j {}", names.post)));
        nat_body = published
            .iter()
            .map(|p| dnat_rule(Ip::V6, &names.dnat, p))
            .collect();
        for subnet in masqueraded {
            nat_body.extend(masquerade_rules(
                Ip::V6,
                &names.post,
                subnet,
                uplink,
                topo.nat.port_range,
            ));
        }
        let mut hairpins = Vec::new();
        for p in &published {
            push_unique(&mut hairpins, (p.backend, p.proto, p.port));
        }
        for (backend, proto, port) in &hairpins {
            nat_body.push(hairpin_rule(Ip::V6, &names.post, backend, *proto, *port));
        }
    }
    [
        TablePlan {
            table: "filter",
            chains: vec![names.fwd6.clone()],
            jumps: fwd_jumps,
            body: fwd,
            stale: Vec::new(),
        },
        TablePlan {
            table: "nat",
            chains: nat_chains,
            jumps: nat_jumps,
            body: nat_body,
            stale: Vec::new(),
        },
    ]
}

/// The `ip6tables-restore --noflush` input for a host without the lab's
/// jumps, as [`ruleset`] for iptables (the tests read it).
#[cfg(test)]
fn ruleset6(lab: &str, topo: &Topology, published: &[PublishedPort]) -> String {
    render_fresh(&plan6(lab, topo, published))
}

/// Jump changes for one table: rules to delete (as saved) and to insert.
#[derive(Default)]
pub(super) struct JumpEdits<'a> {
    delete: Vec<Rule>,
    insert: Vec<&'a Rule>,
}

pub(super) fn render(plans: &[TablePlan], edits: &[JumpEdits<'_>]) -> String {
    let mut out = String::new();
    for (i, plan) in plans.iter().enumerate() {
        let edit = edits.get(i);
        let edits_nothing = edit.is_none_or(|e| e.delete.is_empty() && e.insert.is_empty());
        if plan.chains.is_empty() && plan.stale.is_empty() && edits_nothing {
            // A table the lab has nothing in (ip6tables' nat without
            // IPv6 masquerade): not even loaded.
            continue;
        }
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
        for chain in &plan.stale {
            out.push_str(&format!("-F {chain}\n"));
        }
        for chain in &plan.stale {
            out.push_str(&format!("-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The `iptables-restore --noflush` input that [`super::install`] feeds on a host
/// without the lab's jumps (on a rerun it leaves out the jumps already there).
/// Published records it cannot resolve are left out; `install` refuses them.
pub fn ruleset(lab: &str, topo: &Topology, published: &[PublishedPort]) -> String {
    let in_force = InForce {
        published,
        services: &topo.services,
    };
    render_fresh(&plan(lab, topo, &in_force))
}

/// `plans` rendered for a host without the lab's jumps: every jump inserted.
fn render_fresh(plans: &[TablePlan]) -> String {
    let edits: Vec<JumpEdits<'_>> = plans
        .iter()
        .map(|p| JumpEdits {
            delete: Vec::new(),
            insert: p.jumps.iter().collect(),
        })
        .collect();
    render(plans, &edits)
}

/// One table of `iptables-save` output.
#[derive(Debug, Default)]
pub(super) struct SavedTable {
    pub name: String,
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

pub(super) fn parse_save(text: &str) -> Vec<SavedTable> {
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

pub(super) fn saved_table<'a>(saved: &'a [SavedTable], name: &str) -> Option<&'a SavedTable> {
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
pub(super) fn jump_edits<'a>(
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

/// The lab's chains that exist in a saved rule set.
pub(super) fn present<'a>(saved: &[SavedTable], ours: &'a Chains) -> Vec<&'a str> {
    ours.all()
        .into_iter()
        .filter(|(table, chain)| {
            saved_table(saved, table).is_some_and(|t| t.chains.iter().any(|c| c == chain))
        })
        .map(|(_, chain)| chain)
        .collect()
}

/// The restore input that deletes the lab's jumps and chains, if any exist.
pub(super) fn removal(saved: &[SavedTable], ours: &Chains) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host_port: u16, proto: Proto, namespace: &str, port: u16) -> PublishedPort {
        PublishedPort {
            host_port,
            proto,
            namespace: namespace.into(),
            port,
            addr: None,
        }
    }

    fn default_published() -> Vec<PublishedPort> {
        vec![
            record(8080, Proto::Tcp, "blue", 80),
            record(5353, Proto::Udp, "blue", 53),
        ]
    }

    #[test]
    fn services_are_kube_proxys_chains() {
        let text = format!(
            "{}\nservice_range = \"10.96.0.0/24\"\n\n[[service]]\nname = \"web\"\naddress = \"10.96.0.10\"\nport = 80\nbackends = [\"red:8000\", \"blue:8000\", \"10.78.0.5:8000\"]\nnode_port = 30080\naffinity = \"client_ip\"\n",
            include_str!("../../topology/default.toml")
        );
        let topo = crate::topology::parse(&text, "lab.toml").unwrap();
        let mut web = topo.services[0].clone();
        web.ids = crate::topology::ServiceIds {
            cluster: 1,
            node: 2,
            backends: vec![3, 4, 5],
        };
        let ids = web.ids.clone();
        let services = [web];
        let in_force = InForce {
            published: &[],
            services: &services,
        };
        let plans = plan("default", &topo, &in_force);
        let rules = render(&plans, &[]);
        let c = chains("default");
        let (svc, node) = (c.table(ids.cluster), c.table(ids.node));
        let e: Vec<String> = ids.backends.iter().map(|id| c.backend(*id)).collect();
        for line in [
            format!("-A NL-default-SVC -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {svc}"),
            format!("-A NL-default-DNAT -p tcp -m tcp --dport 30080 -j {node}"),
            // Three backends: a third, then half the rest, then the last.
            format!("-A {svc} -m statistic --mode random --probability 0.33333333333 -j {}", e[0]),
            format!("-A {svc} -m statistic --mode random --probability 0.50000000000 -j {}", e[1]),
            format!("-A {svc} -j {}", e[2]),
            // The node port: this node's two backends only.
            format!("-A {node} -m statistic --mode random --probability 0.50000000000 -j {}", e[0]),
            format!("-A {node} -j {}", e[1]),
            format!(
                "-A {svc} -m recent --rcheck --seconds 10800 --reap --name {0} --mask 255.255.255.255 --rsource -j {0}",
                e[2]
            ),
            format!("-A {} -m recent --set --name {0} --mask 255.255.255.255 --rsource", e[0]),
            format!("-A {} -p tcp -m tcp -j DNAT --to-destination 10.78.0.5:8000", e[2]),
            "-A NL-default-FWD -i nl-uplink -m conntrack --ctstate DNAT --ctorigdst 10.96.0.0/24 -j DROP".to_owned(),
            "-A NL-default-FWD -d 10.96.0.0/24 -j DROP".to_owned(),
        ] {
            assert!(rules.lines().any(|l| l == line), "no `{line}` in:\n{rules}");
        }
        assert!(
            !rules.contains(&format!("-A {node} -j {}", e[2])),
            "a peer's backend is not the node port's"
        );
        // A Service gone: its chains are stale, emptied and deleted.
        let saved = parse_save(&rules);
        let none = InForce {
            published: &[],
            services: &[],
        };
        let mut plans = plan("default", &topo, &none);
        for plan in &mut plans {
            plan.find_stale(&saved, &c);
        }
        let stale: BTreeSet<&String> = plans.iter().flat_map(|p| p.stale.iter()).collect();
        assert!(
            stale.contains(&svc) && stale.contains(&e[0]) && !stale.contains(&c.svc),
            "{stale:?}"
        );
    }

    const DEFAULT_RULESET: &str = "\
*nat
:NL-default-DNAT - [0:0]
:NL-default-POST - [0:0]
:NL-default-SVC - [0:0]
-I PREROUTING -d 192.168.15.5/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I PREROUTING -d 198.18.0.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I OUTPUT -d 192.168.15.5/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
-I OUTPUT -d 198.18.0.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
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
-A NL-default-FWD -i nl-uplink -d 192.168.15.0/24 -j DROP
-A NL-default-FWD -i nl-uplink -j DROP
COMMIT
";

    #[test]
    fn ipv6_is_bridged_between_the_lab_s_subnets_only() {
        let text = include_str!("../../topology/default.toml")
            .replace(
                r#""192.168.15.5/24""#,
                r#""192.168.15.5/24", "fd00:15::5/64""#,
            )
            .replace(r#""198.18.0.1/24""#, r#""198.18.0.1/24", "2001:2::1/64""#)
            .replace(r#""198.18.0.2/24""#, r#""198.18.0.2/24", "2001:2::2/56""#);
        let topo = crate::topology::parse(&text, "lab.toml").unwrap();
        let rules = ruleset6("default", &topo, &[]);
        let lines: Vec<&str> = rules.lines().collect();
        let at = |line: &str| {
            lines
                .iter()
                .position(|l| *l == line)
                .unwrap_or_else(|| panic!("no `{line}` in\n{rules}"))
        };
        let fwd6 = "NL-default-FWD6";
        // Nothing of the lab's through the uplink, before any ACCEPT of it.
        let spoofed = at(&format!("-A {fwd6} -i nl-uplink -s fd00:15::/64 -j DROP"));
        let leaking = at(&format!("-A {fwd6} -s fd00:15::/64 -o nl-uplink -j DROP"));
        let within = at(&format!(
            "-A {fwd6} -s fd00:15::/64 -d fd00:15::/64 -j ACCEPT"
        ));
        let closed = at(&format!("-A {fwd6} -i v-net-0 -j DROP"));
        assert!(
            spoofed < within && leaking < within && within < closed,
            "{rules}"
        );
        // The chain is entered from the lab's interfaces only, so its
        // ACCEPTs never match another interface of the host.
        for iface in ["v-net-0", "veth-red-br", "veth-blue-br", "nl-uplink"] {
            at(&format!("-I FORWARD -i {iface} -j {fwd6}"));
            at(&format!("-I FORWARD -o {iface} -j {fwd6}"));
        }
        assert!(!rules.contains(&format!("-I FORWARD -j {fwd6}")), "{rules}");
        // The world's subnets, either end of the uplink's veth and any
        // prefix, are never the lab's.
        assert!(!rules.contains("2001:2::"), "{rules}");
        // An IPv4-only lab has no subnet rule at all.
        let topo = crate::topology::default_lab().unwrap();
        assert!(!ruleset6("default", &topo, &[]).contains("-s "));
    }

    #[test]
    fn nat66_follows_dockers_ip6tables_rules() {
        let text = crate::topology::DEFAULT_LAB_DUAL_STACK;
        let topo = crate::topology::parse(text, "lab.toml").unwrap();
        let published = default_published();
        let rules = ruleset6("default", &topo, &published);
        let lines: Vec<&str> = rules.lines().collect();
        let at = |line: &str| {
            lines
                .iter()
                .position(|l| *l == line)
                .unwrap_or_else(|| panic!("no `{line}` in\n{rules}"))
        };
        // The published port goes to blue's IPv6 address, from the lab's
        // IPv6 host addresses only.
        at("-I PREROUTING -d 2001:2::1/128 -m addrtype --dst-type LOCAL -j NL-default-DNAT");
        at("-I OUTPUT -d fd00:15::5/128 -m addrtype --dst-type LOCAL -j NL-default-DNAT");
        at(
            "-A NL-default-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:15::2]:80",
        );
        at("-A NL-default-POST -s fd00:15::/64 -o nl-uplink -p ipv6-icmp -j MASQUERADE");
        at(
            "-A NL-default-POST -s fd00:15::2/128 -d fd00:15::2/128 -p tcp -m tcp --dport 80 -j MASQUERADE",
        );
        assert!(!rules.contains("192.168.15"), "{rules}");
        // A spoofed lab source is dropped before anything is accepted, and
        // the subnet leaves the uplink only masqueraded, untracked
        // packets excepted.
        let fwd6 = "NL-default-FWD6";
        let spoofed = at(&format!("-A {fwd6} -i nl-uplink -s fd00:15::/64 -j DROP"));
        let invalid = at(&format!(
            "-A {fwd6} -s fd00:15::/64 -o nl-uplink -m conntrack --ctstate INVALID -j DROP"
        ));
        let replies = at(&format!(
            "-A {fwd6} -d fd00:15::/64 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
        let dnat = at(&format!(
            "-A {fwd6} -d fd00:15::2/128 -p tcp -m conntrack --ctstate DNAT -m tcp --dport 80 -j ACCEPT"
        ));
        let out = at(&format!("-A {fwd6} -s fd00:15::/64 -o nl-uplink -j ACCEPT"));
        let closed = at(&format!("-A {fwd6} -o v-net-0 -j DROP"));
        assert!(spoofed < invalid && invalid < replies, "{rules}");
        assert!(
            replies < closed && dnat < closed && invalid < out,
            "{rules}"
        );
        // A port published to an explicit IPv4 address stays IPv4's, and a
        // lab that masquerades no IPv6 has no ip6tables nat table at all.
        let mut pinned = record(9000, Proto::Udp, "blue", 53);
        pinned.addr = Some(Ipv4Addr::new(192, 168, 15, 2));
        assert!(!ruleset6("default", &topo, &[pinned]).contains("--dport 9000"));
        let bridged =
            crate::topology::parse(&text.replace(r#", "fd00:15::/64"]"#, "]"), "lab.toml").unwrap();
        assert!(!ruleset6("default", &bridged, &published).contains("*nat"));
    }

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
                line.contains("-d 192.168.15.5/32") || line.contains("-d 198.18.0.1/32"),
                "{line}"
            );
        }
    }

    #[test]
    fn ruleset_leaves_out_what_install_refuses() {
        let topo = crate::topology::default_lab().unwrap();
        let bad = vec![record(9001, Proto::Tcp, "nosuch", 1)];
        assert!(check_published(&topo, &bad).is_err());
        let text = ruleset("default", &topo, &bad);
        assert!(!text.contains("9001"), "{text}");
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
-A PREROUTING -d 198.18.0.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
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
        let published = default_published();
        let in_force = InForce {
            published: &published,
            services: &[],
        };
        let plans = plan("default", &topo, &in_force);
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
                "-I OUTPUT -d 198.18.0.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT",
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
-D PREROUTING -d 198.18.0.1/32 -m addrtype --dst-type LOCAL -j NL-default-DNAT
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
}
