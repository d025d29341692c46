//! The seeded differential fuzzer (filled in below).
pub const DEFAULT_SEED: u64 = 1;
