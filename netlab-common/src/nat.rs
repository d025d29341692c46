//! NAT and conntrack types. Addresses and ports are kept in network byte
//! order, as they sit in the packet, so the datapath never converts them.
//!
//! The flow and conntrack types are generic over the address ([`Addr`]):
//! one shape for IPv4 (`u32`) and IPv6 (`[u32; 4]`), so conntrack is
//! written once for both families, as nf_conntrack keeps both in one
//! table and Cilium writes ct4 and ct6 from one template.

/// An address as it sits in the IP header, network order: IPv4's one word
/// or IPv6's four.
pub trait Addr:
    Copy + Default + PartialEq + Eq + core::fmt::Debug + core::hash::Hash + 'static
{
    /// The unspecified address (0.0.0.0, ::).
    const ZERO: Self;

    /// The address in one word, for hashes: IPv6's words xored.
    fn folded(&self) -> u32;
}

impl Addr for u32 {
    const ZERO: u32 = 0;

    #[inline(always)]
    fn folded(&self) -> u32 {
        *self
    }
}

impl Addr for [u32; 4] {
    const ZERO: [u32; 4] = [0; 4];

    #[inline(always)]
    fn folded(&self) -> u32 {
        self[0] ^ self[1] ^ self[2] ^ self[3]
    }
}

/// A flow as one direction of it appears on the wire.
///
/// ICMP echo uses the identifier as a port: a request is keyed with
/// `sport = id, dport = 0` and a reply with `sport = 0, dport = id`, so the
/// reverse of a request's key is its reply's key, as with TCP and UDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Padding as scalars, not a byte array: the BPF build zeroes an array
    /// with a call to a byte-by-byte `memset`, on every packet.
    pub _pad0: u8,
    pub _pad1: u16,
}

/// An IPv4 flow's key.
pub type FlowKey = FlowKeyOf<u32>;
/// An IPv6 flow's key.
pub type FlowKey6 = FlowKeyOf<[u32; 4]>;

impl<A: Addr> FlowKeyOf<A> {
    #[inline(always)]
    pub fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> FlowKeyOf<A> {
        FlowKeyOf {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }

    /// The key of packets flowing the other way.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKeyOf<A> {
        FlowKeyOf::new(self.daddr, self.saddr, self.dport, self.sport, self.proto)
    }
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The name of an IP protocol number the datapath reports (conntrack
/// entries, trace events); `None` for one it does not know by name.
pub const fn ip_proto_name(proto: u8) -> Option<&'static str> {
    match proto {
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        IPPROTO_ICMP => Some("icmp"),
        IPPROTO_ICMPV6 => Some("icmp6"),
        _ => None,
    }
}

/// Which side of a flow an entry describes.
pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Which hook rewrites packets that match an entry, as netfilter does:
/// destination rewrites (DNAT, un-SNAT of replies) on ingress, before the
/// routing decision; source rewrites (masquerade, un-DNAT of replies) on
/// egress, after it, since a local source address before routing would be
/// dropped as a martian.
pub const APPLY_INGRESS: u8 = 0;
pub const APPLY_EGRESS: u8 = 1;

/// Bits of [`CtEntry::nat`].
pub const NAT_SNAT: u8 = 1;
pub const NAT_DNAT: u8 = 2;
/// Hairpin to oneself: rewritten and sent straight back out of the veth it
/// came in on, never routed (its addresses would be martians to the host).
pub const NAT_REFLECT: u8 = 4;

/// TCP states, with the kernel's conntrack timeouts.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    TimeWait = 5,
    Close = 6,
}

impl TcpState {
    pub fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::TimeWait,
            6 => TcpState::Close,
            _ => TcpState::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
}

const SEC: u32 = 1;

/// The idle timeouts, in seconds, nf_conntrack's defaults
/// (`nf_conntrack_tcp_timeout_*`, `nf_conntrack_udp_timeout*`,
/// `nf_conntrack_icmp_timeout`).
pub mod timeouts {
    use super::SEC;
    pub const TCP_SYN_SENT: u32 = 120 * SEC;
    pub const TCP_SYN_RECV: u32 = 60 * SEC;
    pub const TCP_ESTABLISHED: u32 = 432_000 * SEC;
    /// An established flow that has seen no reply (picked up mid-stream):
    /// `nf_conntrack_tcp_timeout_unacknowledged`.
    pub const TCP_UNACK: u32 = 300 * SEC;
    pub const TCP_FIN_WAIT: u32 = 120 * SEC;
    pub const TCP_TIME_WAIT: u32 = 120 * SEC;
    pub const TCP_CLOSE: u32 = 10 * SEC;
    /// UDP until it is a stream (replied, and still active 2 s after its
    /// first packet).
    pub const UDP: u32 = 30 * SEC;
    pub const UDP_STREAM: u32 = 120 * SEC;
    pub const ICMP: u32 = 30 * SEC;
    /// A flow whose first packet has not been seen leaving yet: created on
    /// TC ingress, it waits for the packet to survive the stack (nf_conntrack
    /// confirms a flow only then; a packet the stack drops, its TTL expiring
    /// say, leaves no flow behind). Long enough for the ICMP error the stack
    /// may send back about the packet to be translated with it.
    pub const UNCONFIRMED: u32 = 2 * SEC;
    /// How long after its first packet a replied UDP flow must still be
    /// active to be a stream (nf_conntrack: `stream_ts`).
    pub const UDP_STREAM_AFTER: u32 = 2 * SEC;
}

/// The idle time (seconds) after which a flow in this state is dead, as
/// nf_conntrack times it out.
pub fn timeout_s(proto: u8, tcp_state: u8, flags: u8) -> u32 {
    use timeouts::*;
    if flags & CT_CONFIRMED == 0 {
        return UNCONFIRMED;
    }
    match proto {
        IPPROTO_TCP => match TcpState::from_u8(tcp_state) {
            TcpState::SynSent => TCP_SYN_SENT,
            TcpState::SynRecv => TCP_SYN_RECV,
            TcpState::Established if flags & CT_REPLIED == 0 => TCP_UNACK,
            TcpState::Established => TCP_ESTABLISHED,
            TcpState::FinWait => TCP_FIN_WAIT,
            TcpState::TimeWait => TCP_TIME_WAIT,
            TcpState::Close | TcpState::None => TCP_CLOSE,
        },
        IPPROTO_UDP if flags & CT_ASSURED != 0 => UDP_STREAM,
        IPPROTO_UDP => UDP,
        _ => ICMP,
    }
}

/// Bits of [`CtEntry::flags`], the same in both halves of a flow.
/// The flow has seen a packet in its reply direction.
pub const CT_REPLIED: u8 = 1;
pub const CT_FIN_ORIGINAL: u8 = 2;
pub const CT_FIN_REPLY: u8 = 4;
/// Assured, as nf_conntrack says: a TCP connection established after a
/// reply, a UDP stream. Assured flows live in
/// [`CONNTRACK`](crate::names::CONNTRACK), where new flows never evict them.
pub const CT_ASSURED: u8 = 8;
/// The flow's first packet survived the stack (see
/// [`timeouts::UNCONFIRMED`]).
pub const CT_CONFIRMED: u8 = 16;
/// A TCP connection picked up mid-stream (its first packet a plain ACK).
pub const CT_PICKED_UP: u8 = 32;
/// A flow a Service opened: its `published` is the id of the backend it
/// was sent to, whose epoch it keeps ([`service_epoch_slot`]).
pub const CT_SERVICE: u8 = 64;

/// One half of a tracked flow, keyed by one direction's tuple: how to
/// rewrite the packets of that direction, and the flow's state.
///
/// Each half keeps its own direction's counters and last-seen time, so a
/// packet of either direction reads and writes only its own half: one map
/// lookup per packet. The state, flags and timeout are the flow's, the same
/// in both halves; whatever changes them (a TCP flag, the first reply, a
/// timeout to recompute) looks the other half up and writes both. `pair`
/// ties the two halves together: a half whose peer is missing or carries
/// another `pair` is an orphan (an LRU evicted its peer) and is removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryOf<A> {
    /// When the flow was created (`bpf_ktime_get_coarse_ns`: the clock of
    /// `CLOCK_MONOTONIC_COARSE`).
    pub created_ns: u64,
    /// This direction's last packet (same clock), refreshed at most once
    /// a second.
    pub last_seen_ns: u64,
    /// This direction's packets and bytes.
    pub packets: u64,
    pub bytes: u64,
    /// The key of the other direction.
    pub peer: FlowKeyOf<A>,
    /// The tuple packets matching the key leave with.
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    /// The same random value in both halves of one flow.
    pub pair: u32,
    /// The flow's idle timeout in its current state ([`timeout_s`]).
    pub timeout_s: u32,
    /// [`DIR_ORIGINAL`] or [`DIR_REPLY`].
    pub direction: u8,
    /// [`NAT_SNAT`] | [`NAT_DNAT`] | [`NAT_REFLECT`].
    pub nat: u8,
    /// [`APPLY_INGRESS`] or [`APPLY_EGRESS`].
    pub apply: u8,
    /// A [`TcpState`].
    pub tcp_state: u8,
    /// `CT_*` bits.
    pub flags: u8,
    /// The other half's `apply`, so a half can restore its peer when an
    /// LRU evicted it.
    pub peer_apply: u8,
    /// For a flow a published port opened: that host port (network order)
    /// and its epoch when the flow opened ([`names::PUBLISH_EPOCH`]). When
    /// the port is removed its epoch moves on, and the flow dies at its
    /// next packet. For a flow a Service opened ([`CT_SERVICE`]): the id of
    /// its backend (host order), whose epoch moves on when the backend is
    /// removed. 0 for every other flow.
    pub published: u16,
    pub epoch: u32,
}

/// A half of an IPv4 flow.
pub type CtEntry = CtEntryOf<u32>;
/// A half of an IPv6 flow.
pub type CtEntry6 = CtEntryOf<[u32; 4]>;

impl<A> CtEntryOf<A> {
    /// Whether the flow is idle past its timeout at `now_ns`, as far as
    /// this half knows (its peer may have seen a packet since).
    #[inline(always)]
    pub fn idle_past_timeout(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > u64::from(self.timeout_s) * 1_000_000_000
    }
}

/// Words of [`names::BACKEND_PORTS`](crate::names::BACKEND_PORTS): one bit
/// per port.
pub const BACKEND_PORT_WORDS: u32 = 65536 / 64;

/// Where `port` (host order) sits in [`names::BACKEND_PORTS`](crate::names::BACKEND_PORTS):
/// its word and the bit in it.
#[inline(always)]
pub fn backend_port_bit(port: u16) -> (u32, u64) {
    (u32::from(port >> 6), 1u64 << (port & 63))
}

/// Slots of [`names::PUBLISH_EPOCH`]: one per TCP port, one per UDP port,
/// then one per Service backend id.
pub const PUBLISH_EPOCH_SLOTS: u32 = 3 * 65536;

/// The slot of [`names::PUBLISH_EPOCH`] of Service backend `id`.
#[inline(always)]
pub fn service_epoch_slot(id: u16) -> u32 {
    2 * 65536 + u32::from(id)
}

/// The slot of [`names::PUBLISH_EPOCH`] of host port `port` (host order)
/// for `proto`; `None` for protocols ports are not published for.
#[inline(always)]
pub fn publish_epoch_slot(proto: u8, port: u16) -> Option<u32> {
    match proto {
        IPPROTO_TCP => Some(u32::from(port)),
        IPPROTO_UDP => Some(65536 + u32::from(port)),
        _ => None,
    }
}

/// A published port: `PROTO/port` on the host's published addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PublishKey {
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Where a published port forwards to, or a Service's backend
/// ([`names::SERVICE_BACKENDS`](crate::names::SERVICE_BACKENDS)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    /// A published port that is a Service's NodePort: the Service's id
    /// (its backend is chosen as a ClusterIP's is; `addr` and `port` are
    /// unused). 0: a plain published port.
    pub service: u16,
}

/// Where a published port forwards to over IPv6
/// ([`names::PUBLISHED6`](crate::names::PUBLISHED6)): the backend
/// namespace's IPv6 address in a masqueraded subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend6 {
    /// Network order, as in the header.
    pub addr: [u32; 4],
    /// Network order.
    pub port: u16,
    pub _pad: u16,
}

/// A Service's virtual address and port
/// ([`names::SERVICES`](crate::names::SERVICES)'s key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Network order.
    pub vip: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A Service: the key of its backend table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// 1..=65535, the key of its [`MaglevTable`].
    pub id: u16,
    pub _pad: u16,
}

/// Session affinity (`ClientIP`): a client's flows all go to one backend,
/// chosen by its address alone.
pub const SERVICE_AFFINITY: u16 = 1;

/// The slots of a Service's Maglev table: a prime (Maglev's table size
/// must be), about a hundred times the backends a Service is expected to
/// have, so each backend's share stays within a few percent of even.
pub const MAGLEV_SLOTS: usize = 251;

/// The most backends one Service may have: past this, Maglev's table of
/// [`MAGLEV_SLOTS`] slots shares them unevenly.
pub const MAX_SERVICE_BACKENDS: usize = 64;

/// A Service's Maglev lookup table
/// ([`names::MAGLEV`](crate::names::MAGLEV)): the backend id of each slot.
/// A flow's hash picks the slot, so a flow goes to the same backend on
/// every node, and a change of backends moves few flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub backends: [u16; MAGLEV_SLOTS],
    /// The Service's `SERVICE_*` bits.
    pub flags: u16,
}

impl Default for MaglevTable {
    fn default() -> Self {
        MaglevTable {
            backends: [0; MAGLEV_SLOTS],
            flags: 0,
        }
    }
}

/// The hash of a flow that picks its Maglev slot: its 5-tuple, or with
/// session affinity its source address alone. The same on every node
/// (userspace and kernel compute it with this function).
#[inline(always)]
pub fn service_hash(key: &FlowKey, affinity: bool) -> u32 {
    let mut h = key.saddr;
    if !affinity {
        h ^= key.daddr.rotate_left(7)
            ^ (u32::from(key.sport) << 16 | u32::from(key.dport)).rotate_left(13)
            ^ u32::from(key.proto) << 3;
    }
    // murmur3's finalizer: every input bit moves every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A subnet as the datapath compares it: `addr & mask == net`, both in
/// network order. A mask of 0 matches nothing (an unused slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net {
    pub net: u32,
    pub mask: u32,
}

impl Net {
    #[inline(always)]
    pub fn contains(&self, addr: u32) -> bool {
        self.mask != 0 && addr & self.mask == self.net
    }
}

/// How many subnets a [`NetSet`] holds inline.
pub const NET_SET_INLINE: usize = 8;

/// A set of subnets the datapath asks about on most packets: the first
/// [`NET_SET_INLINE`] are compared inline (no map lookup); a lab with more
/// sets `overflow`, and the rest are asked of the set's LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSet {
    pub nets: [Net; NET_SET_INLINE],
    /// How many of `nets` are used (at most [`NET_SET_INLINE`]).
    pub count: u32,
    /// Nonzero: the set has more subnets than fit inline, all of them in
    /// its trie.
    pub overflow: u32,
}

/// An IPv6 subnet: address and mask as four 32-bit words each, network
/// order (the words as they sit in the header). A zero mask matches
/// nothing (an unused slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net6 {
    pub net: [u32; 4],
    pub mask: [u32; 4],
}

impl Net6 {
    #[inline(always)]
    pub fn contains(&self, addr: &[u32; 4]) -> bool {
        self.mask[0] != 0
            && addr[0] & self.mask[0] == self.net[0]
            && addr[1] & self.mask[1] == self.net[1]
            && addr[2] & self.mask[2] == self.net[2]
            && addr[3] & self.mask[3] == self.net[3]
    }
}

/// How many IPv6 subnets a lab may have (its [`Net6Set`] holds them all
/// inline).
pub const NET6_INLINE: usize = 4;
/// How many IPv6 host addresses a lab may have (its [`Host6Set`]).
pub const HOST6_INLINE: usize = 8;

/// IPv6 subnets, compared inline (no map: every IPv6 packet asks).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6SetOf<const N: usize> {
    pub nets: [Net6; N],
}

impl<const N: usize> Default for Net6SetOf<N> {
    fn default() -> Self {
        Net6SetOf {
            nets: [Net6::default(); N],
        }
    }
}

impl<const N: usize> Net6SetOf<N> {
    #[inline(always)]
    pub fn contains(&self, addr: &[u32; 4]) -> bool {
        let mut i = 0;
        while i < N {
            if self.nets[i].contains(addr) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The lab's IPv6 subnets.
pub type Net6Set = Net6SetOf<NET6_INLINE>;
/// The lab's IPv6 host addresses, as /128s.
pub type Host6Set = Net6SetOf<HOST6_INLINE>;

/// The lab's NAT configuration ([`names::NAT_CONFIG`](crate::names::NAT_CONFIG)),
/// read once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Masquerade address (the uplink's), network order; 0 = no masquerade.
    pub masq_addr: u32,
    /// Source ports (and ICMP ids) handed out by SNAT, host order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// Cookie of the lab's host network namespace: the socket-level programs
    /// (attached to the whole cgroup tree) only act on sockets there.
    pub host_netns_cookie: u64,
    /// 1 for the `redirect` datapath: forward with redirects after NAT.
    pub redirect: u32,
    /// ifindex of the uplink (host side), 0 when the lab has none.
    pub uplink_ifindex: u32,
    /// 1: the lab is closed: packets from a lab veth to a destination
    /// outside the lab are dropped, and so is what arrives on the uplink
    /// for neither the lab's host addresses nor a subnet routed into it.
    pub closed: u32,
    pub _pad: u32,
    /// The uplink's subnet: it stands for the world beyond the host.
    pub uplink: Net,
    /// The lab's host addresses (as /32s): published ports answer there,
    /// and only flows to them are translated on the way in. Overflow:
    /// [`names::LOCAL_ADDRS`](crate::names::LOCAL_ADDRS).
    pub local: NetSet,
    /// The subnets behind the lab's own veths (namespaces, bridges).
    /// Overflow: [`names::LAB_NETS`](crate::names::LAB_NETS).
    pub internal: NetSet,
    /// The subnets masqueraded out of the uplink. Overflow:
    /// [`names::MASQ_SUBNETS`](crate::names::MASQ_SUBNETS).
    pub masquerade: NetSet,
    /// Other nodes' pod subnets (`[[pod_network.peer]]`): lab namespaces
    /// reach them and are reached from them with their own addresses,
    /// never masqueraded. Inline only (no overflow).
    pub peers: NetSet,
    /// The Services' virtual addresses (`[nat] service_range`): flows to
    /// them are translated on the way in, as flows to host addresses are.
    pub services: Net,
    /// The lab's IPv6 subnets: IPv6 is bridged, never routed or
    /// translated, so the closed lab lets through only what goes from one
    /// of them (or [`NatConfig::local6`]) to another (and what stays on its
    /// link).
    pub internal6: Net6Set,
    /// The lab's host IPv6 addresses (bridges', host ends', the uplink's),
    /// as /128s: the lab's namespaces reach the host there, as at its IPv4
    /// addresses; published ports answer there over IPv6, and only IPv6
    /// flows to them are translated on the way in.
    pub local6: Host6Set,
    /// The IPv6 subnets masqueraded out of the uplink (NAT66, as Docker's
    /// ip6tables rules do), at most [`NET6_INLINE`].
    pub masquerade6: Net6Set,
    /// The address IPv6 is masqueraded to (the uplink's first IPv6
    /// address), network order; all zero: none.
    pub masq_addr6: [u32; 4],
    /// The uplink's IPv6 subnets: they stand for the world, which
    /// masqueraded IPv6 subnets reach (and are reached from through
    /// published ports).
    pub uplink6: Net6Set,
}

/// A lab namespace's address, for the `redirect` datapath: where to hand
/// its packets and with which MAC addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth whose peer is the namespace's interface
    /// (`bpf_redirect_peer` target).
    pub ifindex: u32,
    /// MAC of the namespace's interface (the frame's destination).
    pub mac: [u8; 6],
    /// MAC of the gateway the namespace routes through (source of routed
    /// frames; the bridge's, or the host-side veth's when not bridged).
    pub gateway_mac: [u8; 6],
}

/// How many [`RedirectReason`]s each interface's slot of
/// [`names::REDIRECT_STATS`](crate::names::REDIRECT_STATS) has room for.
pub const REDIRECT_REASON_SLOTS: u32 = 8;

/// The index in [`names::REDIRECT_STATS`](crate::names::REDIRECT_STATS) of
/// `reason` on the interface whose [`IfaceConfig::slot`] is `slot`.
#[inline(always)]
pub fn redirect_stat_index(slot: u32, reason: u32) -> u32 {
    slot * REDIRECT_REASON_SLOTS + reason
}

/// Why the `redirect` datapath forwarded or fell back, per interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectReason {
    /// Handed to a lab namespace with `bpf_redirect_peer`.
    Peer = 0,
    /// Sent out of the uplink with `bpf_redirect_neigh`.
    Uplink,
    /// For the host itself (IPv6: or within the link, link-local and
    /// multicast): left to the stack.
    FallbackLocal,
    /// Not a parsed flow (ARP, neighbour discovery, fragment, ICMP
    /// error...): left to the stack.
    FallbackUnparsed,
    /// Destination neither a lab namespace nor beyond the uplink (another
    /// node's pods included: the host routes them).
    FallbackUnknown,
    /// TTL would expire: left to the stack, which answers time exceeded.
    FallbackTtl,
    /// Back out of the interface it came from: left to the stack.
    FallbackSameIface,
}

pub const REDIRECT_REASONS: [RedirectReason; 7] = [
    RedirectReason::Peer,
    RedirectReason::Uplink,
    RedirectReason::FallbackLocal,
    RedirectReason::FallbackUnparsed,
    RedirectReason::FallbackUnknown,
    RedirectReason::FallbackTtl,
    RedirectReason::FallbackSameIface,
];

impl RedirectReason {
    pub fn name(self) -> &'static str {
        match self {
            RedirectReason::Peer => "redirect_peer",
            RedirectReason::Uplink => "redirect_uplink",
            RedirectReason::FallbackLocal => "fallback_local",
            RedirectReason::FallbackUnparsed => "fallback_unparsed",
            RedirectReason::FallbackUnknown => "fallback_unknown",
            RedirectReason::FallbackTtl => "fallback_ttl",
            RedirectReason::FallbackSameIface => "fallback_same_iface",
        }
    }
}

/// Key of [`names::SOCK_NAT`](crate::names::SOCK_NAT): a socket (by
/// cookie) and the backend the socket-level programs pointed it at. An
/// unconnected UDP socket that sends to two published ports has one key
/// for each, so each reply shows the address it answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    /// Network order.
    pub backend_addr: u32,
    pub backend_port: u16,
    pub _pad: u16,
}

/// The published address a socket asked for, shown back to it by
/// `recvmsg()` and `getpeername()` instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockNat {
    /// Network order.
    pub published_addr: u32,
    pub published_port: u16,
    pub _pad: u16,
}

/// [`SockKey`] for IPv6 ([`names::SOCK_NAT6`](crate::names::SOCK_NAT6)):
/// a socket and the IPv6 backend it was pointed at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey6 {
    pub cookie: u64,
    /// Network order, as in the header.
    pub backend_addr: [u32; 4],
    pub backend_port: u16,
    pub _pad: [u16; 3],
}

/// [`SockNat`] for IPv6: the published address a socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockNat6 {
    /// Network order, as in the header.
    pub published_addr: [u32; 4],
    pub published_port: u16,
    pub _pad: u16,
}

/// [`IfaceConfig::role`]: a host-side lab veth end.
pub const ROLE_LAB: u32 = 1;
/// [`IfaceConfig::role`]: the uplink toward the world (masquerade happens here).
pub const ROLE_UPLINK: u32 = 2;

/// Per host-side interface of the lab.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// The address hairpin traffic is SNATed to (the segment's gateway),
    /// network order; 0 when it has none.
    pub gateway: u32,
    /// `ROLE_*`.
    pub role: u32,
    /// This interface's row of per-interface counters
    /// ([`names::REDIRECT_STATS`](crate::names::REDIRECT_STATS)), 1 and up;
    /// 0 counts nowhere.
    pub slot: u32,
    /// The interface's ifindex: in [`names::IFACES`](crate::names::IFACES),
    /// which slot of the array holds whose configuration.
    pub ifindex: u32,
    /// The address IPv6 hairpin traffic is SNATed to (the segment's
    /// gateway's IPv6 address), network order; all zero when it has none.
    pub gateway6: [u32; 4],
}

/// Slots of [`names::IFACES`](crate::names::IFACES), a power of two.
pub const IFACE_SLOTS: u32 = 4096;

/// The slot of [`names::IFACES`](crate::names::IFACES) an ifindex maps to.
#[inline(always)]
pub fn iface_slot(ifindex: u32) -> u32 {
    ifindex & (IFACE_SLOTS - 1)
}

/// Counters of what the NAT datapath did and why; index of
/// [`names::NAT_STATS`](crate::names::NAT_STATS).
///
/// Every drop the datapath makes has one of these as its reason: the
/// kernel side returns it from the helper that failed, counts it once and
/// hands it to the trace event, and `netlab status` names it. Packets that
/// go their way are not counted here (the established-flow fast path
/// counts nothing but its flow's own packets): the kernel counts them per
/// interface, conntrack per flow.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Neither IPv4 nor IPv6 (ARP, a VLAN tag...): passed untouched.
    NonIpv4 = 0,
    /// Truncated or inconsistent headers: passed untouched when nothing
    /// needs translating (the kernel validates and drops them on local
    /// delivery), never translated.
    Malformed,
    /// Later IP fragments translated with the ports their first fragment
    /// carried (see `FRAGMENTS`).
    Fragment,
    /// Protocols other than TCP, UDP, ICMP echo and ICMP errors: passed
    /// untouched.
    Unsupported,
    /// New flows to a published port.
    DnatNew,
    /// New flows masqueraded out of the uplink.
    SnatNew,
    /// New hairpin flows (a namespace to its own published port).
    HairpinNew,
    /// TCP that cannot open a flow (neither a SYN nor a plain ACK, which
    /// nf_conntrack picks up mid-stream) for a flow conntrack does not
    /// know: not translated, as netfilter leaves INVALID packets (on the
    /// uplink it then counts as `untranslated_leak`).
    TcpNotSyn,
    /// No free source port in the range: new flow dropped.
    PortExhausted,
    /// Conntrack insert failed (table full or a collision): new flow dropped.
    CtInsertFailed,
    /// A flow found idle past its timeout and removed.
    CtExpired,
    /// One half of a flow found without its other half (an LRU evicted
    /// it): removed, and the packet evaluated as a new flow's, as
    /// nf_conntrack would find no flow.
    CtHalfEvicted,
    /// The IP header checksum could not be updated: dropped.
    CsumL3Failed,
    /// The TCP/UDP/ICMP checksum could not be updated: dropped.
    CsumL4Failed,
    /// A rewritten field could not be stored: dropped.
    WriteFailed,
    /// ICMP errors about a tracked flow, translated with their embedded header.
    IcmpErrorTranslated,
    /// From a lab namespace to a destination outside the lab (not a lab
    /// subnet, not the uplink's): dropped, so it never leaves the machine.
    LeaveLab,
    /// A packet NAT cannot translate (malformed L4, an unknown protocol, an
    /// ICMP error about no flow, a fragment whose first piece was not seen)
    /// whose source is a masqueraded lab address, leaving through the
    /// uplink: dropped, so no lab address leaves (netfilter's INVALID).
    UntranslatedLeak,
    /// A source address that cannot arrive on this interface (a lab subnet
    /// on the uplink, a foreign address from a lab namespace): dropped, as
    /// rp_filter would.
    SpoofedSource,
    /// A later fragment whose first fragment was not seen (out of order),
    /// addressed to where NAT applies: dropped (netfilter reassembles first).
    FragUnknown,
    /// Two CPUs opened the same flow at once; the loser used the winner's entry.
    CtInsertRace,
    /// A SYN on a closed or TIME_WAIT flow: the old flow was removed and the
    /// SYN evaluated as a new flow (as nf_conntrack does).
    CtReopened,
    /// New connections of the host's own sockets through the uplink,
    /// tracked so that their replies are never taken for new NAT flows.
    HostFlowNew,
    /// A host connection whose source port a masqueraded flow already used
    /// toward the same destination, given another port (netfilter's
    /// implicit source NAT).
    HostPortRemapped,
    /// Flows that saw a reply and moved to the assured table, where new
    /// flows (a SYN flood) cannot evict them.
    CtAssured,
    /// An ICMP error arriving on the uplink about no flow netlab tracks,
    /// addressed into the lab: dropped (netfilter finds it INVALID; the
    /// world reaches the lab through published ports only).
    IcmpErrorUnrelated,
    /// A TCP flow whose first reply was a RST (a refused connection): the
    /// RST is translated and the flow removed at once, as nf_conntrack
    /// deletes it, so later ICMP errors about it are unrelated.
    CtRefused,
    /// Arriving on the uplink for an address inside a masqueraded lab
    /// subnet (routed to the lab, not through a published port): dropped,
    /// as Docker 28 drops routed access to a NAT network's unpublished
    /// ports.
    RoutedIntoLab,
    /// Arriving on the uplink for neither the lab's host addresses nor the
    /// lab's subnets (the world routing through the host to its other
    /// networks): dropped.
    WorldTransit,
    /// The port search for a new masqueraded flow gave up after its bound
    /// of probes (nf_nat gives up likewise): the flow's packet is dropped.
    PortSearchLimit,
    /// A frame addressed to another host's MAC: left to the stack, which
    /// drops it; no flow is created for it.
    OtherHost,
    /// A flow earned assurance but the assured table was full (and a sweep
    /// of dead flows freed nothing): it stays with the new flows.
    CtAssuredFull,
    /// Flows removed by a sweep of the assured table when it was full
    /// (idle past their timeout, or TCP closing), as nf_conntrack's early
    /// drop takes closing connections.
    CtSwept,
    /// An IPv4 header that is not one (version, header or total length)
    /// arriving on the uplink: dropped at the XDP entry, where the host's
    /// stack would drop it later.
    BadHeader,
    /// Established flows to a published port translated at the XDP entry
    /// and handed to their backend's veth (`XDP_REDIRECT`).
    XdpRedirected,
    /// Flows of a published port that was removed (or moved to another
    /// namespace) since they opened: removed at their next packet, which
    /// is evaluated afresh, as `conntrack -D` does for iptables.
    CtUnpublished,
    /// IPv6 crossing a lab veth where the closed lab has no path for it
    /// (neither between the lab's subnets and host addresses, nor between
    /// a masqueraded subnet and the world); link-local unicast and
    /// multicast, neighbour discovery's, pass.
    Ipv6Closed,
    /// New flows to a Service (a ClusterIP, or a NodePort), sent to a
    /// backend its Maglev table chose.
    ServiceNew,
    /// A new flow to a Service address and port no Service has, or to a
    /// Service without backends: dropped (kube-proxy rejects the latter).
    ServiceNoBackend,
    /// New flows to a published port or Service whose client tuple toward
    /// the backend another flow held (one client port that reached another
    /// published port of the same backend): given another source port, as
    /// netfilter's implicit source NAT does. (A flow two CPUs open at once
    /// may be counted by the loser too, which then takes the winner's
    /// translation.)
    DnatPortRemapped,
}

pub const STAT_COUNT: u32 = 40;

// A reason's index in `Stat::ALL` is its value: global BPF functions return
// a reason as `reason as u32`, and their callers look it up there.
const _: () = {
    let mut i = 0;
    while i < Stat::ALL.len() {
        assert!(Stat::ALL[i] as usize == i, "Stat::ALL is out of order");
        i += 1;
    }
};

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::NonIpv4,
        Stat::Malformed,
        Stat::Fragment,
        Stat::Unsupported,
        Stat::DnatNew,
        Stat::SnatNew,
        Stat::HairpinNew,
        Stat::TcpNotSyn,
        Stat::PortExhausted,
        Stat::CtInsertFailed,
        Stat::CtExpired,
        Stat::CtHalfEvicted,
        Stat::CsumL3Failed,
        Stat::CsumL4Failed,
        Stat::WriteFailed,
        Stat::IcmpErrorTranslated,
        Stat::LeaveLab,
        Stat::UntranslatedLeak,
        Stat::SpoofedSource,
        Stat::FragUnknown,
        Stat::CtInsertRace,
        Stat::CtReopened,
        Stat::HostFlowNew,
        Stat::HostPortRemapped,
        Stat::CtAssured,
        Stat::IcmpErrorUnrelated,
        Stat::CtRefused,
        Stat::RoutedIntoLab,
        Stat::WorldTransit,
        Stat::PortSearchLimit,
        Stat::OtherHost,
        Stat::CtAssuredFull,
        Stat::CtSwept,
        Stat::BadHeader,
        Stat::XdpRedirected,
        Stat::CtUnpublished,
        Stat::Ipv6Closed,
        Stat::ServiceNew,
        Stat::ServiceNoBackend,
        Stat::DnatPortRemapped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::NonIpv4 => "non_ipv4",
            Stat::Malformed => "malformed",
            Stat::Fragment => "fragment",
            Stat::Unsupported => "unsupported_proto",
            Stat::DnatNew => "dnat_new",
            Stat::SnatNew => "snat_new",
            Stat::HairpinNew => "hairpin_new",
            Stat::TcpNotSyn => "tcp_not_syn",
            Stat::PortExhausted => "port_exhausted",
            Stat::CtInsertFailed => "ct_insert_failed",
            Stat::CtExpired => "ct_expired",
            Stat::CtHalfEvicted => "ct_half_evicted",
            Stat::CsumL3Failed => "csum_l3_failed",
            Stat::CsumL4Failed => "csum_l4_failed",
            Stat::WriteFailed => "write_failed",
            Stat::IcmpErrorTranslated => "icmp_error_translated",
            Stat::LeaveLab => "leave_lab",
            Stat::UntranslatedLeak => "untranslated_leak",
            Stat::SpoofedSource => "spoofed_source",
            Stat::FragUnknown => "frag_unknown",
            Stat::CtInsertRace => "ct_insert_race",
            Stat::CtReopened => "ct_reopened",
            Stat::HostFlowNew => "host_flow_new",
            Stat::HostPortRemapped => "host_port_remapped",
            Stat::CtAssured => "ct_assured",
            Stat::IcmpErrorUnrelated => "icmp_error_unrelated",
            Stat::CtRefused => "ct_refused",
            Stat::RoutedIntoLab => "routed_into_lab",
            Stat::WorldTransit => "world_transit",
            Stat::PortSearchLimit => "port_search_limit",
            Stat::OtherHost => "other_host",
            Stat::CtAssuredFull => "ct_assured_full",
            Stat::CtSwept => "ct_swept",
            Stat::BadHeader => "bad_header",
            Stat::XdpRedirected => "xdp_redirected",
            Stat::CtUnpublished => "ct_unpublished",
            Stat::Ipv6Closed => "ipv6_closed",
            Stat::ServiceNew => "service_new",
            Stat::ServiceNoBackend => "service_no_backend",
            Stat::DnatPortRemapped => "dnat_port_remapped",
        }
    }

    /// Whether this counter is a reason the datapath drops packets for.
    pub fn is_drop(self) -> bool {
        matches!(
            self,
            Stat::PortExhausted
                | Stat::CtInsertFailed
                | Stat::CsumL3Failed
                | Stat::CsumL4Failed
                | Stat::WriteFailed
                | Stat::LeaveLab
                | Stat::UntranslatedLeak
                | Stat::SpoofedSource
                | Stat::FragUnknown
                | Stat::IcmpErrorUnrelated
                | Stat::RoutedIntoLab
                | Stat::WorldTransit
                | Stat::PortSearchLimit
                | Stat::BadHeader
                | Stat::Ipv6Closed
                | Stat::ServiceNoBackend
        )
    }
}

/// Values of [`names::LAB_NETS`](crate::names::LAB_NETS): what kind of
/// network an address belongs to.
/// A subnet behind the lab's own veths (namespaces, bridges).
pub const NET_INTERNAL: u32 = 1;
/// The uplink's subnet: it stands for the world beyond the host.
pub const NET_UPLINK: u32 = 2;
/// Multicast and the limited broadcast address.
pub const NET_GROUP: u32 = 3;

/// Key of [`names::FRAGMENTS`](crate::names::FRAGMENTS): one IP datagram's
/// fragments, as the addresses of the hop that saw its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    /// IP identification, network order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of [`names::FRAGMENTS6`](crate::names::FRAGMENTS6): one IPv6
/// datagram's fragments (its fragment header's identification), as the
/// addresses of the hop that saw its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    /// Network order, as in the header.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    /// The fragment header's identification, network order.
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The L4 ports (ICMP: echo identifier as in [`FlowKey`]) the first
/// fragment of a datagram carried, for its later fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 80);
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);
const _: () = assert!(core::mem::size_of::<CtEntry6>() == 128);
const _: () = assert!(core::mem::size_of::<Backend6>() == 20);
const _: () = assert!(core::mem::size_of::<PublishKey>() == 4);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<NatConfig>() == 992);
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 32);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<Service>() == 4);
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 2 * (MAGLEV_SLOTS + 1));
const _: () = assert!(core::mem::size_of::<NetSet>() == 72);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 16);
const _: () = assert!(core::mem::size_of::<SockNat>() == 8);
const _: () = assert!(core::mem::size_of::<SockKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockNat6>() == 20);
const _: () = assert!(core::mem::size_of::<SockKey6>() == 32);
const _: () = assert!(Stat::ALL.len() == STAT_COUNT as usize);
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragKey6>() == 40);
const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);
