//! What the host already has (its routes, addresses and the addresses it
//! talks to), as plain data: the caller reads it over netlink, and
//! [`super::check_host`] refuses lab subnets that would collide with it.

use super::model::{Ipv4Net, Ipv6Net};

/// What the host already has, read over netlink by the caller (pure data so
/// it is unit-testable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNetwork {
    pub routes: Vec<HostRoute>,
    pub addresses: Vec<HostAddress>,
    /// The same for IPv6 (link-local ones left out: every interface has
    /// them, and a lab may not use them).
    pub routes6: Vec<HostRoute6>,
    pub addresses6: Vec<HostAddress6>,
    /// Addresses the host talks to that no route of its own names: its
    /// nameservers, the peers of its connections. A lab subnet holding one
    /// would capture that traffic (a more specific route wins over the
    /// default route that reaches them today).
    pub in_use: Vec<AddressInUse>,
}

/// An address the host is using, and why it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressInUse {
    pub addr: std::net::IpAddr,
    /// E.g. "a nameserver in /etc/resolv.conf".
    pub why: String,
}

/// A route of the host's main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoute {
    pub dst: Ipv4Net,
    /// Output interface; `None` for routes without one (blackhole, multipath).
    pub dev: Option<String>,
}

/// An address on a host interface, with its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    pub dev: String,
    pub net: Ipv4Net,
}

/// An IPv6 route of the host's main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoute6 {
    pub dst: Ipv6Net,
    pub dev: Option<String>,
}

/// An IPv6 address on a host interface, with its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress6 {
    pub dev: String,
    pub net: Ipv6Net,
}
