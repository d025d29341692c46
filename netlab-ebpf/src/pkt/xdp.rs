//! The XDP entry's packet access: bounds-checked direct reads and writes
//! of the frame (an XDP buffer has no clones to unshare and no offloaded
//! checksum it could tell, so it is written in place; see `entry`).

use aya_ebpf::programs::XdpContext;

use super::{
    ctx::MAX_HEADERS,
    eth::{ETH_P_IP, ETH_PROTO_OFF},
    ipv4::{Ipv4Hdr, L3_OFF},
};

/// What a frame carries at layer 3, as the XDP entry sees it.
pub enum L3 {
    NotIpv4,
    /// An IPv4 header that is not one (version, lengths).
    Bad,
    Ipv4(Ipv4Hdr),
}

/// The frame's IPv4 header, checked as the stack would.
#[inline(always)]
pub fn l3(ctx: &XdpContext) -> L3 {
    let Some(ethertype) = load::<u16>(ctx, ETH_PROTO_OFF) else {
        return L3::NotIpv4;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return L3::NotIpv4;
    }
    let Some(hdr) = load::<Ipv4Hdr>(ctx, L3_OFF) else {
        return L3::Bad;
    };
    let len = ctx.data_end() - ctx.data();
    let ihl = hdr.header_len();
    let tot_len = hdr.total_len();
    if hdr.version() != 4 || ihl < 20 || tot_len < ihl || L3_OFF + tot_len > len {
        return L3::Bad;
    }
    L3::Ipv4(hdr)
}

/// Reads a `T` at `offset` in the frame; `None` when the frame is shorter.
#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    if offset > MAX_HEADERS as usize {
        return None;
    }
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes lie between data and data_end, as checked above.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// Writes `value` at `offset` in the frame; `false` when it does not fit.
#[inline(always)]
pub fn store<T: Copy>(ctx: &XdpContext, offset: usize, value: &T) -> bool {
    if offset > MAX_HEADERS as usize {
        return false;
    }
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return false;
    }
    // SAFETY: as in `load`; an XDP buffer is writable.
    unsafe { core::ptr::write_unaligned((start + offset) as *mut T, *value) };
    true
}
