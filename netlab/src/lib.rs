//! netlab's userspace: builds labs over netlink and drives the eBPF datapath.
//!
//! - [`topology`]: the lab as validated data (pure, unit-tested).
//! - [`netns`], [`netlink`]: namespaces and rtnetlink requests.
//! - [`lab`]: `up` and `down`, with the ownership rules.
//! - [`datapath`]: loading, attaching and pinning the eBPF programs.
//! - [`nat`]: the eBPF NAT's maps: configuration, published ports, conntrack.
//! - [`state`]: the record under `/run/netlab/` that survives a crash.
//! - [`trace`]: live per-packet events from the datapath (`netlab trace`).
//! - [`status`], [`exec`], [`cli`]: the commands.

pub mod cli;
pub mod datapath;
pub mod exec;
pub mod iptables;
pub mod lab;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod state;
pub mod status;
pub mod sysctl;
pub mod topology;
pub mod trace;
