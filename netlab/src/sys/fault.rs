//! The crash hook of the privileged tests: `NETLAB_FAULT_AFTER_STEPS=N`
//! aborts a command right after its N-th change to the kernel, as a
//! `kill -9` would, so tests can prove that what follows (`down`, a CNI
//! DEL) cleans up after it. Unset in normal use.

use std::sync::atomic::{AtomicU32, Ordering};

/// The variable.
pub const FAULT_ENV: &str = "NETLAB_FAULT_AFTER_STEPS";

static STEPS: AtomicU32 = AtomicU32::new(0);

/// Marks a change to the kernel made (`what`, for the log); aborts the
/// process when the hook says this is the last.
pub fn step(what: &str) {
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    log::debug!("step {n}: {what}");
    if let Some(limit) = std::env::var(FAULT_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        && n >= limit
    {
        eprintln!("netlab: {FAULT_ENV}={limit}: aborting after step {n} ({what})");
        std::process::abort();
    }
}
