//! The lab's namespace addresses: where each one is reached (the host-side
//! veth of its namespace) and with which MAC addresses. `redirect` hands
//! packets to them; `nat` knows from them, without a trie lookup, that an
//! address belongs to the lab. IPv6 addresses have a map of their own.

use aya_ebpf::{macros::map, maps::HashMap};
use netlab_common::nat::Endpoint;

use crate::pkt::ctx::value;

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(4096, 0);

#[map(name = "ENDPOINTS6")]
static ENDPOINTS6: HashMap<[u32; 4], Endpoint> = HashMap::pinned(4096, 0);

/// The endpoint holding the IPv6 `addr`.
#[inline(always)]
pub fn get6(addr: &[u32; 4]) -> Option<Endpoint> {
    // SAFETY: as in `get`.
    unsafe { value(ENDPOINTS6.get_ptr(addr)) }.copied()
}

/// The endpoint holding `addr` (network order).
#[inline(always)]
pub fn get(addr: u32) -> Option<Endpoint> {
    // SAFETY: copied at once; userspace replaces an endpoint only when the
    // lab changes.
    unsafe { value(ENDPOINTS.get_ptr(addr)) }.copied()
}
