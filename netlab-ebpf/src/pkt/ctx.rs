//! The TC context: interface, length, bounds-checked packet reads, and map
//! value access.

use aya_ebpf::programs::TcContext;

/// The interface the program runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the kernel hands TC programs a valid __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Reads a `T` at `offset` in the linear part of the packet (direct packet
/// access: one bounds check, no helper call). `None` when the packet, or
/// its linear part, is shorter; see [`make_linear`]. Read fields of at
/// least 2 bytes: LLVM turns a 1-byte check into `ptr >= end`, from which
/// the verifier learns no readable range.
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the bytes lie between data and data_end, as checked above;
    // headers in a packet need not be aligned.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// The most header bytes the parser reads: Ethernet, an IPv4 header with
/// options, 8 bytes of ICMP error, the embedded IPv4 header with options
/// and a TCP header's first 20 bytes.
pub const MAX_HEADERS: u32 = 14 + 60 + 8 + 60 + 20;

/// Makes the packet's first [`MAX_HEADERS`] bytes (or all of a shorter
/// packet) readable with [`load`]. Most packets already are; a GSO or
/// paged skb may keep headers outside its linear part.
#[inline(always)]
pub fn make_linear(ctx: &TcContext) {
    let want = ctx.len().min(MAX_HEADERS);
    if ctx.data() + want as usize > ctx.data_end() {
        // A failed pull leaves the packet as it was: the parser then finds
        // it too short and says so.
        let _ = ctx.pull_data(want);
    }
}

/// The one place a map value pointer becomes a reference. Map lookups
/// return pointers into the map's value storage, valid for the whole
/// program run; BPF programs are not preempted mid-run on their CPU, and
/// values shared with other CPUs are plain counters and timestamps whose
/// torn updates only make a figure stale.
#[inline(always)]
pub fn value<V>(ptr: Option<*const V>) -> Option<&'static V> {
    // SAFETY: see above.
    ptr.map(|p| unsafe { &*p })
}

/// [`value`], writable.
#[inline(always)]
pub fn value_mut<V>(ptr: Option<*mut V>) -> Option<&'static mut V> {
    // SAFETY: see [`value`].
    ptr.map(|p| unsafe { &mut *p })
}
