//! The differential conformance harness (issue 9): the same scripted
//! traffic on every datapath, each in its own [`crate::Sandbox`], with what
//! every observation point received compared against the reference.
//!
//! - [`packet`]: frames built and parsed byte by byte;
//! - [`observe`]: frames to comparable lines, per-flow port classes, the
//!   records and their difference;
//! - [`lab`]: one datapath's lab, captured and driven;
//! - [`fuzz`]: the seeded differential fuzzer over the same lab.
//!
//! A case is a function from a datapath to a [`Record`]. [`run_case`] runs
//! it on every datapath, compares every eBPF datapath with the case's
//! reference (netlab's `iptables` datapath unless said otherwise), and
//! fails on any difference not listed as intended and on any broken
//! invariant — a lab address seen by `outside` first of all.

pub mod fuzz;
pub mod lab;
pub mod observe;
pub mod packet;
pub mod scripts;

use std::{
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

pub use self::observe::{Difference, Record};

/// Every datapath, reference first.
pub const DATAPATHS: [&str; 3] = ["iptables", "bridge", "redirect"];

/// What a case's datapaths are compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// netlab's `iptables` datapath: netfilter is right here.
    Iptables,
    /// The `bridge` datapath (e.g. where only `redirect` does things its
    /// own way); `iptables` is compared with it too.
    Bridge,
    /// Netfilter as configured is wrong here too: only the case's absolute
    /// requirements count. Differences are shown, for information.
    Absolute,
}

/// A difference kept on purpose.
pub struct Intended {
    pub case: &'static str,
    pub datapath: &'static str,
    /// Part of the place (`step ... @ point` or `note ...`) it is about.
    pub place: &'static str,
    /// `Some("ttl=")`: only a difference in this field of the lines is
    /// intended (lines are equal once the `ttl=...` word is dropped); None:
    /// any difference at the place.
    pub only_field: Option<&'static str>,
    pub reason: &'static str,
}

impl Intended {
    fn covers(&self, case: &str, datapath: &str, difference: &Difference) -> bool {
        if self.case != case || self.datapath != datapath || !difference.place.contains(self.place)
        {
            return false;
        }
        let Some(field) = self.only_field else {
            return true;
        };
        let without = |lines: &[String]| -> Vec<String> {
            let mut out: Vec<String> = lines
                .iter()
                .map(|l| {
                    l.split(' ')
                        .filter(|w| !w.starts_with(field))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            out.sort();
            out
        };
        without(&difference.expected) == without(&difference.got)
    }
}

/// A conformance case.
pub struct Case {
    pub name: &'static str,
    pub reference: Reference,
    pub run: fn(&str) -> Result<Record>,
}

/// What [`run_case`] found.
pub struct Outcome {
    pub report: String,
    pub failed: bool,
}

/// Runs `case` on every datapath and compares; `intended` lists the
/// differences kept on purpose (any case).
pub fn run_case(case: &Case, intended: &[Intended]) -> Outcome {
    let mut report = format!("conformance case `{}`\n", case.name);
    let mut failed = false;
    let mut records = Vec::new();
    // The datapaths run at once, each in its own sandbox: a case mostly
    // waits (for timeouts and quiet captures), so this divides its time.
    let runs: Vec<(&str, Result<Record>, Duration)> = thread::scope(|scope| {
        let handles: Vec<_> = DATAPATHS
            .iter()
            .map(|datapath| {
                scope.spawn(move || {
                    let start = Instant::now();
                    let result = (case.run)(datapath);
                    (*datapath, result, start.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(DATAPATHS)
            .map(|(handle, datapath)| {
                handle.join().unwrap_or_else(|_| {
                    (
                        datapath,
                        Err(anyhow::anyhow!("the case panicked")),
                        Duration::ZERO,
                    )
                })
            })
            .collect()
    });
    for (datapath, result, elapsed) in runs {
        match result {
            Ok(record) => {
                let _ = writeln!(report, "  ran on {datapath} in {} ms", elapsed.as_millis());
                for violation in &record.violations {
                    failed = true;
                    let _ = writeln!(report, "FAIL [{datapath}] {violation}");
                }
                records.push((datapath, record));
            }
            Err(e) => {
                failed = true;
                let _ = writeln!(report, "FAIL [{datapath}] the case could not run: {e:#}");
            }
        }
    }
    let reference = match case.reference {
        Reference::Iptables | Reference::Absolute => "iptables",
        Reference::Bridge => "bridge",
    };
    let Some((_, expected)) = records.iter().find(|(d, _)| *d == reference) else {
        let _ = writeln!(
            report,
            "no record from the reference datapath `{reference}`"
        );
        return Outcome {
            report,
            failed: true,
        };
    };
    for (datapath, got) in &records {
        if *datapath == reference {
            continue;
        }
        for difference in observe::diff(expected, got) {
            let kept = intended
                .iter()
                .find(|i| i.covers(case.name, datapath, &difference));
            let verdict = match (kept, case.reference) {
                (Some(i), _) => format!("intended ({})", i.reason),
                (None, Reference::Absolute) => "for information".to_owned(),
                (None, _) => {
                    failed = true;
                    "FAIL".to_owned()
                }
            };
            let _ = write!(
                report,
                "{verdict} [{datapath} vs {reference}] difference\n{difference}"
            );
        }
    }
    if !failed {
        report.push_str("  passed\n");
    }
    Outcome { report, failed }
}
