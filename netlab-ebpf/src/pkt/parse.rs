//! The one parser: Ethernet → IPv4 → TCP/UDP/ICMP, into a [`Parsed`]; and
//! for the tracer, Ethernet → IPv6 → extension headers → TCP/UDP/ICMPv6.
//!
//! Every header read is a bounds-checked direct read ([`ctx::load`]) of the
//! packet's linear part, which [`ctx::make_linear`] extends over the headers
//! first; so a truncated frame is a value here, never an out-of-bounds read.
//! L4 is validated as netfilter's conntrack does before it would translate
//! (TCP data offset, UDP length, ICMP header size, the header embedded in an
//! ICMP error): what fails is [`Parsed::Untranslatable`], never a flow.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netlab_common::{
    nat::{FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Stat},
    trace::{
        ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, TUPLE_IPV4, TUPLE_IPV4_OTHER, TUPLE_IPV6,
        TUPLE_IPV6_OTHER, TUPLE_MALFORMED, TUPLE_NOT_IP, Tuple,
    },
};

use super::{
    ctx,
    eth::{ETH_P_IP, ETH_PROTO_OFF},
    ipv4::{IPV4_MIN_HLEN, Ipv4Hdr, L3_OFF},
    ipv6::{self, ETH_P_IPV6, Ipv6Hdr},
    l4::{
        ICMP_DEST_UNREACH, ICMP_HLEN, ICMP_ID_OFF, ICMP_PARAMETER_PROB, ICMP_TIME_EXCEEDED,
        TCP_DOFF_OFF, TCP_MIN_HLEN, UDP_HLEN, UDP_LEN_OFF, icmp_query, tcp_flags_valid,
    },
};

/// The IPv4 header fields every consumer needs, once it is known sound.
#[derive(Clone, Copy)]
pub struct Ip {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    pub ttl: u8,
    /// Network order.
    pub id: u16,
    /// The first fragment of a datagram that has more.
    pub first_fragment: bool,
}

/// A packet of a flow NAT can translate: TCP, UDP or ICMP echo (perhaps
/// the first fragment of a datagram).
#[derive(Clone, Copy)]
pub struct Packet {
    pub ip: Ip,
    /// Offset of the TCP/UDP/ICMP header (offsets are `u16`: every header
    /// lies in the first [`ctx::MAX_HEADERS`] bytes, and the BPF stack is small).
    pub l4: u16,
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// For ICMP: a query request (its identifier is the key's `sport`; a
    /// reply's is its `dport`).
    pub icmp_request: bool,
    /// `skb->len`.
    pub len: u32,
}

/// A fragment after the first: addresses only, its ports are in the first.
#[derive(Clone, Copy)]
pub struct LaterFragment {
    pub ip: Ip,
}

/// An ICMP error (destination unreachable, time exceeded, parameter
/// problem) and the header of the packet it is about.
#[derive(Clone, Copy)]
pub struct IcmpError {
    pub ip: Ip,
    /// The ICMP type.
    pub kind: u8,
    pub l4: u16,
    /// Offset of the embedded TCP/UDP/ICMP header.
    pub inner_l4: u16,
    /// End of the packet's IP payload (the embedded data stops there).
    pub end: u16,
    /// The embedded packet's flow key (it travelled the other way).
    pub inner: FlowKey,
    /// For an embedded ICMP query: whether it was a request (id in `sport`).
    pub inner_request: bool,
}

/// What a frame is, as far as the datapath cares.
#[derive(Clone, Copy)]
pub enum Parsed {
    /// Not IPv4 (ARP, IPv6, ...): the ethertype.
    NotIpv4(u16),
    /// An IPv4 header that is not one (bad version, length or size): the
    /// stack drops it; the source, when the bytes were there, so a caller
    /// can still keep it off the uplink.
    BadIpv4(Option<u32>),
    Flow(Packet),
    LaterFragment(LaterFragment),
    IcmpError(IcmpError),
    /// A sound IPv4 header with L4 NAT cannot translate, and why
    /// ([`Stat::Malformed`] or [`Stat::Unsupported`]).
    Untranslatable(Ip, Stat),
}

impl IcmpError {
    /// Offset of the embedded IPv4 header.
    #[inline(always)]
    pub fn inner_l3(&self) -> usize {
        usize::from(self.l4) + ICMP_HLEN
    }
}

impl Parsed {
    /// The IPv4 header, for every frame that has a sound one.
    #[inline(always)]
    pub fn ip(&self) -> Option<Ip> {
        match self {
            Parsed::Flow(p) => Some(p.ip),
            Parsed::LaterFragment(f) => Some(f.ip),
            Parsed::IcmpError(e) => Some(e.ip),
            Parsed::Untranslatable(ip, _) => Some(*ip),
            Parsed::NotIpv4(_) | Parsed::BadIpv4(_) => None,
        }
    }

    /// The source address, whenever the frame carries one.
    #[inline(always)]
    pub fn saddr(&self) -> Option<u32> {
        match self {
            Parsed::BadIpv4(saddr) => *saddr,
            _ => self.ip().map(|ip| ip.saddr),
        }
    }

    /// What the tracer and its filter see of the packet (pwru's
    /// `set_tuple`): the fields NAT works on, and for IPv6 (which NAT
    /// passes as `NotIpv4`) the same read past its extension headers.
    /// Written in place: a tuple is 40 bytes, and the NAT programs that
    /// trace have little stack to spare.
    #[inline(always)]
    pub fn tuple_into(&self, ctx: &TcContext, t: &mut Tuple) {
        *t = Tuple::default();
        match self {
            Parsed::NotIpv4(ETH_P_IPV6) => {
                netlab_ipv6_tuple(ctx.skb.skb, t);
            }
            Parsed::NotIpv4(ethertype) => {
                t.kind = TUPLE_NOT_IP;
                t.saddr[0] = u32::from(*ethertype);
            }
            Parsed::BadIpv4(_) => t.kind = TUPLE_MALFORMED,
            Parsed::Flow(p) => {
                t.kind = TUPLE_IPV4;
                t.saddr[0] = p.ip.saddr;
                t.daddr[0] = p.ip.daddr;
                t.proto = p.ip.proto;
                t.sport = p.key.sport;
                t.dport = p.key.dport;
                t.tcp_flags = p.tcp_flags;
                t.icmp_type = p.icmp_type;
            }
            Parsed::IcmpError(e) => {
                t.kind = TUPLE_IPV4;
                t.saddr[0] = e.ip.saddr;
                t.daddr[0] = e.ip.daddr;
                t.proto = IPPROTO_ICMP;
                t.icmp_type = e.kind;
            }
            Parsed::LaterFragment(LaterFragment { ip, .. }) | Parsed::Untranslatable(ip, _) => {
                t.kind = TUPLE_IPV4_OTHER;
                t.saddr[0] = ip.saddr;
                t.daddr[0] = ip.daddr;
                t.proto = ip.proto;
            }
        }
    }
}

crate::global::function! {
    /// The IPv6 part of [`Parsed::tuple_into`], verified once: the walk
    /// over extension headers is a loop of its own, which every NAT path
    /// that traces would otherwise walk again.
    fn netlab_ipv6_tuple(skb: *mut __sk_buff, t: *mut Tuple) -> u32 {
        // SAFETY: the verifier checks the pointer's memory; null is refused here.
        let Some(t) = (unsafe { t.as_mut() }) else {
            return 0;
        };
        ipv6_tuple(&TcContext::new(skb), t);
        0
    }
}

/// Fills `t` (zeroed) from the frame's IPv6 header and, past the
/// extension headers, its TCP/UDP ports or ICMPv6 type and echo id.
#[inline(always)]
fn ipv6_tuple(ctx: &TcContext, t: &mut Tuple) {
    let Some(hdr) = ctx::load::<Ipv6Hdr>(ctx, L3_OFF) else {
        t.kind = TUPLE_MALFORMED;
        return;
    };
    if hdr.version() != 6 {
        t.kind = TUPLE_MALFORMED;
        return;
    }
    t.kind = TUPLE_IPV6_OTHER;
    t.saddr = hdr.saddr;
    t.daddr = hdr.daddr;
    t.proto = hdr.nexthdr;
    let Some(upper) = ipv6::upper(ctx, hdr.nexthdr) else {
        return;
    };
    t.proto = upper.proto;
    if upper.later_fragment {
        return;
    }
    let l4 = upper.l4;
    match upper.proto {
        IPPROTO_TCP => {
            // One read at a time (see the IPv4 parser's ICMP: LLVM used
            // the undefined payload of a failed read in a pattern of
            // two, from a register the verifier knew as the context);
            // the flags as the IPv4 parser reads them (a 16-bit word).
            let Some(ports) = ctx::load::<[u16; 2]>(ctx, l4) else {
                return;
            };
            let Some([_doff, flags]) = ctx::load::<[u8; 2]>(ctx, l4 + TCP_DOFF_OFF) else {
                return;
            };
            t.sport = ports[0];
            t.dport = ports[1];
            t.tcp_flags = flags;
        }
        IPPROTO_UDP => {
            let Some(ports) = ctx::load::<[u16; 2]>(ctx, l4) else {
                return;
            };
            t.sport = ports[0];
            t.dport = ports[1];
        }
        IPPROTO_ICMPV6 => {
            // One read at a time (see the IPv4 parser's ICMP).
            let Some([kind, _code]) = ctx::load::<[u8; 2]>(ctx, l4) else {
                return;
            };
            let Some(id) = ctx::load::<u16>(ctx, l4 + ICMP_ID_OFF) else {
                return;
            };
            t.icmp_type = kind;
            match kind {
                ICMPV6_ECHO_REQUEST => t.sport = id,
                ICMPV6_ECHO_REPLY => t.dport = id,
                _ => {}
            }
        }
        _ => return,
    }
    t.kind = TUPLE_IPV6;
}

/// Parses the frame the program runs on.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    ctx::make_linear(ctx);
    let Some(ethertype) = ctx::load::<u16>(ctx, ETH_PROTO_OFF) else {
        return Parsed::BadIpv4(None);
    };
    let ethertype = u16::from_be(ethertype);
    if ethertype != ETH_P_IP {
        return Parsed::NotIpv4(ethertype);
    }
    let Some(hdr) = ctx::load::<Ipv4Hdr>(ctx, L3_OFF) else {
        return Parsed::BadIpv4(None);
    };
    let ihl = hdr.header_len();
    let tot_len = hdr.total_len();
    let len = ctx.len();
    if hdr.version() != 4 || ihl < IPV4_MIN_HLEN || tot_len < ihl || L3_OFF + tot_len > len as usize
    {
        return Parsed::BadIpv4(Some(hdr.saddr));
    }
    let ip = Ip {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
        proto: hdr.proto,
        ttl: hdr.ttl,
        id: hdr.id,
        first_fragment: hdr.more_fragments() && !hdr.is_later_fragment(),
    };
    if hdr.is_later_fragment() {
        return Parsed::LaterFragment(LaterFragment { ip });
    }
    let l4 = L3_OFF + ihl;
    let end = L3_OFF + tot_len;
    let l4_len = tot_len - ihl;
    let mut key = FlowKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        _pad0: 0,
        _pad1: 0,
    };
    let mut tcp_flags = 0;
    let mut icmp_type = 0;
    let mut icmp_request = false;
    let malformed = Parsed::Untranslatable(ip, Stat::Malformed);
    match ip.proto {
        IPPROTO_TCP => {
            // Data offset and flags share a 16-bit word (no 1-byte reads:
            // the verifier cannot bound `ptr + 1 > end` as LLVM rewrites it).
            let (Some(ports), Some([doff, flags])) = (
                ctx::load::<[u16; 2]>(ctx, l4),
                ctx::load::<[u8; 2]>(ctx, l4 + TCP_DOFF_OFF),
            ) else {
                return malformed;
            };
            let doff = usize::from(doff >> 4) * 4;
            if l4_len < TCP_MIN_HLEN
                || doff < TCP_MIN_HLEN
                || doff > l4_len
                || !tcp_flags_valid(flags)
            {
                return malformed;
            }
            key.sport = ports[0];
            key.dport = ports[1];
            tcp_flags = flags;
        }
        IPPROTO_UDP => {
            let (Some(ports), Some(udp_len)) = (
                ctx::load::<[u16; 2]>(ctx, l4),
                ctx::load::<u16>(ctx, l4 + UDP_LEN_OFF),
            ) else {
                return malformed;
            };
            let udp_len = usize::from(u16::from_be(udp_len));
            // A first fragment carries only part of the datagram the length
            // counts; a whole datagram must match its IP payload.
            if l4_len < UDP_HLEN || udp_len < UDP_HLEN || (!ip.first_fragment && udp_len > l4_len) {
                return malformed;
            }
            key.sport = ports[0];
            key.dport = ports[1];
        }
        IPPROTO_ICMP => {
            // One read at a time: with both in one pattern, LLVM matched on
            // a type it had not loaded yet (undefined when the read failed),
            // from whatever register held it, which the verifier refuses.
            let Some([kind, _code]) = ctx::load::<[u8; 2]>(ctx, l4) else {
                return malformed;
            };
            let Some(id) = ctx::load::<u16>(ctx, l4 + ICMP_ID_OFF) else {
                return malformed;
            };
            if l4_len < ICMP_HLEN {
                return malformed;
            }
            icmp_type = kind;
            match icmp_type {
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB => {
                    if ip.first_fragment {
                        // An error is never fragmented by a sane sender.
                        return malformed;
                    }
                    return parse_icmp_error(ctx, ip, l4, end, kind);
                }
                _ => match icmp_query(kind) {
                    Some(true) => {
                        key.sport = id;
                        icmp_request = true;
                    }
                    Some(false) => key.dport = id,
                    None => return Parsed::Untranslatable(ip, Stat::Unsupported),
                },
            }
        }
        _ => return Parsed::Untranslatable(ip, Stat::Unsupported),
    }
    Parsed::Flow(Packet {
        ip,
        l4: l4 as u16,
        key,
        tcp_flags,
        icmp_type,
        icmp_request,
        len,
    })
}

/// Parses the packet embedded in an ICMP error: its IPv4 header and the
/// first 8 bytes of its L4 header.
#[inline(always)]
fn parse_icmp_error(ctx: &TcContext, ip: Ip, l4: usize, end: usize, kind: u8) -> Parsed {
    let malformed = Parsed::Untranslatable(ip, Stat::Malformed);
    let inner_l3 = l4 + ICMP_HLEN;
    let Some(inner) = ctx::load::<Ipv4Hdr>(ctx, inner_l3) else {
        return malformed;
    };
    let inner_ihl = inner.header_len();
    let inner_l4 = inner_l3 + inner_ihl;
    if inner.version() != 4
        || inner_ihl < IPV4_MIN_HLEN
        || inner_l4 + 8 > end
        || inner.is_later_fragment()
    {
        return malformed;
    }
    let mut key = FlowKey {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: 0,
        dport: 0,
        proto: inner.proto,
        _pad0: 0,
        _pad1: 0,
    };
    let mut inner_request = false;
    match inner.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Some(ports) = ctx::load::<[u16; 2]>(ctx, inner_l4) else {
                return malformed;
            };
            key.sport = ports[0];
            key.dport = ports[1];
        }
        IPPROTO_ICMP => {
            // One read at a time (see the outer ICMP header's).
            let Some([inner_type, _code]) = ctx::load::<[u8; 2]>(ctx, inner_l4) else {
                return malformed;
            };
            let Some(id) = ctx::load::<u16>(ctx, inner_l4 + ICMP_ID_OFF) else {
                return malformed;
            };
            match icmp_query(inner_type) {
                Some(true) => {
                    key.sport = id;
                    inner_request = true;
                }
                Some(false) => key.dport = id,
                None => return Parsed::Untranslatable(ip, Stat::Unsupported),
            }
        }
        _ => return Parsed::Untranslatable(ip, Stat::Unsupported),
    }
    Parsed::IcmpError(IcmpError {
        ip,
        l4: l4 as u16,
        inner_l4: inner_l4 as u16,
        end: end as u16,
        inner: key,
        inner_request,
        kind,
    })
}
