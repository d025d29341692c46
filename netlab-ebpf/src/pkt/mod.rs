//! The packet-access layer: everything below the datapath features, as
//! Cilium's `bpf/include/bpf/ctx` and `bpf/lib/{eth,ipv4,l4,csum}.h`.
//!
//! - [`ctx`]: the TC context (ifindex, bounds-checked direct packet reads)
//!   and the one place a map value pointer becomes a reference.
//! - [`eth`], [`ipv4`], [`ipv6`], [`l4`]: header layouts and named field
//!   offsets.
//! - [`csum`]: field rewrites with their checksum fix-ups, each failing
//!   with a typed drop reason.
//! - [`plain`]: the fast path's view of a plain TCP/UDP packet, read and
//!   written back whole (a subset of what the parser accepts, by its rules).
//! - [`xdp`]: the XDP entry's bounds-checked reads and writes.
//! - [`parse`]: the one parser. Its [`Parsed`](parse::Parsed) result feeds
//!   NAT, redirect, trace and the trace filter; nobody else reads headers.
//!   [`parse6`] is its IPv6 half, for NAT66.
//!
//! Features (`nat`, `conntrack`, `redirect`, `trace`, ...) sit on top and
//! never spell an offset of their own.

pub mod csum;
pub mod ctx;
pub mod eth;
pub mod ipv4;
pub mod ipv6;
pub mod l4;
pub mod parse;
pub mod parse6;
pub mod plain;
pub mod plain6;
pub mod xdp;
