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
        parse::Packet,
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
pub struct Found {
    pub entry: &'static mut CtEntry,
    table: Table,
}

/// The entry of `key`, assured flows first (the hot path is one lookup).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<Found> {
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
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `NAT_*` bits.
    pub nat: u8,
}

impl Rewrite {
    #[inline(always)]
    pub fn of(entry: &CtEntry) -> Rewrite {
        Rewrite {
            saddr: entry.saddr,
            daddr: entry.daddr,
            sport: entry.sport,
            dport: entry.dport,
            nat: entry.nat,
        }
    }
}

/// What tracking a packet of a known flow decided.
pub enum Tracked {
    /// Rewrite the packet as this says.
    Rewrite(Rewrite),
    /// The flow is gone (expired, or a SYN reopened a closed one): handle
    /// the packet as a new flow.
    Gone,
    /// The other half of the flow was evicted: drop (cannot translate).
    HalfEvicted,
}

/// Updates a known flow's state with this packet.
#[inline(always)]
pub fn track(found: Found, key: &FlowKey, pkt: &Packet) -> Tracked {
    let Found { entry, table } = found;
    let now = now();
    let rewrite = Rewrite::of(entry);
    let direction = entry.direction;
    let peer = entry.peer;
    entry.packets += 1;
    entry.bytes += u64::from(pkt.len);
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
    if key.proto == IPPROTO_TCP && reopens(orig, direction, pkt.tcp_flags) {
        // nf_conntrack: a SYN on a closed connection is a new connection,
        // evaluated afresh (a published port may be gone since).
        stats::count(Stat::CtReopened);
        remove_flow(table, key, &peer);
        return Tracked::Gone;
    }
    if key.proto == IPPROTO_TCP
        && direction != DIR_ORIGINAL
        && orig.flags & CT_REPLIED == 0
        && pkt.tcp_flags & TCP_RST != 0
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
        advance_tcp(orig, direction, pkt.tcp_flags);
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
    let (orig, reply) = (*orig, *reply);
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
pub fn key_free(key: &FlowKey, now: u64) -> bool {
    // References only: this runs in the port search's callback, whose
    // stack frame adds to the NAT program's.
    match lookup(key) {
        None => true,
        Some(found) => !alive(&found, key, now),
    }
}

/// Whether the flow `found` (the entry of `key`) is alive: its original
/// entry is there and not idle past its timeout. A dead flow is removed
/// now (counted): nf_conntrack would not know it any more, so nothing may
/// be translated with it (an ICMP error about it is unrelated).
#[inline(always)]
pub fn alive(found: &Found, key: &FlowKey, now: u64) -> bool {
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
pub struct Opened {
    /// How its original direction leaves.
    pub out: Rewrite,
    /// `APPLY_*`: which hook rewrites each direction.
    pub apply_original: u8,
    pub apply_reply: u8,
    /// The first packet's length.
    pub len: u32,
    /// A TCP connection picked up mid-stream (its first packet a plain ACK).
    pub picked_up: bool,
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
        } else if flow.picked_up {
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
