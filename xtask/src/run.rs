//! `cargo xtask run`: build, then run netlab as root with the user's arguments.

use std::{ffi::OsString, path::Path, process::ExitCode};

use anyhow::{Result, bail};

use crate::{
    build::{self, Profile},
    process::{self, Cmd},
    toolchain,
};

pub fn run(workspace: &Path, profile: Profile, args: &[OsString]) -> Result<ExitCode> {
    // A fresh machine lacks what the README's walkthrough runs next.
    toolchain::ensure(&[toolchain::WALKTHROUGH_TOOLS])?;
    let netlab_bin = build::build(workspace, profile)?;
    let netlab = Cmd::new(&netlab_bin).args(args);
    // netlab creates namespaces and loads eBPF: it needs root.
    let cmd = if process::is_root()? {
        netlab
    } else if process::which("sudo").is_some() {
        Cmd::new("sudo").arg("-E").arg(&netlab_bin).args(args)
    } else {
        bail!("netlab needs root and sudo is not installed; as root, run:\n  {netlab}");
    };
    eprintln!("xtask: running: {cmd}");
    Ok(process::exit_code(cmd.status()?))
}
