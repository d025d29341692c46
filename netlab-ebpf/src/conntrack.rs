//! netlab's own conntrack: two entries per flow in one LRU hash, keyed by
//! each direction's tuple (see `netlab_common::nat::CtEntry`).
//!
//! Entries expire lazily: a lookup that finds a flow idle past its timeout
//! removes it (counted), and the LRU bound evicts the coldest entries when
//! the table is full. The table size is set by userspace at load time.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use netlab_common::nat::{
    CT_FIN_ORIGINAL, CT_FIN_REPLY, CT_REPLIED, CtEntry, DIR_ORIGINAL, DIR_REPLY, FlowKey,
    IPPROTO_TCP, Stat, TcpState, timeout_ns,
};

use crate::{
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
};

#[map(name = "CONNTRACK")]
static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(65536, 0);

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<*mut CtEntry> {
    CONNTRACK.get_ptr_mut(key)
}

#[inline(always)]
fn expired(orig: &CtEntry, now: u64) -> bool {
    now.saturating_sub(orig.last_seen_ns) > timeout_ns(orig.peer.proto, orig.tcp_state, orig.flags)
}

/// Removes a flow (both entries) given either of its keys and entries.
#[inline(always)]
fn remove_flow(key: &FlowKey, entry: &CtEntry) {
    let _ = CONNTRACK.remove(key);
    let _ = CONNTRACK.remove(entry.peer);
}

/// What tracking a packet of a known flow decided.
pub enum Tracked {
    /// Rewrite the packet to this entry's tuple.
    Rewrite(CtEntry),
    /// The flow had expired and is gone: handle the packet as a new one.
    Expired,
    /// The other half of the flow was evicted: drop (cannot translate).
    HalfEvicted,
}

/// Updates a known flow's state with this packet.
#[inline(always)]
pub fn track(pkt: &Packet, key: &FlowKey, entry_ptr: *mut CtEntry) -> Tracked {
    let now = now();
    // SAFETY: a map value pointer from a successful lookup.
    let entry = unsafe { &mut *entry_ptr };
    let orig_ptr = if entry.direction == DIR_ORIGINAL {
        entry_ptr
    } else {
        match CONNTRACK.get_ptr_mut(entry.peer) {
            Some(ptr) => ptr,
            None => {
                stats::count(Stat::CtHalfEvicted);
                let _ = CONNTRACK.remove(key);
                return Tracked::HalfEvicted;
            }
        }
    };
    // SAFETY: as above.
    let orig = unsafe { &mut *orig_ptr };
    if expired(orig, now) {
        stats::count(Stat::CtExpired);
        remove_flow(key, entry);
        return Tracked::Expired;
    }
    orig.last_seen_ns = now;
    entry.packets += 1;
    entry.bytes += u64::from(pkt.len);
    if entry.direction == DIR_REPLY {
        orig.flags |= CT_REPLIED;
    }
    if key.proto == IPPROTO_TCP {
        advance_tcp(orig, entry.direction, pkt.tcp_flags);
    }
    Tracked::Rewrite(*entry)
}

#[inline(always)]
fn advance_tcp(orig: &mut CtEntry, direction: u8, flags: u8) {
    let state = TcpState::from_u8(orig.tcp_state);
    let next = if flags & TCP_RST != 0 {
        TcpState::Close
    } else if flags & TCP_SYN != 0 {
        match (direction, state) {
            // A new connection reusing a closed flow's tuple.
            (DIR_ORIGINAL, TcpState::Close | TcpState::TimeWait) if flags & TCP_ACK == 0 => {
                orig.flags = 0;
                TcpState::SynSent
            }
            (DIR_REPLY, TcpState::SynSent) if flags & TCP_ACK != 0 => TcpState::SynRecv,
            _ => state,
        }
    } else if flags & TCP_FIN != 0 {
        orig.flags |= if direction == DIR_ORIGINAL {
            CT_FIN_ORIGINAL
        } else {
            CT_FIN_REPLY
        };
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
    orig.tcp_state = next as u8;
}

/// Whether the reply key `reply` is free for a new flow (absent, or a dead
/// flow that is removed now).
#[inline(always)]
pub fn reply_key_free(reply: &FlowKey, now: u64) -> bool {
    let Some(ptr) = CONNTRACK.get_ptr(reply) else {
        return true;
    };
    // SAFETY: a map value pointer from a successful lookup.
    let entry = unsafe { *ptr };
    let orig = if entry.direction == DIR_ORIGINAL {
        Some(entry)
    } else {
        // SAFETY: as above.
        CONNTRACK.get_ptr(entry.peer).map(|p| unsafe { *p })
    };
    match orig {
        Some(orig) if !expired(&orig, now) => false,
        _ => {
            stats::count(Stat::CtExpired);
            remove_flow(reply, &entry);
            true
        }
    }
}

/// Inserts both entries of a new flow. The reply key must be unique (it is
/// how replies find their way back); on a race or a failure nothing stays.
#[inline(always)]
pub fn insert_flow(key: &FlowKey, orig: &CtEntry, reply: &CtEntry) -> Result<(), ()> {
    if CONNTRACK
        .insert(orig.peer, reply, u64::from(BPF_NOEXIST))
        .is_err()
    {
        return Err(());
    }
    if CONNTRACK.insert(key, orig, 0).is_err() {
        let _ = CONNTRACK.remove(orig.peer);
        return Err(());
    }
    Ok(())
}
