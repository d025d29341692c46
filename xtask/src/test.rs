//! `cargo xtask test`: everything CI checks, privileged tests included.
//!
//! Order: the tools, then the cheap checks (fmt, clippy) so a typo fails in
//! seconds, then the build, then `cargo test` with the privileged tests.

use std::{ffi::OsString, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench,
    build::{self, EBPF_OBJECT_ENV, Profile},
    ebpf,
    process::{self, Cmd},
    toolchain,
};

/// Read by the tests: the netlab binary to drive.
const NETLAB_BIN_ENV: &str = "NETLAB_BIN";

/// `extra` is appended to `cargo test`; anything after a `--` in it goes to
/// the test binaries, after `--include-ignored`.
pub fn run(workspace: &Path, extra: &[OsString]) -> Result<()> {
    if !process::is_root()? {
        bail!(
            "`cargo xtask test` runs privileged tests (network namespaces, eBPF) and installs \
             their tools: run it as root, e.g.\n  sudo -E env \"PATH=$PATH\" cargo xtask test"
        );
    }
    toolchain::ensure(&[
        toolchain::EBPF_TOOLCHAIN,
        toolchain::LINT_TOOLS,
        toolchain::TEST_TOOLS,
    ])?;

    step(
        "checking formatting",
        Cmd::cargo()
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(workspace),
    )
    .context("code is not formatted as rustfmt would; run `cargo fmt --all`")?;

    ebpf::clippy(workspace).context("clippy rejected the eBPF crate (see above)")?;
    // Built before linting the host crates so that clippy, the build and the
    // tests all see the same NETLAB_EBPF_OBJECT, naming a file that exists:
    // netlab's build script reruns whenever either changes.
    let ebpf_object = ebpf::build(workspace)?;
    step(
        "linting",
        Cmd::cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "netlab-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"])
            .env(EBPF_OBJECT_ENV, &ebpf_object)
            .current_dir(workspace),
    )
    .context("clippy found problems (see above)")?;

    let netlab = build::netlab(workspace, Profile::Debug, &ebpf_object)?;
    step(
        "testing",
        test_command(extra)
            .env(EBPF_OBJECT_ENV, &ebpf_object)
            .env(NETLAB_BIN_ENV, &netlab)
            .current_dir(workspace),
    )
    .context("tests failed (see above)")?;

    // Last: the benchmark's plumbing end to end (every datapath verified,
    // then timed briefly), and the JSON and SVG it writes. Root is checked
    // above; the bench needs it for its sandbox.
    eprintln!("xtask: bench smoke: cargo xtask bench --quick");
    bench::quick_smoke(workspace, &netlab).context("`cargo xtask bench --quick` failed")
}

fn step(what: &str, cmd: Cmd) -> Result<()> {
    eprintln!("xtask: {what}: {cmd}");
    cmd.run()
}

/// `cargo test` over the host crates (netlab-ebpf only builds for BPF), with
/// the `#[ignore = "privileged: ..."]` tests included.
fn test_command(extra: &[OsString]) -> Cmd {
    let (cargo_args, test_args) = match extra.iter().position(|arg| arg == "--") {
        Some(separator) => (&extra[..separator], &extra[separator + 1..]),
        None => (extra, &[][..]),
    };
    Cmd::cargo()
        .args(["test", "--workspace", "--exclude", "netlab-ebpf"])
        .args(cargo_args)
        .args(["--", "--include-ignored"])
        .args(test_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &Cmd) -> String {
        let line = command.to_string();
        let cargo = process::shell_quote(Cmd::cargo().program());
        line.strip_prefix(&cargo).unwrap_or(&line).to_owned()
    }

    #[test]
    fn extra_args_go_to_cargo_and_after_a_separator_to_the_tests() {
        let extra: Vec<OsString> = ["-p", "netlab", "--", "topology", "--nocapture"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            args(&test_command(&extra)),
            " test --workspace --exclude netlab-ebpf -p netlab -- --include-ignored topology \
             --nocapture"
        );
        assert_eq!(
            args(&test_command(&[])),
            " test --workspace --exclude netlab-ebpf -- --include-ignored"
        );
    }
}
