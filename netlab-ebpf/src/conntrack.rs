//! netlab's own conntrack, as nf_conntrack keeps it: a flow is two halves,
//! one keyed by each direction's tuple (`netlab_common::nat::CtEntry`),
//! always in the same one of two tables:
//!
//! - [`NEW`] (an LRU hash) holds flows not assured yet: a TCP handshake
//!   not complete or not replied, UDP before it is a stream, ICMP, a flow
//!   whose first packet has not been confirmed. New flows evict each other
//!   here, so a flood of them cannot push out an established connection,
//!   as nf_conntrack's early drop only takes unassured flows.
//! - [`ASSURED`] (a plain hash, not preallocated) holds assured flows: a
//!   TCP connection established with a reply, a UDP stream. Nothing evicts
//!   them; both halves arrive together (promotion) and leave together (the
//!   flow ends, expires, or a sweep of dead flows takes it when the table
//!   is full).
//!
//! **The fast path.** Each half keeps its own direction's counters and
//! last-seen time, and a copy of the flow's state, flags and timeout, so a
//! packet of an established flow costs one lookup and writes only its own
//! half ([`steady`]). Whatever can change the flow (a TCP SYN, FIN or RST,
//! the first reply, UDP becoming a stream, the once-a-second refresh of
//! the last-seen time) takes the slow path, which looks the other half up,
//! checks that it is this flow's (`pair`), and writes both ([`advance`]).
//!
//! **Pairs.** The LRU can evict one half of a new flow: the other half
//! finds it missing at its next slow path (at most a second later) and
//! restores it, as Cilium's SNAT restores a missing reverse entry; if its
//! key belongs to another flow by then, the orphan is removed and its
//! packet evaluated as new. Halves are inserted reply first, both with
//! `BPF_NOEXIST`, and a half whose peer is missing is left alone while it
//! is younger than [`PENDING_NS`] (its creator is inserting the peer), so
//! two CPUs opening one flow never remove each other's halves.
//!
//! **Time** is `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, which
//! userspace reads too): the flow timeouts are seconds, and the precise
//! clock (`read_tsc` in a VM) cost every packet.
//!
//! The operations are global BPF functions behind inline wrappers (see
//! [`crate::global`]): the verifier checks each once, on its own, instead
//! of on every path of the NAT programs that reaches it.
//!
//! **Families.** IPv4 and IPv6 flows live in tables of their own (an IPv6
//! key is 40 bytes, an IPv4 one 16: one table would make every IPv4
//! lookup hash and compare the longer key), and everything here is
//! written once, generic over a [`Family`] ([`V4`], [`V6`]), which names
//! its tables; each global function has one instance per family.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    cty::c_void,
    helpers::{bpf_for_each_map_elem, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use netlab_common::nat::{
    Addr, CT_ASSURED, CT_CONFIRMED, CT_FIN_ORIGINAL, CT_FIN_REPLY, CT_PICKED_UP, CT_REPLIED,
    CT_SERVICE, CtEntry, CtEntry6, CtEntryOf, DIR_ORIGINAL, DIR_REPLY, FlowKey, FlowKey6,
    FlowKeyOf, IPPROTO_TCP, IPPROTO_UDP, NAT_SNAT, Stat, TcpState, timeout_s, timeouts,
};

use crate::{
    global, lab,
    pkt::{
        ctx::{array_value, array_value_mut, value_mut},
        l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    },
    stats,
    verdict::RewriteOf,
};

/// Assured flows. Sized by userspace (`nat.conntrack_size`) at load.
#[map(name = "CONNTRACK")]
static ASSURED: HashMap<FlowKey, CtEntry> = HashMap::pinned(65536, 0);

/// Flows not assured yet. Sized as [`ASSURED`].
#[map(name = "CONNTRACK_NEW")]
static NEW: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(65536, 0);

/// When [`ASSURED`] was last found full, and whether a sweep is due.
#[map(name = "CT_SWEPT")]
static SWEPT: Array<SweepState> = Array::pinned(1, 0);

/// Where a new or restored half is built: a `CtEntry` is 80 bytes, more
/// than the BPF stack can spare beside the rest of the NAT path.
#[map]
static CT_SCRATCH: PerCpuArray<[CtEntry; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The IPv6 tables, as the IPv4 ones above (sized alike at load).
#[map(name = "CONNTRACK6")]
static ASSURED6: HashMap<FlowKey6, CtEntry6> = HashMap::pinned(65536, 0);

#[map(name = "CONNTRACK6_NEW")]
static NEW6: LruHashMap<FlowKey6, CtEntry6> = LruHashMap::pinned(65536, 0);

#[map(name = "CT6_SWEPT")]
static SWEPT6: Array<SweepState> = Array::pinned(1, 0);

#[map]
static CT6_SCRATCH: PerCpuArray<[CtEntry6; 2]> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct SweepState {
    last_ns: u64,
    wanted: u64,
}

/// A flow's key, half and rewrite in family `F`.
pub type Key<F> = FlowKeyOf<<F as Family>::Addr>;
pub type Entry<F> = CtEntryOf<<F as Family>::Addr>;
pub type Rw<F> = RewriteOf<<F as Family>::Addr>;

/// An address family's conntrack: its tables, and its instances of the
/// global functions (which cannot be generic: [`family!`] writes them).
pub trait Family: Sized + 'static {
    type Addr: Addr;
    fn assured() -> &'static HashMap<Key<Self>, Entry<Self>>;
    fn new_flows() -> &'static LruHashMap<Key<Self>, Entry<Self>>;
    fn swept() -> &'static Array<SweepState>;
    fn scratch() -> &'static PerCpuArray<[Entry<Self>; 2]>;
    fn track(key: &Key<Self>, hook: u32, tcp_flags: u32, len: u32, out: &mut Rw<Self>) -> u32;
    fn peek(key: &Key<Self>, hook: u32, check_alive: u32, out: &mut Rw<Self>) -> u32;
    fn key_free(key: &Key<Self>, take_closing: u32) -> u32;
    fn confirm(reply_key: &Key<Self>) -> u32;
    fn insert(key: &Key<Self>, flow: &mut Opened<Self>) -> u32;
    fn sweep(now: u64) -> u32;
}

/// IPv4 flows.
#[derive(Clone, Copy)]
pub enum V4 {}
/// IPv6 flows.
#[derive(Clone, Copy)]
pub enum V6 {}

/// A family's tables and global functions.
macro_rules! family {
    (
        $family:ty, $addr:ty,
        tables: [$assured:ident, $new:ident, $swept:ident, $scratch:ident],
        functions: [$track:ident, $peek:ident, $key_free:ident, $confirm:ident, $insert:ident, $sweep:ident $(,)?],
        sweep_callback: $sweep_one:ident $(,)?
    ) => {
        impl Family for $family {
            type Addr = $addr;

            #[inline(always)]
            fn assured() -> &'static HashMap<Key<Self>, Entry<Self>> {
                &$assured
            }

            #[inline(always)]
            fn new_flows() -> &'static LruHashMap<Key<Self>, Entry<Self>> {
                &$new
            }

            #[inline(always)]
            fn swept() -> &'static Array<SweepState> {
                &$swept
            }

            #[inline(always)]
            fn scratch() -> &'static PerCpuArray<[Entry<Self>; 2]> {
                &$scratch
            }

            #[inline(always)]
            fn track(key: &Key<Self>, hook: u32, tcp_flags: u32, len: u32, out: &mut Rw<Self>) -> u32 {
                $track(key, hook, tcp_flags, len, out)
            }

            #[inline(always)]
            fn peek(key: &Key<Self>, hook: u32, check_alive: u32, out: &mut Rw<Self>) -> u32 {
                $peek(key, hook, check_alive, out)
            }

            #[inline(always)]
            fn key_free(key: &Key<Self>, take_closing: u32) -> u32 {
                $key_free(key, take_closing)
            }

            #[inline(always)]
            fn confirm(reply_key: &Key<Self>) -> u32 {
                $confirm(reply_key)
            }

            #[inline(always)]
            fn insert(key: &Key<Self>, flow: &mut Opened<Self>) -> u32 {
                $insert(key, flow)
            }

            #[inline(always)]
            fn sweep(now: u64) -> u32 {
                $sweep(now)
            }
        }

        global::function! {
            /// [`track`], verified once per family.
            fn $track(key: *const Key<$family>, hook: u32, tcp_flags: u32, len: u32, out: *mut Rw<$family>) -> u32 {
                // SAFETY: the verifier checks the pointers' memory; null is refused.
                match (unsafe { key.as_ref() }, unsafe { out.as_mut() }) {
                    (Some(key), Some(out)) => track_in::<$family>(key, hook, tcp_flags, len, out),
                    _ => TrackCode::None as u32,
                }
            }
        }

        global::function! {
            /// [`peek`], verified once per family.
            fn $peek(key: *const Key<$family>, hook: u32, check_alive: u32, out: *mut Rw<$family>) -> u32 {
                // SAFETY: as in the track function.
                match (unsafe { key.as_ref() }, unsafe { out.as_mut() }) {
                    (Some(key), Some(out)) => peek_in::<$family>(key, hook, check_alive, out),
                    _ => 0,
                }
            }
        }

        global::function! {
            /// [`key_free`], verified once per family. It runs in the port
            /// search's callback too, whose stack frame adds to the NAT
            /// program's: references only.
            fn $key_free(key: *const Key<$family>, take_closing: u32) -> u32 {
                // SAFETY: as in the track function.
                match unsafe { key.as_ref() } {
                    Some(key) => key_free_in::<$family>(key, take_closing != 0),
                    None => 0,
                }
            }
        }

        global::function! {
            /// [`confirm`], verified once per family.
            fn $confirm(reply_key: *const Key<$family>) -> u32 {
                // SAFETY: as in the track function.
                match unsafe { reply_key.as_ref() } {
                    Some(reply_key) => confirm_in::<$family>(reply_key),
                    None => 0,
                }
            }
        }

        global::function! {
            /// [`insert_flow`], verified once per family.
            fn $insert(key: *const Key<$family>, flow: *mut Opened<$family>) -> u32 {
                // SAFETY: as in the track function; `flow` is the caller's,
                // on its stack, and nothing else refers to it during the call.
                match (unsafe { key.as_ref() }, unsafe { flow.as_mut() }) {
                    (Some(key), Some(flow)) => insert_in::<$family>(key, flow),
                    _ => InsertCode::Failed as u32,
                }
            }
        }

        global::function! {
            /// Removes the dead flows of the family's assured table (idle
            /// past their timeout, or TCP closed or in TIME_WAIT, which
            /// nf_conntrack's early drop takes too). Nonzero when it
            /// removed any. Verified on its own: the callback's paths
            /// would multiply the caller's.
            fn $sweep(now: u64) -> u32 {
                // The callback of `bpf_for_each_map_elem`: not generic, and
                // named apart from the other family's, so that it has BTF
                // function info of its own (aya links subprograms by name).
                extern "C" fn $sweep_one(
                    _map: *mut c_void,
                    key: *const Key<$family>,
                    half: *const Entry<$family>,
                    state: *mut c_void,
                ) -> i64 {
                    sweep_one_in::<$family>(key, half, state)
                }
                sweep_in::<$family>(now, $sweep_one as *mut c_void)
            }
        }
    };
}

family!(
    V4, u32,
    tables: [ASSURED, NEW, SWEPT, CT_SCRATCH],
    functions: [
        netlab_ct_track,
        netlab_ct_peek,
        netlab_ct_key_free,
        netlab_ct_confirm,
        netlab_ct_insert,
        netlab_ct_sweep,
    ],
    sweep_callback: netlab_ct_sweep_one,
);

family!(
    V6, [u32; 4],
    tables: [ASSURED6, NEW6, SWEPT6, CT6_SCRATCH],
    functions: [
        netlab_ct6_track,
        netlab_ct6_peek,
        netlab_ct6_key_free,
        netlab_ct6_confirm,
        netlab_ct6_insert,
        netlab_ct6_sweep,
    ],
    sweep_callback: netlab_ct6_sweep_one,
);

/// How stale a half's `last_seen_ns` may get before a packet refreshes it
/// (the slow path): far below the shortest confirmed timeout (10 s).
const REFRESH_NS: u64 = 1_000_000_000;
/// A half younger than this whose peer is missing is being inserted (its
/// creator inserts the peer right after it): nobody else removes it.
/// Several ticks of the coarse clock.
const PENDING_NS: u64 = 50_000_000;
/// How often a full [`ASSURED`] may be swept.
const SWEEP_EVERY_NS: u64 = 1_000_000_000;
const SEC_NS: u64 = 1_000_000_000;

/// The conntrack clock (see the module's documentation).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Which table a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Assured,
    New,
}

impl Table {
    #[inline(always)]
    fn get<F: Family>(self, key: &Key<F>) -> Option<&'static mut Entry<F>> {
        let ptr = match self {
            Table::Assured => F::assured().get_ptr_mut(key),
            Table::New => F::new_flows().get_ptr_mut(key),
        };
        // SAFETY: entries are read and written as `value_mut` allows: a
        // racing delete makes one packet's counters or state stale.
        unsafe { value_mut(ptr) }
    }

    #[inline(always)]
    fn insert<F: Family>(self, key: &Key<F>, entry: &Entry<F>) -> bool {
        let flags = u64::from(BPF_NOEXIST);
        match self {
            Table::Assured => F::assured().insert(key, entry, flags).is_ok(),
            Table::New => F::new_flows().insert(key, entry, flags).is_ok(),
        }
    }

    #[inline(always)]
    fn remove<F: Family>(self, key: &Key<F>) {
        let _ = match self {
            Table::Assured => F::assured().remove(key),
            Table::New => F::new_flows().remove(key),
        };
    }

    /// The other table.
    #[inline(always)]
    fn other(self) -> Table {
        match self {
            Table::Assured => Table::New,
            Table::New => Table::Assured,
        }
    }
}

/// The other half of the flow whose half `half` sits at `key`, wherever it
/// is: the same table, or the other one while a promotion moves the flow.
/// Only a half that names `key` as its peer and carries the same `pair`
/// is the flow's own.
#[inline(always)]
fn find_peer<F: Family>(
    table: Table,
    half: &Entry<F>,
    key: &Key<F>,
) -> Option<&'static mut Entry<F>> {
    for t in [table, table.other()] {
        if let Some(peer) = t.get::<F>(&half.peer)
            && peer.pair == half.pair
            && peer.peer == *key
        {
            return Some(peer);
        }
    }
    None
}

/// Removes the flow whose half `half` sits at `key` in `table`: that half,
/// and its peer only where the peer is still this flow's (another flow may
/// hold its key by now: nobody removes a half it does not own).
#[inline(always)]
fn remove_flow<F: Family>(table: Table, key: &Key<F>, half: &Entry<F>) {
    let (peer_key, pair) = (half.peer, half.pair);
    table.remove::<F>(key);
    for t in [Table::Assured, Table::New] {
        if t.get::<F>(&peer_key)
            .is_some_and(|peer| peer.pair == pair && peer.peer == *key)
        {
            t.remove::<F>(&peer_key);
        }
    }
}

/// A flow's half for one key, and where it lives.
struct Found<F: Family> {
    entry: &'static mut Entry<F>,
    table: Table,
}

/// The half at `key`, assured flows first (an established flow's packet
/// finds its half in one lookup).
#[inline(always)]
fn lookup<F: Family>(key: &Key<F>) -> Option<Found<F>> {
    if let Some(entry) = Table::Assured.get::<F>(key) {
        return Some(Found {
            entry,
            table: Table::Assured,
        });
    }
    Table::New.get::<F>(key).map(|entry| Found {
        entry,
        table: Table::New,
    })
}

/// What the fast path ([`crate::fast`], [`crate::fast6`]) finds for a
/// packet's key at a hook.
pub enum Fast<F: Family = V4> {
    /// No flow has the key.
    Miss,
    /// A flow this packet may change, or another hook's: the full path's.
    Slow,
    /// An established flow's half, which this hook applies and this packet
    /// leaves as it is: [`fast_count`] it once the packet is on its way.
    Hit(&'static mut Entry<F>),
}

/// The fast path's lookup: one (two for a flow not assured yet), no call,
/// nothing written. Whatever may change the flow is the full path's.
#[inline(always)]
pub fn fast_lookup<F: Family>(key: &Key<F>, hook: u8, tcp_flags: u8) -> Fast<F> {
    let Some(found) = lookup::<F>(key) else {
        return Fast::Miss;
    };
    let entry = found.entry;
    if entry.apply != hook
        || !steady(entry, key.proto, tcp_flags, now())
        || unpublished(entry, key.proto)
    {
        return Fast::Slow;
    }
    // The new flows' table is an LRU, which evicts one half at a time: a
    // half whose peer is gone goes to the full path at once, which
    // restores the peer or removes the orphan before its reply key can
    // be handed to another flow. Assured flows are never evicted.
    if found.table == Table::New && find_peer::<F>(found.table, entry, key).is_none() {
        return Fast::Slow;
    }
    Fast::Hit(entry)
}

/// Counts a packet of `len` bytes on the half [`fast_lookup`] found.
#[inline(always)]
pub fn fast_count<A>(half: &mut CtEntryOf<A>, len: u32) {
    half.packets += 1;
    half.bytes += u64::from(len);
}

/// What a packet's flow says at a hook ([`track`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// No live flow has this key: the packet may open one.
    None,
    /// Another hook translates this direction (masquerade waits for egress).
    OtherHook,
    /// Rewrite the packet as [`Tracked::rewrite`] says.
    Rewrite,
}

/// [`track`]'s answer. Not an enum with a payload: LLVM moved the payload
/// of such an answer (undefined in its other variants) from a register a
/// call had clobbered, which the verifier refuses (`!read_ok`); here every
/// byte is defined on every path.
#[derive(Clone, Copy)]
pub struct Tracked<F: Family> {
    pub known: Known,
    /// Meaningful when `known` is [`Known::Rewrite`].
    pub rewrite: Rw<F>,
}

global::codes! {
    /// [`track`]'s answers.
    enum TrackCode { None = 0, OtherHook = 1, Rewrite = 2 }
}

/// Looks up the flow of a packet with `key` seen at `hook` (`APPLY_*`) and,
/// when this hook translates it, updates the flow with the packet.
#[inline(always)]
pub fn track<F: Family>(key: &Key<F>, hook: u8, tcp_flags: u8, len: u32) -> Tracked<F> {
    // Initialized from the key, not zeroed: a constant zero becomes a call
    // to a byte-by-byte memset in the BPF build, on every packet. (Nor may
    // it stay uninitialized: LLVM then moves its undefined bytes into the
    // answer's other variants, which the verifier refuses.)
    let mut out = Rw::<F>::identity(key);
    let code = F::track(key, u32::from(hook), u32::from(tcp_flags), len, &mut out);
    let known = match TrackCode::decode(code) {
        Some(TrackCode::OtherHook) => Known::OtherHook,
        Some(TrackCode::Rewrite) => Known::Rewrite,
        _ => Known::None,
    };
    Tracked {
        known,
        rewrite: out,
    }
}

/// [`track`], with the rewrite written to `out` (a map value's, where a
/// family's tuples are too large for the caller's stack).
#[inline(always)]
pub fn track_into<F: Family>(
    key: &Key<F>,
    hook: u8,
    tcp_flags: u8,
    len: u32,
    out: &mut Rw<F>,
) -> Known {
    *out = Rw::<F>::identity(key);
    match TrackCode::decode(F::track(
        key,
        u32::from(hook),
        u32::from(tcp_flags),
        len,
        out,
    )) {
        Some(TrackCode::OtherHook) => Known::OtherHook,
        Some(TrackCode::Rewrite) => Known::Rewrite,
        _ => Known::None,
    }
}

/// The body of the family's track function.
#[inline(always)]
fn track_in<F: Family>(key: &Key<F>, hook: u32, tcp_flags: u32, len: u32, out: &mut Rw<F>) -> u32 {
    let Some(found) = lookup::<F>(key) else {
        return TrackCode::None as u32;
    };
    if u32::from(found.entry.apply) != hook {
        return TrackCode::OtherHook as u32;
    }
    let now = now();
    let tcp_flags = tcp_flags as u8;
    if steady(found.entry, key.proto, tcp_flags, now) && !unpublished(found.entry, key.proto) {
        found.entry.packets += 1;
        found.entry.bytes += u64::from(len);
        *out = Rw::<F>::of(found.entry);
        return TrackCode::Rewrite as u32;
    }
    match advance(found, key, tcp_flags, len, now) {
        Some(rewrite) => {
            *out = rewrite;
            TrackCode::Rewrite as u32
        }
        None => TrackCode::None as u32,
    }
}

/// Whether the flow of `half` was opened by a published port that has
/// been removed since, or sent to a Service backend removed since (its
/// epoch moved on): the flow is dead, as `conntrack -D` makes it for
/// iptables.
#[inline(always)]
fn unpublished<A>(half: &CtEntryOf<A>, proto: u8) -> bool {
    if half.published == 0 {
        return false;
    }
    let epoch = if half.flags & CT_SERVICE != 0 {
        lab::backend_epoch(half.published)
    } else {
        lab::publish_epoch(proto, half.published)
    };
    epoch != half.epoch
}

/// Whether a packet with `tcp_flags` changes nothing of the flow but its
/// own half's counters: the fast path. The slow path takes a packet that
/// may change the flow's state or flags, and one whose half was last
/// refreshed a second ago or more (it refreshes it, checks the peer, and
/// times the flow out).
#[inline(always)]
fn steady<A>(half: &CtEntryOf<A>, proto: u8, tcp_flags: u8, now: u64) -> bool {
    if now.wrapping_sub(half.last_seen_ns) >= REFRESH_NS || half.flags & CT_CONFIRMED == 0 {
        return false;
    }
    let replied = half.flags & CT_REPLIED != 0;
    let original = half.direction == DIR_ORIGINAL;
    let assured = half.flags & CT_ASSURED != 0;
    match proto {
        IPPROTO_TCP => {
            tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
                && half.tcp_state == TcpState::Established as u8
                && if replied { assured } else { original }
        }
        IPPROTO_UDP => {
            if replied {
                assured || now.wrapping_sub(half.created_ns) < stream_after_ns()
            } else {
                original
            }
        }
        // ICMP: nothing changes once replied (nf_conntrack never assures it).
        _ => replied || original,
    }
}

#[inline(always)]
fn stream_after_ns() -> u64 {
    u64::from(timeouts::UDP_STREAM_AFTER) * SEC_NS
}

/// The slow path: updates the flow `found` (the half at `key`) with a
/// packet. The rewrite for the packet, or `None` when the flow is gone
/// (expired, reopened by a SYN, or a half without its peer): the packet is
/// then evaluated as a new flow's.
#[inline(always)]
fn advance<F: Family>(
    found: Found<F>,
    key: &Key<F>,
    tcp_flags: u8,
    len: u32,
    now: u64,
) -> Option<Rw<F>> {
    let Found { entry, table } = found;
    if unpublished(entry, key.proto) {
        stats::count(Stat::CtUnpublished);
        remove_flow::<F>(table, key, entry);
        return None;
    }
    let peer = peer_of::<F>(table, entry, key, now)?;
    let peer_key = entry.peer;
    if idle(entry, peer, now) {
        stats::count(Stat::CtExpired);
        remove_flow::<F>(table, key, entry);
        return None;
    }
    let direction = entry.direction;
    let rewrite = Rw::<F>::of(entry);
    if key.proto == IPPROTO_TCP {
        if reopens(entry.tcp_state, direction, tcp_flags) {
            // nf_conntrack: a SYN on a closed connection is a new
            // connection, evaluated afresh (a published port may be gone).
            stats::count(Stat::CtReopened);
            remove_flow::<F>(table, key, entry);
            return None;
        }
        if direction != DIR_ORIGINAL && entry.flags & CT_REPLIED == 0 && tcp_flags & TCP_RST != 0 {
            // nf_conntrack (tcp_packet): "if only reply is a RST, we can
            // consider ourselves not to have an established connection
            // [...] delete the conntrack immediately". The RST itself is
            // translated.
            stats::count(Stat::CtRefused);
            remove_flow::<F>(table, key, entry);
            return Some(rewrite);
        }
    }
    entry.last_seen_ns = now;
    entry.packets += 1;
    entry.bytes += u64::from(len);
    let mut flags = entry.flags;
    if direction != DIR_ORIGINAL {
        flags |= CT_REPLIED;
    }
    let mut state = entry.tcp_state;
    if key.proto == IPPROTO_TCP {
        state = next_tcp_state(state, &mut flags, direction, tcp_flags);
    }
    let newly_assured = flags & CT_ASSURED == 0
        && earns_assurance(key.proto, state, flags, now.wrapping_sub(entry.created_ns));
    if newly_assured {
        flags |= CT_ASSURED;
    }
    set_state(entry, peer, state, flags, key.proto);
    if newly_assured {
        if table == Table::New {
            promote::<F>(key, &peer_key, now);
        } else {
            stats::count(Stat::CtAssured);
        }
    }
    Some(rewrite)
}

/// Whether the flow of halves `a` and `b` is idle past its timeout.
#[inline(always)]
fn idle<A>(a: &CtEntryOf<A>, b: &CtEntryOf<A>, now: u64) -> bool {
    let last = a.last_seen_ns.max(b.last_seen_ns);
    now.saturating_sub(last) > u64::from(a.timeout_s) * SEC_NS
}

/// Writes the flow's state, flags and timeout into both halves (only
/// what changed: the halves are on two CPUs' paths).
#[inline(always)]
fn set_state<A>(a: &mut CtEntryOf<A>, b: &mut CtEntryOf<A>, state: u8, flags: u8, proto: u8) {
    if a.tcp_state == state && a.flags == flags && b.tcp_state == state && b.flags == flags {
        return;
    }
    let timeout = timeout_s(proto, state, flags);
    for half in [a, b] {
        half.tcp_state = state;
        half.flags = flags;
        half.timeout_s = timeout;
    }
}

/// Whether a flow has earned assurance, as nf_conntrack gives it: a TCP
/// connection established after a reply (a handshake, or a reply to a
/// connection picked up mid-stream); a UDP flow that has seen a reply and
/// is still active two seconds after its first packet. ICMP never is.
#[inline(always)]
fn earns_assurance(proto: u8, state: u8, flags: u8, age_ns: u64) -> bool {
    if flags & CT_REPLIED == 0 || flags & CT_CONFIRMED == 0 {
        return false;
    }
    match proto {
        IPPROTO_TCP => state == TcpState::Established as u8,
        IPPROTO_UDP => age_ns >= stream_after_ns(),
        _ => false,
    }
}

/// The other half of the flow whose half `entry` sits at `key` in `table`.
/// A peer the LRU evicted is restored; `None` when the flow cannot go on:
/// the peer is being inserted by another CPU, or its key belongs to another
/// flow now (this half, an orphan, is then removed).
#[inline(always)]
fn peer_of<F: Family>(
    table: Table,
    entry: &Entry<F>,
    key: &Key<F>,
    now: u64,
) -> Option<&'static mut Entry<F>> {
    if let Some(peer) = find_peer::<F>(table, entry, key) {
        return Some(peer);
    }
    let taken = Table::Assured.get::<F>(&entry.peer).is_some()
        || Table::New.get::<F>(&entry.peer).is_some();
    if !taken {
        if now.wrapping_sub(entry.created_ns) < PENDING_NS {
            return None;
        }
        if let Some(restored) = mirror::<F>(entry, key)
            && table.insert::<F>(&entry.peer, restored)
        {
            stats::count(Stat::CtHalfEvicted);
            return table.get::<F>(&entry.peer);
        }
    }
    // Its peer's key belongs to another flow now: this half is an orphan.
    stats::count(Stat::CtHalfEvicted);
    table.remove::<F>(key);
    None
}

/// The other half of `entry` (at `key`), rebuilt in the per-CPU scratch
/// space: its key is `entry.peer`, its rewrite restores `key` reversed.
#[inline(always)]
fn mirror<F: Family>(entry: &Entry<F>, key: &Key<F>) -> Option<&'static Entry<F>> {
    // SAFETY: a per-CPU array slot, only this program run uses it.
    let scratch = unsafe { value_mut(F::scratch().get_ptr_mut(0)) }?;
    let half = &mut scratch[0];
    *half = *entry;
    half.packets = 0;
    half.bytes = 0;
    half.peer = *key;
    half.saddr = key.daddr;
    half.daddr = key.saddr;
    half.sport = key.dport;
    half.dport = key.sport;
    half.direction = if entry.direction == DIR_ORIGINAL {
        DIR_REPLY
    } else {
        DIR_ORIGINAL
    };
    half.apply = entry.peer_apply;
    half.peer_apply = entry.apply;
    Some(half)
}

/// Moves both halves of a flow from the new flows' table to the assured
/// one: both are inserted there, then both removed here. Meanwhile a
/// packet of the flow finds its halves split across the tables, which
/// [`find_peer`] allows for. When the assured table is full, the flow
/// stays where it is, assured all the same (counted), and a sweep of the
/// assured table's dead flows is asked for, to make room for the next ones.
#[inline(always)]
fn promote<F: Family>(key: &Key<F>, peer: &Key<F>, now: u64) {
    let (Some(a), Some(b)) = (Table::New.get::<F>(key), Table::New.get::<F>(peer)) else {
        return;
    };
    if a.pair != b.pair {
        return;
    }
    // Straight from the new table's values, by reference: copies would
    // cost the BPF stack 160 bytes.
    let (a, b): (&Entry<F>, &Entry<F>) = (a, b);
    if !Table::Assured.insert::<F>(key, a) {
        stats::count(Stat::CtAssuredFull);
        want_sweep::<F>(now);
        return;
    }
    if !Table::Assured.insert::<F>(peer, b) {
        Table::Assured.remove::<F>(key);
        stats::count(Stat::CtAssuredFull);
        want_sweep::<F>(now);
        return;
    }
    Table::New.remove::<F>(key);
    Table::New.remove::<F>(peer);
    stats::count(Stat::CtAssured);
}

/// What a sweep's callback shares with its caller. `removed` is only ever
/// set to 1 (the flows are counted in `NAT_STATS`): a count on the stack
/// would take a value of its own on every iteration the verifier walks,
/// and the callback's states would never converge.
#[repr(C)]
struct Sweep {
    now: u64,
    removed: u64,
}

/// Asks for a sweep of the family's assured table (see
/// [`sweep_if_wanted`]), at most once every [`SWEEP_EVERY_NS`].
#[inline(always)]
fn want_sweep<F: Family>(now: u64) {
    // SAFETY: racing CPUs set the same fields to the same ends: a sweep
    // wanted, from about now (last writer wins).
    let Some(sweep) = (unsafe { array_value_mut(F::swept().get_ptr_mut(0)) }) else {
        return;
    };
    if sweep.last_ns == 0 || now.wrapping_sub(sweep.last_ns) >= SWEEP_EVERY_NS {
        sweep.last_ns = now;
        sweep.wanted = 1;
    }
}

/// Runs the sweep a full assured table of family `F` asked for, if any.
/// Called by the NAT programs once their packet is handled, not from where
/// the table was found full: the callback's frame would not fit under
/// conntrack's on the BPF stack.
#[inline(always)]
pub fn sweep_if_wanted<F: Family>() {
    if array_value(F::swept().get_ptr(0)).is_some_and(|sweep| sweep.wanted != 0) {
        F::sweep(now());
    }
}

/// The body of the family's sweep function; `sweep_one` its callback.
#[inline(always)]
fn sweep_in<F: Family>(now: u64, sweep_one: *mut c_void) -> u32 {
    // SAFETY: two CPUs may both see `wanted` and sweep: each removal
    // is of a dead flow, whoever makes it.
    let Some(sweep) = (unsafe { array_value_mut(F::swept().get_ptr_mut(0)) }) else {
        return 0;
    };
    if sweep.wanted == 0 {
        return 0;
    }
    sweep.wanted = 0;
    let mut state = Sweep { now, removed: 0 };
    // SAFETY: the map is a map of this object, the callback a static
    // function of the helper's callback type, and `state` outlives the
    // call.
    unsafe {
        bpf_for_each_map_elem(
            (F::assured() as *const HashMap<Key<F>, Entry<F>>)
                .cast_mut()
                .cast(),
            sweep_one,
            (&raw mut state).cast(),
            0,
        );
    }
    u32::from(state.removed != 0)
}

/// The body of the sweep's `bpf_for_each_map_elem` callback: removes the
/// flow of this half when it is dead. Returns 0: go on.
#[inline(always)]
fn sweep_one_in<F: Family>(key: *const Key<F>, half: *const Entry<F>, state: *mut c_void) -> i64 {
    // SAFETY: the helper hands the element's key and value and our state.
    let (Some(key), Some(half), Some(state)) =
        (unsafe { key.as_ref() }, unsafe { half.as_ref() }, unsafe {
            state.cast::<Sweep>().as_mut()
        })
    else {
        return 0;
    };
    let closing =
        half.tcp_state == TcpState::TimeWait as u8 || half.tcp_state == TcpState::Close as u8;
    let mut dead = closing;
    if !dead && half.idle_past_timeout(state.now) {
        dead = match find_peer::<F>(Table::Assured, half, key) {
            Some(peer) => peer.idle_past_timeout(state.now),
            None => true,
        };
    }
    if dead {
        remove_flow::<F>(Table::Assured, key, half);
        stats::count(Stat::CtSwept);
        state.removed = 1;
    }
    0
}

/// A SYN without ACK from the original side of a closed flow.
#[inline(always)]
fn reopens(state: u8, direction: u8, flags: u8) -> bool {
    direction == DIR_ORIGINAL
        && flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        && matches!(
            TcpState::from_u8(state),
            TcpState::Close | TcpState::TimeWait
        )
}

/// The TCP state after a segment with `flags` in `direction` (netlab
/// tracks states, not sequence windows, as Cilium does). FIN bits are kept
/// in `ct_flags`.
#[inline(always)]
fn next_tcp_state(state: u8, ct_flags: &mut u8, direction: u8, flags: u8) -> u8 {
    let state = TcpState::from_u8(state);
    let next = if flags & TCP_RST != 0 {
        TcpState::Close
    } else if flags & TCP_SYN != 0 {
        match (direction, state) {
            (DIR_ORIGINAL, _) => state,
            (_, TcpState::SynSent) if flags & TCP_ACK != 0 => TcpState::SynRecv,
            _ => state,
        }
    } else if flags & TCP_FIN != 0 {
        *ct_flags |= if direction == DIR_ORIGINAL {
            CT_FIN_ORIGINAL
        } else {
            CT_FIN_REPLY
        };
        if *ct_flags & (CT_FIN_ORIGINAL | CT_FIN_REPLY) == CT_FIN_ORIGINAL | CT_FIN_REPLY {
            TcpState::TimeWait
        } else {
            TcpState::FinWait
        }
    } else if flags & TCP_ACK != 0 && direction == DIR_ORIGINAL && state == TcpState::SynRecv {
        TcpState::Established
    } else {
        state
    };
    next as u8
}

/// The rewrite of a live flow's direction `key` at `hook`, without
/// counting the packet as the flow's (fragments after the first, ICMP
/// errors about the flow). `alive`: first check that the flow is whole and
/// not idle past its timeout (removing it if it is not).
#[inline(always)]
pub fn peek<F: Family>(key: &Key<F>, hook: u8, alive: bool) -> Option<Rw<F>> {
    // Initialized as in `track`.
    let mut out = Rw::<F>::identity(key);
    let found = global::returned(F::peek(key, u32::from(hook), u32::from(alive), &mut out)) != 0;
    found.then_some(out)
}

/// [`peek`], with the rewrite written to `out`; whether a flow has it.
#[inline(always)]
pub fn peek_into<F: Family>(key: &Key<F>, hook: u8, alive: bool, out: &mut Rw<F>) -> bool {
    *out = Rw::<F>::identity(key);
    global::returned(F::peek(key, u32::from(hook), u32::from(alive), out)) != 0
}

/// The body of the family's peek function.
#[inline(always)]
fn peek_in<F: Family>(key: &Key<F>, hook: u32, check_alive: u32, out: &mut Rw<F>) -> u32 {
    let Some(found) = lookup::<F>(key) else {
        return 0;
    };
    if u32::from(found.entry.apply) != hook {
        return 0;
    }
    if check_alive != 0 && !alive(&found, key, now()) {
        return 0;
    }
    *out = Rw::<F>::of(found.entry);
    1
}

/// Whether `key` is free for a new flow's half: absent, or part of a dead
/// flow, which is removed now.
#[inline(always)]
pub fn key_free<F: Family>(key: &Key<F>) -> bool {
    global::returned(F::key_free(key, 0)) != 0
}

/// [`key_free`] for a source port search running short: a source-NATed
/// TCP flow in TIME_WAIT or closed whose reply tuple is `key` gives it up
/// (removed, counted as `ct_swept`; see [`give_up_closing`]), as nf_nat's
/// `nf_nat_used_tuple_harder` takes such a tuple for a new connection in
/// its last attempts.
#[inline(always)]
pub fn key_free_or_closing<F: Family>(key: &Key<F>) -> bool {
    global::returned(F::key_free(key, 1)) != 0
}

/// The body of the family's key_free function.
#[inline(always)]
fn key_free_in<F: Family>(key: &Key<F>, take_closing: bool) -> u32 {
    u32::from(match lookup::<F>(key) {
        None => true,
        Some(found) => !alive(&found, key, now()) || (take_closing && give_up_closing(&found, key)),
    })
}

/// Removes the TCP flow `found` (the half at `key`) when it is in
/// TIME_WAIT or closed, was source-NATed, and `key` is its reply tuple
/// (the tuple the search wants), as `nf_nat_used_tuple_harder` and
/// `nf_nat_may_kill` ask; whether it did. (Linux also wants the new
/// connection's SYN and the old one's sequence numbers to have moved on:
/// netlab tracks no sequence numbers, and a search runs for a new flow.)
#[inline(always)]
fn give_up_closing<F: Family>(found: &Found<F>, key: &Key<F>) -> bool {
    let entry = &*found.entry;
    let closing =
        entry.tcp_state == TcpState::TimeWait as u8 || entry.tcp_state == TcpState::Close as u8;
    if key.proto != IPPROTO_TCP
        || !closing
        || entry.direction != DIR_REPLY
        || entry.nat & NAT_SNAT == 0
    {
        return false;
    }
    remove_flow::<F>(found.table, key, entry);
    stats::count(Stat::CtSwept);
    true
}

/// Whether the flow `found` (the half at `key`) is alive: its other half is
/// there and its own, and the flow is not idle past its timeout. A dead
/// flow is removed now (counted): nf_conntrack would not know it any more,
/// so nothing may be translated with it (an ICMP error about it is
/// unrelated). A half whose peer is being inserted counts as alive.
#[inline(always)]
fn alive<F: Family>(found: &Found<F>, key: &Key<F>, now: u64) -> bool {
    let entry = &*found.entry;
    if unpublished(entry, key.proto) {
        stats::count(Stat::CtUnpublished);
        remove_flow::<F>(found.table, key, entry);
        return false;
    }
    if let Some(peer) = find_peer::<F>(found.table, entry, key) {
        if idle(entry, peer, now) {
            stats::count(Stat::CtExpired);
            remove_flow::<F>(found.table, key, entry);
            return false;
        }
        return true;
    }
    let taken = Table::Assured.get::<F>(&entry.peer).is_some()
        || Table::New.get::<F>(&entry.peer).is_some();
    if !taken && now.wrapping_sub(entry.created_ns) < PENDING_NS {
        return true;
    }
    stats::count(Stat::CtHalfEvicted);
    found.table.remove::<F>(key);
    false
}

/// Confirms the flow whose reply half is at `reply_key`: its first packet
/// has left (nf_conntrack confirms a flow when its packet survives the
/// stack). Until then the flow has [`timeouts::UNCONFIRMED`] to live.
#[inline(always)]
pub fn confirm<F: Family>(reply_key: &Key<F>) {
    F::confirm(reply_key);
}

/// The body of the family's confirm function.
#[inline(always)]
fn confirm_in<F: Family>(reply_key: &Key<F>) -> u32 {
    let Some(found) = lookup::<F>(reply_key) else {
        return 0;
    };
    let entry = found.entry;
    if entry.flags & CT_CONFIRMED != 0 {
        return 0;
    }
    let Some(peer) = find_peer::<F>(found.table, entry, reply_key) else {
        return 0;
    };
    let flags = entry.flags | CT_CONFIRMED;
    set_state(entry, peer, entry.tcp_state, flags, reply_key.proto);
    1
}

/// A new flow, as NAT decided it.
#[repr(C)]
pub struct Opened<F: Family> {
    /// How its original direction leaves.
    pub out: Rw<F>,
    /// The first packet's length.
    pub len: u32,
    /// `APPLY_*`: which hook rewrites each direction.
    pub apply_original: u8,
    pub apply_reply: u8,
    /// Nonzero: a TCP connection picked up mid-stream (its first packet a
    /// plain ACK).
    pub picked_up: u8,
    /// Nonzero: the first packet is leaving now (a flow opened on egress),
    /// so the flow is confirmed from the start.
    pub confirmed: u8,
    /// The published host port that opened it (network order), or with
    /// `service` the id of the Service backend it goes to, and that one's
    /// epoch then; 0 for a flow neither opened.
    pub published: u16,
    /// Nonzero: a Service opened it ([`CT_SERVICE`]).
    pub service: u16,
    pub epoch: u32,
}

global::codes! {
    /// The insert functions' answers.
    enum InsertCode { Inserted = 0, Race = 1, Failed = 2 }
}

/// Inserts both halves of a new flow into the new flows' table. The reply
/// key must be free (it is how replies find their way back: the caller
/// asked [`key_free`], which also looks in the assured table), and so must
/// the original key: when another CPU opened the same flow first, nothing
/// of ours stays, `flow.out` becomes the winner's rewrite, and
/// [`Stat::CtInsertRace`] says to translate the packet with it (as
/// nf_conntrack resolves a clash: the loser's packet takes the winner's
/// mapping). (Called from a program, not from another global function: the
/// BPF stack of a chain of calls is 512 bytes in all.)
#[inline(always)]
pub fn insert_flow<F: Family>(key: &Key<F>, flow: &mut Opened<F>) -> Result<(), Stat> {
    match InsertCode::decode(F::insert(key, flow)) {
        Some(InsertCode::Inserted) => Ok(()),
        Some(InsertCode::Race) => Err(Stat::CtInsertRace),
        _ => Err(Stat::CtInsertFailed),
    }
}

/// The body of the family's insert function.
#[inline(always)]
fn insert_in<F: Family>(key: &Key<F>, flow: &mut Opened<F>) -> u32 {
    (match insert(key, flow) {
        Ok(()) => InsertCode::Inserted,
        Err(Stat::CtInsertRace) => InsertCode::Race,
        Err(_) => InsertCode::Failed,
    }) as u32
}

#[inline(always)]
fn insert<F: Family>(key: &Key<F>, flow: &mut Opened<F>) -> Result<(), Stat> {
    let out = &flow.out;
    let reply_key = out.reply_key(key.proto);
    // SAFETY: a per-CPU array slot, only this program run uses it.
    let Some(scratch) = (unsafe { value_mut(F::scratch().get_ptr_mut(0)) }) else {
        return Err(Stat::CtInsertFailed);
    };
    let [original, reply] = scratch;
    let now = now();
    let mut flags = if flow.confirmed != 0 { CT_CONFIRMED } else { 0 };
    if flow.service != 0 {
        flags |= CT_SERVICE;
    }
    let tcp_state = if key.proto != IPPROTO_TCP {
        TcpState::None
    } else if flow.picked_up != 0 {
        flags |= CT_PICKED_UP;
        TcpState::Established
    } else {
        TcpState::SynSent
    } as u8;
    // SAFETY: plain helper.
    let pair = unsafe { bpf_get_prandom_u32() };
    // Field by field, in place: a `CtEntry` value built on the stack and
    // copied in cost this function's frame 160 bytes, more than the chain
    // of calls under a NAT program can spare.
    let timeout = timeout_s(key.proto, tcp_state, flags);
    for half in [&mut *original, &mut *reply] {
        half.created_ns = now;
        half.last_seen_ns = now;
        half.pair = pair;
        half.timeout_s = timeout;
        half.nat = out.nat;
        half.tcp_state = tcp_state;
        half.flags = flags;
        half.published = flow.published;
        half.epoch = flow.epoch;
    }
    original.packets = 1;
    original.bytes = u64::from(flow.len);
    original.peer = reply_key;
    original.saddr = out.saddr;
    original.daddr = out.daddr;
    original.sport = out.sport;
    original.dport = out.dport;
    original.direction = DIR_ORIGINAL;
    original.apply = flow.apply_original;
    original.peer_apply = flow.apply_reply;
    // Replies are restored to the original tuple, reversed.
    reply.packets = 0;
    reply.bytes = 0;
    reply.peer = *key;
    reply.saddr = key.daddr;
    reply.daddr = key.saddr;
    reply.sport = key.dport;
    reply.dport = key.sport;
    reply.direction = DIR_REPLY;
    reply.apply = flow.apply_reply;
    reply.peer_apply = flow.apply_original;
    // Reply first: while its original is missing, it is young, and nobody
    // takes it for an orphan (see PENDING_NS).
    if !Table::New.insert::<F>(&reply_key, reply) {
        // Another CPU opened this very flow (the same reply key, naming
        // this key as its peer): the winner's entries stand. Any other
        // holder is another flow, which this one must not clash with.
        let same = lookup::<F>(&reply_key).is_some_and(|found| found.entry.peer == *key);
        return Err(if same {
            Stat::CtInsertRace
        } else {
            Stat::CtInsertFailed
        });
    }
    if !Table::New.insert::<F>(key, original) {
        Table::New.remove::<F>(&reply_key);
        // Another CPU opened this flow first, having searched while our
        // reply key was held, so with another port: its rewrite stands.
        let Some(winner) = lookup::<F>(key) else {
            return Err(Stat::CtInsertFailed);
        };
        let e = winner.entry;
        flow.out = RewriteOf {
            saddr: e.saddr,
            daddr: e.daddr,
            sport: e.sport,
            dport: e.dport,
            nat: e.nat,
            opened: 0,
            _pad: 0,
        };
        return Err(Stat::CtInsertRace);
    }
    Ok(())
}
