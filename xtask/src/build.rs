//! `cargo xtask build`: the eBPF object, then netlab with it embedded.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{ebpf, process::Cmd};

/// Read by `netlab/build.rs`, which embeds the object it names.
pub const EBPF_OBJECT_ENV: &str = "NETLAB_EBPF_OBJECT";

#[derive(Clone, Copy, Debug)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn from_release_flag(release: bool) -> Self {
        if release { Self::Release } else { Self::Debug }
    }
}

/// Builds the eBPF object, then netlab; returns netlab's absolute path.
pub fn build(workspace: &Path, profile: Profile) -> Result<PathBuf> {
    let ebpf_object = ebpf::build(workspace)?;
    netlab(workspace, profile, &ebpf_object)
}

/// Builds netlab with `ebpf_object` embedded; returns the binary's path.
pub fn netlab(workspace: &Path, profile: Profile, ebpf_object: &Path) -> Result<PathBuf> {
    let mut cmd = Cmd::cargo()
        .args([
            "build",
            "-p",
            "netlab",
            "--message-format=json-render-diagnostics",
        ])
        .env(EBPF_OBJECT_ENV, ebpf_object)
        .current_dir(workspace);
    if let Profile::Release = profile {
        cmd = cmd.arg("--release");
    }
    eprintln!("xtask: building netlab: {cmd}");
    // cargo knows where the binary went (target dir, profile); ask it.
    let messages = cmd.run_capturing_stdout()?;
    executable(&messages, "netlab")
        .with_context(|| format!("`{cmd}` reported no `netlab` executable"))
}

/// The executable of bin target `name` among cargo's JSON messages.
pub fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == name
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bin_among_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"netlab_common","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"build-script-executed","package_id":"x"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"netlab","kind":["bin"]},"executable":"/w/target/debug/netlab"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executable(messages, "netlab"),
            Some(PathBuf::from("/w/target/debug/netlab"))
        );
        assert_eq!(executable(messages, "other"), None);
    }
}
