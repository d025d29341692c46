//! The IPv6 half of the one parser: Ethernet → IPv6 → extension headers
//! ([`ipv6::upper`], fragment header included) → TCP/UDP/ICMPv6, into a
//! [`Parsed6`], for NAT66.
//! Validated as [`super::parse`] validates IPv4 (TCP data offset and
//! flags, UDP length, the packet an ICMPv6 error quotes): what fails is
//! never a flow. Its answer lives in a per-CPU slot, filled by a global
//! function.

use aya_ebpf::{bindings::__sk_buff, macros::map, maps::PerCpuArray, programs::TcContext};
use netlab_common::{
    nat::{FlowKey6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Stat},
    trace::{ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST},
};

use super::{
    ctx::{self, per_cpu_value_mut},
    eth::ETH_HLEN,
    ipv6::{self, IPV6_HLEN, Ipv6Hdr},
    l4::{
        ICMP_HLEN, ICMP_ID_OFF, TCP_DOFF_OFF, TCP_MIN_HLEN, UDP_HLEN, UDP_LEN_OFF, tcp_flags_valid,
    },
};

/// ICMPv6 errors (RFC 4443): destination unreachable, packet too big,
/// time exceeded, parameter problem. Each quotes the packet it is about.
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAM_PROB: u8 = 4;

/// The addresses of a sound IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Addrs6 {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// A packet of a flow NAT66 can translate: TCP, UDP or ICMPv6 echo.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet6 {
    pub key: FlowKey6,
    /// Offset of the TCP/UDP/ICMPv6 header.
    pub l4: u16,
    pub tcp_flags: u8,
    /// For ICMPv6: an echo request (its identifier is the key's `sport`;
    /// a reply's is its `dport`).
    pub icmp_request: bool,
    /// `skb->len`.
    pub len: u32,
    /// The first fragment of a datagram that has more (its ports are
    /// remembered for the later ones).
    pub first_fragment: bool,
    /// A fragment's identification (network order), first or later.
    pub frag_id: u32,
}

/// An ICMPv6 error and the packet it quotes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Icmp6Error {
    pub addrs: Addrs6,
    /// Offset of the ICMPv6 header.
    pub l4: u16,
    /// Offset of the quoted TCP/UDP/ICMPv6 header.
    pub inner_l4: u16,
    /// End of the packet (the quoted bytes stop there).
    pub end: u16,
    /// The quoted packet's key (it travelled the other way).
    pub inner: FlowKey6,
    /// For a quoted echo: whether it was a request (id in `sport`).
    pub inner_request: bool,
}

impl Icmp6Error {
    /// Offset of the quoted IPv6 header.
    #[inline(always)]
    pub fn inner_l3(&self) -> usize {
        usize::from(self.l4) + ICMP_HLEN
    }
}

/// What an IPv6 frame is, as far as NAT66 cares ([`Parsed6::kind`]).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind6 {
    /// [`Parsed6::flow`] holds it.
    Flow,
    /// [`Parsed6::error`] holds it.
    IcmpError,
    /// A fragment after the first of a TCP, UDP or ICMPv6 datagram:
    /// [`Parsed6::flow`] holds its addresses, protocol and fragment id
    /// (ports 0, no L4 header: its first fragment had them).
    LaterFragment,
    /// A sound header with nothing NAT66 translates (neighbour discovery,
    /// other ICMPv6, other protocols and their later fragments, an
    /// extension header chain past the walk), or with malformed L4: why in
    /// [`Parsed6::why`] ([`Stat::Unsupported`], [`Stat::Malformed`]).
    Untranslatable,
    /// Not a sound IPv6 header (too short, another version, a payload
    /// length past the frame): the stack drops it.
    Bad,
}

/// A parsed IPv6 frame. A struct with a kind, not an enum with payloads:
/// it lives in a map (BTF describes it, and the kernel refuses the union
/// members a Rust enum's BTF places past offset 0), and every field is
/// defined whatever the kind.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parsed6 {
    pub kind: Kind6,
    pub why: Stat,
    /// Every kind but `Bad`.
    pub addrs: Addrs6,
    pub flow: Packet6,
    pub error: Icmp6Error,
}

impl Parsed6 {
    /// The source and destination address, for every frame that has a
    /// sound header.
    #[inline(always)]
    pub fn addrs(&self) -> Option<(&[u32; 4], &[u32; 4])> {
        (self.kind != Kind6::Bad).then_some((&self.addrs.saddr, &self.addrs.daddr))
    }
}

/// Where [`parse6`] leaves its answer: a parse's temporaries and answer
/// (IPv6 headers, 40-byte tuples) would take most of the IPv6 programs'
/// 512-byte stack.
#[map]
static PARSED6: PerCpuArray<Parsed6> = PerCpuArray::with_max_entries(1, 0);

/// Parses the IPv6 frame the program runs on (its ethertype is IPv6), in
/// a global function with a frame of its own; the answer lives in this
/// CPU's slot until the next parse. `None` only if the slot is missing.
#[inline(always)]
pub fn parse6(ctx: &TcContext) -> Option<&'static Parsed6> {
    let slot = per_cpu_value_mut(&PARSED6, 0)?;
    netlab_parse6(ctx.skb.skb, slot);
    Some(slot)
}

crate::global::function! {
    /// [`parse6`], verified once per program, on its own.
    fn netlab_parse6(skb: *mut __sk_buff, out: *mut Parsed6) -> u32 {
        // SAFETY: the verifier checks the pointer's memory; null is refused here.
        let Some(out) = (unsafe { out.as_mut() }) else {
            return 0;
        };
        out.kind = Kind6::Bad;
        out.why = Stat::Malformed;
        parse_into(&TcContext::new(skb), out);
        0
    }
}

/// Fills `out` (its kind `Bad`) from the frame.
#[inline(always)]
fn parse_into(ctx: &TcContext, out: &mut Parsed6) {
    ctx::make_linear(ctx);
    let Some(hdr) = ctx::load::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return;
    };
    let len = ctx.len();
    let end = ETH_HLEN + IPV6_HLEN + usize::from(u16::from_be(hdr.payload_len));
    if hdr.version() != 6 || end > len as usize {
        return;
    }
    out.addrs = Addrs6 {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
    };
    out.kind = Kind6::Untranslatable;
    out.why = Stat::Unsupported;
    let Some(upper) = ipv6::upper(ctx, hdr.nexthdr) else {
        return;
    };
    let pkt = &mut out.flow;
    pkt.key = FlowKey6::new(hdr.saddr, hdr.daddr, 0, 0, upper.proto);
    pkt.tcp_flags = 0;
    pkt.icmp_request = false;
    pkt.len = len;
    pkt.first_fragment = upper.first_fragment;
    pkt.frag_id = upper.frag_id;
    if upper.later_fragment {
        pkt.l4 = 0;
        if matches!(upper.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
            out.kind = Kind6::LaterFragment;
        }
        return;
    }
    let l4 = upper.l4;
    out.why = Stat::Malformed;
    if l4 > end {
        return;
    }
    let l4_len = end - l4;
    pkt.l4 = l4 as u16;
    match upper.proto {
        IPPROTO_TCP => {
            // One read at a time (see the IPv4 parser's ICMP).
            let Some(ports) = ctx::load::<[u16; 2]>(ctx, l4) else {
                return;
            };
            let Some([doff, flags]) = ctx::load::<[u8; 2]>(ctx, l4 + TCP_DOFF_OFF) else {
                return;
            };
            let doff = usize::from(doff >> 4) * 4;
            if l4_len < TCP_MIN_HLEN
                || doff < TCP_MIN_HLEN
                || doff > l4_len
                || !tcp_flags_valid(flags)
            {
                return;
            }
            pkt.key.sport = ports[0];
            pkt.key.dport = ports[1];
            pkt.tcp_flags = flags;
        }
        IPPROTO_UDP => {
            let Some(ports) = ctx::load::<[u16; 2]>(ctx, l4) else {
                return;
            };
            let Some(udp_len) = ctx::load::<u16>(ctx, l4 + UDP_LEN_OFF) else {
                return;
            };
            let udp_len = usize::from(u16::from_be(udp_len));
            // A first fragment carries only part of the datagram the
            // length is of.
            if l4_len < UDP_HLEN
                || udp_len < UDP_HLEN
                || (!upper.first_fragment && udp_len > l4_len)
            {
                return;
            }
            pkt.key.sport = ports[0];
            pkt.key.dport = ports[1];
        }
        IPPROTO_ICMPV6 => {
            // One read at a time (see the IPv4 parser's ICMP).
            let Some([kind, _code]) = ctx::load::<[u8; 2]>(ctx, l4) else {
                return;
            };
            let Some(id) = ctx::load::<u16>(ctx, l4 + ICMP_ID_OFF) else {
                return;
            };
            if l4_len < ICMP_HLEN {
                return;
            }
            match kind {
                ICMPV6_ECHO_REQUEST => {
                    pkt.key.sport = id;
                    pkt.icmp_request = true;
                }
                ICMPV6_ECHO_REPLY => pkt.key.dport = id,
                // An error is never fragmented by a sane sender.
                ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROB if !upper.first_fragment => {
                    parse_icmp6_error(ctx, l4, end, out);
                    return;
                }
                // Neighbour discovery, multicast listeners and the rest:
                // never translated, never dropped here.
                _ => {
                    out.why = Stat::Unsupported;
                    return;
                }
            }
        }
        _ => {
            out.why = Stat::Unsupported;
            return;
        }
    }
    out.kind = Kind6::Flow;
}

/// Fills `out.error` from the packet an ICMPv6 error quotes: its IPv6
/// header, its extension headers walked as the frame's own are (a packet
/// that went out behind a routing or destination options header is
/// quoted with them), and the first 8 bytes of its L4 header. `out` is
/// `Untranslatable` (malformed) until it is sound; a quoted later
/// fragment, or a chain past the walk, is unsupported.
#[inline(always)]
fn parse_icmp6_error(ctx: &TcContext, l4: usize, end: usize, out: &mut Parsed6) {
    let inner_l3 = l4 + ICMP_HLEN;
    let Some(inner) = ctx::load::<Ipv6Hdr>(ctx, inner_l3) else {
        return;
    };
    if inner.version() != 6 {
        return;
    }
    let Some(upper) = ipv6::upper_from(ctx, inner.nexthdr, inner_l3 + IPV6_HLEN) else {
        out.why = Stat::Unsupported;
        return;
    };
    if upper.later_fragment {
        out.why = Stat::Unsupported;
        return;
    }
    let inner_l4 = upper.l4;
    if inner_l4 + 8 > end {
        return;
    }
    let err = &mut out.error;
    err.addrs = out.addrs;
    err.l4 = l4 as u16;
    err.inner_l4 = inner_l4 as u16;
    err.end = end as u16;
    err.inner = FlowKey6::new(inner.saddr, inner.daddr, 0, 0, upper.proto);
    err.inner_request = false;
    match upper.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Some(ports) = ctx::load::<[u16; 2]>(ctx, inner_l4) else {
                return;
            };
            err.inner.sport = ports[0];
            err.inner.dport = ports[1];
        }
        IPPROTO_ICMPV6 => {
            let Some([inner_type, _code]) = ctx::load::<[u8; 2]>(ctx, inner_l4) else {
                return;
            };
            let Some(id) = ctx::load::<u16>(ctx, inner_l4 + ICMP_ID_OFF) else {
                return;
            };
            match inner_type {
                ICMPV6_ECHO_REQUEST => {
                    err.inner.sport = id;
                    err.inner_request = true;
                }
                ICMPV6_ECHO_REPLY => err.inner.dport = id,
                _ => {
                    out.why = Stat::Unsupported;
                    return;
                }
            }
        }
        _ => {
            out.why = Stat::Unsupported;
            return;
        }
    }
    out.kind = Kind6::IcmpError;
}
