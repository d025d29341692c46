//! NAT and conntrack types. Addresses and ports are kept in network byte
//! order, as they sit in the packet, so the datapath never converts them.

/// A flow as one direction of it appears on the wire.
///
/// ICMP echo uses the identifier as a port: a request is keyed with
/// `sport = id, dport = 0` and a reply with `sport = 0, dport = id`, so the
/// reverse of a request's key is its reply's key, as with TCP and UDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key of packets flowing the other way.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

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

const SEC: u64 = 1_000_000_000;

/// Idle time after which a flow is dead (nf_conntrack's defaults).
pub fn timeout_ns(proto: u8, tcp_state: u8, flags: u8) -> u64 {
    match proto {
        IPPROTO_TCP => match TcpState::from_u8(tcp_state) {
            TcpState::SynSent => 120 * SEC,
            TcpState::SynRecv => 60 * SEC,
            TcpState::Established => 432_000 * SEC,
            TcpState::FinWait => 120 * SEC,
            TcpState::TimeWait => 120 * SEC,
            TcpState::Close | TcpState::None => 10 * SEC,
        },
        IPPROTO_UDP if flags & CT_REPLIED != 0 => 120 * SEC,
        IPPROTO_UDP => 30 * SEC,
        _ => 30 * SEC,
    }
}

/// Bits of [`CtEntry::flags`] (kept on the original entry).
pub const CT_REPLIED: u8 = 1;
pub const CT_FIN_ORIGINAL: u8 = 2;
pub const CT_FIN_REPLY: u8 = 4;

/// One direction of a tracked flow: how to rewrite packets matching its key.
///
/// The flow's state, timestamps and the flags live in the ORIGINAL entry;
/// the REPLY entry's rewrite restores the original tuple reversed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub created_ns: u64,
    /// Last packet in either direction (original entry).
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The tuple packets matching the key leave with.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// The key of the other direction.
    pub peer: FlowKey,
    /// [`DIR_ORIGINAL`] or [`DIR_REPLY`].
    pub direction: u8,
    /// [`NAT_SNAT`] | [`NAT_DNAT`].
    pub nat: u8,
    /// [`APPLY_INGRESS`] or [`APPLY_EGRESS`].
    pub apply: u8,
    /// A [`TcpState`] (original entry).
    pub tcp_state: u8,
    /// `CT_*` bits (original entry).
    pub flags: u8,
    pub _pad: [u8; 7],
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

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    pub _pad: u16,
}

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
    /// 1: the lab is closed: packets from a lab veth to a destination outside
    /// [`names::LAB_NETS`](crate::names::LAB_NETS) are dropped, so the host
    /// never forwards lab traffic out of an interface that is not the lab's.
    pub closed: u32,
    /// The uplink's subnet (network order; mask 0 when the lab has no
    /// uplink): the kernel side tells it from the lab's own subnets without
    /// a trie lookup, on the path of most packets.
    pub uplink_net: u32,
    pub uplink_mask: u32,
    pub _pad: u32,
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

/// Key of [`names::REDIRECT_STATS`](crate::names::REDIRECT_STATS): what
/// the `redirect` datapath decided on one host-side interface.
///
/// Interfaces are keyed by ifindex. Indexes are per namespace in Linux, but
/// `up` gives the lab's veth ends distinct indexes and refuses to attach if
/// two lab interfaces ever share one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RedirectKey {
    pub ifindex: u32,
    /// A [`RedirectReason`] as `u32`.
    pub reason: u32,
}

/// Why the `redirect` datapath forwarded or fell back, per interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectReason {
    /// Handed to a lab namespace with `bpf_redirect_peer`.
    Peer = 0,
    /// Sent out of the uplink with `bpf_redirect_neigh`.
    Uplink,
    /// For the host itself: left to the stack.
    FallbackLocal,
    /// Not a parsed IPv4 packet (ARP, fragment, ICMP error...): left to the stack.
    FallbackUnparsed,
    /// Destination neither a lab namespace nor beyond the uplink.
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

/// What the socket-level programs remember per socket (by socket cookie):
/// the published address the application asked for and the backend it got,
/// so replies and `getpeername` show the published address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockNat {
    /// Network order.
    pub published_addr: u32,
    pub backend_addr: u32,
    pub published_port: u16,
    pub backend_port: u16,
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
}

/// Counters of what the NAT datapath did and why; index of
/// [`names::NAT_STATS`](crate::names::NAT_STATS).
///
/// Every drop the datapath makes has one of these as its reason: the
/// kernel side returns it from the helper that failed, counts it once and
/// hands it to the trace event, and `netlab status` names it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Packets seen by the NAT programs.
    Packets = 0,
    /// ARP, IPv6...: passed untouched.
    NonIpv4,
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
    /// Packets rewritten from an existing conntrack entry.
    Translated,
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
    /// One half of a flow found without its other half (LRU evicted it).
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
}

pub const STAT_COUNT: u32 = 29;

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
        Stat::Packets,
        Stat::NonIpv4,
        Stat::Malformed,
        Stat::Fragment,
        Stat::Unsupported,
        Stat::Translated,
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
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::Packets => "packets",
            Stat::NonIpv4 => "non_ipv4",
            Stat::Malformed => "malformed",
            Stat::Fragment => "fragment",
            Stat::Unsupported => "unsupported_proto",
            Stat::Translated => "translated",
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
        }
    }

    /// Whether this counter is a reason the datapath drops packets for.
    pub fn is_drop(self) -> bool {
        matches!(
            self,
            Stat::PortExhausted
                | Stat::CtInsertFailed
                | Stat::CtHalfEvicted
                | Stat::CsumL3Failed
                | Stat::CsumL4Failed
                | Stat::WriteFailed
                | Stat::LeaveLab
                | Stat::UntranslatedLeak
                | Stat::SpoofedSource
                | Stat::FragUnknown
                | Stat::IcmpErrorUnrelated
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

/// The L4 ports (ICMP: echo identifier as in [`FlowKey`]) the first
/// fragment of a datagram carried, for its later fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<RedirectKey>() == 8);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 72);
const _: () = assert!(core::mem::size_of::<PublishKey>() == 4);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<NatConfig>() == 40);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 16);
const _: () = assert!(core::mem::size_of::<SockNat>() == 12);
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 8);
const _: () = assert!(Stat::ALL.len() == STAT_COUNT as usize);
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);
