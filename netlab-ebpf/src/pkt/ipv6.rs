//! IPv6, as far as netlab looks at it (it carries none yet): the
//! ethertype, and where the destination sits.

use aya_ebpf::programs::TcContext;

use super::{ctx, eth::ETH_HLEN};

pub const ETH_P_IPV6: u16 = 0x86dd;

/// The destination address's offset in an IPv6 header.
const IPV6_DADDR_OFF: usize = 24;

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
