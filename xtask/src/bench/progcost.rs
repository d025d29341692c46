//! What each of netlab's programs costs per packet, from the kernel's own
//! accounting: `kernel.bpf_stats_enabled=1` makes it sum every program's
//! run time and run count (`bpftool prog show` shows the same two figures).
//! Switched on only around one measured run, and restored even on error.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::ProgramInfo;
use netlab_common::names;

/// The programs a packet of the lab crosses (nothing else runs on a hop
/// while nobody traces): the XDP entry where the lab has one, and the TC
/// programs (their full paths are tail calls, accounted to them).
pub const PROGRAMS: [&str; 3] = [names::XDP_UPLINK, names::NAT_INGRESS, names::NAT_EGRESS];

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Switches the kernel's program accounting on while alive; restores what
/// was there when dropped.
pub struct StatsOn {
    before: String,
}

impl StatsOn {
    pub fn new() -> Result<StatsOn> {
        let before =
            fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(StatsOn {
            before: before.trim().to_owned(),
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(err) = fs::write(STATS_SYSCTL, &self.before) {
            eprintln!(
                "bench: could not restore {STATS_SYSCTL} to {}: {err}",
                self.before
            );
        }
    }
}

/// Run time and run count of each program, as pinned under `pins_dir`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(Vec<(&'static str, u64, u64)>);

impl Snapshot {
    pub fn take(pins: &netlab::pins::Pins) -> Result<Snapshot> {
        let mut programs = Vec::new();
        for name in PROGRAMS {
            let pin = pins.program(name);
            if !Path::new(&pin).exists() {
                continue;
            }
            let info = ProgramInfo::from_pin(&pin)
                .with_context(|| format!("reading {}", pin.display()))?;
            programs.push((name, info.run_time().as_nanos() as u64, info.run_count()));
        }
        Ok(Snapshot(programs))
    }

    /// Nanoseconds per run and runs of each program between `self` and
    /// `later`; programs that did not run are left out.
    pub fn per_run(&self, later: &Snapshot) -> Vec<(&'static str, f64, u64)> {
        later
            .0
            .iter()
            .filter_map(|&(name, ns, runs)| {
                let (_, ns0, runs0) = self.0.iter().find(|(n, ..)| *n == name)?;
                let runs = runs.checked_sub(*runs0)?;
                (runs > 0).then(|| (name, (ns.saturating_sub(*ns0)) as f64 / runs as f64, runs))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_run_is_the_difference_over_runs() {
        let before = Snapshot(vec![("nat_ingress", 1_000, 10), ("nat_egress", 0, 0)]);
        let after = Snapshot(vec![("nat_ingress", 21_000, 110), ("nat_egress", 0, 0)]);
        assert_eq!(before.per_run(&after), vec![("nat_ingress", 200.0, 100)]);
    }
}
