//! The reference datapath (`datapath = "iptables"`): the same NAT as the eBPF
//! datapath, built from iptables rules modelled on Docker's bridge rule set,
//! so a benchmark can compare the two and tests can replay the same traffic
//! through both. This is the one place netlab drives iptables.
//!
//! # What it installs
//!
//! Three chains of the lab's own, and jumps into them from the built-in chains:
//!
//! - `nat` `NL-<lab>-DNAT`, entered from `PREROUTING` (traffic arriving from
//!   the uplink or a lab namespace) and from `OUTPUT` (the host's own
//!   connections, as Docker without its userland proxy). Each jump carries
//!   `-d ADDR/32 -m addrtype --dst-type LOCAL`, one jump per host address of
//!   the lab (bridges and host-side veth ends, like the eBPF datapath's
//!   `LOCAL_ADDRS`), so the host's own interfaces are never published. The
//!   chain holds one `DNAT` per published port, to [`Topology::backend_addr`](crate::topology::Topology::backend_addr).
//! - `nat` `NL-<lab>-POST`, entered from `POSTROUTING`: per masquerade subnet,
//!   Docker's `-s SUBNET ! -o BRIDGE -j MASQUERADE` (separate tcp and udp rules
//!   for `--to-ports` with the topology's `port_range`, and one for icmp; none
//!   when the lab has no uplink, as the eBPF datapath); then Docker's hairpin
//!   rule `-s BACKEND -d BACKEND -p PROTO --dport PORT -j MASQUERADE` per
//!   published port, so a namespace reaching its own published port gets the
//!   replies back through the host.
//! - `filter` `NL-<lab>-FWD`, entered from `FORWARD`: accepts replies to the
//!   lab's subnets, new connections DNATed to a published backend, and
//!   everything from the lab's subnets, so the lab works where `FORWARD`'s
//!   policy is DROP. The uplink's subnet is not a lab subnet: the "world"
//!   reaches the lab only through published ports.
//!
//! One difference from the eBPF datapath, kept because it is Docker's rule:
//! the eBPF NAT masquerades only what leaves through the uplink, while
//! `! -o BRIDGE` also masquerades lab traffic leaving through any other host
//! interface. Traffic between the lab and its uplink, which is what netlab's
//! tests and benchmarks send, is translated the same way by both.
//!
//! # How it is applied
//!
//! Every change is `iptables-restore --noflush` input fed on stdin: one
//! transaction per table (`nat`, then `filter`). Declaring a lab chain in that
//! input creates it, or empties it if it exists, so the chain's whole contents
//! are rewritten each time and rerunning converges. Built-in chains are never
//! flushed: the jumps are inserted at their top (`-I`) only when
//! `iptables-save` does not already show them, and stale or duplicate jumps
//! into the lab's chains are deleted one by one (`-D` with the saved rule), so
//! no other rule is touched. Rewriting a chain resets its counters.
//!
//! [`Variant::Nft`] runs `iptables-nft-restore`, `iptables-nft-save` and
//! `iptables-nft`; [`Variant::Legacy`] their `-legacy` twins (Debian package
//! `iptables`). Keep a lab's rules in one backend: [`install`] refuses a lab
//! whose chains exist in the other one. Only `-save` reads the other backend,
//! and without `-t` it lists existing tables without creating any.
//!
//! # Chain names
//!
//! iptables allows 28 characters. `NL-<lab>-DNAT` fits for labs of up to 20
//! characters; a longer name becomes `NL-<first 11 characters>.<FNV-1a hash of
//! the whole name, 8 hex digits>`, e.g. `NL-abcdefghijk.89abcdef-DNAT`. Lab
//! names never contain `.`, so a hashed name never equals a plain one.
//!
//! # br_netfilter
//!
//! With `net.bridge.bridge-nf-call-iptables=1` (on in the host, see
//! BENCHMARKING.md; the setting is per network namespace) frames bridged
//! between namespaces of the lab also walk `nat` PREROUTING/POSTROUTING,
//! `filter` FORWARD and conntrack, with the bridge as their in and out
//! interface. What that means here (each point checked by tests/tests/nat.rs):
//! - masquerade is `-o UPLINK` only, so bridged traffic is never
//!   masqueraded; `NL-<lab>-FWD` accepts lab traffic out of the lab's own
//!   interfaces (bridged traffic included) even under a DROP policy, and
//!   drops the rest: the lab is closed, as with the eBPF datapaths;
//! - every bridged flow costs a conntrack entry and a walk of these chains,
//!   which the eBPF datapath does not pay: benchmarks must state the setting;
//! - a namespace reaching *another* namespace's published port on the same
//!   bridge (red → 198.18.0.1:8080 → blue) works only with it: blue's reply
//!   is bridged straight to red, and only br_netfilter lets conntrack undo
//!   the DNAT on it (Docker loads br_netfilter for this reason);
//! - hairpin (blue → 198.18.0.1:8080 → blue) needs the bridge port's
//!   hairpin mode with it: the DNAT happens while the frame is being
//!   bridged, and the frame must leave by the port it came in on
//!   (`ip link set dev veth-blue-br type bridge_slave hairpin on`; Docker
//!   sets it when its userland proxy is off). This module leaves links
//!   alone: the lab's link setup sets hairpin mode on bridge ports for this
//!   datapath. With br_netfilter off, hairpin works without it.
//!
//! # Where things are
//!
//! - `naming`: the lab's chain names;
//! - `plan`: pure planning, from the topology and the published ports to
//!   the `iptables-restore` input (what to add, what to delete);
//! - `exec`: the binaries of each [`Variant`], `-save` and `-restore`.
//!
//! # Testing
//!
//! The unit tests are pure (planning and naming). The live behaviour (published ports from
//! outside, the host and hairpin; masquerade; removal leaving iptables as it
//! was) is checked through the CLI by `tests/tests/nat.rs`, which runs every
//! NAT scenario on this datapath too.

mod exec;
mod naming;
mod plan;

pub use exec::{
    VARIANT_ENV, Variant, cut_flows, cut_service_flows, install, remove, rules, sync_published,
};
pub use naming::{Chains, MAX_CHAIN_NAME, chains};
pub use plan::ruleset;
