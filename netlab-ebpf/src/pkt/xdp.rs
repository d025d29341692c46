//! The XDP entry's packet access: bounds-checked direct reads and writes
//! of the frame (an XDP buffer has no clones to unshare and no offloaded
//! checksum it could tell, so it is written in place; see `entry`).

use aya_ebpf::programs::XdpContext;

use super::ctx::MAX_HEADERS;

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
