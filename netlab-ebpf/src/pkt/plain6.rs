//! The IPv6 fast path's view of a packet: plain TCP or UDP right behind
//! the 40-byte IPv6 header (no extension header, so no fragment), checked
//! by the rules the one IPv6 parser ([`parse6`](super::parse6)) applies
//! to a `Flow`, without the TCP flags that may change a flow (SYN, FIN,
//! RST). Anything else is the parser's to describe.

use aya_ebpf::programs::TcContext;
use netlab_common::nat::{FlowKey6, IPPROTO_TCP, IPPROTO_UDP, Stat};

use super::{
    csum, ctx,
    eth::ETH_HLEN,
    ipv6::{IPV6_HLEN, Ipv6Hdr},
    l4::{
        TCP_DOFF_OFF, TCP_FIN, TCP_MIN_HLEN, TCP_RST, TCP_SYN, UDP_HLEN, UDP_LEN_OFF,
        tcp_flags_valid,
    },
};

/// Where L4 starts (no extension header).
const L4_OFF: usize = ETH_HLEN + IPV6_HLEN;

/// A plain IPv6 TCP or UDP packet whose flow it cannot change.
#[derive(Clone, Copy)]
pub struct Plain6 {
    /// The tuple as it came (its conntrack key).
    pub key: FlowKey6,
    pub tcp_flags: u8,
    pub hop_limit: u8,
    /// `skb->len`.
    pub len: u32,
}

impl Plain6 {
    /// The IPv6 packet a TC program runs on, when it is one.
    #[inline(always)]
    pub fn read(ctx: &TcContext) -> Option<Plain6> {
        let ip = ctx::load::<Ipv6Hdr>(ctx, ETH_HLEN)?;
        let len = ctx.len();
        let l4_len = usize::from(u16::from_be(ip.payload_len));
        if ip.version() != 6 || L4_OFF + l4_len > len as usize {
            return None;
        }
        let [sport, dport] = ctx::load::<[u16; 2]>(ctx, L4_OFF)?;
        let mut tcp_flags = 0;
        match ip.nexthdr {
            IPPROTO_TCP => {
                let [doff, flags] = ctx::load::<[u8; 2]>(ctx, L4_OFF + TCP_DOFF_OFF)?;
                let doff = usize::from(doff >> 4) * 4;
                if l4_len < TCP_MIN_HLEN
                    || doff < TCP_MIN_HLEN
                    || doff > l4_len
                    || !tcp_flags_valid(flags)
                    || flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
                {
                    return None;
                }
                tcp_flags = flags;
            }
            IPPROTO_UDP => {
                let udp_len =
                    usize::from(u16::from_be(ctx::load::<u16>(ctx, L4_OFF + UDP_LEN_OFF)?));
                if l4_len < UDP_HLEN || udp_len < UDP_HLEN || udp_len > l4_len {
                    return None;
                }
            }
            _ => return None,
        }
        Some(Plain6 {
            key: FlowKey6::new(ip.saddr, ip.daddr, sport, dport, ip.nexthdr),
            tcp_flags,
            hop_limit: ip.hop_limit,
            len,
        })
    }

    /// Rewrites the packet's tuple from `before` to `after` (NAT66's
    /// rewrite, as the full path makes it).
    #[inline(always)]
    pub fn write(ctx: &TcContext, before: &FlowKey6, after: &FlowKey6) -> Result<(), Stat> {
        csum::rewrite_tuple6(ctx, L4_OFF, before, after, false)
    }
}
