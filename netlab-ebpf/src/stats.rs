//! Counters of what the NAT datapath did and why (`netlab status`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use netlab_common::nat::{STAT_COUNT, Stat};

#[map(name = "NAT_STATS")]
static NAT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(slot) = NAT_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
    // The reasons a packet is dropped for, so its trace event can name it.
    if matches!(
        stat,
        Stat::Fragment
            | Stat::Unsupported
            | Stat::TcpNotSyn
            | Stat::PortExhausted
            | Stat::CtInsertFailed
            | Stat::CtHalfEvicted
            | Stat::RewriteFailed
    ) {
        crate::trace::note_drop(stat);
    }
}
