//! IPv6, as far as netlab looks at it (it bridges it, and neither routes
//! nor translates it yet): the ethertype, and where the addresses sit.

use aya_ebpf::programs::TcContext;
use netlab_common::nat::Net6Set;

use super::{ctx, eth::ETH_HLEN};

pub const ETH_P_IPV6: u16 = 0x86dd;

/// The source and destination addresses' offsets in an IPv6 header.
const IPV6_SADDR_OFF: usize = 8;
const IPV6_DADDR_OFF: usize = 24;

/// Whether the IPv6 packet of the frame comes from a subnet of `set`.
/// `false` for a frame too short to say.
#[inline(always)]
pub fn from(ctx: &TcContext, set: &Net6Set) -> bool {
    ctx::load::<[u32; 4]>(ctx, ETH_HLEN + IPV6_SADDR_OFF).is_some_and(|saddr| set.contains(&saddr))
}

/// Whether the IPv6 packet of the frame goes from one subnet of `set` to
/// one of `set` (both addresses in it). `false` for a frame too short to
/// say.
#[inline(always)]
pub fn within(ctx: &TcContext, set: &Net6Set) -> bool {
    let Some(saddr) = ctx::load::<[u32; 4]>(ctx, ETH_HLEN + IPV6_SADDR_OFF) else {
        return false;
    };
    let Some(daddr) = ctx::load::<[u32; 4]>(ctx, ETH_HLEN + IPV6_DADDR_OFF) else {
        return false;
    };
    set.contains(&saddr) && set.contains(&daddr)
}

/// Whether the IPv6 packet of the frame is addressed within its link:
/// link-local unicast (fe80::/10) or multicast (ff00::/8, which neighbour
/// discovery uses). `false` for a frame too short to say.
#[inline(always)]
pub fn to_link(ctx: &TcContext) -> bool {
    // The first 16 bits of the destination tell both prefixes.
    let Some(first) = ctx::load::<[u8; 2]>(ctx, ETH_HLEN + IPV6_DADDR_OFF) else {
        return false;
    };
    first[0] == 0xff || (first[0] == 0xfe && first[1] & 0xc0 == 0x80)
}
