//! The lab as validated data: what `up` builds.
//!
//! Values of these types only come out of [`super::parse`] (file or embedded
//! default), which has already checked every rule in [`super::validate`]; the
//! netlink builder can therefore take them at their word.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// Where a namespace-scoped item lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    /// The namespace netlab runs in (the "host" of the tutorials).
    Host,
    /// A named namespace that the lab owns, mounted at `/run/netns/NAME`.
    Netns(String),
    /// A namespace the lab does not own, by path: a container's, as a
    /// runtime names it to the CNI plugin (`CNI_NETNS`). Never parsed from
    /// a topology.
    Path(PathBuf),
}

impl Place {
    pub fn netns(&self) -> Option<&str> {
        match self {
            Place::Host => None,
            Place::Netns(name) => Some(name),
            Place::Path(_) => None,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Host => f.write_str("host"),
            Place::Netns(name) => f.write_str(name),
            Place::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A position in the topology source, for error messages (`lab.toml:12:9`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pos {
    /// File name as given by the user, or `<default lab>`.
    pub origin: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.origin)
        } else {
            write!(f, "{}:{}:{}", self.origin, self.line, self.column)
        }
    }
}

/// An IPv4 network (address with its prefix length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub const DEFAULT: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    };

    pub fn mask(self) -> u32 {
        match self.prefix_len {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n.min(32))),
        }
    }

    /// The network this address sits in (host bits cleared).
    pub fn network(self) -> Ipv4Net {
        Ipv4Net {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn overlaps(self, other: Ipv4Net) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        let mask = Ipv4Net {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix_len: shorter,
        }
        .mask();
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What the checks that hold for both families ask of a subnet (the host
/// check, for one): each family's network type answers them.
pub trait Subnet: Copy + Eq + std::hash::Hash + fmt::Display {
    /// The network this address sits in (host bits cleared).
    fn network(self) -> Self;
    fn prefix_len(self) -> u8;
    fn overlaps(self, other: Self) -> bool;
    /// Whether `ip` is inside (never, for an address of the other family).
    fn holds(self, ip: IpAddr) -> bool;
}

impl Subnet for Ipv4Net {
    fn network(self) -> Self {
        Ipv4Net::network(self)
    }

    fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    fn overlaps(self, other: Self) -> bool {
        Ipv4Net::overlaps(self, other)
    }

    fn holds(self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(ip) if self.contains(ip))
    }
}

impl Subnet for Ipv6Net {
    fn network(self) -> Self {
        Ipv6Net::network(self)
    }

    fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    fn overlaps(self, other: Self) -> bool {
        Ipv6Net::overlaps(self, other)
    }

    fn holds(self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V6(ip) if self.contains(ip))
    }
}

/// An IPv6 network (address with its prefix length). A lab's IPv6
/// addresses and routes sit beside its IPv4 ones, each family in lists of
/// its own, as the kernel keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Ipv6Net {
    pub const DEFAULT: Ipv6Net = Ipv6Net {
        addr: Ipv6Addr::UNSPECIFIED,
        prefix_len: 0,
    };

    pub fn mask(self) -> u128 {
        match self.prefix_len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n.min(128))),
        }
    }

    /// The network this address sits in (interface bits cleared).
    pub fn network(self) -> Ipv6Net {
        Ipv6Net {
            addr: Ipv6Addr::from(u128::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    pub fn contains(self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr) & self.mask()
    }

    pub fn overlaps(self, other: Ipv6Net) -> bool {
        let shorter = Ipv6Net {
            addr: Ipv6Addr::UNSPECIFIED,
            prefix_len: self.prefix_len.min(other.prefix_len),
        }
        .mask();
        u128::from(self.addr) & shorter == u128::from(other.addr) & shorter
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Whether `addr` is link-local (fe80::/10): every IPv6 interface has one
/// of its own.
pub fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// Which datapath carries the lab's traffic and NAT. Stored in the lab
/// record and printed by `status --json` by its lowercase name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// Linux bridge for L2, netlab's eBPF programs for NAT.
    #[default]
    Bridge,
    /// eBPF redirects between veths, skipping the bridge and the host stack.
    Redirect,
    /// The reference: the same lab with iptables NAT in netlab's own chains.
    Iptables,
}

impl Datapath {
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Bridge => "bridge",
            Datapath::Redirect => "redirect",
            Datapath::Iptables => "iptables",
        }
    }

    /// Which implementation carries this datapath: the one place that tells
    /// the eBPF datapaths from the iptables one.
    pub fn family(self) -> Family {
        match self {
            Datapath::Bridge | Datapath::Redirect => Family::Ebpf,
            Datapath::Iptables => Family::Iptables,
        }
    }
}

/// Where the world's traffic first meets the eBPF datapath on the uplink:
/// its TC ingress hook (the default), or an XDP program before the host
/// builds a socket buffer (README: "XDP or TC at the lab's entry").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    #[default]
    Tc,
    Xdp,
}

impl Entry {
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Tc => "tc",
            Entry::Xdp => "xdp",
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The implementations behind [`Datapath`]: `netlab::datapath::ebpf` or
/// `netlab::datapath::iptables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// netlab's eBPF programs do the NAT (`bridge`, `redirect`).
    Ebpf,
    /// iptables rules in the lab's own chains do it (`iptables`).
    Iptables,
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `HOST_PORT:PORT/PROTO` on a namespace, as `docker run -p`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Publish {
    pub host_port: u16,
    pub port: u16,
    pub proto: Proto,
    pub at: Pos,
}

/// A published port in force: `host_port/proto` on the host forwards to
/// `namespace:port`. The topology declares the first ones
/// ([`Topology::published_ports`]); `netlab publish` changes them, and the
/// lab record keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_port: u16,
    pub proto: Proto,
    pub namespace: String,
    pub port: u16,
    /// The backend's address, for a backend the topology does not know (a
    /// pod's: `namespace` then names the pod); `None`: the namespace's lab
    /// address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
}

impl PublishedPort {
    /// Where the port forwards to.
    pub fn backend(&self, topo: &Topology) -> Option<Ipv4Addr> {
        self.addr.or_else(|| topo.backend_addr(&self.namespace))
    }
}

/// A pod the CNI plugin attached to the lab's pod network: a runtime
/// record, as published ports are (the lab record keeps both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The CNI network (the configuration's `name`), container and
    /// interface: together they name the attachment.
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS` at ADD (shown only: DEL never needs it).
    pub netns: String,
    /// The host end of the pod's veth.
    pub host_veth: String,
    /// The host end's ifindex (0 until it exists).
    pub host_ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The pod end's MAC (read at ADD, so no later command enters the pod).
    pub mac: Option<[u8; 6]>,
    /// Set once ADD finished; a record without it is a half-done ADD that
    /// DEL or GC finishes removing.
    pub ready: bool,
}

impl Pod {
    /// The name published ports use for the pod (`cni:NETWORK/ID/IF`).
    pub fn key(&self) -> String {
        format!("cni:{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} -> {}:{}",
            self.host_port, self.proto, self.namespace, self.port
        )
    }
}

/// A lab that `up` builds and `down` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Names the lab's state record, pin directory and link tags.
    pub name: String,
    pub datapath: Datapath,
    pub namespaces: Vec<Namespace>,
    pub bridges: Vec<Bridge>,
    pub veths: Vec<Veth>,
    pub routes: Vec<Route>,
    /// IPv6 routes (`to`/`via` IPv6 in `[[route]]`).
    pub routes6: Vec<Route6>,
    pub nat: Nat,
    /// `[pod_network]`: the pods a container runtime attaches at run time
    /// through netlab's CNI plugin (none: the lab takes no pods).
    pub pod_network: Option<PodNetwork>,
    /// `[[service]]`: the Services `up` installs (more come and go with
    /// `netlab service`).
    pub services: Vec<Service>,
}

/// A Service, as Kubernetes has them: a virtual address and port (its
/// ClusterIP, inside `[nat] service_range`) load-balanced over backends
/// on any node, and optionally a NodePort: a host port of the uplink's
/// address that the world reaches it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// Where its flows go: pods or namespaces of this node, or pods of
    /// peer nodes, at their own port.
    pub backends: Vec<SocketAddrV4>,
    /// The NodePort, if any: the world's flows to it go to the backends
    /// on this node only, and keep their source address (Kubernetes'
    /// `externalTrafficPolicy: Local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Session affinity (`ClientIP`): a client's flows all go to one
    /// backend.
    #[serde(default)]
    pub affinity: bool,
    /// The eBPF datapath's ids of its tables and backends, kept in the
    /// lab's record so a change of backends keeps the others' ids (and
    /// their flows).
    #[serde(default)]
    pub ids: ServiceIds,
}

/// What a lab forwards beyond what its topology builds: the published
/// ports and the Services in force (its record's).
#[derive(Clone, Copy, Debug)]
pub struct InForce<'a> {
    pub published: &'a [PublishedPort],
    pub services: &'a [Service],
}

impl InForce<'_> {
    /// The ports backends answer from: published ports' and Services'.
    pub fn backend_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.published.iter().map(|p| p.port).chain(
            self.services
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| b.port())),
        )
    }
}

/// See [`Service::ids`]: 0 is no id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIds {
    /// The ClusterIP's backend table.
    pub cluster: u16,
    /// The NodePort's table (this node's backends only).
    pub node: u16,
    /// Each backend's id, in [`Service::backends`]'s order.
    pub backends: Vec<u16>,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}/{}", self.name, self.vip, self.port, self.proto)
    }
}

/// Where pods go: a bridge of the lab, whose first address is their
/// gateway and whose subnet they get addresses from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub bridge: String,
    /// The addresses handed out, both ends included; `None`: every host
    /// address of the subnet.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The cluster's other nodes (`[[pod_network.peer]]`).
    pub peers: Vec<Peer>,
    /// `[pod_network.vxlan]`: reach the peers through a VXLAN overlay
    /// rather than by routing their pod subnets over the underlay.
    pub vxlan: Option<Vxlan>,
    pub at: Pos,
}

/// The overlay: a VXLAN device netlab makes in the host namespace. Each
/// node's end of the tunnel (its VTEP) is named by its pod subnet
/// ([`Vtep::of`]), so a node knows every peer's VTEP from the peer's
/// subnet and underlay address alone, with no learning and no flooding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// The device's name.
    pub name: String,
    /// The VXLAN network identifier, the same on every node.
    pub vni: u32,
    /// The UDP port, the same on every node (IANA's 4789 by default).
    pub port: u16,
    /// The device's MTU, and the pods' (the underlay's less the 50 bytes
    /// of VXLAN over IPv4, 1450 by default).
    pub mtu: u32,
    pub at: Pos,
}

impl Vxlan {
    pub const DEFAULT_PORT: u16 = 4789;
    pub const DEFAULT_MTU: u32 = 1450;
    /// The largest VNI: 24 bits.
    pub const VNI_MAX: u32 = (1 << 24) - 1;
}

/// A node's end of the overlay, derived from its pod subnet: the subnet's
/// network address (as flannel gives its `flannel.1` device), and a
/// locally administered MAC made of it (`0a:58:` and the four bytes, as
/// Kubernetes plugins derive pod MACs). The peers' VTEPs go into the
/// kernel's neighbour table and the device's forwarding table as
/// permanent entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vtep {
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
}

impl Vtep {
    pub fn of(pods: Ipv4Net) -> Vtep {
        let addr = pods.network().addr;
        let [a, b, c, d] = addr.octets();
        Vtep {
            addr,
            mac: [0x0a, 0x58, a, b, c, d],
        }
    }
}

/// Another node of the cluster: its pod subnet, routed through its
/// underlay address. Pods reach it and it reaches them with their own
/// addresses (no masquerade); the world beyond the uplink still cannot
/// route into the pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
    pub at: Pos,
}

/// At most this many peers: the datapath holds them inline in its
/// configuration (`NetSet`), with no trie behind them.
pub const MAX_PEERS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Ports published on the host, forwarded to this namespace's lab address.
    pub publish: Vec<Publish>,
    pub at: Pos,
}

/// A Linux bridge in the host namespace (`v-net-0`, `docker0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub addresses: Vec<Address>,
    pub addresses6: Vec<Address6>,
    pub at: Pos,
}

/// A veth pair; each end says where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    pub a: VethEnd,
    pub b: VethEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethEnd {
    pub name: String,
    pub place: Place,
    /// Bridge this end is enslaved to (host ends only).
    pub bridge: Option<String>,
    pub addresses: Vec<Address>,
    pub addresses6: Vec<Address6>,
    pub at: Pos,
}

/// An address on an interface, with the prefix that defines its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub net: Ipv4Net,
    pub at: Pos,
}

/// An IPv6 address on an interface, with its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address6 {
    pub net: Ipv6Net,
    pub at: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route6 {
    pub place: Place,
    /// `::/0` for `to = "default"`.
    pub to: Ipv6Net,
    pub via: Ipv6Addr,
    pub at: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub place: Place,
    /// `0.0.0.0/0` for `to = "default"`.
    pub to: Ipv4Net,
    pub via: Ipv4Addr,
    pub at: Pos,
}

/// Masquerade (SNAT) settings; used by the NAT datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    /// Lab subnets whose traffic to the uplink leaves with the uplink's address.
    pub masquerade: Vec<Ipv4Net>,
    /// The same for IPv6 (NAT66, as Docker's ip6tables rules do for a
    /// unique local subnet): the uplink's first IPv6 address. Published
    /// ports reach a namespace's address in one of these too.
    pub masquerade6: Vec<Ipv6Net>,
    /// Host interface toward the world; its first address is the masquerade
    /// address and the address published ports answer on.
    pub uplink: Option<String>,
    /// Source ports handed out by masquerade, inclusive.
    pub port_range: (u16, u16),
    /// Maximum conntrack entries (each flow uses two: one per direction).
    pub conntrack_size: u32,
    /// Where the world's traffic enters the eBPF datapath on the uplink.
    pub entry: Entry,
    /// The Services' virtual addresses (Kubernetes' service CIDR).
    pub service_range: Option<Ipv4Net>,
}

impl Default for Nat {
    fn default() -> Self {
        Nat {
            masquerade: Vec::new(),
            masquerade6: Vec::new(),
            uplink: None,
            port_range: (32768, 60999),
            conntrack_size: 65536,
            entry: Entry::Tc,
            service_range: None,
        }
    }
}

/// One interface of the lab, wherever it lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iface {
    pub place: Place,
    pub name: String,
}

impl fmt::Display for Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.place, self.name)
    }
}

impl Topology {
    /// Every veth end, in declaration order (a then b).
    pub fn veth_ends(&self) -> impl Iterator<Item = &VethEnd> {
        self.veths.iter().flat_map(|v| [&v.a, &v.b])
    }

    /// Every interface netlab creates, bridges first, then the overlay's
    /// device.
    pub fn ifaces(&self) -> impl Iterator<Item = Iface> + '_ {
        self.bridges
            .iter()
            .map(|b| &b.name)
            .chain(self.vxlan().map(|v| &v.name))
            .map(|name| Iface {
                place: Place::Host,
                name: name.clone(),
            })
            .chain(self.veth_ends().map(|e| Iface {
                place: e.place.clone(),
                name: e.name.clone(),
            }))
    }

    /// The addresses of the lab's interfaces in the host namespace: bridges,
    /// then host-side veth ends, in declaration order.
    pub fn host_addresses(&self) -> impl Iterator<Item = (&str, &Address)> {
        self.bridges
            .iter()
            .flat_map(|b| b.addresses.iter().map(move |a| (b.name.as_str(), a)))
            .chain(
                self.veth_ends()
                    .filter(|e| e.place == Place::Host)
                    .flat_map(|e| e.addresses.iter().map(move |a| (e.name.as_str(), a))),
            )
    }

    /// The first address of a host interface of the lab (bridge or veth end).
    pub fn host_iface_addr(&self, name: &str) -> Option<Ipv4Addr> {
        self.host_addresses()
            .find(|(iface, _)| *iface == name)
            .map(|(_, a)| a.net.addr)
    }

    /// The address a namespace's published ports forward to: its first lab address.
    pub fn backend_addr(&self, namespace: &str) -> Option<Ipv4Addr> {
        self.veth_ends()
            .filter(|e| e.place.netns() == Some(namespace))
            .flat_map(|e| e.addresses.iter())
            .map(|a| a.net.addr)
            .next()
    }

    /// The pods' subnet, with their gateway as its address: the pod
    /// network bridge's first address.
    pub fn pod_gateway(&self) -> Option<Ipv4Net> {
        let pods = self.pod_network.as_ref()?;
        self.bridges
            .iter()
            .find(|b| b.name == pods.bridge)?
            .addresses
            .first()
            .map(|a| a.net)
    }

    /// `service`'s backends on this node (in a subnet of the lab's own
    /// interfaces, not a peer's nor the world's beyond the uplink), with
    /// their ids.
    pub fn local_backends<'s>(
        &self,
        service: &'s Service,
    ) -> impl Iterator<Item = (u16, SocketAddrV4)> + 's {
        let lab: Vec<Ipv4Net> = {
            let uplink = self
                .uplink_end()
                .and_then(|e| e.addresses.first())
                .map(|a| a.net.network());
            self.addresses()
                .map(|a| a.net.network())
                .filter(|net| Some(*net) != uplink)
                .collect()
        };
        service
            .ids
            .backends
            .iter()
            .copied()
            .zip(service.backends.iter().copied())
            .filter(move |(_, addr)| lab.iter().any(|net| net.contains(*addr.ip())))
    }

    /// The overlay to the peers, if the pod network has one.
    pub fn vxlan(&self) -> Option<&Vxlan> {
        self.pod_network.as_ref()?.vxlan.as_ref()
    }

    /// The overlay whose tunnel takes host port `port`/`proto`, which no
    /// published port may then take: its packets are the host's.
    pub fn tunnel_on(&self, proto: Proto, port: u16) -> Option<&Vxlan> {
        self.vxlan()
            .filter(|v| proto == Proto::Udp && v.port == port)
    }

    /// The addresses pods may get, both ends included: the configured
    /// range, else every host address of the pod subnet.
    pub fn pod_pool(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let gateway = self.pod_gateway()?;
        if let Some(range) = self.pod_network.as_ref()?.range {
            return Some(range);
        }
        let network = u32::from(gateway.network().addr);
        let broadcast = u32::from(gateway.broadcast());
        (broadcast > network + 1)
            .then(|| (Ipv4Addr::from(network + 1), Ipv4Addr::from(broadcast - 1)))
    }

    /// The address published ports answer on from the world, and masquerade uses.
    pub fn uplink_addr(&self) -> Option<Ipv4Addr> {
        self.nat
            .uplink
            .as_deref()
            .and_then(|u| self.host_iface_addr(u))
    }

    /// The uplink's first IPv6 address: what IPv6 masquerade uses and
    /// IPv6 published ports answer on from the world.
    pub fn uplink_addr6(&self) -> Option<Ipv6Addr> {
        self.uplink_end()?.addresses6.first().map(|a| a.net.addr)
    }

    /// The address a namespace's published ports forward to over IPv6:
    /// its first address in a subnet the lab masquerades (IPv6 is
    /// translated only there; elsewhere it is bridged).
    pub fn backend_addr6(&self, namespace: &str) -> Option<Ipv6Addr> {
        self.veth_ends()
            .filter(|e| e.place.netns() == Some(namespace))
            .flat_map(|e| e.addresses6.iter())
            .map(|a| a.net.addr)
            .find(|addr| self.nat.masquerade6.iter().any(|m| m.contains(*addr)))
    }

    /// The lab's IPv6 addresses on the host (bridges, host ends), with
    /// their interfaces.
    pub fn host_addresses6(&self) -> impl Iterator<Item = (&str, &Address6)> {
        self.bridges
            .iter()
            .flat_map(|b| b.addresses6.iter().map(move |a| (b.name.as_str(), a)))
            .chain(
                self.veth_ends()
                    .filter(|e| e.place == Place::Host)
                    .flat_map(|e| e.addresses6.iter().map(move |a| (e.name.as_str(), a))),
            )
    }

    /// Whether the interface called `name` is the lab's uplink.
    pub fn is_uplink(&self, name: &str) -> bool {
        self.nat.uplink.as_deref() == Some(name)
    }

    /// The uplink's veth end (on the host), if the lab has one.
    pub fn uplink_end(&self) -> Option<&VethEnd> {
        self.host_ends().find(|e| self.is_uplink(&e.name))
    }

    /// The other end of the uplink's veth: the world's side.
    pub fn uplink_peer(&self) -> Option<&VethEnd> {
        self.veths.iter().find_map(|v| {
            if v.a.place == Place::Host && self.is_uplink(&v.a.name) {
                Some(&v.b)
            } else if v.b.place == Place::Host && self.is_uplink(&v.b.name) {
                Some(&v.a)
            } else {
                None
            }
        })
    }

    /// The veth ends on the host, in declaration order: where the eBPF
    /// datapath runs.
    pub fn host_ends(&self) -> impl Iterator<Item = &VethEnd> {
        self.veth_ends().filter(|e| e.place == Place::Host)
    }

    /// The published ports the topology declares.
    pub fn published_ports(&self) -> Vec<PublishedPort> {
        self.namespaces
            .iter()
            .flat_map(|ns| {
                ns.publish.iter().map(|p| PublishedPort {
                    host_port: p.host_port,
                    proto: p.proto,
                    namespace: ns.name.clone(),
                    port: p.port,
                    addr: None,
                })
            })
            .collect()
    }

    /// Every address the lab puts on an interface, with where it was declared.
    /// Each of their subnets must stay clear of the host's own routes.
    pub fn addresses(&self) -> impl Iterator<Item = &Address> {
        self.bridges
            .iter()
            .flat_map(|b| b.addresses.iter())
            .chain(self.veth_ends().flat_map(|e| e.addresses.iter()))
    }

    /// Every IPv6 address the lab puts on an interface.
    pub fn addresses6(&self) -> impl Iterator<Item = &Address6> {
        self.bridges
            .iter()
            .flat_map(|b| b.addresses6.iter())
            .chain(self.veth_ends().flat_map(|e| e.addresses6.iter()))
    }

    /// The lab's own IPv6 subnets, in declaration order, each once: those
    /// of its interfaces but what overlaps a subnet of either end of the
    /// uplink's veth, which stands for the world.
    pub fn internal_subnets6(&self) -> Vec<Ipv6Net> {
        let world: Vec<Ipv6Net> = self
            .uplink_end()
            .into_iter()
            .chain(self.uplink_peer())
            .flat_map(|e| e.addresses6.iter().map(|a| a.net.network()))
            .collect();
        let mut subnets: Vec<Ipv6Net> = Vec::new();
        for net in self.addresses6().map(|a| a.net.network()) {
            if net.prefix_len > 0
                && !world.iter().any(|w| w.overlaps(net))
                && !subnets.contains(&net)
            {
                subnets.push(net);
            }
        }
        subnets
    }

    /// The host's IPv6 addresses in the lab (bridges', host ends', the
    /// uplink's), as /128s, each once: the lab's namespaces reach the host
    /// there, as at its IPv4 addresses, and published ports answer there.
    pub fn local_addresses6(&self) -> Vec<Ipv6Net> {
        let mut hosts: Vec<Ipv6Net> = Vec::new();
        for (_, a) in self.host_addresses6() {
            let host = Ipv6Net {
                addr: a.net.addr,
                prefix_len: 128,
            };
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        hosts
    }
}
