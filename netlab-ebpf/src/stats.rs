//! Counters of what the NAT datapath did and why (`netlab status`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use netlab_common::nat::{STAT_COUNT, Stat};

use crate::pkt::ctx::per_cpu_value_mut;

#[map(name = "NAT_STATS")]
static NAT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    add(stat, 1);
}

#[inline(always)]
pub fn add(stat: Stat, n: u64) {
    // Per-CPU: only this CPU writes the slot while we run.
    if let Some(slot) = per_cpu_value_mut(&NAT_STATS, stat as u32) {
        *slot += n;
    }
}
