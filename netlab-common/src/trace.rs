//! Packet tracing (`netlab trace`): the events the programs stream over the
//! [`TRACE_EVENTS`](crate::names::TRACE_EVENTS) ring buffer, the switch and
//! filter userspace writes, and the names of actions and reasons.
//!
//! ## Trace ids
//!
//! In a TC program the context pointer is the kernel's `struct sk_buff *`,
//! and the same sk_buff object crosses veth pairs, the bridge, routing and
//! netlab's own NAT (rewrites change its data, never the object), so its
//! address names "this packet" across every hop, and `skb:kfree_skb` reports
//! the same address for a drop. Addresses are reused as soon as an skb is
//! freed, so the id is not the address itself: the first hop of a packet
//! that passes the filter draws a random 64-bit id and keeps it in
//! [`TRACE_JOURNEYS`](crate::names::TRACE_JOURNEYS) (LRU, keyed by
//! address). The entry ends when the skb is freed (`skb:consume_skb`,
//! `skb:kfree_skb`), when the packet leaves a lab namespace again (egress of
//! a namespace-side veth starts a new journey), or after
//! [`JOURNEY_IDLE_NS`] without a hop, which covers frees the tracepoints do
//! not see.

use crate::nat::{IPPROTO_ICMP, IPPROTO_ICMPV6};

/// Bytes of packet data an event can carry (`--snaplen` is capped to it).
pub const SNAP_MAX: usize = 256;

/// Default ring buffer size (bytes, a power of two multiple of the page
/// size): about 120,000 header-only records (136 bytes each in the ring),
/// so a reader that loses its CPU for 80 ms under a flood of ~1.5 M
/// events/s loses nothing (4 MiB lost a third of such a flood on a busy
/// 2-CPU machine, with records of 88 bytes).
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// A journey whose skb was not seen for this long is over: the address now
/// belongs to another packet.
pub const JOURNEY_IDLE_NS: u64 = 1_000_000_000;

/// Capacity of [`TRACE_JOURNEYS`](crate::names::TRACE_JOURNEYS): packets in flight.
pub const MAX_JOURNEYS: u32 = 16384;

/// [`TRACE_JOURNEYS`](crate::names::TRACE_JOURNEYS)'s map flags:
/// `BPF_F_NO_COMMON_LRU`, an LRU list per CPU. A journey starts on the CPU
/// that sends its packet; with one list for all CPUs every start took a
/// global lock and often evicted under it (measured: 4.6 µs for the first
/// hop of a traced UDP flood).
pub const JOURNEYS_MAP_FLAGS: u32 = 1 << 1;

/// Capacity of [`TRACE_IFACES`](crate::names::TRACE_IFACES).
pub const MAX_TRACE_IFACES: u32 = 4096;

/// [`EventHeader::kind`].
pub const EVENT_HOP: u8 = 1;
pub const EVENT_KERNEL_DROP: u8 = 2;
/// The journey's skb reached a socket: freed by `skb:consume_skb` after a
/// hop, or freed by `skb:kfree_skb` after a clone of it went to a socket
/// ([`EventHeader::reason`] is a `FATE_*`).
pub const EVENT_DELIVERED: u8 = 3;

/// [`EventHeader::reason`] of an [`EVENT_DELIVERED`]: consumed by the stack
/// (`skb:consume_skb`, at [`EventHeader::location`]).
pub const FATE_CONSUMED: u8 = 0;
/// A clone of the skb went to a socket (a raw socket: `raw_local_deliver`
/// clones for each), then the original was freed with
/// [`EventHeader::kernel_reason`] (`NO_SOCKET` from `ping_rcv` for an echo
/// reply), which is not a loss.
pub const FATE_CLONED: u8 = 1;

/// Which program saw the packet ([`EventHeader::hook`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A veth end where netlab only watches (`trace_ingress`/`trace_egress`).
    Ingress = 0,
    Egress = 1,
    /// Host-side veth or uplink (`nat_ingress`/`nat_egress`).
    NatIngress = 2,
    NatEgress = 3,
    /// Not a TC hop: `skb:kfree_skb`, `skb:consume_skb`, `raw_rcv`.
    Kernel = 4,
}

impl Hook {
    pub fn from_u8(v: u8) -> Option<Hook> {
        Some(match v {
            0 => Hook::Ingress,
            1 => Hook::Egress,
            2 => Hook::NatIngress,
            3 => Hook::NatEgress,
            4 => Hook::Kernel,
            _ => return None,
        })
    }

    /// `ingress` or `egress` (`kernel` for a kernel drop).
    pub fn direction(self) -> &'static str {
        match self {
            Hook::Ingress | Hook::NatIngress => "ingress",
            Hook::Egress | Hook::NatEgress => "egress",
            Hook::Kernel => "kernel",
        }
    }
}

/// What the datapath did at a hop ([`EventHeader::action`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass = 0,
    /// `bpf_redirect*` to [`EventHeader::target_ifindex`].
    Redirect = 1,
    /// Dropped by netlab; [`EventHeader::reason`] is a [`Stat`](crate::nat::Stat).
    Drop = 2,
    /// Freed by the kernel with [`EventHeader::kernel_reason`].
    KernelDrop = 3,
    /// Delivered to a socket ([`EVENT_DELIVERED`]).
    Delivered = 4,
}

impl Action {
    pub fn from_u8(v: u8) -> Option<Action> {
        Some(match v {
            0 => Action::Pass,
            1 => Action::Redirect,
            2 => Action::Drop,
            3 => Action::KernelDrop,
            4 => Action::Delivered,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Redirect => "redirect",
            Action::Drop => "drop",
            Action::KernelDrop => "kernel_drop",
            Action::Delivered => "delivered",
        }
    }
}

/// [`EventHeader::reason`] when netlab's own datapath had no named reason.
pub const REASON_NONE: u8 = 0xff;

/// [`Tuple::kind`]: what the tracer could read of the packet.
pub const TUPLE_NONE: u8 = 0;
/// IPv4 with TCP/UDP ports or an ICMP type.
pub const TUPLE_IPV4: u8 = 1;
/// IPv4 of another protocol, or a fragment: addresses only.
pub const TUPLE_IPV4_OTHER: u8 = 2;
/// Neither IPv4 nor IPv6 (ARP, ...): the ethertype is in the first word
/// of [`Tuple::saddr`].
pub const TUPLE_NOT_IP: u8 = 3;
/// Too short or inconsistent to read.
pub const TUPLE_MALFORMED: u8 = 4;
/// IPv6 with TCP/UDP ports or an ICMPv6 type (found past the extension
/// headers).
pub const TUPLE_IPV6: u8 = 5;
/// IPv6 of another protocol, a fragment after the first, or extension
/// headers the tracer does not walk through (more than four, or past the
/// bytes it reads): addresses, and as [`Tuple::proto`] the upper-layer
/// protocol, or the IPv6 header's next-header value when the walk stopped
/// short.
pub const TUPLE_IPV6_OTHER: u8 = 6;

/// ICMPv6's echo types, which the tracer tells apart as ICMP's.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// A packet's addresses as seen at one point. Network byte order, as on
/// the wire; an IPv4 address fills the first word of its array (the rest
/// is zero), an IPv6 address all four. ICMP and ICMPv6 echo keep their
/// identifier in `sport` (request) or `dport` (reply), as conntrack does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// `TUPLE_*`.
    pub kind: u8,
}

impl Tuple {
    #[inline(always)]
    pub fn is_ipv4(&self) -> bool {
        self.kind == TUPLE_IPV4 || self.kind == TUPLE_IPV4_OTHER
    }

    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        self.kind == TUPLE_IPV6 || self.kind == TUPLE_IPV6_OTHER
    }

    /// Whether the L4 header was read: ports, TCP flags, the ICMP type.
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.kind == TUPLE_IPV4 || self.kind == TUPLE_IPV6
    }

    /// Whether the packet is an ICMP or ICMPv6 echo `request` (or reply).
    #[inline(always)]
    pub fn is_echo(&self, request: bool) -> bool {
        match (self.kind, request) {
            (TUPLE_IPV4, true) => self.proto == IPPROTO_ICMP && self.icmp_type == 8,
            (TUPLE_IPV4, false) => self.proto == IPPROTO_ICMP && self.icmp_type == 0,
            (TUPLE_IPV6, true) => {
                self.proto == IPPROTO_ICMPV6 && self.icmp_type == ICMPV6_ECHO_REQUEST
            }
            (TUPLE_IPV6, false) => {
                self.proto == IPPROTO_ICMPV6 && self.icmp_type == ICMPV6_ECHO_REPLY
            }
            _ => false,
        }
    }

    /// Whether two tuples are the same packet's, field by field. (Word by
    /// word, not `==`: derived equality of arrays may become a `bcmp`
    /// call, which a BPF program cannot make.)
    #[inline(always)]
    pub fn same(&self, other: &Tuple) -> bool {
        let words = |a: &[u32; 4], b: &[u32; 4]| {
            (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
        };
        self.kind == other.kind
            && self.proto == other.proto
            && words(&self.saddr, &other.saddr)
            && words(&self.daddr, &other.daddr)
            && self.sport == other.sport
            && self.dport == other.dport
            && self.tcp_flags == other.tcp_flags
            && self.icmp_type == other.icmp_type
    }
}

/// The fixed part of every event. `kind` comes first so a reader can tell
/// events apart before it knows their size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `EVENT_*`.
    pub kind: u8,
    /// A [`Hook`].
    pub hook: u8,
    /// An [`Action`].
    pub action: u8,
    /// netlab's drop reason (a [`Stat`](crate::nat::Stat)) or [`REASON_NONE`].
    pub reason: u8,
    /// Interface of the hop (kernel drops: the last hop seen).
    pub ifindex: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub trace_id: u64,
    /// `skb->len` at the hop.
    pub skb_len: u32,
    /// Bytes of packet data that follow (hops only).
    pub cap_len: u32,
    /// Redirect target.
    pub target_ifindex: u32,
    /// The kernel's `enum skb_drop_reason` (kernel drops).
    pub kernel_reason: u32,
    /// The packet as it reached the hop (kernel drops: as it left the last hop).
    pub before: Tuple,
    /// The packet as it left the hop (differs after a NAT rewrite).
    pub after: Tuple,
    /// Kernel drops: the kernel function that freed it (`location`).
    pub location: u64,
}

/// One packet at one TC hop, with its first bytes. With a snap length of
/// 0 the record is the [`EventHeader`] alone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HopEvent {
    pub header: EventHeader,
    pub data: [u8; SNAP_MAX],
}

/// A lab packet freed by the kernel (`skb:kfree_skb`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropEvent {
    pub header: EventHeader,
}

/// What a journey keeps between hops ([`TRACE_JOURNEYS`](crate::names::TRACE_JOURNEYS) value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Journey {
    pub trace_id: u64,
    pub last_ns: u64,
    pub last_ifindex: u32,
    /// [`JOURNEY_CLONED`] when the skb was already a clone at its last hop
    /// (TCP sends clones of its queued segments).
    pub flags: u32,
    pub last: Tuple,
}

/// What a NAT program hands the tail-called `trace_hop` through the
/// per-CPU slot [`TRACE_SCRATCH`](crate::names::TRACE_SCRATCH) (same CPU,
/// no preemption in between). Only the kernel reads it; userspace knows
/// its size, to tell a lab an older netlab pinned it for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceScratch {
    pub before: Tuple,
    /// The tuple as the packet leaves, filled by `trace_hop` (here, not
    /// on its stack: `trace_hop` and the calls under it share 512 bytes).
    pub after: Tuple,
    pub target_ifindex: u32,
    pub reason: u32,
    /// The TC verdict the program decided, returned by `trace_hop`.
    pub action: i32,
    pub hook: u32,
    /// Nonzero when the program may have changed the tuple (NAT rewrote
    /// it, or the verdict was neither a plain pass nor a drop): `trace_hop`
    /// parses the packet again.
    pub touched: u32,
    pub _pad: u32,
}

/// [`Journey::flags`]: `sk_buff.cloned` was set at the last hop, so being
/// cloned when freed says nothing about a socket having taken a copy.
pub const JOURNEY_CLONED: u32 = 1;

/// The switch ([`TRACE_CONFIG`](crate::names::TRACE_CONFIG), index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Nonzero: tracing is on. Off, every hop costs this one array lookup.
    pub enabled: u32,
    /// Trace one journey in this many (0 and 1: all).
    pub sample_every: u32,
    /// Bytes of packet data per hop event (capped to [`SNAP_MAX`]).
    pub snaplen: u32,
    /// `skb:kfree_skb` field offsets, from its tracefs `format` (they moved
    /// between kernels: `rx_sk` was added before `protocol`).
    pub kfree_protocol_off: u32,
    pub kfree_reason_off: u32,
    /// Bit offset of `sk_buff.cloned` (from BTF); 0: unknown, and a freed
    /// skb whose clone reached a socket shows as a drop.
    pub skb_cloned_bit: u32,
    /// The reader is woken when this many bytes wait in the ring (see
    /// [`wakeup_bytes`]); below it, it finds them at its next poll.
    pub wakeup_bytes: u32,
    pub _pad: u32,
}

/// How often the reader looks at the ring when nothing woke it (ms): what a
/// quiet trace waits at most before it shows an event.
pub const READER_POLL_MS: u32 = 10;

/// [`TraceConfig::wakeup_bytes`] for a ring of `ring_bytes`: a sixteenth of
/// it, at most 256 KiB (about 1,900 header-only records). Waking the
/// reader costs the producing CPU an interrupt, and the kernel's default
/// (wake whenever the reader had caught up) wakes a fast reader for almost
/// every record; one wakeup per few thousand records costs nothing, and
/// the ring holds far more than arrives between two polls.
pub const fn wakeup_bytes(ring_bytes: u32) -> u32 {
    let sixteenth = ring_bytes / 16;
    if sixteenth < 256 << 10 {
        sixteenth
    } else {
        256 << 10
    }
}

/// Literal kinds of the filter ([`Literal::kind`]).
/// An IPv4 host or net.
pub const LIT_HOST: u8 = 1;
pub const LIT_PORT: u8 = 2;
pub const LIT_PROTO: u8 = 3;
pub const LIT_IFACE: u8 = 4;
pub const LIT_NETNS: u8 = 5;
/// An IPv6 host or net.
pub const LIT_HOST6: u8 = 6;
/// The IP version (`ip`: 4, `ip6`: 6).
pub const LIT_FAMILY: u8 = 7;

/// [`Literal::side`].
pub const SIDE_ANY: u8 = 0;
pub const SIDE_SRC: u8 = 1;
pub const SIDE_DST: u8 = 2;

pub const MAX_LITERALS: usize = 8;
pub const MAX_CLAUSES: usize = 8;

/// One test of the filter, maybe negated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Literal {
    /// `LIT_*`.
    pub kind: u8,
    pub negate: u8,
    /// `SIDE_*` (host, port).
    pub side: u8,
    pub _pad: u8,
    /// Host/net: the address, masked, network order, laid out as
    /// [`Tuple::saddr`]; proto: IP protocol; iface: ifindex; netns: the id
    /// in [`TRACE_IFACES`](crate::names::TRACE_IFACES); family: 4 or 6
    /// (all in the first word).
    pub value: [u32; 4],
    /// Host/net: mask, network order.
    pub mask: [u32; 4],
    /// Port range, host order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
}

/// A conjunction of literals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clause {
    pub literals: [Literal; MAX_LITERALS],
    pub len: u32,
    pub _pad: u32,
}

/// The filter in disjunctive normal form: a hop matches when any clause
/// has all its literals true for the tuple before or after the hop. No
/// clause: everything matches. `netlab trace` writes it into the
/// [`TRACE_FILTER`](crate::names::TRACE_FILTER) global of `trace_hop`
/// before loading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub clauses: [Clause; MAX_CLAUSES],
    pub len: u32,
    pub _pad: u32,
}

/// Slots of [`TRACE_STATS`](crate::names::TRACE_STATS) (per CPU).
pub const TRACE_STAT_EMITTED: u32 = 0;
/// Ring buffer full: the event was lost.
pub const TRACE_STAT_LOST: u32 = 1;
pub const TRACE_STAT_COUNT: u32 = 2;

impl Filter {
    /// No clause: every packet.
    pub const EMPTY: Filter = Filter {
        clauses: [Clause {
            literals: [Literal {
                kind: 0,
                negate: 0,
                side: 0,
                _pad: 0,
                value: [0; 4],
                mask: [0; 4],
                port_min: 0,
                port_max: 0,
            }; MAX_LITERALS],
            len: 0,
            _pad: 0,
        }; MAX_CLAUSES],
        len: 0,
        _pad: 0,
    };
}

const _: () = assert!(core::mem::size_of::<Tuple>() == 40);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 128);
const _: () = assert!(core::mem::size_of::<HopEvent>() == 128 + SNAP_MAX);
const _: () = assert!(core::mem::size_of::<DropEvent>() == 128);
const _: () = assert!(core::mem::size_of::<Journey>() == 64);
const _: () = assert!(core::mem::size_of::<TraceScratch>() == 104);
const _: () = assert!(core::mem::size_of::<TraceConfig>() == 32);
const _: () = assert!(core::mem::size_of::<Literal>() == 40);
const _: () = assert!(core::mem::size_of::<Clause>() == 40 * MAX_LITERALS + 8);
const _: () = assert!(core::mem::size_of::<Filter>() == (40 * MAX_LITERALS + 8) * MAX_CLAUSES + 8);
