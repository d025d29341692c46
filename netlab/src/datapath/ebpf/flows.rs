//! netlab's conntrack read back as flows: a flow's two halves paired,
//! expired flows and flows of removed published ports left out (the
//! datapath removes them when it meets them).

use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{Array, MapData};
use netlab_common::nat::{
    Addr, CT_ASSURED, CT_CONFIRMED, CT_REPLIED, CT_SERVICE, CtEntryOf, DIR_ORIGINAL, FlowKeyOf,
    IPPROTO_TCP, NAT_DNAT, NAT_REFLECT, NAT_SNAT, TcpState, ip_proto_name, publish_epoch_slot,
};

use super::maps;
use crate::{
    datapath::report::{Flow, FlowEnds},
    pins::Pins,
};

/// Every live flow in the lab's conntrack at `now` (`CLOCK_MONOTONIC_COARSE`
/// nanoseconds, the datapath's clock): IPv4's, then IPv6's.
pub fn read(pins: &Pins, now: u64) -> Result<Vec<Flow>> {
    let epochs = maps::publish_epochs(pins)?;
    let mut flows = flows_of(maps::conntrack_entries(pins)?, &epochs, now);
    // A lab brought up before IPv6 had tables of its own has none.
    if pins.map(netlab_common::names::CONNTRACK6).exists() {
        flows.extend(flows_of(maps::conntrack6_entries(pins)?, &epochs, now));
    }
    Ok(flows)
}

/// The live flows of one family's halves.
fn flows_of<A: Addr + Ord>(
    halves: Vec<(FlowKeyOf<A>, CtEntryOf<A>)>,
    epochs: &Array<MapData, u32>,
    now: u64,
) -> Vec<Flow>
where
    for<'k> FlowEnds: From<&'k FlowKeyOf<A>>,
{
    let mut entries = BTreeMap::new();
    for (key, entry) in halves {
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
            && let Some(slot) = publish_epoch_slot(key.proto, u16::from_be(entry.published))
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
            // A Service's flow says so, hairpinned or not.
            nat: if entry.flags & CT_SERVICE != 0 {
                "service"
            } else if entry.nat & NAT_REFLECT != 0 {
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
    flows
}
