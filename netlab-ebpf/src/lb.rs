//! Load balancing for Services: which backend a new flow to a Service
//! goes to. The flow's hash (its 5-tuple, or with session affinity its
//! source address) picks a slot of the Service's Maglev table, which
//! userspace fills; conntrack then keeps the choice for the flow's life.
//! The same flow picks the same backend on every node, and a change of
//! backends moves few flows (Maglev's consistency).

use netlab_common::nat::{Backend, FlowKey, SERVICE_AFFINITY, service_hash};

use crate::lab;

/// The backend Service `id` sends the new flow `key` to, with the
/// backend's id; `None` when the Service has no backend.
#[inline(always)]
pub fn choose(id: u16, key: &FlowKey) -> Option<(u16, Backend)> {
    let flags = lab::maglev_flags(id)?;
    lab::maglev_backend(id, service_hash(key, flags & SERVICE_AFFINITY != 0))
}
