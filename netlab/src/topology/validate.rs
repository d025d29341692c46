//! Phase two: the rules a well-formed lab must follow before anything touches
//! the kernel, and the check against what the host already has.
//!
//! Every function here returns all the problems it finds rather than the
//! first; [`validate`] sorts them into file order.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use netlab_common::nat::{HOST6_INLINE, MAX_SERVICE_BACKENDS, NET6_INLINE};

use super::{
    host::{AddressInUse, HostNetwork},
    model::{
        Entry, Family, Ipv4Net, Ipv6Net, MAX_PEERS, Peer, Place, Pos, Proto, Service, Subnet,
        Topology, Vxlan, is_link_local,
    },
    problem::{CONNTRACK_MAX, CONNTRACK_MIN, Problem, ProblemKind as K, conntrack_size_text, sort},
    spans::{RouteSpans, Spans},
};

/// Linux's IFNAMSIZ (16) minus the terminating NUL.
const IFNAME_MAX: usize = 15;
/// netlab's limit for namespace names (they become `/run/netns/NAME`).
const NETNS_NAME_MAX: usize = 64;
/// The lab name goes into link tags and pin paths; keep it short and tame.
const LAB_NAME_MAX: usize = 32;
/// Every rule over a parsed lab; the problems come back in file order.
pub(super) fn validate(topo: &Topology, spans: &Spans) -> Vec<Problem> {
    let mut problems = Vec::new();
    let lab = Lab::new(topo, spans);
    lab_name(topo, spans, &mut problems);
    namespaces(topo, &mut problems);
    interfaces(&lab, &mut problems);
    references(&lab, &mut problems);
    addresses(&lab, &mut problems);
    addresses6(&lab, &mut problems);
    routes(&lab, &mut problems);
    routes6(&lab, &mut problems);
    publish(&lab, &mut problems);
    nat(&lab, &mut problems);
    pod_network(topo, &mut problems);
    services(topo, spans, &mut problems);
    sort(&mut problems);
    problems
}

/// `[pod_network]`: a declared bridge with an address (the pods' gateway
/// and subnet), a range inside that subnet, and an eBPF datapath (the CNI
/// plugin writes the pods into its maps).
fn pod_network(topo: &Topology, problems: &mut Vec<Problem>) {
    let Some(pods) = &topo.pod_network else {
        return;
    };
    let mut problem = |text: String| problems.push(Problem::new(K::PodNetwork, &pods.at, text));
    if topo.datapath.family() != Family::Ebpf {
        problem(format!(
            "pod_network needs an eBPF datapath (`bridge` or `redirect`), not `{}`",
            topo.datapath
        ));
    }
    if !topo.bridges.iter().any(|b| b.name == pods.bridge) {
        problem(format!(
            "pod_network.bridge `{}` is not a bridge of the lab",
            pods.bridge
        ));
        return;
    }
    let Some(gateway) = topo.pod_gateway() else {
        problem(format!(
            "pod_network.bridge `{}` has no address: pods need its subnet and a gateway",
            pods.bridge
        ));
        return;
    };
    if let Some((first, last)) = pods.range {
        let inside = |a: Ipv4Addr| {
            gateway.contains(a) && a != gateway.network().addr && a != gateway.broadcast()
        };
        if !inside(first) || !inside(last) || u32::from(first) > u32::from(last) {
            problem(format!(
                "pod_network.range {first}-{last} is not an ascending range of host addresses \
                 of {}",
                gateway.network()
            ));
        }
    }
    peers(topo, &pods.peers, problems);
    if let Some(vxlan) = &pods.vxlan {
        overlay(topo, vxlan, problems);
    }
}

/// What is wrong with Service `new` beside `others` in `topo` (the
/// topology's, or those in force for `netlab service add`), one sentence
/// each: its address inside `[nat] service_range`, its name, address and
/// NodePort free, its backends at most [`MAX_SERVICE_BACKENDS`] and
/// distinct.
pub fn service_problems(topo: &Topology, others: &[Service], new: &Service) -> Vec<String> {
    let mut problems = Vec::new();
    let what = format!("service `{}`", new.name);
    match topo.nat.service_range {
        None => problems.push(format!(
            "{what} needs `[nat] service_range`, the range ClusterIPs come from"
        )),
        Some(range) if !range.contains(new.vip) => problems.push(format!(
            "{what}: address {} lies outside the service range {range}",
            new.vip
        )),
        Some(range) if new.vip == range.network().addr || new.vip == range.broadcast() => problems
            .push(format!(
                "{what}: address {} is the service range's network or broadcast address",
                new.vip
            )),
        Some(_) => {}
    }
    if new.name.is_empty()
        || new.name.len() > 63
        || !new
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        problems.push(format!(
            "{what}: a Service's name is 1 to 63 letters, digits and '-'"
        ));
    }
    if new.port == 0 {
        problems.push(format!("{what} has port 0; ports are 1..=65535"));
    }
    for other in others {
        if other.name == new.name {
            problems.push(format!("{what} is declared twice"));
        }
        if other.vip == new.vip && other.port == new.port && other.proto == new.proto {
            problems.push(format!(
                "{what}: {}:{}/{} is service `{}`'s already",
                new.vip, new.port, new.proto, other.name
            ));
        }
        if new.node_port.is_some() && other.node_port == new.node_port && other.proto == new.proto {
            problems.push(format!(
                "{what}: node port {}/{} is service `{}`'s already",
                new.node_port.unwrap_or(0),
                new.proto,
                other.name
            ));
        }
    }
    if let Some(node_port) = new.node_port {
        if topo
            .published_ports()
            .iter()
            .any(|p| p.host_port == node_port && p.proto == new.proto)
        {
            problems.push(format!(
                "{what}: node port {node_port}/{} is a published port's",
                new.proto
            ));
        }
        if let Some(vxlan) = topo.tunnel_on(new.proto, node_port) {
            problems.push(format!(
                "{what}: node port {node_port}/{} carries the overlay {}'s tunnel",
                new.proto, vxlan.name
            ));
        }
        if topo.uplink_addr().is_none() {
            problems.push(format!(
                "{what}: a node port needs `[nat] uplink`, whose address the world reaches"
            ));
        }
    }
    if new.backends.len() > MAX_SERVICE_BACKENDS {
        problems.push(format!(
            "{what} has {} backends; a Service holds at most {MAX_SERVICE_BACKENDS}",
            new.backends.len()
        ));
    }
    for (i, backend) in new.backends.iter().enumerate() {
        if new.backends[..i].contains(backend) {
            problems.push(format!("{what}: backend {backend} is listed twice"));
        }
        if backend.port() == 0 {
            problems.push(format!("{what}: backend {backend} has port 0"));
        }
    }
    problems
}

/// `[[service]]`: each on its own ([`service_problems`]), and no two with
/// one name, address and port, or NodePort (looked up, not compared pair
/// by pair: a lab may declare ten thousand).
fn services(topo: &Topology, spans: &Spans, problems: &mut Vec<Problem>) {
    let mut names = HashSet::new();
    let mut addresses = HashMap::new();
    let mut node_ports = HashMap::new();
    for (service, at) in topo.services.iter().zip(&spans.services) {
        let mut texts = service_problems(topo, &[], service);
        let what = format!("service `{}`", service.name);
        if !names.insert(service.name.as_str()) {
            texts.push(format!("{what} is declared twice"));
        }
        if let Some(other) =
            addresses.insert((service.vip, service.port, service.proto), &service.name)
        {
            texts.push(format!(
                "{what}: {}:{}/{} is service `{other}`'s already",
                service.vip, service.port, service.proto
            ));
        }
        if let Some(node_port) = service.node_port
            && let Some(other) = node_ports.insert((node_port, service.proto), &service.name)
        {
            texts.push(format!(
                "{what}: node port {node_port}/{} is service `{other}`'s already",
                service.proto
            ));
        }
        for text in texts {
            problems.push(Problem::new(K::Service, at, text));
        }
    }
}

/// `[nat] service_range`: apart from every subnet of the lab and of its
/// peers.
fn service_range(topo: &Topology, problems: &mut Vec<Problem>, at: &Pos) {
    let Some(range) = topo.nat.service_range else {
        return;
    };
    let lab = topo.addresses().map(|a| a.net.network());
    let peers = topo
        .pod_network
        .iter()
        .flat_map(|p| p.peers.iter().map(|p| p.subnet));
    if let Some(net) = lab.chain(peers).find(|net| net.overlaps(range)) {
        problems.push(Problem::new(
            K::NatSetting,
            at,
            format!("nat.service_range {range} overlaps the lab's subnet {net}: ClusterIPs are nobody's address"),
        ));
    }
}

/// `[pod_network.vxlan]`: a device name free in the host namespace, and a
/// UDP port no published port takes (the host's VXLAN socket must get
/// the tunnel's packets).
fn overlay(topo: &Topology, vxlan: &Vxlan, problems: &mut Vec<Problem>) {
    let mut problem = |kind: K, text: String| problems.push(Problem::new(kind, &vxlan.at, text));
    if let Some(why) = ifname_problem(&vxlan.name) {
        problem(
            K::InterfaceName,
            format!("pod_network.vxlan name `{}` {why}", vxlan.name),
        );
    }
    let taken = topo
        .bridges
        .iter()
        .map(|b| (&b.name, &b.at))
        .chain(
            topo.veth_ends()
                .filter(|e| e.place == Place::Host)
                .map(|e| (&e.name, &e.at)),
        )
        .find(|(name, _)| **name == vxlan.name);
    if let Some((name, at)) = taken {
        problem(
            K::DuplicateName,
            format!(
                "pod_network.vxlan name `{name}` is used twice in the host namespace; the first \
                 is at {at}"
            ),
        );
    }
    let published = topo
        .published_ports()
        .into_iter()
        .find(|p| topo.tunnel_on(p.proto, p.host_port).is_some());
    if let Some(p) = published {
        problem(
            K::DuplicatePort,
            format!(
                "pod_network.vxlan port {} is published as UDP host port {} of `{}`: the \
                 tunnel's packets would go to the namespace",
                vxlan.port, p.host_port, p.namespace
            ),
        );
    }
}

/// `[[pod_network.peer]]`: other nodes' pod subnets, apart from the lab's
/// own subnets and from each other, each through an address outside
/// every subnet behind the lab's veths (the underlay, or the uplink's
/// subnet), at most [`MAX_PEERS`].
fn peers(topo: &Topology, peers: &[Peer], problems: &mut Vec<Problem>) {
    if let Some(extra) = peers.get(MAX_PEERS) {
        problems.push(Problem::new(
            K::PodNetwork,
            &extra.at,
            format!(
                "pod_network has {} peers; the datapath holds at most {MAX_PEERS}",
                peers.len()
            ),
        ));
    }
    let uplink_net = topo
        .uplink_end()
        .and_then(|end| end.addresses.first())
        .map(|a| a.net.network());
    let lab_nets: Vec<Ipv4Net> = topo.addresses().map(|a| a.net.network()).collect();
    for (i, peer) in peers.iter().enumerate() {
        let mut problem = |text: String| problems.push(Problem::new(K::PodNetwork, &peer.at, text));
        if let Some(net) = lab_nets.iter().find(|net| net.overlaps(peer.subnet)) {
            problem(format!(
                "pod_network.peer subnet {} overlaps the lab's subnet {net}: a peer's pods live \
                 on another node",
                peer.subnet
            ));
        }
        if let Some(other) = peers[..i].iter().find(|p| p.subnet.overlaps(peer.subnet)) {
            problem(format!(
                "pod_network.peer subnet {} overlaps the peer subnet {}",
                peer.subnet, other.subnet
            ));
        }
        if peer.subnet.contains(peer.via) {
            problem(format!(
                "pod_network.peer via {} lies inside its own subnet {}: it is the node's \
                 underlay address",
                peer.via, peer.subnet
            ));
        }
        let behind_lab = lab_nets
            .iter()
            .find(|net| net.contains(peer.via) && Some(**net) != uplink_net);
        if let Some(net) = behind_lab {
            problem(format!(
                "pod_network.peer via {} lies in the lab's subnet {net}: a node is reached over \
                 the underlay or the uplink's subnet",
                peer.via
            ));
        }
    }
}

/// "namespace `red`" or "the host namespace".
struct Where<'a>(&'a Place);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Place::Host => f.write_str("the host namespace"),
            Place::Netns(name) => write!(f, "namespace `{name}`"),
            Place::Path(path) => write!(f, "namespace {}", path.display()),
        }
    }
}

/// One interface of the lab with what the rules need to know about it.
struct Node<'t> {
    name: &'t str,
    place: &'t Place,
    at: &'t Pos,
    /// The L2 segment (union-find root) it belongs to.
    segment: usize,
}

/// One address (of the family of `N`) with its interface.
struct Addressed<'t, N = Ipv4Net> {
    node: usize,
    net: N,
    at: &'t Pos,
}

/// The lab seen as interfaces, segments and addresses.
struct Lab<'t> {
    topo: &'t Topology,
    spans: &'t Spans,
    /// Bridges first, then veth ends in [`Topology::veth_ends`] order.
    nodes: Vec<Node<'t>>,
    addresses: Vec<Addressed<'t>>,
    addresses6: Vec<Addressed<'t, Ipv6Net>>,
    namespaces: HashSet<&'t str>,
    bridges: HashSet<&'t str>,
    /// Segments with an end whose `bridge` could not be followed (already a
    /// problem): their extent is unknown, so they are left out of the
    /// overlap check rather than reported twice.
    broken: HashSet<usize>,
}

impl<'t> Lab<'t> {
    fn new(topo: &'t Topology, spans: &'t Spans) -> Self {
        let mut nodes: Vec<Node<'t>> = topo
            .bridges
            .iter()
            .map(|b| Node {
                name: &b.name,
                place: &Place::Host,
                at: &b.at,
                segment: 0,
            })
            .chain(topo.veth_ends().map(|e| Node {
                name: &e.name,
                place: &e.place,
                at: &e.at,
                segment: 0,
            }))
            .collect();

        // L2 segments: a veth's two ends are one segment, and a host end
        // enslaved to a bridge joins the bridge's.
        let mut segments = UnionFind::new(nodes.len());
        let bridge_index: HashMap<&str, usize> = topo
            .bridges
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .rev() // the first of duplicates wins
            .collect();
        let first_end = topo.bridges.len();
        let mut dangling = Vec::new();
        for (i, veth) in topo.veths.iter().enumerate() {
            let a = first_end + 2 * i;
            segments.union(a, a + 1);
            for (node, end) in [(a, &veth.a), (a + 1, &veth.b)] {
                let Some(bridge) = &end.bridge else { continue };
                match bridge_index.get(bridge.as_str()) {
                    Some(&bridge) if end.place == Place::Host => segments.union(node, bridge),
                    _ => dangling.push(node),
                }
            }
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            node.segment = segments.find(i);
        }
        let broken = dangling.into_iter().map(|i| segments.find(i)).collect();

        // Nodes in the order above: bridges, then veth ends.
        let (mut addresses, mut addresses6) = (Vec::new(), Vec::new());
        let lists = topo
            .bridges
            .iter()
            .map(|b| (&b.addresses, &b.addresses6))
            .chain(topo.veth_ends().map(|e| (&e.addresses, &e.addresses6)));
        for (node, (v4, v6)) in lists.enumerate() {
            addresses.extend(v4.iter().map(|a| Addressed {
                node,
                net: a.net,
                at: &a.at,
            }));
            addresses6.extend(v6.iter().map(|a| Addressed {
                node,
                net: a.net,
                at: &a.at,
            }));
        }

        Lab {
            topo,
            spans,
            nodes,
            addresses,
            addresses6,
            namespaces: topo.namespaces.iter().map(|n| n.name.as_str()).collect(),
            bridges: topo.bridges.iter().map(|b| b.name.as_str()).collect(),
            broken,
        }
    }

    fn node<N>(&self, address: &Addressed<'t, N>) -> &Node<'t> {
        &self.nodes[address.node]
    }

    /// Whether a place exists: the host, or a declared namespace.
    fn has_place(&self, place: &Place) -> bool {
        match place {
            Place::Host => true,
            Place::Netns(name) => self.namespaces.contains(name.as_str()),
            Place::Path(_) => false,
        }
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind((0..n).collect())
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a] = b;
        }
    }
}

fn lab_name(topo: &Topology, spans: &Spans, problems: &mut Vec<Problem>) {
    let name = &topo.name;
    let rule = "use 1 to 32 characters of a-z, 0-9, '-' and '_'";
    let why = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > LAB_NAME_MAX {
        Some(format!("is {} characters long", name.chars().count()))
    } else {
        name.chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
            .map(|c| format!("has {c:?}"))
    };
    if let Some(why) = why {
        problems.push(Problem::new(
            K::LabName,
            &spans.name,
            format_args!("lab name `{name}` {why}; {rule}"),
        ));
    }
}

fn namespaces(topo: &Topology, problems: &mut Vec<Problem>) {
    let mut seen: HashMap<&str, &Pos> = HashMap::new();
    for ns in &topo.namespaces {
        if let Some(why) = netns_name_problem(&ns.name) {
            problems.push(Problem::new(
                K::NamespaceName,
                &ns.at,
                format_args!("namespace name `{}` {why}", ns.name),
            ));
        }
        if let Some(first) = seen.get(ns.name.as_str()) {
            problems.push(Problem::new(
                K::DuplicateName,
                &ns.at,
                format_args!(
                    "namespace `{}` is declared twice; the first is at {first}",
                    ns.name
                ),
            ));
        } else {
            seen.insert(&ns.name, &ns.at);
        }
    }
}

fn netns_name_problem(name: &str) -> Option<String> {
    let rule = "use only letters, digits, '.', '_' and '-'";
    if name.is_empty() {
        Some("is empty".to_owned())
    } else if name == "host" {
        Some("is reserved: `host` means the host's own namespace".to_owned())
    } else if name == "." || name == ".." {
        Some("is not a usable file name under /run/netns".to_owned())
    } else if name.len() > NETNS_NAME_MAX {
        Some(format!(
            "is {} bytes; netlab allows {NETNS_NAME_MAX}",
            name.len()
        ))
    } else {
        name.chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("has {c:?}; {rule}"))
    }
}

fn ifname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > IFNAME_MAX {
        Some(format!(
            "is {} bytes; Linux allows {IFNAME_MAX}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("is reserved by Linux".to_owned())
    } else if name == "lo" {
        Some("is taken: every namespace already has the loopback `lo`".to_owned())
    } else if let Some(c) = name.chars().find(|&c| c == '/' || c == ':') {
        Some(format!("has {c:?}, which Linux does not allow"))
    } else if name.chars().any(char::is_whitespace) {
        Some("has whitespace, which Linux does not allow".to_owned())
    } else {
        None
    }
}

/// Interface names: valid for Linux, and unique within their namespace
/// (bridges and host-side ends share the host's).
fn interfaces(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    let mut seen: HashMap<(&Place, &str), &Pos> = HashMap::new();
    for node in &lab.nodes {
        if let Some(why) = ifname_problem(node.name) {
            problems.push(Problem::new(
                K::InterfaceName,
                node.at,
                format_args!("interface name `{}` {why}", node.name),
            ));
        }
        if let Some(first) = seen.get(&(node.place, node.name)) {
            problems.push(Problem::new(
                K::DuplicateName,
                node.at,
                format_args!(
                    "interface name `{}` is used twice in {}; the first is at {first}",
                    node.name,
                    Where(node.place)
                ),
            ));
        } else {
            seen.insert((node.place, node.name), node.at);
        }
    }
}

/// Veth ends: their namespace and bridge exist, and only host ends join bridges.
fn references(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    for (end, spans) in lab.topo.veth_ends().zip(&lab.spans.ends) {
        if !lab.has_place(&end.place) {
            problems.push(Problem::new(
                K::UnknownNamespace,
                &spans.netns,
                format_args!(
                    "veth end `{}` is in namespace `{}`, which no [[namespace]] declares",
                    end.name, end.place
                ),
            ));
        }
        let Some(bridge) = &end.bridge else { continue };
        if end.place != Place::Host {
            problems.push(Problem::new(
                K::BridgeInNetns,
                &spans.bridge,
                format_args!(
                    "veth end `{}` is in namespace `{}` but joins bridge `{bridge}`; bridges live in the host, so only a host-side end can join one",
                    end.name, end.place
                ),
            ));
        } else if !lab.bridges.contains(bridge.as_str()) {
            problems.push(Problem::new(
                K::UnknownBridge,
                &spans.bridge,
                format_args!(
                    "veth end `{}` joins bridge `{bridge}`, which no [[bridge]] declares",
                    end.name
                ),
            ));
        }
    }
}

/// Each address on its own, then pairs: no IP twice, and no overlap between
/// subnets of different L2 segments.
fn addresses(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    for a in &lab.addresses {
        let net = a.net;
        let owner = lab.node(a).name;
        let why = if net.prefix_len == 0 {
            Some("has prefix /0; a lab subnet needs a prefix of 1 to 32".to_owned())
        } else if net.prefix_len <= 30 && net.addr == net.network().addr {
            Some(format!(
                "is the network address of its subnet {}; use a host address such as {}/{}",
                net.network(),
                Ipv4Addr::from(u32::from(net.addr) + 1),
                net.prefix_len
            ))
        } else if net.prefix_len <= 30 && net.addr == net.broadcast() {
            Some(format!(
                "is the broadcast address of its subnet {}",
                net.network()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            problems.push(Problem::new(
                K::Address,
                a.at,
                format_args!("address {net} of `{owner}` {why}"),
            ));
        }
    }

    let mut seen: HashMap<Ipv4Addr, &Addressed<'_>> = HashMap::new();
    for (i, a) in lab.addresses.iter().enumerate() {
        let owner = lab.node(a);
        if let Some(first) = seen.get(&a.net.addr) {
            problems.push(Problem::new(
                K::DuplicateAddress,
                a.at,
                format_args!(
                    "address {} of `{}` is already on `{}` at {}",
                    a.net.addr,
                    owner.name,
                    lab.node(first).name,
                    first.at
                ),
            ));
        } else {
            seen.insert(a.net.addr, a);
        }
        // One line per address: the first earlier address it collides with.
        let clash = lab.addresses[..i].iter().find(|b| {
            let other = lab.node(b).segment;
            b.net.addr != a.net.addr
                && other != owner.segment
                && !lab.broken.contains(&other)
                && !lab.broken.contains(&owner.segment)
                && a.net.prefix_len > 0
                && b.net.prefix_len > 0
                && a.net.overlaps(b.net)
        });
        if let Some(b) = clash {
            problems.push(Problem::new(
                K::SubnetOverlap,
                a.at,
                format_args!(
                    "subnet {} of `{}` overlaps subnet {} of `{}` ({}), which is on another L2 segment; give each segment its own subnet",
                    a.net.network(),
                    owner.name,
                    b.net.network(),
                    lab.node(b).name,
                    b.at
                ),
            ));
        }
    }
}

/// The IPv6 addresses, by the IPv4 rules where they carry over: a usable
/// unicast address with a prefix, none twice, no overlap between subnets
/// of different L2 segments; and no more subnets than the datapath holds.
fn addresses6(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    let subnets = lab.topo.internal_subnets6();
    if subnets.len() > NET6_INLINE
        && let Some(a) = lab
            .addresses6
            .iter()
            .find(|a| a.net.network() == subnets[NET6_INLINE])
    {
        problems.push(Problem::new(
            K::Address,
            a.at,
            format_args!(
                "subnet {} is the lab's IPv6 subnet number {}: a lab holds at most {NET6_INLINE} \
                 (the uplink's aside)",
                subnets[NET6_INLINE],
                NET6_INLINE + 1
            ),
        ));
    }
    let hosts = lab.topo.local_addresses6();
    if hosts.len() > HOST6_INLINE
        && let Some(a) = lab
            .addresses6
            .iter()
            .find(|a| a.net.addr == hosts[HOST6_INLINE].addr)
    {
        problems.push(Problem::new(
            K::Address,
            a.at,
            format_args!(
                "{} is the host's IPv6 address number {}: a lab holds at most {HOST6_INLINE}",
                hosts[HOST6_INLINE].addr,
                HOST6_INLINE + 1
            ),
        ));
    }
    let mut seen: HashMap<Ipv6Addr, &Addressed<'_, Ipv6Net>> = HashMap::new();
    for (i, a) in lab.addresses6.iter().enumerate() {
        let (net, owner) = (a.net, lab.node(a));
        let why = if net.prefix_len == 0 {
            Some("has prefix /0; a lab subnet needs a prefix of 1 to 128".to_owned())
        } else if is_link_local(net.addr) {
            Some(
                "is link-local: the kernel gives every interface its own fe80:: address; \
                 use a unique local (fd00::/8) or global one"
                    .to_owned(),
            )
        } else if net.addr.is_multicast() || net.addr.is_loopback() || net.addr.is_unspecified() {
            Some("is not a unicast address".to_owned())
        } else if net.prefix_len <= 126 && net.addr == net.network().addr {
            Some(format!(
                "is the subnet-router anycast address of {}; use a host address such as {}/{}",
                net.network(),
                Ipv6Addr::from(u128::from(net.addr) + 1),
                net.prefix_len
            ))
        } else {
            None
        };
        if let Some(why) = why {
            problems.push(Problem::new(
                K::Address,
                a.at,
                format_args!("address {net} of `{}` {why}", owner.name),
            ));
        }
        if let Some(first) = seen.get(&net.addr) {
            problems.push(Problem::new(
                K::DuplicateAddress,
                a.at,
                format_args!(
                    "address {} of `{}` is already on `{}` at {}",
                    net.addr,
                    owner.name,
                    lab.node(first).name,
                    first.at
                ),
            ));
        } else {
            seen.insert(net.addr, a);
        }
        let clash = lab.addresses6[..i].iter().find(|b| {
            let other = lab.node(b).segment;
            b.net.addr != net.addr
                && other != owner.segment
                && !lab.broken.contains(&other)
                && !lab.broken.contains(&owner.segment)
                && net.prefix_len > 0
                && b.net.prefix_len > 0
                && net.overlaps(b.net)
        });
        if let Some(b) = clash {
            problems.push(Problem::new(
                K::SubnetOverlap,
                a.at,
                format_args!(
                    "subnet {} of `{}` overlaps subnet {} of `{}` ({}), which is on another L2 segment; give each segment its own subnet",
                    net.network(),
                    owner.name,
                    b.net.network(),
                    lab.node(b).name,
                    b.at
                ),
            ));
        }
    }
}

/// The IPv6 routes, by the IPv4 rules.
fn routes6(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    let on_link = |place: &Place, via: Ipv6Addr| {
        lab.addresses6
            .iter()
            .any(|a| lab.node(a).place == place && a.net.prefix_len > 0 && a.net.contains(via))
    };
    let routes = lab
        .topo
        .routes6
        .iter()
        .map(|r| (&r.place, r.to, r.via, &r.at));
    route_rules(
        lab,
        routes.zip(&lab.spans.routes6),
        ("interface", "IPv6 subnet"),
        on_link,
        problems,
    );
}

fn routes(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    let on_link = |place: &Place, via: Ipv4Addr| {
        lab.addresses
            .iter()
            .any(|a| lab.node(a).place == place && a.net.prefix_len > 0 && a.net.contains(via))
    };
    let routes = lab
        .topo
        .routes
        .iter()
        .map(|r| (&r.place, r.to, r.via, &r.at));
    route_rules(
        lab,
        routes.zip(&lab.spans.routes),
        ("host", "subnet"),
        on_link,
        problems,
    );
}

/// The rules of `[[route]]`s of one family, each `(place, to, via, at)`
/// with its spans: a declared namespace, no host bits in the destination
/// (`words.0` names them), a gateway on a subnet of the place (`on_link`;
/// `words.1` names such a subnet), and no route declared twice.
fn route_rules<'a, N: Subnet, A: fmt::Display>(
    lab: &Lab<'a>,
    routes: impl Iterator<Item = ((&'a Place, N, A, &'a Pos), &'a RouteSpans)>,
    words: (&str, &str),
    on_link: impl Fn(&Place, A) -> bool,
    problems: &mut Vec<Problem>,
) {
    let (bits, subnet) = words;
    let mut seen: HashMap<(&Place, N), &Pos> = HashMap::new();
    for ((place, to, via, at), spans) in routes {
        let shown = if to.prefix_len() == 0 && to == to.network() {
            "default".to_owned()
        } else {
            to.to_string()
        };
        if !lab.has_place(place) {
            problems.push(Problem::new(
                K::UnknownNamespace,
                &spans.netns,
                format_args!(
                    "route to {shown} is in namespace `{place}`, which no [[namespace]] declares"
                ),
            ));
        }
        if to != to.network() {
            problems.push(Problem::new(
                K::Route,
                &spans.to,
                format_args!(
                    "route destination {to} has {bits} bits set; write {}",
                    to.network()
                ),
            ));
        }
        let gateway = via.to_string();
        if !on_link(place, via) {
            problems.push(Problem::new(
                K::Gateway,
                &spans.via,
                format_args!(
                    "gateway {gateway} of the route to {shown} is not in any {subnet} of {}; a gateway must be on a subnet of an interface there",
                    Where(place)
                ),
            ));
        }
        let key = (place, to.network());
        if let Some(first) = seen.get(&key) {
            problems.push(Problem::new(
                K::DuplicateRoute,
                at,
                format_args!(
                    "route to {shown} in {} is declared twice; the first is at {first}",
                    Where(place)
                ),
            ));
        } else {
            seen.insert(key, at);
        }
    }
}

fn publish(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    let mut seen: HashMap<(u16, Proto), (&str, &Pos)> = HashMap::new();
    for ns in &lab.topo.namespaces {
        let place = Place::Netns(ns.name.clone());
        let has_address = lab.addresses.iter().any(|a| lab.node(a).place == &place);
        for p in &ns.publish {
            for (port, which) in [(p.host_port, "host port"), (p.port, "port")] {
                if port == 0 {
                    problems.push(Problem::new(
                        K::Publish,
                        &p.at,
                        format_args!(
                            "published port {}:{}/{} on `{}` has {which} 0; ports are 1..=65535",
                            p.host_port, p.port, p.proto, ns.name
                        ),
                    ));
                }
            }
            if let Some((owner, first)) = seen.get(&(p.host_port, p.proto)) {
                problems.push(Problem::new(
                    K::DuplicatePort,
                    &p.at,
                    format_args!(
                        "host port {}/{} on `{}` is already published by `{owner}` at {first}",
                        p.host_port, p.proto, ns.name
                    ),
                ));
            } else {
                seen.insert((p.host_port, p.proto), (&ns.name, &p.at));
            }
            if !has_address {
                problems.push(Problem::new(
                    K::NoBackend,
                    &p.at,
                    format_args!(
                        "published port {} on `{}` has no backend address: namespace `{}` has no address in the lab",
                        p.host_port, ns.name, ns.name
                    ),
                ));
            }
        }
    }
}

fn nat(lab: &Lab<'_>, problems: &mut Vec<Problem>) {
    let nat = &lab.topo.nat;
    let spans = &lab.spans.nat;
    service_range(lab.topo, problems, &spans.service_range);
    if let Some(uplink) = &nat.uplink {
        let node = lab
            .nodes
            .iter()
            .position(|n| n.place == &Place::Host && n.name == uplink);
        let is_bridge = lab.topo.bridges.iter().any(|b| b.name == *uplink);
        match node {
            None => problems.push(Problem::new(
                K::UnknownUplink,
                &spans.uplink,
                format_args!("nat.uplink `{uplink}` is not a host-side veth end of this lab"),
            )),
            // The NAT programs run on veth ends; a bridge's own traffic
            // would leave untranslated.
            Some(_) if is_bridge => problems.push(Problem::new(
                K::UnknownUplink,
                &spans.uplink,
                format_args!(
                    "nat.uplink `{uplink}` is a bridge; name a host-side veth end instead (the \
                     NAT programs run on veth ends, so nothing leaving a bridge is masqueraded)"
                ),
            )),
            Some(node) if !lab.addresses.iter().any(|a| a.node == node) => {
                problems.push(Problem::new(
                    K::NatSetting,
                    &spans.uplink,
                    format_args!(
                        "nat.uplink `{uplink}` has no address; masquerade and published ports answer on its first address"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    for (net, at) in nat.masquerade.iter().zip(&spans.masquerade) {
        if *net != net.network() {
            problems.push(Problem::new(
                K::NatSetting,
                at,
                format_args!(
                    "nat.masquerade entry {net} has host bits set; write {}",
                    net.network()
                ),
            ));
        }
        if nat.uplink.is_none() {
            problems.push(Problem::new(
                K::NatSetting,
                at,
                format_args!("nat.masquerade entry {net} needs a nat.uplink to masquerade to"),
            ));
        }
    }
    let uplink6 = lab.topo.uplink_addr6();
    let internal6 = lab.topo.internal_subnets6();
    for (net, at) in nat.masquerade6.iter().zip(&spans.masquerade6) {
        let mut problem = |text: String| problems.push(Problem::new(K::NatSetting, at, text));
        if *net != net.network() {
            problem(format!(
                "nat.masquerade entry {net} has host bits set; write {}",
                net.network()
            ));
        }
        match &nat.uplink {
            None => problem(format!(
                "nat.masquerade entry {net} needs a nat.uplink to masquerade to"
            )),
            Some(uplink) if uplink6.is_none() => problem(format!(
                "nat.masquerade entry {net} is IPv6: nat.uplink `{uplink}` needs an IPv6 address to masquerade to"
            )),
            Some(_) => {}
        }
        if !internal6.contains(&net.network()) {
            problem(format!(
                "nat.masquerade entry {net} is no IPv6 subnet of the lab's (the world's side of the uplink aside)"
            ));
        }
    }
    let (first, last) = nat.port_range;
    if first == 0 || first > last {
        problems.push(Problem::new(
            K::NatSetting,
            &spans.port_range,
            format_args!(
                "nat.port_range {first}-{last} is not FIRST-LAST with 1 <= FIRST <= LAST <= 65535"
            ),
        ));
    }
    if !(CONNTRACK_MIN..=CONNTRACK_MAX).contains(&nat.conntrack_size) {
        problems.push(Problem::new(
            K::NatSetting,
            &spans.conntrack_size,
            conntrack_size_text(nat.conntrack_size),
        ));
    }
    if nat.entry == Entry::Xdp {
        if nat.uplink.is_none() {
            problems.push(Problem::new(
                K::NatSetting,
                &spans.entry,
                "nat.entry `xdp` runs on the uplink: name one with nat.uplink",
            ));
        }
        if lab.topo.datapath.family() != Family::Ebpf {
            problems.push(Problem::new(
                K::NatSetting,
                &spans.entry,
                format_args!(
                    "nat.entry `xdp` is an entry of the eBPF datapaths, not of `{}`",
                    lab.topo.datapath
                ),
            ));
        }
    }
}

/// Every lab subnet against the host's routes and addresses, except default
/// routes and whatever sits on `own_links`, and against the addresses the
/// host is using. One line per lab subnet.
pub(super) fn check_host(
    topo: &Topology,
    host: &HostNetwork,
    own_links: &[String],
) -> Vec<Problem> {
    let own = |dev: &str| own_links.iter().any(|l| l == dev);
    let v4 = topo
        .bridges
        .iter()
        .map(|b| (&b.name, &b.addresses))
        .chain(topo.veth_ends().map(|e| (&e.name, &e.addresses)))
        .flat_map(|(owner, list)| list.iter().map(move |a| (owner.as_str(), a.net, &a.at)));
    let v6 = topo
        .bridges
        .iter()
        .map(|b| (&b.name, &b.addresses6))
        .chain(topo.veth_ends().map(|e| (&e.name, &e.addresses6)))
        .flat_map(|(owner, list)| list.iter().map(move |a| (owner.as_str(), a.net, &a.at)));
    let mut problems = host_overlaps(
        v4,
        &Host {
            routes: host
                .routes
                .iter()
                .map(|r| (r.dst, r.dev.as_deref()))
                .collect(),
            addresses: host
                .addresses
                .iter()
                .map(|h| (h.net, h.dev.as_str()))
                .collect(),
            in_use: &host.in_use,
        },
        &own,
    );
    problems.extend(host_overlaps(
        v6,
        &Host {
            routes: host
                .routes6
                .iter()
                .map(|r| (r.dst, r.dev.as_deref()))
                .collect(),
            addresses: host
                .addresses6
                .iter()
                .map(|h| (h.net, h.dev.as_str()))
                .collect(),
            in_use: &host.in_use,
        },
        &own,
    ));
    problems
}

/// One family's side of the host: its routes (with their interfaces) and
/// addresses (with theirs), and the addresses it is using.
struct Host<'a, N> {
    routes: Vec<(N, Option<&'a str>)>,
    addresses: Vec<(N, &'a str)>,
    in_use: &'a [AddressInUse],
}

/// [`check_host`] for one family's subnets, each `(owner, net, at)`.
fn host_overlaps<'a, N: Subnet>(
    owned: impl Iterator<Item = (&'a str, N, &'a Pos)>,
    host: &Host<'_, N>,
    own: &dyn Fn(&str) -> bool,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (owner, net, at) in owned {
        let subnet = net.network();
        if subnet.prefix_len() == 0 || !seen.insert(subnet) {
            continue;
        }
        let route = host.routes.iter().find(|(dst, dev)| {
            dst.prefix_len() != 0 && !dev.is_some_and(own) && dst.overlaps(subnet)
        });
        let text = if let Some((dst, dev)) = route {
            let dev = dev.map(|d| format!(" dev {d}")).unwrap_or_default();
            format!("the host route {dst}{dev}; pick a subnet clear of the host's routes")
        } else if let Some((net, dev)) = host
            .addresses
            .iter()
            .find(|(net, dev)| !own(dev) && net.overlaps(subnet))
        {
            format!("the host address {net} on {dev}; pick a subnet clear of the host's addresses")
        } else if let Some(used) = host.in_use.iter().find(|u| subnet.holds(u.addr)) {
            format!(
                "{}, which the host is using ({}); the lab would capture that traffic. \
                 Pick a subnet clear of it (RFC 2544's 198.18.0.0/15 exists for labs), \
                 or pass --force",
                used.addr, used.why
            )
        } else {
            continue;
        };
        problems.push(Problem {
            kind: K::HostOverlap,
            at: at.clone(),
            message: format!("subnet {subnet} of `{owner}` ({at}) overlaps {text}"),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{
        HostAddress, HostAddress6, HostRoute, HostRoute6, TopologyError, parse,
        testutil::{at, at_nth, only_problem, value_at},
    };

    /// A small valid lab: `red` on bridge `br0`, `blue` on a plain pair.
    const BASE: &str = r#"name = "lab"

[[namespace]]
name = "red"

[[namespace]]
name = "blue"

[[bridge]]
name = "br0"
addresses = ["10.0.0.1/24"]

[[veth]]
name = "red0"
netns = "red"
addresses = ["10.0.0.2/24"]
peer = { name = "red0-br", bridge = "br0" }

[[veth]]
name = "blue0"
netns = "blue"
addresses = ["10.1.0.2/24"]
peer = { name = "blue0-host", addresses = ["10.1.0.1/24"] }

[[route]]
netns = "red"
to = "default"
via = "10.0.0.1"
"#;

    fn lab(extra: &str) -> String {
        format!("{BASE}{extra}")
    }

    fn net(s: &str) -> Ipv4Net {
        let (a, p) = s.split_once('/').unwrap();
        Ipv4Net {
            addr: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    fn ok(text: &str) -> Topology {
        parse(text, "lab.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn base_lab_is_valid() {
        let topo = ok(BASE);
        assert_eq!(topo.name, "lab");
        assert_eq!(topo.routes[0].at.to_string(), at(BASE, "[[route]]"));
    }

    // Rule 1: duplicate names.

    #[test]
    fn duplicate_namespace() {
        let text = lab("\n[[namespace]]\nname = \"red\"\n");
        only_problem(
            &text,
            K::DuplicateName,
            &[
                "namespace `red`",
                &value_at(&text, "name = \"red\"", 1),
                &value_at(&text, "name = \"red\"", 0),
            ],
        );
    }

    #[test]
    fn duplicate_interface_in_a_namespace() {
        let text = lab(r#"
[[veth]]
name = "red0"
netns = "red"
addresses = ["10.0.0.3/24"]
peer = { name = "red1-br", bridge = "br0" }
"#);
        only_problem(
            &text,
            K::DuplicateName,
            &["`red0`", "namespace `red`", &at_nth(&text, "\"red0\"", 1)],
        );
    }

    #[test]
    fn bridge_and_host_end_share_the_host_names() {
        let text = lab("\n[[bridge]]\nname = \"blue0-host\"\n");
        only_problem(
            &text,
            K::DuplicateName,
            &[
                "`blue0-host`",
                "the host namespace",
                &at_nth(&text, "\"blue0-host\"", 1),
            ],
        );
        let text = lab("\n[[bridge]]\nname = \"br0\"\n");
        only_problem(
            &text,
            K::DuplicateName,
            &["`br0`", &value_at(&text, "name = \"br0\"", 1)],
        );
    }

    #[test]
    fn same_interface_name_in_different_namespaces_is_fine() {
        let text = lab(r#"
[[veth]]
name = "eth0"
netns = "red"
addresses = ["10.2.0.1/24"]
peer = { name = "eth0", netns = "blue", addresses = ["10.2.0.2/24"] }
"#);
        ok(&text);
    }

    #[test]
    fn duplicate_published_port() {
        let text = BASE
            .replacen(
                "name = \"red\"\n",
                "name = \"red\"\npublish = [\"8080:80\"]\n",
                1,
            )
            .replacen(
                "name = \"blue\"\n",
                "name = \"blue\"\npublish = [\"8080:8080/tcp\", \"8080:53/udp\"]\n",
                1,
            );
        only_problem(
            &text,
            K::DuplicatePort,
            &[
                "8080/tcp",
                "`red`",
                "`blue`",
                &at(&text, "\"8080:8080/tcp\""),
                &at(&text, "\"8080:80\""),
            ],
        );
    }

    // Rule 2: names.

    #[test]
    fn interface_name_too_long() {
        let text = BASE.replace("red0-br", "veth-red-bridge0");
        let problem = only_problem(&text, K::InterfaceName, &[]);
        assert_eq!(
            problem.message,
            format!(
                "interface name `veth-red-bridge0` is 16 bytes; Linux allows 15 ({})",
                at(&text, "\"veth-red-bridge0\"")
            )
        );
        // 15 bytes is fine.
        ok(&BASE.replace("red0-br", "veth-red-bridge"));
    }

    #[test]
    fn interface_name_characters() {
        for (bad, needle) in [
            ("a/b", "'/'"),
            ("a:b", "':'"),
            ("a b", "whitespace"),
            (".", "reserved"),
            ("..", "reserved"),
            ("lo", "loopback"),
            ("", "empty"),
        ] {
            let text = BASE.replace("\"red0-br\"", &format!("\"{bad}\""));
            only_problem(
                &text,
                K::InterfaceName,
                &[
                    &format!("`{bad}`"),
                    needle,
                    &value_at(&text, &format!("name = \"{bad}\""), 0),
                ],
            );
        }
    }

    #[test]
    fn namespace_name_rules() {
        let long = "n".repeat(65);
        // (name, what the message must say)
        for (name, says) in [
            ("host", vec!["`host`", "reserved"]),
            ("a/b", vec!["`a/b`", "'/'"]),
            (long.as_str(), vec!["65 bytes"]),
        ] {
            let text = lab(&format!("\n[[namespace]]\nname = \"{name}\"\n"));
            let position = at(&text, &format!("\"{name}"));
            let mut needles = says;
            needles.push(&position);
            only_problem(&text, K::NamespaceName, &needles);
        }
        let longest = "N.a_m-e".repeat(10)[..64].to_owned();
        ok(&lab(&format!("\n[[namespace]]\nname = \"{longest}\"\n")));
    }

    #[test]
    fn lab_name_rules() {
        let long = "x".repeat(33);
        // (name, what the message must say)
        for (name, says) in [
            ("My Lab", vec!["`My Lab`", "'M'"]),
            (long.as_str(), vec!["33 characters"]),
            ("", vec!["empty"]),
        ] {
            let text = BASE.replace("name = \"lab\"", &format!("name = \"{name}\""));
            let mut needles = says;
            needles.push("lab.toml:1:8");
            only_problem(&text, K::LabName, &needles);
        }
        ok(&BASE.replace("name = \"lab\"", "name = \"lab_2-x\""));
    }

    // Rule 3: addresses and routes.

    #[test]
    fn address_rules() {
        // (blue0's address, what the message must say)
        for (address, says) in [
            ("10.1.0.2/0", "/0"),
            ("10.1.0.0/24", "network address"),
            ("10.1.0.255/24", "broadcast"),
        ] {
            let text = BASE.replace("10.1.0.2/24", address);
            only_problem(
                &text,
                K::Address,
                &[
                    address,
                    "`blue0`",
                    says,
                    &at(&text, &format!("\"{address}\"")),
                ],
            );
        }
    }

    #[test]
    fn point_to_point_prefixes_use_every_address() {
        let text = BASE
            .replace("10.1.0.2/24", "10.1.0.0/31")
            .replace("10.1.0.1/24", "10.1.0.1/31");
        ok(&text);
        let text = BASE
            .replace("10.1.0.2/24", "10.1.0.7/32")
            .replace("10.1.0.1/24", "10.1.0.8/32");
        ok(&text);
    }

    #[test]
    fn duplicate_address() {
        let text = BASE.replace("10.0.0.2/24", "10.0.0.1/24");
        only_problem(
            &text,
            K::DuplicateAddress,
            &[
                "10.0.0.1",
                "`red0`",
                "`br0`",
                &at_nth(&text, "\"10.0.0.1/24\"", 1),
            ],
        );
    }

    #[test]
    fn gateway_outside_the_namespace_subnets() {
        let text = BASE.replace("via = \"10.0.0.1\"", "via = \"10.9.9.9\"");
        let problem = only_problem(
            &text,
            K::Gateway,
            &[
                "gateway 10.9.9.9",
                "not in any subnet of namespace `red`",
                &at(&text, "\"10.9.9.9\""),
            ],
        );
        assert_eq!(problem.at.line, text.lines().count());
        // A gateway on a subnet of another namespace does not count either.
        let text = BASE.replace("via = \"10.0.0.1\"", "via = \"10.1.0.1\"");
        only_problem(&text, K::Gateway, &["10.1.0.1", "`red`"]);
    }

    #[test]
    fn host_routes_use_host_subnets() {
        ok(&lab(
            "\n[[route]]\nto = \"10.8.0.0/16\"\nvia = \"10.1.0.2\"\n",
        ));
        let text = lab("\n[[route]]\nto = \"10.8.0.0/16\"\nvia = \"10.2.0.1\"\n");
        only_problem(&text, K::Gateway, &["10.2.0.1", "the host namespace"]);
    }

    #[test]
    fn route_destination_with_host_bits() {
        let text = lab("\n[[route]]\nnetns = \"blue\"\nto = \"10.8.0.1/16\"\nvia = \"10.1.0.1\"\n");
        only_problem(
            &text,
            K::Route,
            &[
                "10.8.0.1/16",
                "host bits",
                "10.8.0.0/16",
                &at(&text, "\"10.8.0.1/16\""),
            ],
        );
    }

    #[test]
    fn duplicate_route() {
        let text = lab("\n[[route]]\nnetns = \"red\"\nto = \"0.0.0.0/0\"\nvia = \"10.0.0.1\"\n");
        only_problem(
            &text,
            K::DuplicateRoute,
            &["default", "namespace `red`", &at_nth(&text, "[[route]]", 1)],
        );
    }

    // Rule 4: overlapping subnets.

    #[test]
    fn subnets_of_different_segments_must_not_overlap() {
        let text = BASE.replace("10.1.0.2/24", "10.0.0.3/24");
        let problem = only_problem(
            &text,
            K::SubnetOverlap,
            &[
                "10.0.0.0/24",
                "`blue0`",
                "`br0`",
                &at(&text, "\"10.0.0.3/24\""),
                &at(&text, "\"10.0.0.1/24\""),
            ],
        );
        assert!(problem.message.contains("another L2 segment"));
        // A wider subnet overlaps too.
        let text = BASE.replace("10.1.0.1/24", "10.0.0.200/16");
        only_problem(&text, K::SubnetOverlap, &["10.0.0.0/16", "`blue0-host`"]);
    }

    #[test]
    fn one_segment_may_share_a_subnet() {
        // Bridge, its ports' peers and a plain pair each form one segment.
        let text = lab(r#"
[[namespace]]
name = "green"

[[veth]]
name = "green0"
netns = "green"
addresses = ["10.0.0.3/24"]
peer = { name = "green0-br", bridge = "br0" }
"#);
        ok(&text);
    }

    // Rule 5: references and NAT.

    #[test]
    fn veth_in_an_unknown_namespace() {
        let text = BASE.replace("netns = \"blue\"", "netns = \"bleu\"");
        only_problem(
            &text,
            K::UnknownNamespace,
            &["`blue0`", "`bleu`", &at(&text, "\"bleu\"")],
        );
    }

    #[test]
    fn veth_on_an_unknown_bridge() {
        let text = BASE.replace("bridge = \"br0\"", "bridge = \"br1\"");
        only_problem(
            &text,
            K::UnknownBridge,
            &["`red0-br`", "`br1`", &at(&text, "\"br1\"")],
        );
    }

    #[test]
    fn bridge_on_an_end_in_a_namespace() {
        let text = BASE.replace(
            "netns = \"red\"\naddresses",
            "netns = \"red\"\nbridge = \"br0\"\naddresses",
        );
        only_problem(
            &text,
            K::BridgeInNetns,
            &[
                "`red0`",
                "`br0`",
                "namespace `red`",
                &at_nth(&text, "\"br0\"", 1),
            ],
        );
    }

    #[test]
    fn route_in_an_unknown_namespace() {
        let text = BASE.replace("netns = \"red\"\nto", "netns = \"rde\"\nto");
        let err = parse(&text, "lab.toml").unwrap_err();
        // The gateway cannot be on a subnet of a namespace that does not exist.
        assert_eq!(err.kinds(), [K::UnknownNamespace, K::Gateway], "{err}");
        let message = &err.problems()[0].message;
        assert!(message.contains("`rde`"), "{message}");
        assert!(message.contains(&at(&text, "\"rde\"")), "{message}");
    }

    #[test]
    fn nat_uplink_must_be_a_host_interface_of_the_lab() {
        let text = lab("\n[nat]\nuplink = \"eth9\"\n");
        only_problem(&text, K::UnknownUplink, &["`eth9`", &at(&text, "\"eth9\"")]);
        // An end inside a namespace is not a host interface.
        let text = lab("\n[nat]\nuplink = \"blue0\"\n");
        only_problem(
            &text,
            K::UnknownUplink,
            &["`blue0`", &at_nth(&text, "\"blue0\"", 1)],
        );
        ok(&lab("\n[nat]\nuplink = \"blue0-host\"\n"));
        // No program runs on a bridge: refused, not silently unmasqueraded.
        let text = lab("\n[nat]\nuplink = \"br0\"\n");
        only_problem(
            &text,
            K::UnknownUplink,
            &["`br0` is a bridge", &at(&text, "uplink = \"br0\"")],
        );
    }

    #[test]
    fn nat_uplink_needs_an_address() {
        let text = lab("\n[nat]\nuplink = \"red0-br\"\n");
        only_problem(
            &text,
            K::NatSetting,
            &["`red0-br`", "no address", &at_nth(&text, "\"red0-br\"", 1)],
        );
    }

    #[test]
    fn nat_masquerade_entries() {
        let text = lab("\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"10.0.0.1/24\"]\n");
        only_problem(
            &text,
            K::NatSetting,
            &[
                "10.0.0.1/24",
                "host bits",
                "10.0.0.0/24",
                &at_nth(&text, "\"10.0.0.1/24\"", 1),
            ],
        );
        let text = lab("\n[nat]\nmasquerade = [\"10.0.0.0/24\"]\n");
        only_problem(
            &text,
            K::NatSetting,
            &["10.0.0.0/24", "nat.uplink", &at(&text, "\"10.0.0.0/24\"")],
        );
        let text = lab("\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"10.0.0/24\"]\n");
        only_problem(
            &text,
            K::NatSetting,
            &["`10.0.0/24`", &at(&text, "\"10.0.0/24\"")],
        );
    }

    #[test]
    fn nat_masquerade_ipv6_entries() {
        let dual = BASE
            .replace(
                r#"addresses = ["10.0.0.1/24"]"#,
                r#"addresses = ["10.0.0.1/24", "fd00:10::1/64"]"#,
            )
            .replace(
                r#"addresses = ["10.1.0.1/24"]"#,
                r#"addresses = ["10.1.0.1/24", "2001:2::1/64"]"#,
            );
        let topo = ok(&format!(
            "{dual}\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"10.0.0.0/24\", \"fd00:10::/64\"]\n"
        ));
        assert_eq!(topo.nat.masquerade, [net("10.0.0.0/24")]);
        assert_eq!(topo.nat.masquerade6.len(), 1);
        assert_eq!(topo.uplink_addr6(), Some("2001:2::1".parse().unwrap()));
        let text =
            format!("{dual}\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"fd00:10::1/64\"]\n");
        only_problem(
            &text,
            K::NatSetting,
            &["fd00:10::1/64", "host bits", "fd00:10::/64"],
        );
        // The world's subnet is no lab subnet to masquerade.
        let text =
            format!("{dual}\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"2001:2::/64\"]\n");
        only_problem(
            &text,
            K::NatSetting,
            &["2001:2::/64", "no IPv6 subnet of the lab"],
        );
        // An uplink without an IPv6 address has nothing to masquerade to.
        let v4_uplink = dual.replace(r#", "2001:2::1/64""#, "");
        let text = format!(
            "{v4_uplink}\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"fd00:10::/64\"]\n"
        );
        only_problem(
            &text,
            K::NatSetting,
            &["fd00:10::/64", "needs an IPv6 address"],
        );
        let text =
            format!("{dual}\n[nat]\nuplink = \"blue0-host\"\nmasquerade = [\"fd00:10::/6x\"]\n");
        only_problem(
            &text,
            K::NatSetting,
            &["`fd00:10::/6x`", "not an IPv6 CIDR"],
        );
    }

    #[test]
    fn nat_port_range() {
        for bad in ["0-100", "2000-1000", "1-70000", "100", "a-b"] {
            let text = lab(&format!("\n[nat]\nport_range = \"{bad}\"\n"));
            only_problem(
                &text,
                K::NatSetting,
                &["nat.port_range", &at(&text, &format!("\"{bad}\""))],
            );
        }
        let topo = ok(&lab("\n[nat]\nport_range = \"1-65535\"\n"));
        assert_eq!(topo.nat.port_range, (1, 65535));
        ok(&lab("\n[nat]\nport_range = \"5000-5000\"\n"));
    }

    #[test]
    fn nat_conntrack_size() {
        for bad in ["1023", "16777217", "-5", "5000000000"] {
            let text = lab(&format!("\n[nat]\nconntrack_size = {bad}\n"));
            only_problem(
                &text,
                K::NatSetting,
                &[
                    "nat.conntrack_size",
                    bad,
                    "1024..=16777216",
                    &at(&text, &format!("= {bad}")).replace(":16", ":18"),
                ],
            );
        }
        for good in [1024, 16_777_216] {
            let topo = ok(&lab(&format!("\n[nat]\nconntrack_size = {good}\n")));
            assert_eq!(topo.nat.conntrack_size, good);
        }
    }

    // Rule 6: published ports.

    #[test]
    fn published_ports_parse() {
        let text = BASE.replacen(
            "name = \"red\"\n",
            "name = \"red\"\npublish = [\"8080:80/tcp\", \"5353:53/udp\", \"9000:9000\"]\n",
            1,
        );
        let topo = ok(&text);
        let publish: Vec<_> = topo.namespaces[0]
            .publish
            .iter()
            .map(|p| (p.host_port, p.port, p.proto))
            .collect();
        assert_eq!(
            publish,
            [
                (8080, 80, Proto::Tcp),
                (5353, 53, Proto::Udp),
                (9000, 9000, Proto::Tcp)
            ]
        );
        assert_eq!(
            topo.namespaces[0].publish[1].at.to_string(),
            at(&text, "\"5353:53/udp\"")
        );
    }

    #[test]
    fn published_port_zero() {
        let text = BASE.replacen(
            "name = \"red\"\n",
            "name = \"red\"\npublish = [\"0:80\"]\n",
            1,
        );
        only_problem(
            &text,
            K::Publish,
            &["`red`", "host port 0", &at(&text, "\"0:80\"")],
        );
    }

    #[test]
    fn published_port_without_backend() {
        let text = lab("\n[[namespace]]\nname = \"x\"\npublish = [\"8080:80\"]\n");
        let problem = only_problem(&text, K::NoBackend, &[]);
        assert_eq!(
            problem.message,
            format!(
                "published port 8080 on `x` has no backend address: namespace `x` has no address in the lab ({})",
                at(&text, "\"8080:80\"")
            )
        );
    }

    // All at once.

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let text = BASE
            .replace("name = \"lab\"", "name = \"LAB\"")
            .replace("red0-br", "a-very-long-interface")
            .replace("via = \"10.0.0.1\"", "via = \"10.9.9.9\"");
        let err = parse(&text, "lab.toml").unwrap_err();
        assert_eq!(
            err.kinds(),
            [K::LabName, K::InterfaceName, K::Gateway],
            "{err}"
        );
        let lines: Vec<_> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with("(lab.toml:1:8)"), "{}", lines[0]);
        assert!(lines[1].contains("`a-very-long-interface`"), "{}", lines[1]);
        assert!(lines[2].contains("10.9.9.9"), "{}", lines[2]);
    }

    // Rule 7: the host.

    fn host(routes: &[(&str, Option<&str>)], addresses: &[(&str, &str)]) -> HostNetwork {
        HostNetwork {
            routes: routes
                .iter()
                .map(|&(dst, dev)| HostRoute {
                    dst: net(dst),
                    dev: dev.map(str::to_owned),
                })
                .collect(),
            addresses: addresses
                .iter()
                .map(|&(dev, a)| HostAddress {
                    dev: dev.to_owned(),
                    net: net(a),
                })
                .collect(),
            ..HostNetwork::default()
        }
    }

    const TEST_NET: &str = r#"[[namespace]]
name = "x"

[[veth]]
name = "veth-x"
netns = "x"
addresses = ["192.0.2.2/24"]
peer = { name = "veth-x-host", addresses = ["192.0.2.1/24"] }
"#;

    fn host_problems(host: &HostNetwork, own: &[&str]) -> Result<(), TopologyError> {
        let topo = ok(TEST_NET);
        let own: Vec<String> = own.iter().map(ToString::to_string).collect();
        crate::topology::check_host(&topo, host, &own)
    }

    #[test]
    fn host_route_overlap_is_refused() {
        let err = host_problems(&host(&[("192.0.2.0/24", Some("eth0"))], &[]), &[]).unwrap_err();
        assert_eq!(err.kinds(), [K::HostOverlap]);
        assert_eq!(
            err.to_string(),
            format!(
                "subnet 192.0.2.0/24 of `veth-x` ({}) overlaps the host route 192.0.2.0/24 dev eth0; pick a subnet clear of the host's routes",
                at(TEST_NET, "\"192.0.2.2/24\"")
            )
        );
        // A wider or narrower host route overlaps as well.
        assert!(host_problems(&host(&[("192.0.0.0/16", Some("eth0"))], &[]), &[]).is_err());
        assert!(host_problems(&host(&[("192.0.2.128/25", None)], &[]), &[]).is_err());
        assert!(host_problems(&host(&[("192.0.3.0/24", Some("eth0"))], &[]), &[]).is_ok());
    }

    #[test]
    fn host_address_overlap_is_refused() {
        let err = host_problems(&host(&[], &[("eth1", "192.0.2.77/24")]), &[]).unwrap_err();
        assert_eq!(err.kinds(), [K::HostOverlap]);
        let message = &err.problems()[0].message;
        assert!(
            message.contains("host address 192.0.2.77/24 on eth1"),
            "{message}"
        );
        assert!(message.contains("`veth-x`"), "{message}");
        assert!(
            message.contains(&at(TEST_NET, "\"192.0.2.2/24\"")),
            "{message}"
        );
    }

    #[test]
    fn host_check_ignores_own_links() {
        let host = host(
            &[("192.0.2.0/24", Some("veth-x-host"))],
            &[("veth-x-host", "192.0.2.1/24")],
        );
        assert!(host_problems(&host, &["veth-x-host"]).is_ok());
        assert!(host_problems(&host, &[]).is_err());
    }

    #[test]
    fn host_check_ignores_default_routes() {
        let host = host(
            &[("0.0.0.0/0", Some("eth0"))],
            &[("eth0", "198.51.100.7/24")],
        );
        assert!(host_problems(&host, &[]).is_ok());
    }

    #[test]
    fn host_check_reports_each_lab_subnet_once() {
        let host = host(
            &[
                ("192.0.2.0/24", Some("eth0")),
                ("192.0.2.0/25", Some("eth1")),
            ],
            &[("eth0", "192.0.2.9/24")],
        );
        let err = host_problems(&host, &[]).unwrap_err();
        assert_eq!(err.kinds(), [K::HostOverlap]);
    }

    #[test]
    fn default_lab_is_clear_of_a_typical_host() {
        let topo = crate::topology::default_lab().unwrap();
        let host = host(
            &[("0.0.0.0/0", Some("eth0")), ("10.0.2.0/24", Some("eth0"))],
            &[("eth0", "10.0.2.15/24"), ("lo", "127.0.0.1/8")],
        );
        assert!(check_host(&topo, &host, &[]).is_empty());
        // A second `up`: the lab's own host-side links are there now.
        let host = HostNetwork {
            routes: vec![HostRoute {
                dst: net("192.168.15.0/24"),
                dev: Some("v-net-0".into()),
            }],
            addresses: vec![HostAddress {
                dev: "nl-uplink".into(),
                net: net("198.18.0.1/24"),
            }],
            ..HostNetwork::default()
        };
        let own = ["v-net-0".to_owned(), "nl-uplink".to_owned()];
        assert!(check_host(&topo, &host, &own).is_empty());
        assert_eq!(check_host(&topo, &host, &[]).len(), 2);
    }

    #[test]
    fn a_subnet_holding_an_address_the_host_uses_is_refused() {
        let topo = crate::topology::default_lab().unwrap();
        let mut host = host(&[("0.0.0.0/0", Some("eth0"))], &[("eth0", "192.0.2.10/24")]);
        assert!(check_host(&topo, &host, &[]).is_empty());
        let uplink = topo.uplink_addr().unwrap();
        // Reached through the default route today: no route names it.
        let peer = std::net::Ipv4Addr::from(u32::from(uplink) + 7);
        host.in_use.push(crate::topology::AddressInUse {
            addr: peer.into(),
            why: "the peer of an established TCP connection".into(),
        });
        let problems = check_host(&topo, &host, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let message = &problems[0].message;
        for needle in [
            &peer.to_string(),
            "established TCP",
            "198.18.0.0/15",
            "--force",
        ] {
            assert!(message.contains(needle), "`{message}` lacks `{needle}`");
        }
    }

    #[test]
    fn an_ipv6_subnet_holding_an_address_the_host_uses_is_refused() {
        let topo = parse(crate::topology::DEFAULT_LAB_DUAL_STACK, "dual.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut host = host(&[("0.0.0.0/0", Some("eth0"))], &[("eth0", "192.0.2.10/24")]);
        assert!(check_host(&topo, &host, &[]).is_empty());
        // A nameserver reached over the host's IPv6 default route.
        host.in_use.push(crate::topology::AddressInUse {
            addr: "fd00:15::53".parse().unwrap(),
            why: "a nameserver in /etc/resolv.conf".into(),
        });
        let problems = check_host(&topo, &host, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let message = &problems[0].message;
        for needle in ["fd00:15::/64", "fd00:15::53", "nameserver", "--force"] {
            assert!(message.contains(needle), "`{message}` lacks `{needle}`");
        }
    }

    /// A node: pods on `nl-pods`, the world beyond `nl-uplink`.
    const NODE: &str = include_str!("../../../docs/cni/node.toml");

    #[test]
    fn the_node_and_its_peers_are_valid() {
        let text = format!(
            "{NODE}\n[[pod_network.peer]]\nsubnet = \"10.78.0.0/24\"\nvia = \"198.18.1.2\"\n\n\
             [[pod_network.peer]]\nsubnet = \"10.79.0.0/24\"\nvia = \"198.18.0.3\"\n"
        );
        let topo = parse(&text, "lab.toml").unwrap();
        let peers = &topo.pod_network.unwrap().peers;
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].subnet.to_string(), "10.78.0.0/24");
        assert_eq!(peers[1].via, Ipv4Addr::new(198, 18, 0, 3));
    }

    const VXLAN: &str = "\n[pod_network.vxlan]\nname = \"nl-vx\"\nvni = 42\n";

    #[test]
    fn the_overlay_is_parsed_with_its_defaults() {
        let text = format!(
            "{NODE}\n[[pod_network.peer]]\nsubnet = \"10.78.0.0/24\"\nvia = \"198.18.1.2\"\n{VXLAN}"
        );
        let topo = parse(&text, "lab.toml").unwrap();
        let vxlan = topo.vxlan().unwrap();
        assert_eq!(
            (vxlan.name.as_str(), vxlan.vni, vxlan.port, vxlan.mtu),
            ("nl-vx", 42, Vxlan::DEFAULT_PORT, Vxlan::DEFAULT_MTU)
        );
        // The device is the lab's: status, metrics and the trace name it.
        assert!(topo.ifaces().any(|i| i.name == "nl-vx"));
        assert!(topo.tunnel_on(Proto::Udp, 4789).is_some());
        assert!(topo.tunnel_on(Proto::Tcp, 4789).is_none());
        let full = NODE.to_owned() + &VXLAN.replace("vni = 42", "vni = 7\nport = 8472\nmtu = 1400");
        let topo = parse(&full, "lab.toml").unwrap();
        let vxlan = topo.vxlan().unwrap();
        assert_eq!((vxlan.vni, vxlan.port, vxlan.mtu), (7, 8472, 1400));
    }

    #[test]
    fn a_vtep_is_named_by_its_pod_subnet() {
        let net = |addr: [u8; 4]| Ipv4Net {
            addr: Ipv4Addr::from(addr),
            prefix_len: 24,
        };
        let vtep = crate::topology::Vtep::of(net([10, 78, 0, 0]));
        assert_eq!(vtep.addr, Ipv4Addr::new(10, 78, 0, 0));
        assert_eq!(vtep.mac, [0x0a, 0x58, 10, 78, 0, 0]);
        // Locally administered, unicast.
        assert_eq!(vtep.mac[0] & 0b11, 0b10);
        // Host bits of the subnet do not matter.
        assert_eq!(crate::topology::Vtep::of(net([10, 78, 0, 1])), vtep);
    }

    #[test]
    fn overlay_problems() {
        let published = NODE.replace(
            "[[namespace]]\nname = \"outside\"",
            "[[namespace]]\nname = \"outside\"\npublish = [\"4789:4789/udp\"]",
        );
        assert_ne!(published, NODE);
        let cases: Vec<(String, K, &[&str])> = vec![
            (
                format!("{NODE}{}", VXLAN.replace("vni = 42", "vni = 0")),
                K::PodNetwork,
                &["pod_network.vxlan.vni 0 is out of range", "1..=16777215"],
            ),
            (
                format!("{NODE}{}", VXLAN.replace("vni = 42", "vni = 16777216")),
                K::PodNetwork,
                &["vni 16777216 is out of range"],
            ),
            (
                format!(
                    "{NODE}{}",
                    VXLAN.replace("vni = 42", "vni = 1\nport = 70000")
                ),
                K::PodNetwork,
                &["pod_network.vxlan.port 70000 is out of range"],
            ),
            (
                format!("{NODE}{}", VXLAN.replace("vni = 42", "vni = 1\nmtu = 20")),
                K::PodNetwork,
                &["pod_network.vxlan.mtu 20 is out of range"],
            ),
            (
                format!("{NODE}{}", VXLAN.replace("nl-vx", "nl-vxlan-overlay")),
                K::InterfaceName,
                &["pod_network.vxlan name `nl-vxlan-overlay` is 16 bytes"],
            ),
            (
                format!("{NODE}{}", VXLAN.replace("nl-vx", "nl-uplink")),
                K::DuplicateName,
                &["`nl-uplink` is used twice in the host namespace"],
            ),
            (
                format!("{published}{VXLAN}"),
                K::DuplicatePort,
                &["port 4789 is published as UDP host port 4789 of `outside`"],
            ),
        ];
        for (text, kind, needles) in cases {
            only_problem(&text, kind, needles);
        }
    }

    /// The default lab with a service range and `service` (a TOML table body).
    fn with_service(service: &str) -> String {
        format!(
            "{}\nservice_range = \"10.96.0.0/24\"\n\n[[service]]\n{service}\n",
            include_str!("default.toml")
        )
    }

    #[test]
    fn services_parse_with_their_defaults() {
        let text = with_service(
            "name = \"web\"\naddress = \"10.96.0.10\"\nport = 80\nbackends = [\"red:8000\", \"10.78.0.5:80\"]",
        );
        let topo = parse(&text, "lab.toml").unwrap();
        let web = &topo.services[0];
        assert_eq!(
            (web.port, web.proto, web.node_port, web.affinity),
            (80, Proto::Tcp, None, false)
        );
        assert_eq!(
            web.backends
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["192.168.15.1:8000", "10.78.0.5:80"],
            "a namespace's backend is its lab address"
        );
        assert_eq!(topo.nat.service_range.unwrap().to_string(), "10.96.0.0/24");
    }

    #[test]
    fn service_problems_are_named() {
        let base = "name = \"web\"\naddress = \"10.96.0.10\"\nport = 80\nbackends = [\"red:8000\"]";
        let cases: Vec<(String, &[&str])> = vec![
            (
                with_service(&base.replace("10.96.0.10", "10.97.0.10")),
                &["service `web`: address 10.97.0.10 lies outside the service range 10.96.0.0/24"],
            ),
            (
                with_service(&base.replace("red:8000", "nosuch:8000")),
                &["backend `nosuch:8000` names no address and no namespace"],
            ),
            (
                with_service(&base.replace("red:8000", "red:0")),
                &["backend `red:0` has port `0`"],
            ),
            (
                with_service(&base.replace("port = 80", "port = 80\nproto = \"sctp\"")),
                &["proto `sctp` is not `tcp` or `udp`"],
            ),
            (
                with_service(&base.replace("port = 80", "port = 80\naffinity = \"cookie\"")),
                &["affinity `cookie` is not `none` or `client_ip`"],
            ),
            (
                with_service(&base.replace("port = 80", "port = 80\nnode_port = 8080")),
                &["node port 8080/tcp is a published port's"],
            ),
            (
                format!("{}\n[[service]]\n{base}\n", with_service(base)),
                &["service `web` is declared twice"],
            ),
            (
                with_service(&base.replace("name = \"web\"", "name = \"web server\"")),
                &["a Service's name is 1 to 63 letters, digits and '-'"],
            ),
            (
                with_service(&format!(
                    "{}{}]",
                    base.replace("\"red:8000\"]", ""),
                    (1..=65)
                        .map(|i| format!("\"10.78.0.{i}:80\", "))
                        .collect::<String>()
                )),
                &["has 65 backends; a Service holds at most 64"],
            ),
        ];
        for (text, needles) in cases {
            only_problem(&text, K::Service, needles);
        }
        // Without a service range.
        let text = format!("{}\n[[service]]\n{base}\n", include_str!("default.toml"));
        only_problem(&text, K::Service, &["needs `[nat] service_range`"]);
        // A service range over a lab subnet.
        let text = with_service(base)
            .replace("10.96.0.0/24", "192.168.15.0/25")
            .replace("10.96.0.10", "192.168.15.10");
        let problems = parse(&text, "lab.toml").unwrap_err().to_string();
        assert!(
            problems.contains("overlaps the lab's subnet 192.168.15.0/24"),
            "{problems}"
        );
    }

    #[test]
    fn pod_network_problems() {
        let peer = |subnet: &str, via: &str| {
            format!("\n[[pod_network.peer]]\nsubnet = \"{subnet}\"\nvia = \"{via}\"\n")
        };
        let cases: Vec<(String, &[&str])> = vec![
            (
                NODE.replace("datapath = \"bridge\"", "datapath = \"iptables\""),
                &["needs an eBPF datapath", "iptables"],
            ),
            (
                NODE.replace("bridge = \"nl-pods\"", "bridge = \"nl-none\""),
                &["`nl-none` is not a bridge of the lab"],
            ),
            (
                NODE.replace("10.77.0.10-10.77.0.250", "10.77.0.250-10.77.0.10"),
                &["not an ascending range", "10.77.0.0/24"],
            ),
            (
                NODE.replace("10.77.0.10-10.77.0.250", "10.77.0.10-10.78.0.5"),
                &["not an ascending range"],
            ),
            (
                NODE.replace("10.77.0.10-10.77.0.250", "ten to twenty"),
                &["is not FIRST-LAST"],
            ),
            (
                format!("{NODE}{}", peer("10.77.0.128/25", "198.18.1.2")),
                &["10.77.0.128/25 overlaps the lab's subnet 10.77.0.0/24"],
            ),
            (
                format!(
                    "{NODE}{}{}",
                    peer("10.78.0.0/16", "198.18.1.2"),
                    peer("10.78.5.0/24", "198.18.1.3")
                ),
                &["10.78.5.0/24 overlaps the peer subnet 10.78.0.0/16"],
            ),
            (
                format!("{NODE}{}", peer("10.78.0.0/24", "10.78.0.1")),
                &["inside its own subnet"],
            ),
            (
                format!("{NODE}{}", peer("10.78.0.0/24", "10.77.0.5")),
                &["lies in the lab's subnet 10.77.0.0/24"],
            ),
            (
                format!("{NODE}{}", peer("10.78.0.0/24", "not-an-address")),
                &["via `not-an-address` is not an IPv4 address"],
            ),
            (
                format!("{NODE}{}", peer("10.78.0.0/33", "198.18.1.2")),
                &["subnet `10.78.0.0/33` is not an IPv4 CIDR"],
            ),
            (
                format!(
                    "{NODE}{}",
                    (0..=MAX_PEERS)
                        .map(|i| peer(&format!("10.{}.0.0/24", 100 + i), "198.18.1.2"))
                        .collect::<String>()
                ),
                &["has 9 peers; the datapath holds at most 8"],
            ),
        ];
        for (text, needles) in cases {
            only_problem(&text, K::PodNetwork, needles);
        }
    }

    // IPv6 beside IPv4.

    /// BASE with IPv6 on the bridge segment (br0, red0) and blue's pair.
    fn dual() -> String {
        BASE.replace(r#"["10.0.0.1/24"]"#, r#"["10.0.0.1/24", "fd00:10::1/64"]"#)
            .replace(r#"["10.0.0.2/24"]"#, r#"["10.0.0.2/24", "fd00:10::2/64"]"#)
            .replace(r#"["10.1.0.2/24"]"#, r#"["10.1.0.2/24", "fd00:11::2/64"]"#)
            .replace(r#"["10.1.0.1/24"]"#, r#"["10.1.0.1/24", "fd00:11::1/64"]"#)
            + "\n[[route]]\nnetns = \"red\"\nto = \"default\"\nvia = \"fd00:10::1\"\n"
    }

    fn net6(s: &str) -> Ipv6Net {
        let (a, p) = s.split_once('/').unwrap();
        Ipv6Net {
            addr: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    #[test]
    fn ipv6_addresses_and_routes_sit_beside_ipv4() {
        let topo = ok(&dual());
        let red = topo.veth_ends().find(|e| e.name == "red0").unwrap();
        assert_eq!(red.addresses.len(), 1);
        assert_eq!(red.addresses6[0].net, net6("fd00:10::2/64"));
        assert_eq!(topo.bridges[0].addresses6[0].net, net6("fd00:10::1/64"));
        assert_eq!(topo.routes.len(), 1);
        assert_eq!(topo.routes6.len(), 1);
        assert_eq!(topo.routes6[0].to, Ipv6Net::DEFAULT);
        assert_eq!(
            topo.routes6[0].via,
            "fd00:10::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(topo.routes6[0].place, Place::Netns("red".to_owned()));
        // An IPv4-only lab has no IPv6 at all.
        let topo = ok(BASE);
        assert!(topo.routes6.is_empty());
        assert!(topo.veth_ends().all(|e| e.addresses6.is_empty()));
    }

    #[test]
    fn ipv6_address_rules() {
        // (blue0's IPv6 address, what the message must say)
        for (address, says) in [
            ("fd00:11::2/0", "/0"),
            ("fe80::2/64", "link-local"),
            ("ff02::2/64", "not a unicast"),
            ("fd00:11::/64", "subnet-router anycast"),
        ] {
            let text = dual().replace("fd00:11::2/64", address);
            only_problem(
                &text,
                K::Address,
                &[
                    address,
                    "`blue0`",
                    says,
                    &at(&text, &format!("\"{address}\"")),
                ],
            );
        }
        for (address, says) in [
            ("fd00:10::2/129", "0..=128"),
            ("fd00:10:::2/64", "not an IPv6 address"),
            ("fd00:10::2", "/prefix is missing"),
        ] {
            let text = dual().replace("fd00:11::2/64", address);
            only_problem(&text, K::Address, &[address, "`blue0`", says]);
        }
        // Twice, and the same subnet on two segments.
        let text = dual().replace("fd00:10::2/64", "fd00:10::1/64");
        only_problem(
            &text,
            K::DuplicateAddress,
            &["fd00:10::1", "`red0`", "`br0`"],
        );
        let text = dual().replace("fd00:11::2/64", "fd00:10::7/64");
        only_problem(
            &text,
            K::SubnetOverlap,
            &["fd00:10::/64", "`blue0`", "`br0`"],
        );
    }

    #[test]
    fn ipv6_route_rules() {
        // A gateway off every IPv6 subnet of the namespace.
        let text = dual().replace("via = \"fd00:10::1\"", "via = \"fd00:99::1\"");
        only_problem(&text, K::Gateway, &["fd00:99::1", "IPv6 subnet", "`red`"]);
        // Families mixed: an IPv4 destination through an IPv6 gateway.
        let text = dual().replace(
            "to = \"default\"\nvia = \"fd00:10::1\"",
            "to = \"10.9.0.0/16\"\nvia = \"fd00:10::1\"",
        );
        only_problem(&text, K::Route, &["`10.9.0.0/16`", "the gateway is IPv6"]);
        // Interface bits in a destination; a route declared twice.
        let text = dual().replace(
            "to = \"default\"\nvia = \"fd00:10::1\"",
            "to = \"fd00:20::1/64\"\nvia = \"fd00:10::1\"",
        );
        only_problem(&text, K::Route, &["fd00:20::1/64", "write fd00:20::/64"]);
        let text = dual() + "\n[[route]]\nnetns = \"red\"\nto = \"::/0\"\nvia = \"fd00:10::1\"\n";
        only_problem(&text, K::DuplicateRoute, &["declared twice"]);
        // An IPv6 destination through an IPv4 gateway; an unknown namespace.
        let text =
            dual() + "\n[[route]]\nnetns = \"red\"\nto = \"fd00:30::/64\"\nvia = \"10.0.0.1\"\n";
        only_problem(&text, K::Route, &["`fd00:30::/64` is IPv6", "`10.0.0.1`"]);
        let text = dual()
            + "\n[[route]]\nnetns = \"green\"\nto = \"fd00:30::/64\"\nvia = \"fd00:10::1\"\n";
        let err = parse(&text, "lab.toml").unwrap_err();
        assert!(err.kinds().contains(&K::UnknownNamespace), "{err}");
    }

    #[test]
    fn at_most_four_ipv6_subnets() {
        let bridges: String = (0..5)
            .map(|i| format!("\n[[bridge]]\nname = \"b{i}\"\naddresses = [\"fd00:4{i}::1/64\"]\n"))
            .collect();
        let text = lab(&bridges);
        only_problem(&text, K::Address, &["fd00:44::/64", "at most 4"]);
        let four: String = (0..4)
            .map(|i| format!("\n[[bridge]]\nname = \"b{i}\"\naddresses = [\"fd00:4{i}::1/64\"]\n"))
            .collect();
        ok(&lab(&four));
    }

    #[test]
    fn at_most_eight_host_ipv6_addresses() {
        let uplink = |n: usize| {
            let addresses: Vec<String> = (1..=n).map(|i| format!("\"2001:2::{i}/64\"")).collect();
            crate::topology::DEFAULT_LAB_DUAL_STACK
                // The world's end leaves the uplink's addresses free.
                .replace(r#""2001:2::2/64""#, r#""2001:2::99/64""#)
                .replace(r#""2001:2::1/64""#, &addresses.join(", "))
        };
        // The bridge's address and eight of the uplink's.
        only_problem(&uplink(8), K::Address, &["2001:2::8", "at most 8"]);
        ok(&uplink(7));
    }

    #[test]
    fn ipv6_subnets_clear_of_the_host() {
        let topo = ok(&dual());
        // This machine's own eth0: fd00::2/64, a default route.
        let mut host = HostNetwork {
            routes6: vec![
                HostRoute6 {
                    dst: net6("fd00::/64"),
                    dev: Some("eth0".into()),
                },
                HostRoute6 {
                    dst: net6("::/0"),
                    dev: Some("eth0".into()),
                },
            ],
            addresses6: vec![HostAddress6 {
                dev: "eth0".into(),
                net: net6("fd00::2/64"),
            }],
            ..HostNetwork::default()
        };
        assert!(check_host(&topo, &host, &[]).is_empty());
        // A host route over the bridge's subnet; then a host address in it.
        host.routes6.push(HostRoute6 {
            dst: net6("fd00:10::/48"),
            dev: Some("eth1".into()),
        });
        let problems = check_host(&topo, &host, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("fd00:10::/48 dev eth1"),
            "{problems:?}"
        );
        host.routes6.pop();
        host.addresses6.push(HostAddress6 {
            dev: "eth1".into(),
            net: net6("fd00:11::9/64"),
        });
        let problems = check_host(&topo, &host, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("fd00:11::9/64 on eth1"),
            "{problems:?}"
        );
        // Its own links are the lab's.
        assert!(check_host(&topo, &host, &["eth1".to_owned()]).is_empty());
    }
}
