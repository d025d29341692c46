//! netlab's own conntrack: two entries per flow, keyed by each direction's
//! tuple (see `netlab_common::nat::CtEntry`), in one of two LRU tables:
//!
//! - [`CONNTRACK_NEW`] holds flows that are not assured yet (no reply, or a
//!   TCP handshake not complete). New flows evict each other here, so a SYN
//!   flood cannot push out an established connection, as nf_conntrack's
//!   early drop only takes unassured entries.
//! - [`CONNTRACK`] holds assured flows: a TCP flow once established, any
//!   other once it has seen a reply. Both halves move together.
//!
//! Entries expire lazily: a lookup that finds a flow idle past its timeout
//! removes it (counted), and the LRU bound evicts the coldest entries when a
//! table is full. The table size is set by userspace at load time.
//!
//! The operations ([`track`], [`peek`], [`key_free`], [`insert_flow`]) are
//! global BPF functions behind inline wrappers: the verifier checks each
//! once, on its own, instead of once for every path of the NAT programs
//! that reaches it (measured: this halved the NAT programs' verification).
//! Their arguments are plain integers and pointers to `#[repr(C)]`
//! values, as global functions need; what they return is a code the
//! wrappers turn back into Rust types.

use core::hint::black_box;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use netlab_common::nat::{
    CT_FIN_ORIGINAL, CT_FIN_REPLY, CT_REPLIED, CtEntry, DIR_ORIGINAL, DIR_REPLY, FlowKey,
    IPPROTO_TCP, Stat, TcpState, timeout_ns,
};

use crate::{
    pkt::{
        ctx::{value, value_mut},
        l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    },
    stats,
};

#[map(name = "CONNTRACK")]
static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(65536, 0);

#[map(name = "CONNTRACK_NEW")]
static CONNTRACK_NEW: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(65536, 0);

/// How stale `last_seen_ns` may get before a packet refreshes it: far
/// below the shortest timeout (10 s), and it saves a write to a line the
/// other direction's CPU reads on almost every packet.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Which table a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Assured,
    New,
}

impl Table {
    #[inline(always)]
    fn map(self) -> &'static LruHashMap<FlowKey, CtEntry> {
        match self {
            Table::Assured => &CONNTRACK,
            Table::New => &CONNTRACK_NEW,
        }
    }
}

/// A flow's entry for one key, and where it lives.
struct Found {
    entry: &'static mut CtEntry,
    table: Table,
}

/// The entry of `key`, assured flows first (the hot path is one lookup).
#[inline(always)]
fn lookup(key: &FlowKey) -> Option<Found> {
    if let Some(entry) = value_mut(CONNTRACK.get_ptr_mut(key)) {
        return Some(Found {
            entry,
            table: Table::Assured,
        });
    }
    value_mut(CONNTRACK_NEW.get_ptr_mut(key)).map(|entry| Found {
        entry,
        table: Table::New,
    })
}

#[inline(always)]
fn expired(orig: &CtEntry, now: u64) -> bool {
    now.saturating_sub(orig.last_seen_ns) > timeout_ns(orig.peer.proto, orig.tcp_state, orig.flags)
}

/// Removes a flow: the entry at `key` and its peer.
#[inline(always)]
fn remove_flow(table: Table, key: &FlowKey, peer: &FlowKey) {
    let _ = table.map().remove(key);
    let _ = table.map().remove(peer);
}

/// How packets matching an entry leave.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `NAT_*` bits.
    pub nat: u8,
    pub _pad: [u8; 3],
}

impl Rewrite {
    pub const NONE: Rewrite = Rewrite {
        saddr: 0,
        daddr: 0,
        sport: 0,
        dport: 0,
        nat: 0,
        _pad: [0; 3],
    };

    #[inline(always)]
    pub fn of(entry: &CtEntry) -> Rewrite {
        Rewrite {
            saddr: entry.saddr,
            daddr: entry.daddr,
            sport: entry.sport,
            dport: entry.dport,
            nat: entry.nat,
            _pad: [0; 3],
        }
    }
}

/// What a packet's flow entry says at a hook ([`track`]).
pub enum Known {
    /// No live flow has this key: the packet may open one.
    None,
    /// Another hook translates this direction (masquerade waits for egress).
    OtherHook,
    /// Rewrite the packet as this says.
    Rewrite(Rewrite),
    /// The other half of the flow was evicted: drop (cannot translate).
    HalfEvicted,
}

/// [`track`]'s answers, as the global function returns them.
const TRACK_NONE: u32 = 0;
const TRACK_OTHER_HOOK: u32 = 1;
const TRACK_REWRITE: u32 = 2;
const TRACK_HALF_EVICTED: u32 = 3;

/// Looks up the flow of a packet with `key` seen at `hook` (`APPLY_*`) and,
/// when this hook translates it, updates the flow with the packet (state,
/// counters, timestamps, promotion to the assured table).
#[inline(always)]
pub fn track(key: &FlowKey, hook: u8, tcp_flags: u8, len: u32) -> Known {
    let mut out = Rewrite::NONE;
    // Through black_box, as every global function's result (see
    // `pkt::csum::decode`): the verifier knows nothing of it, LLVM must not
    // either.
    match black_box(netlab_ct_track(
        key,
        u32::from(hook),
        u32::from(tcp_flags),
        len,
        &raw mut out,
    )) {
        TRACK_OTHER_HOOK => Known::OtherHook,
        TRACK_REWRITE => Known::Rewrite(out),
        TRACK_HALF_EVICTED => Known::HalfEvicted,
        _ => Known::None,
    }
}

/// [`track`], verified once (see the module's documentation).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_ct_track(
    key: *const FlowKey,
    hook: u32,
    tcp_flags: u32,
    len: u32,
    out: *mut Rewrite,
) -> u32 {
    // SAFETY: the verifier checks both pointers' memory; null is refused here.
    let (Some(key), Some(out)) = (unsafe { key.as_ref() }, unsafe { out.as_mut() }) else {
        return TRACK_NONE;
    };
    let Some(found) = lookup(key) else {
        return TRACK_NONE;
    };
    if u32::from(found.entry.apply) != hook {
        return TRACK_OTHER_HOOK;
    }
    match advance(found, key, tcp_flags as u8, len) {
        Tracked::Rewrite(rewrite) => {
            *out = rewrite;
            TRACK_REWRITE
        }
        Tracked::Gone => TRACK_NONE,
        Tracked::HalfEvicted => TRACK_HALF_EVICTED,
    }
}

/// The rewrite of a live flow's direction `key` at `hook`, without
/// counting the packet as the flow's (fragments after the first, ICMP
/// errors about the flow). `alive`: first check that the flow is not idle
/// past its timeout (removing it if it is).
#[inline(always)]
pub fn peek(key: &FlowKey, hook: u8, alive: bool) -> Option<Rewrite> {
    let mut out = Rewrite::NONE;
    (black_box(netlab_ct_peek(
        key,
        u32::from(hook),
        u32::from(alive),
        &raw mut out,
    )) != 0)
        .then_some(out)
}

/// [`peek`], verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_ct_peek(
    key: *const FlowKey,
    hook: u32,
    check_alive: u32,
    out: *mut Rewrite,
) -> u32 {
    // SAFETY: as in `netlab_ct_track`.
    let (Some(key), Some(out)) = (unsafe { key.as_ref() }, unsafe { out.as_mut() }) else {
        return 0;
    };
    let Some(found) = lookup(key) else {
        return 0;
    };
    if u32::from(found.entry.apply) != hook {
        return 0;
    }
    if check_alive != 0 && !alive(&found, key, now()) {
        return 0;
    }
    *out = Rewrite::of(found.entry);
    1
}

/// What tracking a packet of a known flow decided.
enum Tracked {
    /// Rewrite the packet as this says.
    Rewrite(Rewrite),
    /// The flow is gone (expired, or a SYN reopened a closed one): handle
    /// the packet as a new flow.
    Gone,
    /// The other half of the flow was evicted: drop (cannot translate).
    HalfEvicted,
}

/// Updates a known flow's state with a packet of `tcp_flags` and `len`.
#[inline(always)]
fn advance(found: Found, key: &FlowKey, tcp_flags: u8, len: u32) -> Tracked {
    let Found { entry, table } = found;
    let now = now();
    let rewrite = Rewrite::of(entry);
    let direction = entry.direction;
    let peer = entry.peer;
    entry.packets += 1;
    entry.bytes += u64::from(len);
    let orig_key = if direction == DIR_ORIGINAL {
        *key
    } else {
        peer
    };
    let orig = if direction == DIR_ORIGINAL {
        entry
    } else {
        match value_mut(table.map().get_ptr_mut(peer)) {
            Some(orig) => orig,
            None => {
                let _ = table.map().remove(key);
                return Tracked::HalfEvicted;
            }
        }
    };
    if expired(orig, now) {
        stats::count(Stat::CtExpired);
        remove_flow(table, key, &peer);
        return Tracked::Gone;
    }
    if key.proto == IPPROTO_TCP && reopens(orig, direction, tcp_flags) {
        // nf_conntrack: a SYN on a closed connection is a new connection,
        // evaluated afresh (a published port may be gone since).
        stats::count(Stat::CtReopened);
        remove_flow(table, key, &peer);
        return Tracked::Gone;
    }
    if key.proto == IPPROTO_TCP
        && direction != DIR_ORIGINAL
        && orig.flags & CT_REPLIED == 0
        && tcp_flags & TCP_RST != 0
    {
        // nf_conntrack (tcp_packet): "if only reply is a RST, we can
        // consider ourselves not to have an established connection [...]
        // delete the conntrack immediately". The RST itself is translated.
        stats::count(Stat::CtRefused);
        remove_flow(table, key, &peer);
        return Tracked::Rewrite(rewrite);
    }
    if now.wrapping_sub(orig.last_seen_ns) > REFRESH_NS {
        orig.last_seen_ns = now;
    }
    if direction != DIR_ORIGINAL && orig.flags & CT_REPLIED == 0 {
        orig.flags |= CT_REPLIED;
    }
    if key.proto == IPPROTO_TCP {
        advance_tcp(orig, direction, tcp_flags);
    }
    if table == Table::New && assured(orig) {
        promote(&orig_key, &orig.peer);
    }
    Tracked::Rewrite(rewrite)
}

/// Whether a flow has earned protection from new flows.
#[inline(always)]
fn assured(orig: &CtEntry) -> bool {
    if orig.peer.proto == IPPROTO_TCP {
        orig.tcp_state == TcpState::Established as u8
    } else {
        orig.flags & CT_REPLIED != 0
    }
}

/// Moves both halves of a flow to the assured table.
#[inline(always)]
fn promote(orig_key: &FlowKey, reply_key: &FlowKey) {
    let (Some(orig), Some(reply)) = (
        value_mut(CONNTRACK_NEW.get_ptr_mut(orig_key)),
        value_mut(CONNTRACK_NEW.get_ptr_mut(reply_key)),
    ) else {
        return;
    };
    // Straight from the new table's values (by reference): a copy would
    // cost 144 bytes of the BPF stack.
    let (orig, reply): (&CtEntry, &CtEntry) = (orig, reply);
    if CONNTRACK.insert(reply_key, reply, 0).is_err() {
        return;
    }
    if CONNTRACK.insert(orig_key, orig, 0).is_err() {
        let _ = CONNTRACK.remove(reply_key);
        return;
    }
    let _ = CONNTRACK_NEW.remove(orig_key);
    let _ = CONNTRACK_NEW.remove(reply_key);
    stats::count(Stat::CtAssured);
}

/// A SYN without ACK from the original side of a closed flow.
#[inline(always)]
fn reopens(orig: &CtEntry, direction: u8, flags: u8) -> bool {
    direction == DIR_ORIGINAL
        && flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        && matches!(
            TcpState::from_u8(orig.tcp_state),
            TcpState::Close | TcpState::TimeWait
        )
}

#[inline(always)]
fn advance_tcp(orig: &mut CtEntry, direction: u8, flags: u8) {
    let state = TcpState::from_u8(orig.tcp_state);
    let next = if flags & TCP_RST != 0 {
        TcpState::Close
    } else if flags & TCP_SYN != 0 {
        match (direction, state) {
            (DIR_ORIGINAL, _) => state,
            (_, TcpState::SynSent) if flags & TCP_ACK != 0 => TcpState::SynRecv,
            _ => state,
        }
    } else if flags & TCP_FIN != 0 {
        let fin = if direction == DIR_ORIGINAL {
            CT_FIN_ORIGINAL
        } else {
            CT_FIN_REPLY
        };
        orig.flags |= fin;
        if orig.flags & (CT_FIN_ORIGINAL | CT_FIN_REPLY) == CT_FIN_ORIGINAL | CT_FIN_REPLY {
            TcpState::TimeWait
        } else {
            TcpState::FinWait
        }
    } else if flags & TCP_ACK != 0 && direction == DIR_ORIGINAL && state == TcpState::SynRecv {
        TcpState::Established
    } else {
        state
    };
    if next != state {
        orig.tcp_state = next as u8;
    }
}

/// Whether `key` is free for a new flow's entry (absent, or part of a dead
/// flow, which is removed now).
#[inline(always)]
pub fn key_free(key: &FlowKey) -> bool {
    black_box(netlab_ct_key_free(key)) != 0
}

/// [`key_free`], verified once. It runs in the port search's callback too,
/// whose stack frame adds to the NAT program's: references only.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_ct_key_free(key: *const FlowKey) -> u32 {
    // SAFETY: as in `netlab_ct_track`.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    u32::from(match lookup(key) {
        None => true,
        Some(found) => !alive(&found, key, now()),
    })
}

/// Whether the flow `found` (the entry of `key`) is alive: its original
/// entry is there and not idle past its timeout. A dead flow is removed
/// now (counted): nf_conntrack would not know it any more, so nothing may
/// be translated with it (an ICMP error about it is unrelated).
#[inline(always)]
fn alive(found: &Found, key: &FlowKey, now: u64) -> bool {
    let entry = &*found.entry;
    let peer = entry.peer;
    let alive = if entry.direction == DIR_ORIGINAL {
        !expired(entry, now)
    } else {
        value(found.table.map().get_ptr(peer)).is_some_and(|orig| !expired(orig, now))
    };
    if !alive {
        stats::count(Stat::CtExpired);
        remove_flow(found.table, key, &peer);
    }
    alive
}

/// A new flow, as NAT decided it.
#[repr(C)]
pub struct Opened {
    /// How its original direction leaves.
    pub out: Rewrite,
    /// The first packet's length.
    pub len: u32,
    /// `APPLY_*`: which hook rewrites each direction.
    pub apply_original: u8,
    pub apply_reply: u8,
    /// Nonzero: a TCP connection picked up mid-stream (its first packet a
    /// plain ACK).
    pub picked_up: u8,
    pub _pad: u8,
}

/// Where a new flow's two entries are built: 144 bytes, more than the BPF
/// stack can spare next to the rest of the NAT path.
#[map]
static CT_SCRATCH: PerCpuArray<[CtEntry; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Inserts both entries of a new flow into the new-flow table. The reply
/// key must be unique (it is how replies find their way back), and so must
/// the original key: when another CPU opened the same flow first, nothing
/// of ours stays and [`Stat::CtInsertRace`] says to use the winner's.
#[inline(always)]
pub fn insert_flow(key: &FlowKey, flow: &Opened) -> Result<(), Stat> {
    match black_box(netlab_ct_insert(key, flow)) {
        INSERTED => Ok(()),
        INSERT_RACE => Err(Stat::CtInsertRace),
        _ => Err(Stat::CtInsertFailed),
    }
}

/// [`netlab_ct_insert`]'s answers.
const INSERTED: u32 = 0;
const INSERT_RACE: u32 = 1;
const INSERT_FAILED: u32 = 2;

/// [`insert_flow`], verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_ct_insert(key: *const FlowKey, flow: *const Opened) -> u32 {
    // SAFETY: as in `netlab_ct_track`.
    let (Some(key), Some(flow)) = (unsafe { key.as_ref() }, unsafe { flow.as_ref() }) else {
        return INSERT_FAILED;
    };
    match insert(key, flow) {
        Ok(()) => INSERTED,
        Err(Stat::CtInsertRace) => INSERT_RACE,
        Err(_) => INSERT_FAILED,
    }
}

#[inline(always)]
fn insert(key: &FlowKey, flow: &Opened) -> Result<(), Stat> {
    let Some(scratch) = value_mut(CT_SCRATCH.get_ptr_mut(0)) else {
        return Err(Stat::CtInsertFailed);
    };
    let [original, reply] = scratch;
    let now = now();
    let out = &flow.out;
    let reply_key = crate::nat::reply_key(key.proto, out);
    *original = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: u64::from(flow.len),
        saddr: out.saddr,
        daddr: out.daddr,
        sport: out.sport,
        dport: out.dport,
        peer: reply_key,
        direction: DIR_ORIGINAL,
        nat: out.nat,
        apply: flow.apply_original,
        tcp_state: if key.proto != IPPROTO_TCP {
            TcpState::None as u8
        } else if flow.picked_up != 0 {
            TcpState::Established as u8
        } else {
            TcpState::SynSent as u8
        },
        flags: 0,
        _pad: [0; 7],
    };
    // Replies are restored to the original tuple, reversed.
    *reply = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        peer: *key,
        direction: DIR_REPLY,
        nat: out.nat,
        apply: flow.apply_reply,
        tcp_state: 0,
        flags: 0,
        _pad: [0; 7],
    };
    let noexist = u64::from(BPF_NOEXIST);
    if CONNTRACK_NEW.insert(reply_key, reply, noexist).is_err() {
        return Err(if lookup(key).is_some() {
            Stat::CtInsertRace
        } else {
            Stat::CtInsertFailed
        });
    }
    if CONNTRACK_NEW.insert(key, original, noexist).is_err() {
        let _ = CONNTRACK_NEW.remove(reply_key);
        return Err(Stat::CtInsertRace);
    }
    Ok(())
}
