//! What a running datapath answers when asked, whatever its family: the
//! types [`super::Running`]'s reads return. Commands and front ends
//! (`status`, `metrics`, `conntrack`) show these and never ask which
//! family produced them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlab_common::nat::{FlowKey, FlowKey6};
use serde::{Deserialize, Serialize};

/// The NAT's state and counters, as one datapath reports them. A part a
/// datapath does not have, or could not read, is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatReport {
    /// netlab's conntrack: halves in use (two per flow) and capacity.
    /// `None` where flows live in the kernel's conntrack (iptables).
    pub conntrack: Option<(usize, u32)>,
    /// What happened to new flows and why packets were dropped, by
    /// reason; empty for a datapath without such counters.
    pub counters: Vec<(&'static str, u64)>,
    /// The rules the datapath installed, with their counters (iptables);
    /// empty for a datapath without rules.
    pub rules: Vec<String>,
}

impl NatReport {
    /// Whether the datapath is made of rules (show them, not counters).
    pub fn has_rules(&self) -> bool {
        self.conntrack.is_none()
    }
}

/// Forwarding decisions per (host-side ifindex, reason name), summed over
/// CPUs; only the `redirect` datapath makes them.
pub type Redirects = BTreeMap<(u32, &'static str), u64>;

/// The flows a datapath tracks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flows {
    /// netlab's own conntrack: every live flow.
    Listed(Vec<Flow>),
    /// The flows are the kernel's, in nf_conntrack (`conntrack -L`).
    InKernelConntrack,
}

/// The addresses and ports of one direction of a flow, as they appear on the wire.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowEnds {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl From<&FlowKey> for FlowEnds {
    fn from(k: &FlowKey) -> Self {
        FlowEnds {
            src: Ipv4Addr::from(u32::from_be(k.saddr)).into(),
            dst: Ipv4Addr::from(u32::from_be(k.daddr)).into(),
            sport: u16::from_be(k.sport),
            dport: u16::from_be(k.dport),
        }
    }
}

impl From<&FlowKey6> for FlowEnds {
    fn from(k: &FlowKey6) -> Self {
        FlowEnds {
            src: ipv6(&k.saddr).into(),
            dst: ipv6(&k.daddr).into(),
            sport: u16::from_be(k.sport),
            dport: u16::from_be(k.dport),
        }
    }
}

/// An IPv6 address from its four words as they sit in the header.
fn ipv6(words: &[u32; 4]) -> Ipv6Addr {
    let mut octets = [0; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

/// A tracked flow, as `netlab conntrack` shows it (`--json` prints these,
/// and the tests read them back).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub proto: String,
    /// TCP state, or empty for UDP and ICMP.
    pub state: String,
    /// `service` (a Service opened it), `dnat`, `snat`, `hairpin`, or `-`
    /// (tracked, not translated: the host's own connections).
    pub nat: String,
    /// How the flow's first packet looked.
    pub original: FlowEnds,
    /// How its replies look on the wire (before they are translated back).
    pub reply: FlowEnds,
    pub age_s: u64,
    /// Seconds of idleness left before the flow expires.
    pub expires_in_s: u64,
    pub replied: bool,
    /// Assured, as nf_conntrack says (kept in the table new flows never
    /// evict).
    pub assured: bool,
    /// Its first packet has not been seen leaving yet (a flow opened on
    /// the way in waits for that, as nf_conntrack confirms a flow).
    pub unconfirmed: bool,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}
