//! Per-interface packet and byte counters, read by `netlab status`.

use aya_ebpf::{macros::map, maps::PerCpuHashMap, programs::TcContext};
use netlab_common::{Direction, IfaceCounters, IfaceKey, MAX_COUNTED_IFACES};

use crate::pkt::ctx::value_mut;

#[map(name = "IFACE_COUNTERS")]
static IFACE_COUNTERS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::pinned(MAX_COUNTED_IFACES, 0);

#[inline(always)]
pub fn count(ctx: &TcContext, ifindex: u32, direction: Direction) {
    let key = IfaceKey {
        ifindex,
        direction: direction as u32,
    };
    let len = u64::from(ctx.len());
    match value_mut(IFACE_COUNTERS.get_ptr_mut(key)) {
        // Per-CPU: only this CPU writes it while we run.
        Some(counters) => {
            counters.packets += 1;
            counters.bytes += len;
        }
        None => {
            // A full map only loses counts, never packets; `status` shows the gap
            // as an interface without counters.
            let _ = IFACE_COUNTERS.insert(
                key,
                IfaceCounters {
                    packets: 1,
                    bytes: len,
                },
                0,
            );
        }
    }
}
