//! The eBPF datapaths (`bridge` and `redirect`): netlab's programs in
//! `netlab-ebpf`, driven from here.
//!
//! - [`loader`]: loads the object, attaches and pins every program of it
//!   (TC filters, cgroup sock_addr, the trace session's programs and
//!   tracepoints);
//! - [`maps`]: typed openers and readers of the pinned maps;
//! - [`config`]: fills the configuration maps from the topology and the
//!   published ports;
//! - [`object`]: what the loader reads of the object itself (its CO-RE
//!   relocations).

pub mod config;
pub mod loader;
pub mod maps;
pub mod object;

pub use loader::EBPF_OBJECT;

use netlab_common::nat::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// The name of an IP protocol number the datapath reports (conntrack
/// entries, trace events); `None` for one it does not know by name.
pub fn ip_proto_name(proto: u8) -> Option<&'static str> {
    match proto {
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        IPPROTO_ICMP => Some("icmp"),
        _ => None,
    }
}
