//! Per-packet trace events (`netlab trace`), streamed over a ring buffer.
//!
//! The NAT programs call [`begin`] and [`end`] around their work so the
//! event shows the tuple before and after the rewrite. With tracing off
//! that costs one array lookup ([`TRACE_CONFIG`]); the NAT paths' drop and
//! redirect sites also note their reason or target in a per-CPU slot
//! ([`note_drop`], [`note_redirect`]), which the verifier inlines to a
//! pointer computation. With tracing on, [`end`] tail-calls the
//! `trace_hop` program ([`tail`]), which finds the journey, applies the
//! filter and writes the event, and returns the caller's verdict.
//!
//! The veth ends without a NAT program (namespace sides) carry nothing
//! until `netlab trace` attaches `trace_ingress`/`trace_egress` ([`watch`])
//! for its session: loaded with the filter, they record their hop directly.
//!
//! Which packets are traced: a hop with no live journey evaluates the
//! filter on the tuple before and after it; a match starts a journey (one
//! in `sample_every`, drawn at random), and every later hop of the same skb
//! is emitted whatever the filter says, so one packet reads as one journey.
//! See `netlab_common::trace` for how the trace id survives the hops.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use netlab_common::{
    nat::{IPPROTO_TCP, IPPROTO_UDP, Stat},
    trace::{
        Action, DEFAULT_RING_BYTES, EVENT_HOP, EventHeader, Filter, Hook, HopEvent, JOURNEY_CLONED,
        JOURNEY_IDLE_NS, JOURNEYS_MAP_FLAGS, Journey, LIT_FAMILY, LIT_HOST, LIT_HOST6, LIT_IFACE,
        LIT_NETNS, LIT_PORT, LIT_PROTO, Literal, MAX_CLAUSES, MAX_JOURNEYS, MAX_LITERALS,
        MAX_TRACE_IFACES, REASON_NONE, SIDE_DST, SIDE_SRC, SNAP_MAX, TRACE_STAT_COUNT,
        TRACE_STAT_EMITTED, TRACE_STAT_LOST, TraceConfig, TraceScratch, Tuple,
    },
};

use crate::{
    global,
    pkt::{
        ctx::{self, array_value, array_value_mut, per_cpu_value_mut, value},
        parse::{Parsed, parse},
    },
};

/// The events, to the reader. Not pinned: each `netlab trace` makes its
/// own, of the size it is told, and only its programs write it (`up` makes
/// a placeholder of one page and drops it).
#[map(name = "TRACE_EVENTS")]
pub(crate) static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "TRACE_CONFIG")]
static TRACE_CONFIG: Array<TraceConfig> = Array::pinned(1, 0);

/// The filter, fixed when `netlab trace` loads `trace_hop` (it overrides
/// this read-only global). The kernel freezes `.rodata` before the load, so
/// the verifier reads every field of it as a constant: it follows only the
/// branches this filter takes, and rewrites the others away. What runs is
/// the filter compiled to straight-line code, and verifying it costs as
/// much as the filter is long (an interpreted table made the verifier walk
/// every kind of literal in every position: seconds).
#[unsafe(no_mangle)]
static TRACE_FILTER: Filter = Filter::EMPTY;

/// ifindex → namespace id (0: the host), written by `netlab trace`.
#[map(name = "TRACE_IFACES")]
static TRACE_IFACES: HashMap<u32, u32> = HashMap::pinned(MAX_TRACE_IFACES, 0);

/// The journeys in flight. Not pinned, like [`TRACE_EVENTS`]: a session
/// starts with none.
#[map(name = "TRACE_JOURNEYS")]
pub(crate) static TRACE_JOURNEYS: LruHashMap<u64, Journey> =
    LruHashMap::with_max_entries(MAX_JOURNEYS, JOURNEYS_MAP_FLAGS);

/// When a journey last started (see `netlab_common::names::TRACE_LIVE`):
/// `netlab trace` zeroes it when it starts.
#[map(name = "TRACE_LIVE")]
static TRACE_LIVE: Array<u64> = Array::pinned(1, 0);

#[map(name = "TRACE_STATS")]
static TRACE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(TRACE_STAT_COUNT, 0);

/// Pinned: `trace_hop` comes from a later load of the object (`netlab
/// trace` loads it) and must see the slot the TC programs write.
#[map(name = "TRACE_SCRATCH")]
static TRACE_SCRATCH: PerCpuArray<TraceScratch> = PerCpuArray::pinned(1, 0);

/// Slot 0: `trace_hop`, installed by `netlab trace` while it runs (empty
/// otherwise: the tail call fails and the program goes on). Recording a hop
/// is a tail call so that the verifier checks the journey and filter logic
/// once, in its own program, and only when somebody traces.
#[map(name = "TRACE_PROGS")]
static TRACE_PROGS: ProgramArray = ProgramArray::pinned(1, 0);

/// The TC verdict "next filter / the stack decides" (TC_ACT_UNSPEC).
const TC_NEXT: i32 = -1;

/// The configuration when tracing is on.
#[inline(always)]
pub fn config() -> Option<&'static TraceConfig> {
    TRACE_CONFIG.get(0).filter(|cfg| cfg.enabled != 0)
}

/// A hop where netlab only watches (`trace_ingress`/`trace_egress`): these
/// programs are loaded by `netlab trace` with the filter, like `trace_hop`,
/// so they record the hop themselves, with no tail call.
#[inline(always)]
pub fn watch(ctx: &TcContext, hook: Hook) {
    let Some(cfg) = config() else {
        return;
    };
    let mut tuple = Tuple::default();
    parse(ctx).tuple_into(ctx, &mut tuple);
    let seen = Seen {
        before: &tuple,
        after: &tuple,
        hook,
        action: Action::Pass,
        reason: REASON_NONE,
        target_ifindex: 0,
    };
    record(ctx, cfg, &seen);
}

/// Start of a hop that may rewrite: remembers the tuple as it came in
/// (the parse the program works on). Returns whether tracing is on, for [`end`].
#[inline(always)]
pub fn begin(ctx: &TcContext, parsed: &Parsed) -> bool {
    if config().is_none() {
        return false;
    }
    let Some(scratch) = per_cpu_value_mut(&TRACE_SCRATCH, 0) else {
        return false;
    };
    // Per-CPU slot: only this program run uses it.
    parsed.tuple_into(ctx, &mut scratch.before);
    scratch.target_ifindex = 0;
    scratch.reason = u32::from(REASON_NONE);
    scratch.touched = 0;
    true
}

/// End of a hop begun with [`begin`]: hands the verdict `action` to
/// `trace_hop`, which records the hop and returns `action` as the
/// program's verdict. Returns `action` itself when the tail call fails.
/// `touched`: the program's verdict may follow a rewrite of the tuple
/// (besides what [`note_rewrite`] said).
#[inline(always)]
pub fn end(ctx: &TcContext, on: bool, hook: Hook, action: i32, touched: bool) -> i32 {
    if !on {
        return action;
    }
    let Some(scratch) = per_cpu_value_mut(&TRACE_SCRATCH, 0) else {
        return action;
    };
    // Per-CPU slot: only this program run uses it.
    scratch.action = action;
    scratch.hook = hook as u32;
    scratch.touched |= u32::from(touched);
    // SAFETY: slot 0 holds `trace_hop` or nothing; a failed call returns.
    unsafe {
        TRACE_PROGS.tail_call(ctx, 0);
    }
    action
}

/// The body of `trace_hop`: records the hop described by the per-CPU slot
/// and returns the verdict of the program that tail-called it.
#[inline(always)]
pub fn tail(ctx: &TcContext) -> i32 {
    // Per-CPU slot written by the caller on this CPU; only this program
    // run uses it.
    let Some(scratch) = per_cpu_value_mut(&TRACE_SCRATCH, 0) else {
        return TC_NEXT;
    };
    let Some(cfg) = config() else {
        return scratch.action;
    };
    let hook = match scratch.hook {
        0 => Hook::Ingress,
        1 => Hook::Egress,
        2 => Hook::NatIngress,
        _ => Hook::NatEgress,
    };
    // A packet the program passed or dropped leaves as it came: a second
    // parse would cost every such hop (filtered out or not) for nothing.
    if scratch.touched != 0 {
        parse(ctx).tuple_into(ctx, &mut scratch.after);
    } else {
        scratch.after = scratch.before;
    }
    let (what, reason, target_ifindex) = match scratch.action {
        TC_ACT_SHOT => (Action::Drop, scratch.reason as u8, 0),
        TC_ACT_REDIRECT => (Action::Redirect, REASON_NONE, scratch.target_ifindex),
        _ => (Action::Pass, REASON_NONE, 0),
    };
    let seen = Seen {
        before: &scratch.before,
        after: &scratch.after,
        hook,
        action: what,
        reason,
        target_ifindex,
    };
    record(ctx, cfg, &seen);
    scratch.action
}

/// Names the reason of a drop the datapath is about to make.
#[inline(always)]
pub fn note_drop(stat: Stat) {
    // Per-CPU slot: only this program run uses it.
    if let Some(scratch) = per_cpu_value_mut(&TRACE_SCRATCH, 0) {
        scratch.reason = stat as u32;
    }
}

/// Notes that NAT rewrote the packet's tuple, whatever verdict follows
/// (a redirect's fallback, a bridged hairpin pass the packet on as is).
#[inline(always)]
pub fn note_rewrite() {
    // Per-CPU slot: only this program run uses it.
    if let Some(scratch) = per_cpu_value_mut(&TRACE_SCRATCH, 0) {
        scratch.touched = 1;
    }
}

/// Names the interface a redirect is about to send the packet to.
#[inline(always)]
pub fn note_redirect(ifindex: u32) {
    // Per-CPU slot: only this program run uses it.
    if let Some(scratch) = per_cpu_value_mut(&TRACE_SCRATCH, 0) {
        scratch.target_ifindex = ifindex;
    }
}

#[inline(always)]
fn count(slot: u32) {
    // Per-CPU: only this CPU writes the slot while we run.
    if let Some(counter) = per_cpu_value_mut(&TRACE_STATS, slot) {
        *counter += 1;
    }
}

/// Counts a successful ring buffer reservation or a lost event.
#[inline(always)]
pub fn count_emitted(ok: bool) {
    count(if ok {
        TRACE_STAT_EMITTED
    } else {
        TRACE_STAT_LOST
    });
}

/// What a program saw and did at one hop. The tuples are borrowed: the
/// stack of `trace_hop` and the calls under it is 512 bytes in all.
struct Seen<'a> {
    before: &'a Tuple,
    after: &'a Tuple,
    hook: Hook,
    action: Action,
    reason: u8,
    target_ifindex: u32,
}

/// Finds or starts the packet's journey and emits the hop (BPF calls take
/// at most five arguments, hence [`Seen`]).
#[inline(never)]
fn record(ctx: &TcContext, cfg: &TraceConfig, seen: &Seen) {
    let Seen {
        before,
        after,
        hook,
        ..
    } = seen;
    // The context pointer of a TC program is the kernel's sk_buff: the
    // packet's identity across hops (see netlab_common::trace).
    let skb = ctx.skb.skb as u64;
    let ifindex = ctx::ifindex(ctx);
    // While no journey can be live (none started or hopped lately), a hop
    // costs no journey lookup, and until the session's first journey no
    // clock either: a filter that matches nothing costs the filter.
    let stamp = last_journey_stamp();
    let mut now = 0;
    let mut live = false;
    if stamp != 0 {
        // SAFETY: plain helper.
        now = unsafe { bpf_ktime_get_ns() };
        live = now.wrapping_sub(stamp) < JOURNEY_IDLE_NS;
    }
    // Read only for hops that are traced (a helper call).
    let flags = || {
        if cloned(skb, cfg.skb_cloned_bit) {
            JOURNEY_CLONED
        } else {
            0
        }
    };
    let mut trace_id = 0;
    let mut known = false;
    // Leaving a lab namespace is where a packet's journey starts; an entry
    // for this address belongs to an earlier packet.
    let starts_here = live
        && matches!(*hook, Hook::Egress)
        && TRACE_IFACES.get_ptr(ifindex).is_some_and(|place| {
            // SAFETY: read at once; `netlab trace` writes the map
            // before it turns tracing on.
            unsafe { value(Some(place)) }.is_some_and(|p| *p != 0)
        });
    if live && let Some(journey) = TRACE_JOURNEYS.get_ptr_mut(skb) {
        // SAFETY: a map value pointer from a successful lookup; a racing
        // update on another CPU can only make one hop's fields stale.
        unsafe {
            // The same packet arrives as it left its last hop; an sk_buff
            // freed without a tracepoint (TCP frees most segments so) and
            // reused for another packet does not, and starts a new journey.
            if !starts_here
                && now.wrapping_sub((*journey).last_ns) < JOURNEY_IDLE_NS
                && (*journey).last.same(before)
            {
                known = true;
                trace_id = (*journey).trace_id;
                note_journey_active(now);
                (*journey).last_ns = now;
                (*journey).last_ifindex = ifindex;
                (*journey).flags = flags();
                (*journey).last = **after;
            }
        }
    }
    if !known {
        // The filter is evaluated here only: each place it is written is
        // straight-line code the verifier checks (see `TRACE_FILTER`).
        let matches = filter_matches(ifindex, before)
            || (!after.same(before) && filter_matches(ifindex, after));
        if !matches {
            if starts_here {
                let _ = TRACE_JOURNEYS.remove(skb);
            }
            return;
        }
        if now == 0 {
            // SAFETY: plain helper.
            now = unsafe { bpf_ktime_get_ns() };
        }
        let every = cfg.sample_every.max(1);
        // SAFETY: plain helpers.
        let (hi, lo) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        if every == 1 || lo % every == 0 {
            trace_id = (u64::from(hi) << 32 | u64::from(lo)).max(1);
        }
        // An unsampled journey is remembered with id 0, so that its later
        // hops are not sampled again on their own.
        let journey = Journey {
            trace_id,
            last_ns: now,
            last_ifindex: ifindex,
            flags: flags(),
            last: **after,
        };
        let _ = TRACE_JOURNEYS.insert(skb, journey, 0);
        note_journey_active(now);
    }
    if trace_id == 0 {
        return;
    }
    let len = ctx.len();
    let hop = HopHeader {
        seen,
        ifindex,
        now,
        trace_id,
        len,
    };
    // Without packet bytes (JSON and human output show none), a hop is
    // its header alone: a third of the ring space, and no copy.
    if cfg.snaplen == 0 {
        let Some(mut entry) = TRACE_EVENTS.reserve::<EventHeader>(0) else {
            count_emitted(false);
            return;
        };
        count_emitted(true);
        // SAFETY: the reservation holds an EventHeader, written whole.
        unsafe { hop.write(entry.as_mut_ptr(), 0) };
        entry.submit(wakeup(cfg));
        return;
    }
    let Some(mut entry) = TRACE_EVENTS.reserve::<HopEvent>(0) else {
        count_emitted(false);
        return;
    };
    count_emitted(true);
    let event = entry.as_mut_ptr();
    let mut cap = cfg.snaplen.min(len).min(SNAP_MAX as u32);
    if cap > 0 && cap <= SNAP_MAX as u32 {
        // Spelled so the verifier sees 1..=SNAP_MAX in the register the
        // helper gets (black_box keeps LLVM from folding the mask away).
        const _: () = assert!(SNAP_MAX.is_power_of_two());
        let len_arg = (core::hint::black_box(cap).wrapping_sub(1) & (SNAP_MAX as u32 - 1)) + 1;
        // SAFETY: at most SNAP_MAX bytes, the size of `data`; the helper
        // bounds the read by the packet length.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                0,
                (*event).data.as_mut_ptr().cast(),
                len_arg,
            )
        };
        if ret != 0 {
            cap = 0;
        }
    } else {
        cap = 0;
    }
    // SAFETY: the reservation holds a whole HopEvent; the header is written
    // in full, the data up to `cap`.
    unsafe { hop.write(&raw mut (*event).header, cap) };
    entry.submit(wakeup(cfg));
}

/// A hop's event header, written field by field straight into the ring's
/// reservation: built on the stack first, its 128 bytes did not fit
/// `trace_hop`'s beside the rest.
struct HopHeader<'a> {
    seen: &'a Seen<'a>,
    ifindex: u32,
    now: u64,
    trace_id: u64,
    len: u32,
}

impl HopHeader<'_> {
    /// # Safety
    /// `h` points to a reserved, writable `EventHeader`.
    #[inline(always)]
    unsafe fn write(&self, h: *mut EventHeader, cap_len: u32) {
        let seen = self.seen;
        // SAFETY: as the caller promised; plain stores of plain fields.
        unsafe {
            (*h).kind = EVENT_HOP;
            (*h).hook = seen.hook as u8;
            (*h).action = seen.action as u8;
            (*h).reason = seen.reason;
            (*h).ifindex = self.ifindex;
            (*h).ts_ns = self.now;
            (*h).trace_id = self.trace_id;
            (*h).skb_len = self.len;
            (*h).cap_len = cap_len;
            (*h).target_ifindex = seen.target_ifindex;
            (*h).kernel_reason = 0;
            (*h).before = *seen.before;
            (*h).after = *seen.after;
            (*h).location = 0;
        }
    }
}

/// The flag for submitting a record: wake the reader when the ring's
/// unread bytes have just reached the configured mark, never otherwise
/// (see `netlab_common::trace::wakeup_bytes`). Records below the mark wait
/// for the reader's next poll, at most `READER_POLL_MS`. Reservations of
/// other CPUs can carry the count past the mark unseen; the poll catches
/// that too.
#[inline(always)]
pub fn wakeup(cfg: &TraceConfig) -> u64 {
    /// A record's size in the ring at most (its 8-byte header included).
    const RECORD_MAX: u64 = core::mem::size_of::<HopEvent>() as u64 + 8;
    let mark = u64::from(cfg.wakeup_bytes);
    let waiting = TRACE_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if waiting >= mark && waiting < mark + RECORD_MAX {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// When a journey of this trace session last started or hopped, 0 before
/// the first: none is live [`JOURNEY_IDLE_NS`] after that.
#[inline(always)]
fn last_journey_stamp() -> u64 {
    array_value(TRACE_LIVE.get_ptr(0)).map_or(0, |&started| started)
}

/// Whether this trace session has started any journey yet (no clock read).
#[inline(always)]
pub fn journeys_started() -> bool {
    last_journey_stamp() != 0
}

/// Notes that a journey started or hopped at `now`. The stamp is shared by
/// all CPUs: written at most once a millisecond, so that tracing every
/// packet does not bounce its cache line between them.
#[inline(always)]
fn note_journey_active(now: u64) {
    const COARSE_NS: u64 = 1_000_000;
    // SAFETY: a racing CPU's stamp is as good as ours (last writer wins).
    if let Some(started) = unsafe { array_value_mut(TRACE_LIVE.get_ptr_mut(0)) }
        && now.wrapping_sub(*started) >= COARSE_NS
    {
        *started = now;
    }
}

/// Whether `skb->cloned` is set (a clone of it exists). `bit` is the
/// field's bit offset from BTF; 0: unknown, and the answer is no.
#[inline(always)]
pub fn cloned(skb: u64, bit: u32) -> bool {
    if bit == 0 || bit >= 8 * 1024 {
        return false;
    }
    let at = (skb + u64::from(bit / 8)) as *const u8;
    // SAFETY: a kernel read the helper checks; a failure reads as "not cloned".
    let byte = unsafe { bpf_probe_read_kernel(at) }.unwrap_or(0);
    byte & (1 << (bit % 8)) != 0
}

/// Reads a field of [`TRACE_FILTER`] as the kernel sees it (volatile:
/// the compiler must not fold the all-zero initial value).
#[inline(always)]
fn constant<T: Copy>(field: *const T) -> T {
    // SAFETY: a field of a static, read whole.
    unsafe { core::ptr::read_volatile(field) }
}

/// Whether the filter holds for `tuple` seen on `ifindex`.
#[inline(always)]
fn filter_matches(ifindex: u32, tuple: &Tuple) -> bool {
    global::returned(netlab_trace_filter(ifindex, tuple)) != 0
}

global::function! {
    /// The filter as a global BPF function (see `conntrack`'s
    /// documentation): the verifier walks its branches once, and the hop
    /// that asks learns only the answer. Inlined, each way through a
    /// four-clause filter left something else known about the tuple, and
    /// every one of them walked the rest of the hop again (92,000 verified
    /// instructions for `trace_hop`).
    fn netlab_trace_filter(ifindex: u32, tuple: *const Tuple) -> u32 {
        // SAFETY: the verifier checks the pointer's memory; null is refused here.
        let Some(tuple) = (unsafe { tuple.as_ref() }) else {
            return 0;
        };
        u32::from(filter_holds(ifindex, tuple))
    }
}

/// The filter: any clause whose literals all hold. No clause: all packets.
/// Every bound and literal below is a constant to the verifier (see
/// [`TRACE_FILTER`]).
#[inline(always)]
fn filter_holds(ifindex: u32, tuple: &Tuple) -> bool {
    let filter = &raw const TRACE_FILTER;
    // SAFETY: field projections of a static (no reference is made).
    let clauses = constant(unsafe { &raw const (*filter).len });
    if clauses == 0 {
        return true;
    }
    for c in 0..MAX_CLAUSES {
        if c as u32 >= clauses {
            break;
        }
        // SAFETY: as above; `c` is in bounds.
        let clause = unsafe { &raw const (*filter).clauses[c] };
        // SAFETY: as above.
        let literals = constant(unsafe { &raw const (*clause).len });
        let mut all = true;
        for l in 0..MAX_LITERALS {
            if l as u32 >= literals {
                break;
            }
            // SAFETY: as above; `l` is in bounds.
            let literal = constant(unsafe { &raw const (*clause).literals[l] });
            if !literal_holds(&literal, ifindex, tuple) {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
    }
    false
}

#[inline(always)]
fn literal_holds(literal: &Literal, ifindex: u32, t: &Tuple) -> bool {
    let ip = t.is_ipv4() || t.is_ipv6();
    let (value, mask) = (&literal.value, &literal.mask);
    let holds = match literal.kind {
        LIT_HOST => {
            t.is_ipv4()
                && on_side(
                    literal.side,
                    t.saddr[0] & mask[0] == value[0],
                    t.daddr[0] & mask[0] == value[0],
                )
        }
        LIT_HOST6 => {
            let within = |addr: &[u32; 4]| {
                (addr[0] & mask[0]) ^ value[0]
                    | (addr[1] & mask[1]) ^ value[1]
                    | (addr[2] & mask[2]) ^ value[2]
                    | (addr[3] & mask[3]) ^ value[3]
                    == 0
            };
            t.is_ipv6() && on_side(literal.side, within(&t.saddr), within(&t.daddr))
        }
        LIT_PORT => {
            let in_range = |port: u16| {
                let port = u16::from_be(port);
                port >= literal.port_min && port <= literal.port_max
            };
            t.has_l4()
                && (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP)
                && on_side(literal.side, in_range(t.sport), in_range(t.dport))
        }
        LIT_PROTO => ip && u32::from(t.proto) == value[0],
        LIT_FAMILY => match value[0] {
            4 => t.is_ipv4(),
            _ => t.is_ipv6(),
        },
        LIT_IFACE => ifindex == value[0],
        // SAFETY: as in `record`.
        LIT_NETNS => {
            unsafe { ctx::value(TRACE_IFACES.get_ptr(ifindex)) }.is_some_and(|p| *p == value[0])
        }
        _ => false,
    };
    holds != (literal.negate != 0)
}

#[inline(always)]
fn on_side(side: u8, src: bool, dst: bool) -> bool {
    match side {
        SIDE_SRC => src,
        SIDE_DST => dst,
        _ => src || dst,
    }
}
