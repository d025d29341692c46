//! A journey's fate: the `skb:kfree_skb` tracepoint (a drop, with the
//! kernel's reason), joined to the packet's journey by skb address;
//! `skb:consume_skb` (delivered: freed normally after its last hop). A
//! dropped skb that was cloned after its last hop (a raw socket got a
//! clone, then the protocol found no socket of its own: a ping reply to a
//! raw-socket ping) was delivered too, and says so. Both are loaded and attached by `netlab
//! trace` only while it runs, and ignore every skb no hop traced.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use netlab_common::trace::{
    Action, DropEvent, EVENT_DELIVERED, EVENT_KERNEL_DROP, EventHeader, FATE_CLONED, FATE_CONSUMED,
    Hook, JOURNEY_CLONED, JOURNEY_IDLE_NS, Journey, REASON_NONE, TraceConfig,
};

use crate::trace::{
    TRACE_EVENTS, TRACE_JOURNEYS, cloned, config, count_emitted, journeys_started, wakeup,
};

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
    // Every skb the machine frees comes here: without a journey started
    // (a filter nothing matched yet) that is one array read.
    let Some(cfg) = config().filter(|_| journeys_started()) else {
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
    // Cloned since its last hop: a socket (raw) took a copy on the way up.
    let (kind, action, fate) =
        if journey.flags & JOURNEY_CLONED == 0 && cloned(skb, cfg.skb_cloned_bit) {
            (EVENT_DELIVERED, Action::Delivered, FATE_CLONED)
        } else {
            (EVENT_KERNEL_DROP, Action::KernelDrop, REASON_NONE)
        };
    emit_fate(
        cfg,
        &Fate {
            journey,
            now,
            kind,
            action,
            reason: fate,
            kernel_reason: reason,
            location,
        },
    );
}

/// `skb:consume_skb`: the skb was freed normally. A live journey ends
/// here: delivered (the stack consumed it after its last hop).
#[inline(always)]
pub fn consume_skb(ctx: &TracePointContext) {
    let Some(cfg) = config().filter(|_| journeys_started()) else {
        return;
    };
    // SAFETY: tracepoint record field at the offset of its format.
    let Ok(skb) = (unsafe { ctx.read_at::<u64>(SKBADDR_OFF) }) else {
        return;
    };
    // SAFETY: as above.
    let location = unsafe { ctx.read_at::<u64>(LOCATION_OFF) }.unwrap_or(0);
    deliver(cfg, skb, FATE_CONSUMED, location);
}

/// Ends `skb`'s journey, if it has a live one, with a delivered event.
#[inline(always)]
fn deliver(cfg: &TraceConfig, skb: u64, fate: u8, location: u64) {
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
    emit_fate(
        cfg,
        &Fate {
            journey,
            now,
            kind: EVENT_DELIVERED,
            action: Action::Delivered,
            reason: fate,
            kernel_reason: 0,
            location,
        },
    );
}

/// How a journey ended, as its last event says.
struct Fate {
    journey: Journey,
    now: u64,
    kind: u8,
    action: Action,
    reason: u8,
    kernel_reason: u32,
    location: u64,
}

#[inline(always)]
fn emit_fate(cfg: &TraceConfig, fate: &Fate) {
    let Some(mut entry) = TRACE_EVENTS.reserve::<DropEvent>(0) else {
        count_emitted(false);
        return;
    };
    count_emitted(true);
    let journey = &fate.journey;
    entry.write(DropEvent {
        header: EventHeader {
            kind: fate.kind,
            hook: Hook::Kernel as u8,
            action: fate.action as u8,
            reason: fate.reason,
            ifindex: journey.last_ifindex,
            ts_ns: fate.now,
            trace_id: journey.trace_id,
            skb_len: 0,
            cap_len: 0,
            target_ifindex: 0,
            kernel_reason: fate.kernel_reason,
            before: journey.last,
            after: journey.last,
            location: fate.location,
        },
    });
    entry.submit(wakeup(cfg));
}
