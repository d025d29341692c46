//! The TC context: interface, length, packet type and mark, bounds-checked
//! packet reads, and map value access.

use aya_ebpf::{maps::PerCpuArray, programs::TcContext};

/// The interface the program runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the kernel hands TC programs a valid __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// `PACKET_OTHERHOST`: a frame for another host's MAC address.
const PACKET_OTHERHOST: u32 = 3;

/// Whether the frame is addressed to another host's MAC (the stack drops
/// it unless a bridge forwards it).
#[inline(always)]
pub fn for_other_host(ctx: &TcContext) -> bool {
    // SAFETY: as in `ifindex`.
    unsafe { (*ctx.skb.skb).pkt_type == PACKET_OTHERHOST }
}

/// Reads a `T` at `offset` in the linear part of the packet (direct packet
/// access: one bounds check, no helper call). `None` when the packet, or
/// its linear part, is shorter; see [`make_linear`]. Read fields of at
/// least 2 bytes: LLVM turns a 1-byte check into `ptr >= end`, from which
/// the verifier learns no readable range.
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // Every header lies within MAX_HEADERS. Saying so bounds a variable
    // offset for the verifier, which marks no readable range after a
    // bounds check whose offset could reach 64 KiB.
    if offset > MAX_HEADERS as usize {
        return None;
    }
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

/// What one hook tells a later one of the same packet, in netlab's bits
/// of `skb->mark` ([`MARK_MASK`]). The mark survives the bridge and the
/// host's routing between an ingress and an egress hook, and is cleared
/// when a veth hands the packet into another namespace, so it never leaves
/// the host's side of the lab. The egress hook clears netlab's bits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// An ingress hook translated the packet (DNAT, un-SNAT): its flow has
    /// nothing left for an egress hook to do.
    Translated,
    /// As `Translated`, and the packet opened its flow, which waits for it
    /// to leave before it counts as confirmed (see `conntrack::confirm`).
    Opened,
}

/// netlab's bits of `skb->mark` (ARCHITECTURE.md says which and why).
pub const MARK_MASK: u32 = 0x0030_0000;
const MARK_TRANSLATED: u32 = 0x0010_0000;
const MARK_OPENED: u32 = 0x0030_0000;

/// Leaves `handoff` for the next hook of this packet.
#[inline(always)]
pub fn hand_off(ctx: &TcContext, handoff: Handoff) {
    let bits = match handoff {
        Handoff::Translated => MARK_TRANSLATED,
        Handoff::Opened => MARK_OPENED,
    };
    // SAFETY: as in `ifindex`; `mark` is writable for TC programs.
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).mark = ((*skb).mark & !MARK_MASK) | bits;
    }
}

/// What an earlier hook left for this one, left in the mark.
#[inline(always)]
pub fn peek_handoff(ctx: &TcContext) -> Option<Handoff> {
    // SAFETY: as in `hand_off`.
    match unsafe { (*ctx.skb.skb).mark } & MARK_MASK {
        MARK_TRANSLATED => Some(Handoff::Translated),
        MARK_OPENED => Some(Handoff::Opened),
        _ => None,
    }
}

/// What an earlier hook left for this one, cleared from the mark.
#[inline(always)]
pub fn take_handoff(ctx: &TcContext) -> Option<Handoff> {
    // SAFETY: as in `hand_off`.
    unsafe {
        let skb = ctx.skb.skb;
        let mark = (*skb).mark;
        let handoff = match mark & MARK_MASK {
            MARK_TRANSLATED => Handoff::Translated,
            MARK_OPENED => Handoff::Opened,
            _ => return None,
        };
        (*skb).mark = mark & !MARK_MASK;
        Some(handoff)
    }
}

/// A map value pointer as a shared reference.
///
/// # Safety
///
/// The value must stay valid for as long as the reference is used. Values
/// of arrays always do. A hash map element may be deleted by another CPU
/// meanwhile: the kernel frees it only after the program's RCU section
/// when the map is not preallocated, but reuses a preallocated element
/// (an LRU's, a preallocated hash's) at once for another key, so a
/// reference into one may come to read another entry. Callers use such
/// references only for what a stale or foreign value cannot make unsafe:
/// a rewrite that a racing delete makes one packet's, counters and
/// timestamps.
#[inline(always)]
pub unsafe fn value<V>(ptr: Option<*const V>) -> Option<&'static V> {
    // SAFETY: the caller's, see above; the pointer is a successful lookup's.
    ptr.map(|p| unsafe { &*p })
}

/// [`value`], writable. Per-CPU values are written by this CPU only, while
/// the program runs (BPF programs are not preempted on their CPU).
///
/// # Safety
///
/// As for [`value`]; writes through a reference into a shared map race
/// with other CPUs' writes, and are for fields where the last writer
/// winning is right (timestamps, flags that only get set) or a torn
/// update only makes a figure stale (counters).
#[inline(always)]
pub unsafe fn value_mut<V>(ptr: Option<*mut V>) -> Option<&'static mut V> {
    // SAFETY: as for `value`.
    ptr.map(|p| unsafe { &mut *p })
}

/// A value of an array map (never deleted, so always valid).
#[inline(always)]
pub fn array_value<V>(ptr: Option<*const V>) -> Option<&'static V> {
    // SAFETY: array elements live as long as the map, which outlives the
    // program run.
    unsafe { value(ptr) }
}

/// [`array_value`], writable, of an array every CPU shares.
///
/// # Safety
///
/// Other CPUs may hold the same slot at once: see [`value_mut`] on which
/// writes that allows.
#[inline(always)]
pub unsafe fn array_value_mut<V>(ptr: Option<*mut V>) -> Option<&'static mut V> {
    // SAFETY: as for `array_value`; the caller's for concurrent writes.
    unsafe { value_mut(ptr) }
}

/// This CPU's slot `index` of a per-CPU array, writable: slots and
/// counters no other CPU touches, and a program run is not preempted on
/// its CPU.
#[inline(always)]
pub fn per_cpu_value_mut<V>(map: &PerCpuArray<V>, index: u32) -> Option<&'static mut V> {
    // SAFETY: the slot is this CPU's alone, and lives as long as the map.
    unsafe { value_mut(map.get_ptr_mut(index)) }
}
