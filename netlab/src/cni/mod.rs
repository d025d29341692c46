//! netlab as a CNI plugin: the `netlab` binary, run by a container runtime
//! with `CNI_COMMAND` set and no arguments, attaches pods to a lab's
//! `[pod_network]` on its eBPF datapath, with their port mappings as
//! published ports. A front end of the same seam as the CLI.
//!
//! - [`spec`]: the specification's environment, configuration, results
//!   and errors (pure);
//! - [`ipam`]: pod addresses (netlab's allocator, or a delegated plugin);
//! - [`attach`]: one pod's links and addresses, over netlink;
//! - [`cmd`]: ADD, DEL, CHECK, STATUS, GC, VERSION.

mod attach;
mod cmd;
pub mod ipam;
pub mod spec;

use std::{
    io::{Read as _, Write as _},
    process::ExitCode,
};

use spec::{CniError, Env};

/// The variable that makes `netlab` the plugin.
pub const COMMAND_ENV: &str = "CNI_COMMAND";

/// Runs the command the environment names: a result or nothing on stdout
/// and exit 0, or the specification's error object on stdout and exit 1.
/// Logs go to stderr only.
pub fn main() -> ExitCode {
    let mut stdin = String::new();
    let read = std::io::stdin().read_to_string(&mut stdin);
    let version = serde_json::from_str::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.1.0".to_owned());
    let outcome = match read {
        Err(e) => Err(CniError::new(5, format!("reading the configuration: {e}"))),
        Ok(_) => {
            Env::from_vars(|name| std::env::var(name).ok()).and_then(|env| cmd::run(&env, &stdin))
        }
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(output) = output {
                let _ = writeln!(stdout, "{output}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("netlab (CNI): {}", err.msg);
            let reply = serde_json::to_string(&err.reply(&version)).unwrap_or_default();
            let _ = writeln!(stdout, "{reply}");
            ExitCode::FAILURE
        }
    }
}
