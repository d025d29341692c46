//! Kernel drops of lab packets: the `skb:kfree_skb` tracepoint, joined to
//! the packet's journey by skb address, and `skb:consume_skb`, which ends a
//! journey when its skb is freed normally (so the address can start a new
//! one). Both do nothing but one array lookup while tracing is off, and
//! ignore every skb that no lab hop traced.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use netlab_common::trace::{
    Action, DropEvent, EVENT_KERNEL_DROP, EventHeader, Hook, JOURNEY_IDLE_NS, REASON_NONE,
};

use crate::trace::{TRACE_EVENTS, TRACE_JOURNEYS, config, count_emitted};

/// Offsets in the tracepoints' records (tracefs `format`): the same in
/// every kernel with drop reasons.
const SKBADDR_OFF: usize = 8;
const LOCATION_OFF: usize = 16;
/// `reason` moved when `rx_sk` was added (6.12); userspace reads the
/// format and tells which layout this kernel has.
const REASON_OFF_WITH_RX_SK: u32 = 36;
const REASON_OFF_BEFORE_RX_SK: u32 = 28;

#[inline(always)]
pub fn kfree_skb(ctx: &TracePointContext) {
    let Some(cfg) = config() else {
        return;
    };
    // SAFETY: tracepoint record fields at the offsets of its format.
    let Ok(skb) = (unsafe { ctx.read_at::<u64>(SKBADDR_OFF) }) else {
        return;
    };
    // SAFETY: a map value pointer from a successful lookup, copied at once.
    let Some(journey) = TRACE_JOURNEYS.get_ptr(skb).map(|j| unsafe { *j }) else {
        return;
    };
    let _ = TRACE_JOURNEYS.remove(skb);
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_ns() };
    if journey.trace_id == 0 || now.wrapping_sub(journey.last_ns) >= JOURNEY_IDLE_NS {
        return;
    }
    // SAFETY: as above; the offset is one of two constants.
    let reason = unsafe {
        match cfg.kfree_reason_off {
            REASON_OFF_BEFORE_RX_SK => ctx.read_at::<u32>(REASON_OFF_BEFORE_RX_SK as usize),
            _ => ctx.read_at::<u32>(REASON_OFF_WITH_RX_SK as usize),
        }
    }
    .unwrap_or(0);
    // SAFETY: as above.
    let location = unsafe { ctx.read_at::<u64>(LOCATION_OFF) }.unwrap_or(0);
    let Some(mut entry) = TRACE_EVENTS.reserve::<DropEvent>(0) else {
        count_emitted(false);
        return;
    };
    count_emitted(true);
    entry.write(DropEvent {
        header: EventHeader {
            kind: EVENT_KERNEL_DROP,
            hook: Hook::Kernel as u8,
            action: Action::KernelDrop as u8,
            reason: REASON_NONE,
            ifindex: journey.last_ifindex,
            ts_ns: now,
            trace_id: journey.trace_id,
            skb_len: 0,
            cap_len: 0,
            target_ifindex: 0,
            kernel_reason: reason,
            before: journey.last,
            after: journey.last,
            location,
        },
    });
    entry.submit(0);
}

#[inline(always)]
pub fn consume_skb(ctx: &TracePointContext) {
    if config().is_none() {
        return;
    }
    // SAFETY: tracepoint record field at the offset of its format.
    let Ok(skb) = (unsafe { ctx.read_at::<u64>(SKBADDR_OFF) }) else {
        return;
    };
    if TRACE_JOURNEYS.get_ptr(skb).is_some() {
        let _ = TRACE_JOURNEYS.remove(skb);
    }
}
