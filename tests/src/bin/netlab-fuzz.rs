//! The fuzzer's long run, as `cargo xtask fuzz` starts it (as root, with
//! `NETLAB_BIN` naming the netlab to drive):
//!
//! `netlab-fuzz [--seed N] [--packets N] [--seconds N] [--batch N] [--self-check]`
//!
//! `--self-check` runs the iptables reference twice instead, side by side:
//! any difference is noise in the harness, not a datapath bug.
//!
//! Prints probes tried, differences from the iptables reference by class
//! and datapath, invariant violations, and examples. Exits 0 only when
//! nothing differs and no invariant broke.
//!
//! For a closer look, on stderr: `NETLAB_FUZZ_SHOW_ALL=1` prints every
//! differing line with its class (kept on purpose or not),
//! `NETLAB_FUZZ_DUMP=1` every line every datapath saw.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use netlab_tests::conformance::fuzz::{self, Budget};

fn parse(args: &[String]) -> Result<(Budget, bool)> {
    let mut budget = Budget {
        seed: fuzz::DEFAULT_SEED,
        packets: 2000,
        seconds: 300,
        batch: 20,
    };
    let mut self_check = false;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--self-check" {
            self_check = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--seed" => budget.seed = number()?,
            "--packets" => budget.packets = usize::try_from(number()?)?,
            "--seconds" => budget.seconds = number()?,
            "--batch" => budget.batch = usize::try_from(number()?)?.max(1),
            other => bail!(
                "unknown option {other}; use --seed, --packets, --seconds, --batch, --self-check"
            ),
        }
    }
    Ok((budget, self_check))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (budget, self_check) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("netlab-fuzz: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = netlab_tests::require_root() {
        eprintln!("netlab-fuzz: {e:#}");
        return ExitCode::from(2);
    }
    println!(
        "netlab-fuzz: seed {}, at most {} probes and {} s per datapath, batches of {}",
        budget.seed, budget.packets, budget.seconds, budget.batch
    );
    let summary = if self_check {
        println!("netlab-fuzz: self-check: the iptables reference twice, compared");
        fuzz::self_check(budget)
    } else {
        fuzz::run(budget, &fuzz::accepted())
    };
    print!("{}", summary.report());
    if summary.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
