//! `netlab conntrack`: the eBPF datapath's conntrack table, as
//! `conntrack -L` shows the kernel's.

use anyhow::{Result, bail};

pub use crate::datapath::{Flow, FlowEnds};
use crate::{
    datapath::{Flows, Running},
    state::LabState,
};

/// Every live flow in the lab's conntrack (expired ones are skipped; the
/// datapath removes them when it meets them).
pub fn flows(lab: &str) -> Result<Vec<Flow>> {
    let record = LabState::require(lab)?;
    let topo = record.topology()?;
    match Running::new(&topo, record.iptables).flows()? {
        Flows::Listed(flows) => Ok(flows),
        Flows::InKernelConntrack => bail!(
            "lab `{lab}` runs the iptables datapath, whose flows are in the kernel's conntrack: \
             run `conntrack -L` (Debian package conntrack)"
        ),
    }
}

/// `conntrack -L` style lines.
pub fn render(flows: &[Flow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in flows {
        let ends = |t: &FlowEnds| {
            if f.proto == "icmp" || f.proto == "icmp6" {
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
