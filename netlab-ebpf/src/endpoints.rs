//! The lab's namespace addresses: where each one is reached (the host-side
//! veth of its namespace) and with which MAC addresses. `redirect` hands
//! packets to them; `nat` knows from them, without a trie lookup, that an
//! address belongs to the lab.

use aya_ebpf::{macros::map, maps::HashMap};
use netlab_common::nat::Endpoint;

use crate::pkt::ctx::value;

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(4096, 0);

/// The endpoint holding `addr` (network order).
#[inline(always)]
pub fn get(addr: u32) -> Option<Endpoint> {
    // SAFETY: copied at once; userspace replaces an endpoint only when the
    // lab changes.
    unsafe { value(ENDPOINTS.get_ptr(addr)) }.copied()
}
