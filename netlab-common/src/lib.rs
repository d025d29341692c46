//! The wire between netlab's eBPF programs and its userspace: map keys and
//! values, shared by both sides. Everything here is `#[repr(C)]`, padding-free
//! and `no_std`; the `user` feature adds `aya::Pod` so userspace can read maps.

#![no_std]

pub mod nat;
pub mod trace;

/// Names of maps and programs, so both sides spell them once.
pub mod names {
    /// TC ingress of lab veths (host side) and of the uplink: DNAT, and the
    /// reverse of every translation whose reply enters there. The fast
    /// path; it tail-calls [`NAT_INGRESS_FULL`] for everything else.
    pub const NAT_INGRESS: &str = "nat_ingress";
    /// TC egress of lab veths (host side) and the uplink: masquerade and
    /// the source rewrite of replies. The fast path; it tail-calls
    /// [`NAT_EGRESS_FULL`] for everything else.
    pub const NAT_EGRESS: &str = "nat_egress";
    /// XDP program on the uplink's host end, with `entry = "xdp"`.
    pub const XDP_UPLINK: &str = "xdp_uplink";
    /// The full paths of the NAT programs (only ever tail-called).
    pub const NAT_INGRESS_FULL: &str = "nat_ingress_full";
    pub const NAT_EGRESS_FULL: &str = "nat_egress_full";
    /// The IPv6 paths of the NAT programs (only ever tail-called, by the
    /// fast path, for every IPv6 frame).
    pub const NAT6_INGRESS: &str = "nat6_ingress";
    pub const NAT6_EGRESS: &str = "nat6_egress";
    /// Program array[4]: the full paths, in slots [`NAT_FULL_INGRESS`] and
    /// [`NAT_FULL_EGRESS`], and the IPv6 paths, in [`NAT6_FULL_INGRESS`]
    /// and [`NAT6_FULL_EGRESS`], filled when the programs are loaded.
    pub const NAT_FULL: &str = "NAT_FULL";
    pub const NAT_FULL_INGRESS: u32 = 0;
    pub const NAT_FULL_EGRESS: u32 = 1;
    pub const NAT6_FULL_INGRESS: u32 = 2;
    pub const NAT6_FULL_EGRESS: u32 = 3;
    /// cgroup sock_addr programs: the host's own connections to published ports.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// The same for `AF_INET6` sockets: IPv4-mapped addresses
    /// (`::ffff:a.b.c.d`, the default of many runtimes) as IPv4, and
    /// IPv6 published ports on a host IPv6 address or `::1`.
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    pub const SOCK_GETPEERNAME6: &str = "sock_getpeername6";
    /// LRU hash: [`SockKey`](crate::nat::SockKey) → [`SockNat`](crate::nat::SockNat).
    pub const SOCK_NAT: &str = "SOCK_NAT";
    /// LRU hash: [`SockKey6`](crate::nat::SockKey6) →
    /// [`SockNat6`](crate::nat::SockNat6): IPv6 sockets pointed at an IPv6
    /// backend.
    pub const SOCK_NAT6: &str = "SOCK_NAT6";
    /// Hash: lab address (network order) → [`Endpoint`](crate::nat::Endpoint).
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Hash: a lab namespace's IPv6 address (`[u32; 4]`, as in the header)
    /// → [`Endpoint`](crate::nat::Endpoint).
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    /// Per-CPU array: packets per (interface slot, reason), at
    /// [`redirect_stat_index`](crate::nat::redirect_stat_index); sized for
    /// the lab's interfaces at load.
    pub const REDIRECT_STATS: &str = "REDIRECT_STATS";

    /// Array[1]: [`NatConfig`](crate::nat::NatConfig).
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    /// Hash: [`PublishKey`](crate::nat::PublishKey) → [`Backend`](crate::nat::Backend).
    pub const PUBLISHED: &str = "PUBLISHED";
    /// Hash: [`PublishKey`](crate::nat::PublishKey) →
    /// [`Backend6`](crate::nat::Backend6): the same ports over IPv6, to
    /// backends in a masqueraded IPv6 subnet.
    pub const PUBLISHED6: &str = "PUBLISHED6";
    /// Array of [`PUBLISH_EPOCH_SLOTS`](crate::nat::PUBLISH_EPOCH_SLOTS)
    /// `u32`s: each published host port's epoch, which `publish rm` moves
    /// on, so the flows the port opened die at their next packet (see
    /// [`CtEntry::epoch`](crate::nat::CtEntry::epoch)).
    pub const PUBLISH_EPOCH: &str = "PUBLISH_EPOCH";
    /// Hash: [`ServiceKey`](crate::nat::ServiceKey) →
    /// [`Service`](crate::nat::Service): the Services' virtual addresses.
    pub const SERVICES: &str = "SERVICES";
    /// Hash: a Service's id (`u32`) → its
    /// [`MaglevTable`](crate::nat::MaglevTable).
    pub const MAGLEV: &str = "MAGLEV";
    /// Hash: a Service backend's id (`u32`) →
    /// [`Backend`](crate::nat::Backend).
    pub const SERVICE_BACKENDS: &str = "SERVICE_BACKENDS";
    /// Array of [`BACKEND_PORT_WORDS`](crate::nat::BACKEND_PORT_WORDS)
    /// `u64`s: bit `port` is set when some published port forwards to a
    /// backend on `port` (host order), whatever the protocol.
    pub const BACKEND_PORTS: &str = "BACKEND_PORTS";
    /// Hash: IPv4 address (network order) → 1. Addresses published ports answer on.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// LPM trie: lab subnets whose traffic to the uplink is masqueraded.
    pub const MASQ_SUBNETS: &str = "MASQ_SUBNETS";
    /// LPM trie: every destination lab traffic may go to (the lab's subnets,
    /// the uplink's, multicast and broadcast) → its kind (`nat::NET_*`); see
    /// `NatConfig::closed`. Also tells which sources may arrive where.
    pub const LAB_NETS: &str = "LAB_NETS";
    /// Hash: ifindex → [`IfaceConfig`](crate::nat::IfaceConfig), every
    /// host-side interface of the lab.
    pub const IFACE_CONFIG: &str = "IFACE_CONFIG";
    /// Array, indexed by [`iface_slot`](crate::nat::iface_slot) of the
    /// ifindex: the same configurations, each in its interface's slot
    /// unless another took it first (its `ifindex` says whose it is). The
    /// programs look here first: an array slot costs no hash lookup.
    pub const IFACES: &str = "IFACES";
    /// Hash (no LRU, not preallocated): [`FlowKey`](crate::nat::FlowKey) →
    /// [`CtEntry`](crate::nat::CtEntry), assured flows (in nf_conntrack's
    /// words), both halves of each. Nothing evicts them: they leave in
    /// pairs, when they end, expire or are swept.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// LRU hash of the same form: flows not assured yet. New flows (a SYN
    /// flood) evict each other here, never an assured flow.
    pub const CONNTRACK_NEW: &str = "CONNTRACK_NEW";
    /// Array[1]: when the assured table was last swept (see `Stat::CtSwept`).
    pub const CT_SWEPT: &str = "CT_SWEPT";
    /// The same two tables for IPv6 flows: [`FlowKey6`](crate::nat::FlowKey6)
    /// → [`CtEntry6`](crate::nat::CtEntry6), and its sweep's state.
    pub const CONNTRACK6: &str = "CONNTRACK6";
    pub const CONNTRACK6_NEW: &str = "CONNTRACK6_NEW";
    pub const CT6_SWEPT: &str = "CT6_SWEPT";
    /// LRU hash: [`FragKey`](crate::nat::FragKey) →
    /// [`FragPorts`](crate::nat::FragPorts), the ports of datagrams whose
    /// first fragment was seen, for their later fragments.
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// LRU hash: [`FragKey6`](crate::nat::FragKey6) →
    /// [`FragPorts`](crate::nat::FragPorts): the same for IPv6 datagrams.
    pub const FRAGMENTS6: &str = "FRAGMENTS6";
    /// Per-CPU array indexed by [`Stat`](crate::nat::Stat).
    pub const NAT_STATS: &str = "NAT_STATS";

    /// Ring buffer of [`HopEvent`](crate::trace::HopEvent)s and
    /// [`DropEvent`](crate::trace::DropEvent)s. Not pinned: each
    /// `netlab trace` makes its own, of the size it is told.
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    /// Array[1]: [`TraceConfig`](crate::trace::TraceConfig).
    pub const TRACE_CONFIG: &str = "TRACE_CONFIG";
    /// The read-only global of `trace_hop` that holds the
    /// [`Filter`](crate::trace::Filter), set when `netlab trace` loads it.
    pub const TRACE_FILTER: &str = "TRACE_FILTER";
    /// Hash: ifindex → namespace id, for the filter's `netns` literals.
    pub const TRACE_IFACES: &str = "TRACE_IFACES";
    /// LRU hash: skb address → [`Journey`](crate::trace::Journey). Not
    /// pinned: each `netlab trace` makes its own.
    pub const TRACE_JOURNEYS: &str = "TRACE_JOURNEYS";
    /// Array[1]: when a journey of the current trace session last started
    /// or hopped (`bpf_ktime_get_ns`), 0 before the first; lets every hop
    /// and tracepoint skip the journey lookup while none can be live.
    pub const TRACE_LIVE: &str = "TRACE_LIVE";
    /// Per-CPU array: events emitted and lost (`TRACE_STAT_*`).
    pub const TRACE_STATS: &str = "TRACE_STATS";
    /// Program array[1]: slot 0 holds [`TRACE_HOP`], tail-called by the TC
    /// programs while tracing is on.
    pub const TRACE_PROGS: &str = "TRACE_PROGS";
    /// TC program that records a hop (only ever tail-called).
    pub const TRACE_HOP: &str = "trace_hop";
    /// TC ingress and egress of the lab's veth ends that carry no NAT
    /// program (the namespace sides; every end in the iptables datapath),
    /// attached by `netlab trace` for its session only: the hops where
    /// netlab only watches.
    pub const TRACE_INGRESS: &str = "trace_ingress";
    pub const TRACE_EGRESS: &str = "trace_egress";
    /// Tracepoint programs: `skb:kfree_skb` (drops) and `skb:consume_skb`
    /// (ends a journey).
    pub const TRACE_KFREE_SKB: &str = "trace_kfree_skb";
    pub const TRACE_CONSUME_SKB: &str = "trace_consume_skb";
    /// Per-CPU slot the TC programs hand `trace_hop` their verdict in;
    /// pinned because `trace_hop` is loaded later, by `netlab trace`.
    pub const TRACE_SCRATCH: &str = "TRACE_SCRATCH";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with no padding (sizes asserted
    // in `nat` and `trace`).
    unsafe impl aya::Pod for crate::nat::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::FlowKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::CtEntry6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::Backend6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::PublishKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::NatConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::IfaceConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::SockNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::NetSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::Net {}
    // SAFETY: as above; sizes asserted in `trace`.
    unsafe impl aya::Pod for crate::trace::TraceConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::trace::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::trace::Journey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::FragPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::nat::Service {}
    // SAFETY: as above (251 u16s and one of padding: 504 bytes).
    unsafe impl aya::Pod for crate::nat::MaglevTable {}
}
