//! `netlab conntrack`: the eBPF datapath's conntrack table, as
//! `conntrack -L` shows the kernel's.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use netlab_common::nat::{
    CT_ASSURED, CT_CONFIRMED, CT_REPLIED, DIR_ORIGINAL, FlowKey, IPPROTO_TCP, NAT_DNAT,
    NAT_REFLECT, NAT_SNAT, TcpState,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::ebpf::{ip_proto_name, maps},
    pins::Pins,
    state::LabState,
    sys,
    topology::Family,
};

/// The addresses and ports of one direction of a flow, as they appear on the wire.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowEnds {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl From<&FlowKey> for FlowEnds {
    fn from(k: &FlowKey) -> Self {
        FlowEnds {
            src: Ipv4Addr::from(u32::from_be(k.saddr)),
            dst: Ipv4Addr::from(u32::from_be(k.daddr)),
            sport: u16::from_be(k.sport),
            dport: u16::from_be(k.dport),
        }
    }
}

/// A tracked flow, as `netlab conntrack` shows it (`--json` prints these,
/// and the tests read them back).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub proto: String,
    /// TCP state, or empty for UDP and ICMP.
    pub state: String,
    /// `dnat`, `snat`, `hairpin`, or `-` (tracked, not translated: the
    /// host's own connections).
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

/// Every live flow in the lab's conntrack (expired ones are skipped; the
/// datapath removes them when it meets them).
pub fn flows(lab: &str) -> Result<Vec<Flow>> {
    let record = LabState::load(lab)?.with_context(|| format!("lab `{lab}` is not up"))?;
    if record.datapath.family() == Family::Iptables {
        bail!(
            "lab `{lab}` runs the iptables datapath, whose flows are in the kernel's conntrack: \
             run `conntrack -L` (Debian package conntrack)"
        );
    }
    let now = sys::monotonic_coarse_ns();
    let pins = Pins::of(lab);
    let epochs = maps::publish_epochs(&pins)?;
    let mut entries = BTreeMap::new();
    for (key, entry) in maps::conntrack_entries(&pins)? {
        entries.insert(
            (key.saddr, key.daddr, key.sport, key.dport, key.proto),
            (key, entry),
        );
    }
    let mut flows = Vec::new();
    for (key, entry) in entries.values() {
        if entry.direction != DIR_ORIGINAL {
            continue;
        }
        // A removed published port's flows are dead: the datapath removes
        // them at their next packet.
        if entry.published != 0
            && let Some(slot) =
                netlab_common::nat::publish_epoch_slot(key.proto, u16::from_be(entry.published))
            && epochs.get(&slot, 0).is_ok_and(|epoch| epoch != entry.epoch)
        {
            continue;
        }
        let reply = entries
            .get(&(
                entry.peer.saddr,
                entry.peer.daddr,
                entry.peer.sport,
                entry.peer.dport,
                entry.peer.proto,
            ))
            .map(|(_, e)| *e)
            .unwrap_or_default();
        // Each half keeps its own direction's last packet.
        let timeout = u64::from(entry.timeout_s) * 1_000_000_000;
        let idle = now.saturating_sub(entry.last_seen_ns.max(reply.last_seen_ns));
        if idle > timeout {
            continue;
        }
        flows.push(Flow {
            proto: ip_proto_name(key.proto).unwrap_or("?").to_owned(),
            state: if key.proto == IPPROTO_TCP {
                TcpState::from_u8(entry.tcp_state).name()
            } else {
                ""
            }
            .to_owned(),
            nat: if entry.nat & NAT_REFLECT != 0 {
                "hairpin"
            } else if entry.nat & NAT_DNAT != 0 {
                "dnat"
            } else if entry.nat & NAT_SNAT != 0 {
                "snat"
            } else {
                "-"
            }
            .to_owned(),
            original: FlowEnds::from(key),
            reply: FlowEnds::from(&entry.peer),
            age_s: now.saturating_sub(entry.created_ns) / 1_000_000_000,
            expires_in_s: (timeout - idle) / 1_000_000_000,
            replied: entry.flags & CT_REPLIED != 0,
            assured: entry.flags & CT_ASSURED != 0,
            unconfirmed: entry.flags & CT_CONFIRMED == 0,
            packets: entry.packets,
            bytes: entry.bytes,
            reply_packets: reply.packets,
            reply_bytes: reply.bytes,
        });
    }
    Ok(flows)
}

/// `conntrack -L` style lines.
pub fn render(flows: &[Flow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in flows {
        let ends = |t: &FlowEnds| {
            if f.proto == "icmp" {
                format!("src={} dst={} id={}", t.src, t.dst, t.sport.max(t.dport))
            } else {
                format!(
                    "src={} dst={} sport={} dport={}",
                    t.src, t.dst, t.sport, t.dport
                )
            }
        };
        let _ = writeln!(
            out,
            "{:<4} {:>6}s {:<11} {} packets={} bytes={} {} packets={} bytes={} {}{}{}[{}] age={}s",
            f.proto,
            f.expires_in_s,
            f.state,
            ends(&f.original),
            f.packets,
            f.bytes,
            ends(&f.reply),
            f.reply_packets,
            f.reply_bytes,
            if f.replied { "" } else { "[UNREPLIED] " },
            if f.assured { "[ASSURED] " } else { "" },
            if f.unconfirmed { "[UNCONFIRMED] " } else { "" },
            f.nat,
            f.age_s,
        );
    }
    let _ = writeln!(out, "{} flows", flows.len());
    out
}
