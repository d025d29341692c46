//! The source port search of source NAT (masquerade, hairpin, and
//! netfilter's implicit source NAT), as nf_nat's
//! `nf_nat_l4proto_unique_tuple` does it: a free reply tuple, probed in
//! conntrack, for either family ([`Family`]). One global function per
//! family, verified once.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
};
use netlab_common::nat::{Addr, Stat};

use crate::{
    conntrack::{self, Family, Key, Rw, V4, V6},
    global,
    lab::Lab,
};

/// How many ports a new flow's search probes, round by round, as nf_nat's
/// `nf_nat_l4proto_unique_tuple` bounds its own (128, then 64, 32 and 16
/// from random offsets): 128 from the preferred start, then 112 from a
/// random one, so that a SYN retransmit (which searches again) does not
/// probe only the same taken ports, and no packet probes more than 240
/// (every probe is a lookup, in softirq). Two rounds, not four: each is a
/// `bpf_loop` call site whose callback the verifier walks again (measured:
/// four rounds cost the full programs 5,000-7,000 verified instructions
/// more than one).
const PORT_ROUNDS: [u32; 2] = [128, 112];

/// How many of a round's last probes also take a tuple held by a
/// source-NATed TCP flow in TIME_WAIT or closed
/// ([`conntrack::key_free_or_closing`]), as
/// nf_nat's `nf_nat_used_tuple_harder` does in a round's last
/// `NF_NAT_HARDER_THRESH` (32) attempts. Without it, a masquerade range
/// full of TIME_WAIT flows (120 s each) fails new SYNs
/// (`port_search_limit`) that netfilter lets through.
const HARDER_PROBES: u32 = 32;

/// The port search's state, shared with its `bpf_loop` callback. Kept
/// small: the callback's frame and this add to the NAT program's stack.
#[repr(C)]
struct Search<F: Family> {
    /// The key replies would arrive with; its `dport` is the candidate.
    reply: Key<F>,
    min: u32,
    span: u32,
    start: u32,
    found: u32,
    /// The probe index from which this round takes closing flows' tuples
    /// ([`HARDER_PROBES`]).
    harder_from: u32,
}

/// A family whose flows get source ports: its instance of the search's
/// global function.
pub trait Ports: Family {
    fn search(range: u32, key: &Key<Self>, out: &mut Rw<Self>) -> u32;
}

impl Ports for V4 {
    #[inline(always)]
    fn search(range: u32, key: &Key<Self>, out: &mut Rw<Self>) -> u32 {
        netlab_nat_allocate_port(range, key, out)
    }
}

impl Ports for V6 {
    #[inline(always)]
    fn search(range: u32, key: &Key<Self>, out: &mut Rw<Self>) -> u32 {
        netlab_nat6_allocate_port(range, key, out)
    }
}

/// Picks the SNAT source port (ICMP: query identifier) for `out`: the
/// original one when it is inside the configured range and free, else the
/// next free one after a hash-chosen start, in the rounds of
/// [`PORT_ROUNDS`]. Fails with `port_exhausted` when the probes covered
/// the range, `port_search_limit` when the rounds ended first.
#[inline(always)]
pub fn allocate_port<F: Ports>(lab: &Lab, key: &Key<F>, out: &mut Rw<F>) -> Result<(), Stat> {
    let cfg = lab.cfg;
    let range = u32::from(cfg.port_min) << 16 | u32::from(cfg.port_max);
    match PortCode::decode(F::search(range, key, out)) {
        Some(PortCode::Found) => Ok(()),
        Some(PortCode::Exhausted) => Err(Stat::PortExhausted),
        _ => Err(Stat::PortSearchLimit),
    }
}

global::codes! {
    /// The search functions' answers.
    enum PortCode { Found = 0, Exhausted = 1, SearchLimit = 2 }
}

global::function! {
    /// [`allocate_port`] for IPv4, verified once: its search (a `bpf_loop`
    /// per round) is reached from several kinds of new flow, and inlined,
    /// the verifier walked it again for each (measured: DNAT's port remap
    /// made `nat_ingress_full` 13,000 verified instructions longer).
    /// `range`: the configured minimum port in the high 16 bits, the
    /// maximum in the low ones.
    fn netlab_nat_allocate_port(range: u32, key: *const Key<V4>, out: *mut Rw<V4>) -> u32 {
        // The `bpf_loop` callback: not generic, and named apart from
        // IPv6's, so that it has BTF function info of its own (aya links
        // subprograms by name).
        extern "C" fn netlab_try_port(i: u64, ctx: *mut c_void) -> i64 {
            try_port_in::<V4>(i, ctx)
        }
        allocate_in::<V4>(range, key, out, netlab_try_port as *mut c_void)
    }
}

global::function! {
    /// [`allocate_port`] for IPv6, as `netlab_nat_allocate_port`.
    fn netlab_nat6_allocate_port(range: u32, key: *const Key<V6>, out: *mut Rw<V6>) -> u32 {
        extern "C" fn netlab_try_port6(i: u64, ctx: *mut c_void) -> i64 {
            try_port_in::<V6>(i, ctx)
        }
        allocate_in::<V6>(range, key, out, netlab_try_port6 as *mut c_void)
    }
}

/// The body of the search functions; `try_port` their callback.
#[inline(always)]
fn allocate_in<F: Family>(
    range: u32,
    key: *const Key<F>,
    out: *mut Rw<F>,
    try_port: *mut c_void,
) -> u32 {
    // SAFETY: the verifier checks both pointers' memory; null is refused here.
    let (Some(key), Some(out)) = (unsafe { key.as_ref() }, unsafe { out.as_mut() }) else {
        return PortCode::SearchLimit as u32;
    };
    (match search_port::<F>(range, key, out, try_port) {
        Ok(()) => PortCode::Found,
        Err(Stat::PortExhausted) => PortCode::Exhausted,
        Err(_) => PortCode::SearchLimit,
    }) as u32
}

#[inline(always)]
fn search_port<F: Family>(
    range: u32,
    key: &Key<F>,
    out: &mut Rw<F>,
    try_port: *mut c_void,
) -> Result<(), Stat> {
    let (port_min, port_max) = (range >> 16, range & 0xffff);
    let (min, max) = if port_min != 0 && port_max >= port_min {
        (port_min, port_max)
    } else {
        (32768, 60999)
    };
    // Never zero (max >= min above); `max(1)` lets the compiler see it, so
    // no divide-by-zero panic path reaches the verifier.
    let span = (max - min + 1).max(1);
    let original = u32::from(u16::from_be(key.sport));
    let start = if original >= min && original <= max {
        original - min
    } else {
        let mix = (key.saddr.folded()
            ^ key.daddr.folded().rotate_left(13)
            ^ (u32::from(key.sport) << 16)
            ^ u32::from(key.dport))
        .wrapping_mul(0x9e37_79b1);
        (mix >> 8) % span
    };
    let mut search = Search::<F> {
        reply: out.reply_key(key.proto),
        min,
        span,
        start,
        found: 0,
        harder_from: 0,
    };
    for (round, probes) in PORT_ROUNDS.iter().enumerate() {
        if round > 0 {
            // nf_nat stops where a round would cover the range again.
            if span <= PORT_ROUNDS[0] {
                break;
            }
            // SAFETY: plain helper.
            search.start = unsafe { bpf_get_prandom_u32() } % span;
        }
        let probes = span.min(*probes);
        search.harder_from = probes.saturating_sub(HARDER_PROBES);
        // SAFETY: the callback is a static function of the expected type
        // and `search` outlives the call.
        unsafe {
            bpf_loop(probes, try_port, (&raw mut search).cast(), 0);
        }
        if search.found != 0 {
            out.sport = search.reply.dport;
            return Ok(());
        }
    }
    Err(if span > PORT_ROUNDS[0] {
        Stat::PortSearchLimit
    } else {
        Stat::PortExhausted
    })
}

/// The body of the `bpf_loop` callback: whether candidate `i` of the
/// search is free; 1 stops.
#[inline(always)]
fn try_port_in<F: Family>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the Search `search_port` passed.
    let search = unsafe { &mut *ctx.cast::<Search<F>>() };
    let offset = (u64::from(search.start) + i) % u64::from(search.span.max(1));
    search.reply.dport = ((search.min + offset as u32) as u16).to_be();
    let free = if i >= u64::from(search.harder_from) {
        conntrack::key_free_or_closing::<F>(&search.reply)
    } else {
        conntrack::key_free::<F>(&search.reply)
    };
    if free {
        search.found = 1;
        return 1;
    }
    0
}
