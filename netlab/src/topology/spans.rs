//! Positions the model does not carry: the parser records them, the rules
//! quote them in their problems.

use super::model::Pos;

/// Positions of things the model has no `at` for; indexes follow the model.
#[derive(Clone, Debug, Default)]
pub(super) struct Spans {
    /// The lab `name` value (line 0 when the file has none).
    pub name: Pos,
    /// One per veth end, in [`Topology::veth_ends`] order.
    pub ends: Vec<EndSpans>,
    /// One per IPv4 route, in order.
    pub routes: Vec<RouteSpans>,
    /// One per IPv6 route, in order.
    pub routes6: Vec<RouteSpans>,
    pub nat: NatSpans,
    /// One per `[[service]]` that parsed, in order.
    pub services: Vec<Pos>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct EndSpans {
    /// The `netns` value, or the end's name when it has none.
    pub netns: Pos,
    /// The `bridge` value, or the end's name when it has none.
    pub bridge: Pos,
}

#[derive(Clone, Debug, Default)]
pub(super) struct RouteSpans {
    /// The `netns` value, or the `[[route]]` header when it has none.
    pub netns: Pos,
    pub to: Pos,
    pub via: Pos,
}

#[derive(Clone, Debug, Default)]
pub(super) struct NatSpans {
    pub uplink: Pos,
    /// One per IPv4 `masquerade` entry.
    pub masquerade: Vec<Pos>,
    /// One per IPv6 `masquerade` entry.
    pub masquerade6: Vec<Pos>,
    pub port_range: Pos,
    pub conntrack_size: Pos,
    pub entry: Pos,
    pub service_range: Pos,
}
