//! A trace session, on any datapath: the NAT programs' hops where they
//! run, watching programs on every other veth end (an iptables lab's
//! included), the fate tracepoints, and the switch and maps they share.
//! `netlab trace` reaches them through here only.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData};
use netlab_common::trace::{Filter, TraceConfig};

use super::ebpf::{
    loader::{self, Attachment},
    maps,
};
pub use super::ebpf::{
    loader::{RING_BYTES_ENV, TraceSession},
    maps::TraceStats as Counts,
};
use crate::{pins::Pins, topology::Topology};

/// Where a session's watching programs go: the veth ends without a NAT
/// program.
pub struct Watch(Vec<Attachment>);

/// The watching programs' places for `topo`.
pub fn watch(topo: &Topology) -> Watch {
    Watch(loader::watch_plan(topo))
}

impl Watch {
    /// No places: for a lab whose interfaces are unknown (its filters go
    /// with its interfaces at `down`).
    pub fn none() -> Watch {
        Watch(Vec::new())
    }
}

/// A session's ring size, from [`RING_BYTES_ENV`] (checked before anything
/// changes).
pub fn ring_bytes() -> Result<u32> {
    loader::ring_bytes()
}

/// Loads the session's programs with `filter` compiled in and puts them
/// where they go (see [`loader::start_trace`]).
pub fn start(
    pins: &Pins,
    filter: &Filter,
    watch: &Watch,
    ring_bytes: u32,
    early: super::EarlyLoader,
) -> Result<TraceSession> {
    loader::start_trace(pins, filter, &watch.0, ring_bytes, early)
}

/// Empties the hop slot and removes the watching programs (a session's
/// end, or what a killed one left).
pub fn stop(pins: &Pins, watch: &Watch) -> Result<()> {
    loader::stop_trace(pins, &watch.0)
}

/// Tells the programs which place (namespace number) each interface is in.
pub fn set_places(pins: &Pins, places: &BTreeMap<u32, u32>) -> Result<()> {
    let mut map = maps::trace_ifaces(pins)?;
    for (ifindex, place) in places {
        map.insert(ifindex, place, 0)?;
    }
    Ok(())
}

/// Forgets every journey of an earlier session (see `TRACE_LIVE`).
pub fn reset_journeys(pins: &Pins) -> Result<()> {
    maps::trace_live(pins)?
        .set(0, 0, 0)
        .context("resetting the journeys' stamp")
}

/// Turns tracing off in the switch (`netlab trace --off`).
pub fn switch_off(pins: &Pins) -> Result<()> {
    let mut config = maps::trace_config(pins)?;
    let mut value = config.get(&0, 0)?;
    value.enabled = 0;
    config.set(0, value, 0)?;
    Ok(())
}

/// Turns tracing on while alive; off when dropped, whatever happened.
pub struct Switch {
    config: Array<MapData, TraceConfig>,
    value: TraceConfig,
    on: bool,
}

impl Switch {
    /// Turns tracing on with `value`.
    pub fn on(pins: &Pins, value: TraceConfig) -> Result<Switch> {
        let mut config = maps::trace_config(pins)?;
        config.set(0, value, 0).context("enabling tracing")?;
        Ok(Switch {
            config,
            value,
            on: true,
        })
    }

    /// Turns tracing off now (the drop does it otherwise).
    pub fn off(&mut self) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        let off = TraceConfig {
            enabled: 0,
            ..self.value
        };
        self.config
            .set(0, off, 0)
            .context("switching tracing off; run `netlab trace --off`")?;
        self.on = false;
        Ok(())
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Err(err) = self.off() {
            eprintln!("netlab trace: {err:#}");
        }
    }
}
