//! IPv6: the header, where the addresses sit, and the walk over the
//! extension headers to the upper-layer header (the tracer and NAT66's
//! parser read it), and the hop limit a router hop decrements.

use super::{ctx, eth::ETH_HLEN};
use aya_ebpf::programs::TcContext;
use netlab_common::nat::Stat;

pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label.
    pub vtc_flow: [u8; 4],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

impl Ipv6Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }
}

pub const IPV6_HLEN: usize = 40;
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);

/// The source and destination addresses' offsets in an IPv6 header.
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;
/// The hop limit's offset (IPv4's TTL; no checksum covers it).
const IPV6_HOP_LIMIT_OFF: usize = 7;

/// Extension headers (RFC 8200's next-header values) the walk steps over.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Extension headers walked at most before the upper-layer header; a
/// longer chain is not read further (Cilium's walk stops a header
/// earlier: its `IPV6_MAX_HEADERS` steps include finding the upper one).
const MAX_EXT_HEADERS: usize = 4;

/// Fragment header: the offset (13 bits, in 8-byte units), and the "more
/// fragments" flag.
const IP6_OFFSET: u16 = 0xfff8;
const IP6_MF: u16 = 0x0001;

/// Where a packet's upper-layer header is, past its extension headers.
#[derive(Clone, Copy)]
pub struct Upper {
    /// Its protocol (the last next-header value).
    pub proto: u8,
    /// Its offset in the frame.
    pub l4: usize,
    /// A fragment after the first: no upper-layer header in it.
    pub later_fragment: bool,
    /// The first fragment of a datagram that has more.
    pub first_fragment: bool,
    /// A fragment's identification (network order); 0 for no fragment.
    pub frag_id: u32,
}

/// Walks the extension headers (hop-by-hop, routing, fragment,
/// authentication, destination options; at most [`MAX_EXT_HEADERS`]) to
/// the upper-layer header. `None` when the chain is longer, or an
/// extension header lies past the bytes [`ctx::load`] reads (within
/// `ctx::MAX_HEADERS` of the frame's start). The upper-layer header itself
/// may lie past them: reading it then fails.
#[inline(always)]
pub fn upper(ctx: &TcContext, first: u8) -> Option<Upper> {
    upper_from(ctx, first, ETH_HLEN + IPV6_HLEN)
}

/// [`upper`] for a chain that starts at `off` with next-header `first`:
/// the frame's own, or that of the packet an ICMPv6 error quotes.
#[inline(always)]
pub fn upper_from(ctx: &TcContext, first: u8, off: usize) -> Option<Upper> {
    let mut next = first;
    let mut off = off;
    let mut first_fragment = false;
    let mut frag_id = 0;
    // One step more than the headers it may pass: the last finds the
    // upper-layer header.
    for _ in 0..=MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                let [following, len] = ctx::load::<[u8; 2]>(ctx, off)?;
                off += if next == NEXTHDR_AUTH {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                next = following;
            }
            NEXTHDR_FRAGMENT => {
                let [following, _] = ctx::load::<[u8; 2]>(ctx, off)?;
                let frag = u16::from_be(ctx::load::<u16>(ctx, off + 2)?);
                let id = ctx::load::<u32>(ctx, off + 4)?;
                if frag & IP6_OFFSET != 0 {
                    return Some(Upper {
                        proto: following,
                        l4: 0,
                        later_fragment: true,
                        first_fragment: false,
                        frag_id: id,
                    });
                }
                // A first fragment or an atomic one (no more fragments:
                // the whole datagram): the upper header follows.
                first_fragment = frag & IP6_MF != 0;
                frag_id = id;
                off += 8;
                next = following;
            }
            _ => {
                return Some(Upper {
                    proto: next,
                    l4: off,
                    later_fragment: false,
                    first_fragment,
                    frag_id: if first_fragment { frag_id } else { 0 },
                });
            }
        }
    }
    None
}

/// Whether a packet from `addr` must not cross a router: a link-scope
/// source or the unspecified address (the kernel's `ip6_forward` drops
/// it, answering "beyond scope of source address").
#[inline(always)]
pub fn stays_on_link(addr: &[u32; 4]) -> bool {
    is_link_scope(addr) || *addr == [0; 4]
}

/// Whether `addr` is link-local unicast (fe80::/10) or multicast
/// (ff00::/8, which neighbour discovery uses): addressed within its link.
#[inline(always)]
pub fn is_link_scope(addr: &[u32; 4]) -> bool {
    // The first 16 bits tell both prefixes.
    let first = addr[0].to_ne_bytes();
    first[0] == 0xff || (first[0] == 0xfe && first[1] & 0xc0 == 0x80)
}

/// A router hop: the hop limit goes down by one. `Ok(false)` when it
/// would expire (the stack answers time exceeded): left as it is.
#[inline(always)]
pub fn decrement_hop_limit(ctx: &TcContext) -> Result<bool, Stat> {
    let at = ETH_HLEN + IPV6_HOP_LIMIT_OFF;
    let hops: u8 = ctx.load(at).map_err(|_| Stat::WriteFailed)?;
    if hops <= 1 {
        return Ok(false);
    }
    ctx.store(at, &(hops - 1), 0)
        .map_err(|_| Stat::WriteFailed)?;
    Ok(true)
}
