//! The eBPF datapaths (`bridge` and `redirect`): netlab's programs in
//! `netlab-ebpf`, driven from here.
//!
//! - [`loader`]: loads the object, attaches and pins every program of it
//!   (TC filters, cgroup sock_addr, the trace session's programs and
//!   tracepoints);
//! - [`maps`]: typed openers and readers of the pinned maps;
//! - [`config`]: fills the configuration maps from the topology and the
//!   published ports;
//! - [`services`]: Services in the maps (address, Maglev tables, backends),
//!   with `maglev` filling the tables;
//! - [`flows`]: the conntrack tables read back as flows;
//! - [`object`]: what the loader reads of the object itself (its CO-RE
//!   relocations).

pub mod config;
pub mod flows;
pub mod loader;
mod maglev;
pub mod maps;
pub mod object;
pub mod services;

pub use loader::EBPF_OBJECT;
