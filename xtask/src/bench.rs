//! `cargo xtask bench`: benchmarks of netlab's labs.

use std::process::ExitCode;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchKind {
    /// Time to bring a lab up.
    Up,
}

pub fn run(kind: BenchKind) -> ExitCode {
    match kind {
        BenchKind::Up => {
            eprintln!("xtask: bench up: not implemented yet");
            ExitCode::FAILURE
        }
    }
}
